"""What every route group of the HTTP API shares: its dependencies (``Api``), the JSON error answer
(``ApiError``) and the error and bearer-token middlewares.

``http.py`` holds the task and hook routes; ``sse.py``, ``dashboard.py`` and ``apidocs.py`` add
theirs. Every error answers ``{"error": {"code", "message", "field"?}}``.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from worker.clock import Clock, system_clock
from worker.connect import FULL_HINT, FULL_LOG, is_full
from worker.control import Control
from worker.errors import ConfigError, InvalidInput, StoreError
from worker.store import Store

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
#: routes that also take the token as ``?access_token=``: a browser's EventSource cannot set headers
QUERY_TOKEN_PATHS = frozenset({"/events"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Api:
    """What the HTTP handlers need."""

    store: Store
    control: Control
    services: Collection[str] = ()
    #: configured token names; None when the API process is not told them (then any name is accepted)
    tokens: Collection[str] | None = None
    allow_hosts: Collection[str] = ()
    deadline_s: float = 1800.0
    first_poll_s: float = 3.0
    http_token: str | None = None
    #: the upstream's callbacks: their key (None: off), and whether an untracked id starts tracking
    callback_key: str | None = None
    callback_enqueue: bool = False
    clock: Clock = system_clock
    openapi: bytes = field(default_factory=lambda: resources.files("worker").joinpath("openapi.json").read_bytes())
    #: how often ``GET /events`` sends a comment line when no event passes (keeps proxies from closing it)
    sse_heartbeat_s: float = 15.0
    #: how long one ``GET /events`` response lasts before it ends (the client reconnects and resumes)
    sse_max_s: float = 3600.0
    #: the longest one ``?wait_s=`` request is held (``wait_s`` above it is still valid up to 60): lower it
    #: when a proxy in front of the API closes idle requests sooner
    max_wait_s: float = 60.0
    #: ``ACETRACK_RATE_LIMIT_RPS``: the dashboard draws the request budget from it
    rate_limit_rps: float = 50.0


API: web.AppKey[Api] = web.AppKey("api", Api)


class ApiError(Exception):
    """An error answer: HTTP status, code, message and (optionally) the offending field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def response(self, headers: Mapping[str, str] | None = None) -> web.Response:
        """The JSON error body (``headers`` keeps e.g. a 405's ``Allow``)."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return web.json_response({"error": body}, status=self.status, headers=headers)


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; a 400 ``invalid_json`` when it is not."""
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, and ints over Python's digit limit
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {e}") from e
    except RecursionError as e:
        raise ApiError(400, "invalid_json", "request body is nested too deeply") from e


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; log only what is ours to fix."""
    try:
        return await handler(request)
    except ApiError as e:
        return e.response()
    except InvalidInput as e:
        return ApiError(400, "invalid", e.message, e.field).response()
    except (StoreError, RedisError) as e:
        if is_full(e):
            FULL_LOG.note(f"{request.method} {request.path}", e, time.monotonic())
            return ApiError(503, "redis_full", FULL_HINT).response()
        logger.warning("redis unavailable during %s %s: %s", request.method, request.path, e)
        return ApiError(503, "unavailable", "redis is unavailable; try again shortly").response()
    except web.HTTPRequestEntityTooLarge:
        return ApiError(413, "too_large", f"request body is over {MAX_BODY_BYTES} bytes").response()
    except web.HTTPException as e:
        kept = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "retry-after")}
        return ApiError(e.status, e.reason.lower().replace(" ", "_"), e.reason).response(kept)


def _given_token(request: web.Request) -> bytes:
    # surrogateescape: a header with stray non-UTF-8 bytes is simply wrong, never a crash
    header = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
    if not header and request.path in QUERY_TOKEN_PATHS and "access_token" in request.query:
        return b"Bearer " + request.query["access_token"].encode("utf-8", "surrogateescape")
    return header


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With ``ACETRACK_HTTP_TOKEN`` set, every route but health checks and the dashboard's own files
    needs the bearer token (the page holds no data: it asks for the token and sends it with every call)."""
    token = request.app[API].http_token
    # the upstream's callbacks carry a key of their own (``callbacks.key_matches``), not the bearer token
    callback = request.path.startswith("/callbacks/")
    if token and request.path not in OPEN_PATHS and not is_public_asset(request.path) and not callback:
        if not hmac.compare_digest(_given_token(request), f"Bearer {token}".encode()):
            raise ApiError(401, "unauthorized", "send 'authorization: Bearer <ACETRACK_HTTP_TOKEN>'")
    return await handler(request)


def is_public_asset(path: str) -> bool:
    """The dashboard's page, script and style and the docs page: package files with no data in them."""
    return path in ("/", "/docs") or path.startswith("/static/")


async def listen(runner: web.AppRunner, host: str, port: int, port_setting: str, host_setting: str) -> None:
    """Start serving ``runner`` on ``host:port``; an address that cannot be had becomes a
    ``ConfigError`` naming what to change: the port (taken, or below 1024 without root) or the host
    (not this machine's, or no such name)."""
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        # asyncio's own text repeats the address; a name lookup's errno (< 0) is not an OS error number
        why = os.strerror(e.errno) if e.errno and e.errno > 0 else (e.strerror or str(e))
        if e.errno == errno.EADDRINUSE:
            fix = f"stop what holds the port, or choose another with {port_setting}"
        elif e.errno == errno.EACCES:
            fix = f"ports below 1024 need root: choose another with {port_setting}"
        else:
            fix = f"{host!r} is not an address of this machine: set {host_setting} (0.0.0.0: every interface)"
        raise ConfigError(f"cannot listen on {host}:{port} ({why}); {fix}") from e
