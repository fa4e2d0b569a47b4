"""The upstream Tasks API client (DESIGN.md §1): one method per action, errors mapped to ``errors``.

It never retries on its own: a failed request raises, and the scheduler decides when to try
again (the ids go back to the due set; the service backs off).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from worker import codec
from worker.errors import (
    ConfigError,
    UnknownService,
    UpstreamAuthError,
    UpstreamRejected,
    UpstreamTooLarge,
    UpstreamUnavailable,
)
from worker.wire import UpstreamTask, error_of

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})
DEFAULT_TIMEOUT_S = 30.0


def is_retryable_status(status: int) -> bool:
    """429 and 5xx may succeed later unchanged; other 4xx will not."""
    return status in RETRYABLE_STATUSES or status >= 500


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now_s)
    except (TypeError, ValueError):
        return None


def _error_fields(body: Any) -> tuple[str | None, str]:
    err = error_of(body.get("error")) if isinstance(body, dict) else None
    if err is None:
        return None, "no error message"
    return err["code"], err["message"] or err["code"] or "no error message"


def raise_for_status(status: int, body: Any, retry_after_s: float | None, what: str) -> None:
    """Map a non-2xx answer (or a 2xx ``success: false``) to the exception tree."""
    code, message = _error_fields(body)
    text = f"{what}: HTTP {status} {code or ''} {message}".rstrip()
    if is_retryable_status(status):
        raise UpstreamUnavailable(text, status=status, code=code, retry_after_s=retry_after_s)
    if status in AUTH_STATUSES:
        raise UpstreamAuthError(text, status=status, code=code)
    if status == 413:
        raise UpstreamTooLarge(text, status=status, code=code)
    if status == 404 and code == "no_api":
        raise UnknownService(text, status=status, code=code)
    raise UpstreamRejected(text, status=status, code=code)


class UpstreamClient:
    """Client for ``POST {base}/{service}/tasks`` over one shared ``aiohttp.ClientSession``.

    Args:
        session: the process's session (its timeout applies).
        base_url: ``ACETRACK_API_BASE_URL``.
        tokens: API tokens by name (``default`` first).
    """

    def __init__(self, session: aiohttp.ClientSession, base_url: str, tokens: Mapping[str, str]) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.tokens = dict(tokens)
        self.requests = 0
        # per service and per token, built once: aiohttp then need not parse a URL or a header dict per request
        self._urls: dict[str, URL] = {}
        self._headers: dict[str, CIMultiDict[str]] = {}

    def __repr__(self) -> str:
        return f"UpstreamClient({self.base_url!r}, tokens={sorted(self.tokens)}, requests={self.requests})"

    async def retrieve(self, service: str, task_id: str, token: str = "default") -> UpstreamTask | None:
        """One task record, or None when the upstream does not know the id."""
        body = await self._post(service, token, {"action": "retrieve", "id": task_id})
        return UpstreamTask.from_wire(body)

    async def retrieve_batch(self, service: str, ids: Sequence[str], token: str = "default") -> dict[str, UpstreamTask]:
        """Records for ``ids`` by id, in one request; ids the upstream does not know are absent."""
        body = await self._post(service, token, {"action": "retrieve_batch", "ids": list(ids), "limit": len(ids)})
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise UpstreamUnavailable(f"{service} retrieve_batch: answer has no 'items' list", status=200)
        wanted, found = set(ids), dict[str, UpstreamTask]()
        for raw in items:
            task = UpstreamTask.from_wire(raw)
            # duplicates may come back; a finished copy wins over an older one
            if task and task.id in wanted and (task.id not in found or task.finished_at is not None):
                found[task.id] = task
        return found

    async def _post(self, service: str, token: str, payload: dict[str, Any]) -> Any:
        what = f"{service} {payload['action']}"
        url, headers = self._url(service), self._headers_for(token)
        body_bytes = codec.dumps(payload)
        self.requests += 1
        try:
            async with self.session.post(url, data=body_bytes, headers=headers, allow_redirects=False) as resp:
                data = await resp.read()
                status, retry_after = resp.status, resp.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"{what}: {type(e).__name__}: {e}") from e
        body = self._decode(data, status, what)
        # Retry-After may be an HTTP date, which only the wall clock can read
        retry_after_s = parse_retry_after(retry_after, time.time())
        if status >= 300 or (isinstance(body, dict) and body.get("success") is False and "items" not in body):
            raise_for_status(status if status >= 300 else 400, body, retry_after_s, what)
        return body

    def _url(self, service: str) -> URL:
        url = self._urls.get(service)
        if url is None:
            url = self._urls[service] = URL(f"{self.base_url}/{service}/tasks")
        return url

    def _headers_for(self, token: str) -> CIMultiDict[str]:
        headers = self._headers.get(token)
        if headers is None:
            secret = self.tokens.get(token)
            if secret is None:
                raise ConfigError(f"no API token named {token!r}; set ACETRACK_API_TOKEN or ACETRACK_API_TOKENS")
            headers = CIMultiDict(
                {"authorization": f"Bearer {secret}", "accept": "application/json", "content-type": "application/json"}
            )
            self._headers[token] = headers
        return headers

    @staticmethod
    def _decode(data: bytes, status: int, what: str) -> Any:
        try:
            return codec.loads(data) if data else {}
        except ValueError as e:
            if status >= 300:
                return {}
            raise UpstreamUnavailable(
                f"{what}: HTTP {status} with unreadable JSON: {data[:80]!r}", status=status
            ) from e
