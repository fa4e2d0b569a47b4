"""Signed HTTP webhooks (DESIGN.md §4): screening, the Standard Webhooks envelope, one attempt.

Each (event, URL) pair is one delivery. Its ``webhook-id`` is the event's ``event_id`` on every
try and replay; the signature is made fresh (new timestamp) each time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from standardwebhooks import Webhook

from worker.api import parse_retry_after
from worker.errors import InvalidInput
from worker.hooks import WEBHOOK_PREFIX, Outcome, record_attempt

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 15.0
#: a Retry-After longer than this is not honoured as is
MAX_RETRY_AFTER_S = 86_400.0
JITTER = 0.1
#: a worker without the webhook secret hands a delivery back for this long, for a worker that has it
NO_SECRET_RETRY_S = 60.0

Resolver = Callable[[str], Awaitable[list[str]]]


def is_forbidden_address(address: str) -> bool:
    """True for loopback, link-local, private, reserved, multicast and unspecified addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return bool(
        ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_reserved or ip.is_multicast or ip.is_unspecified
    )


async def system_resolver(host: str) -> list[str]:
    """Every address ``host`` resolves to."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def screen(url: str, allow_hosts: Collection[str], resolver: Resolver = system_resolver) -> None:
    """Refuse a webhook URL that is not http(s) or whose host resolves to a non-public address.

    Raises:
        InvalidInput: on field ``callback_url``, saying why and how to allow the host.
    """
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        host = ""
    if not host or parts.scheme not in ("http", "https"):
        raise InvalidInput("callback_url", f"callback_url {url[:80]!r} must be an http:// or https:// URL")
    if host in {h.lower() for h in allow_hosts}:
        return
    try:
        addresses = await resolver(host)
    except OSError as e:
        raise InvalidInput("callback_url", f"callback_url host {host!r} does not resolve ({e})") from e
    bad = [a for a in addresses if is_forbidden_address(a)]
    if bad or not addresses:
        raise InvalidInput(
            "callback_url",
            f"callback_url host {host!r} resolves to a private or local address {bad[:1]!r}; "
            "add the host to ACETRACK_WEBHOOK_ALLOW_HOSTS to allow it",
        )


def envelope(event: dict[str, Any], now_ms: int) -> str:
    """The Standard Webhooks body: ``{"type", "timestamp", "data": record}``."""
    timestamp = datetime.fromtimestamp(now_ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event["type"], "timestamp": timestamp, "data": event["record"]}, separators=(",", ":"))


def signed_headers(secret: str, event_id: str, now_ms: int, payload: str) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for one send."""
    sent_at = datetime.fromtimestamp(now_ms // 1000, tz=UTC)
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(now_ms // 1000),
        "webhook-signature": Webhook(secret).sign(event_id, sent_at, payload),
    }


@dataclass(frozen=True)
class WebhookConfig:
    """What a webhook attempt needs from the settings."""

    secret: str | None
    schedule_s: Sequence[float]
    allow_hosts: Collection[str] = ()
    timeout_s: float = REQUEST_TIMEOUT_S


def next_delay_s(tries: int, schedule_s: Sequence[float], retry_after_s: float | None, rng: float) -> float | None:
    """Delay before the next try after ``tries`` failed ones; None when the schedule is spent."""
    if tries >= len(schedule_s):
        return None
    delay_s = schedule_s[tries] * (1 - JITTER + 2 * JITTER * rng)
    if retry_after_s is not None:
        delay_s = max(delay_s, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay_s


async def _send(
    session: aiohttp.ClientSession, url: str, payload: str, headers: dict[str, str], timeout_s: float
) -> tuple[int | None, float | None, str | None]:
    """POST once: (status, retry_after_s, error); never follows redirects."""
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with session.post(url, data=payload, headers=headers, allow_redirects=False, timeout=timeout) as resp:
            await resp.read()
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), datetime.now(UTC).timestamp())
            error = None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
            return resp.status, retry_after, error
    except (TimeoutError, aiohttp.ClientError) as e:
        return None, None, f"{type(e).__name__}: {e}"


async def attempt(
    session: aiohttp.ClientSession,
    config: WebhookConfig,
    body: dict[str, Any],
    now_ms: int,
    *,
    disabled: bool = False,
    resolver: Resolver = system_resolver,
    rng: Callable[[], float] = random.random,
) -> Outcome:
    """Send one delivery once and update ``body`` (attempts, status). A 410 disables the URL."""
    url = body["destination"].removeprefix(WEBHOOK_PREFIX)
    if disabled:
        return _dead(body, now_ms, "gone", "URL disabled after a 410 Gone; run 'acetrack hooks enable URL'")
    if not config.secret:
        # not the delivery's fault: another worker may have the secret, so no try is spent (the body
        # is left as it was) and the delivery waits in the outbox for a worker that can sign it
        logger.warning(
            "webhook delivery %s handed back: this worker has no ACETRACK_WEBHOOK_SECRET (whsec_...) to sign it",
            body["delivery_id"],
        )
        return Outcome("retry", NO_SECRET_RETRY_S)
    try:
        await screen(url, config.allow_hosts, resolver)
    except InvalidInput as e:
        return _dead(body, now_ms, "refused", e.message)
    payload = envelope(body["event"], now_ms)
    headers = signed_headers(config.secret, body["event_id"], now_ms, payload)
    status, retry_after_s, error = await _send(session, url, payload, headers, config.timeout_s)
    record_attempt(body, now_ms, error, status=status)
    if error is None:
        body["status"] = "delivered"
        return Outcome("delivered")
    if status == 410:
        body["status"], body["reason"] = "dead", "gone"
        return Outcome("dead", disable_url=True)
    delay_s = next_delay_s(body.get("tries", 0), config.schedule_s, retry_after_s, rng())
    if delay_s is None:
        body["status"], body["reason"] = "dead", "exhausted"
        logger.error("webhook %s gave up on event %s: %s", url, body["event_id"], error)
        return Outcome("dead")
    body["status"] = "retrying"
    return Outcome("retry", delay_s)


def _dead(body: dict[str, Any], now_ms: int, reason: str, error: str) -> Outcome:
    record_attempt(body, now_ms, error)
    body["status"], body["reason"] = "dead", reason
    logger.warning("webhook delivery %s dead-lettered (%s): %s", body["delivery_id"], reason, error)
    return Outcome("dead")
