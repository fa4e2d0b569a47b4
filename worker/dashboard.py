"""The operator's dashboard: ``/`` (one page), ``/static/{name}`` (its script and style), ``/docs``
(the API reference, drawn from ``/openapi.json`` in the browser), ``/stats/series`` (the charts'
numbers) and the disabled webhook URLs (``GET /hooks/disabled``, ``POST /hooks/enable``).

The files ship inside the package (``worker/static``) and are served as they are: no CDN, no build
step. They hold no data: with ``ACETRACK_HTTP_TOKEN`` set the page asks for the token, keeps it in
``sessionStorage`` and sends it with every call (as ``?access_token=`` for ``/events``, which
``EventSource`` opens without headers), so every route with data stays behind the token.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from aiohttp import web

from worker.control import live_workers
from worker.httpcore import API, ApiError, read_json
from worker.series import MINUTE_MS, WINDOW_MINUTES, RequestSampler, finished_series
from worker.store import Store

CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
#: events read per XRANGE when drawing the last hour, and at most this many in all (a busy hour is sampled)
RANGE_CHUNK = 5000
RANGE_MAX = 100_000
SAMPLER: web.AppKey[RequestSampler] = web.AppKey("sampler", RequestSampler)


def _static(name: str) -> tuple[bytes, str] | None:
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in CONTENT_TYPES:
        return None
    path = resources.files("worker").joinpath("static", name)
    return (path.read_bytes(), CONTENT_TYPES[suffix]) if path.is_file() else None


def _file_response(name: str, fill: dict[bytes, bytes] | None = None) -> web.Response:
    found = _static(name)
    if found is None:
        raise ApiError(404, "not_found", f"no dashboard file named {name!r}")
    body, content_type = found
    for placeholder, value in (fill or {}).items():
        body = body.replace(placeholder, value)
    # the page's files change only with the package: a short cache, revalidated
    return web.Response(body=body, content_type=content_type, headers={"cache-control": "no-cache"})


async def index(request: web.Request) -> web.Response:
    """``GET /``: the dashboard page; it is told whether a token is needed (not the token), so it
    asks for one before its first call instead of after a 401."""
    return _file_response("index.html", {b"{{token_required}}": b"1" if request.app[API].http_token else b"0"})


async def docs(_: web.Request) -> web.Response:
    """``GET /docs``: the API reference page."""
    return _file_response("docs.html")


async def static(request: web.Request) -> web.Response:
    """``GET /static/{name}``: the dashboard's script and style."""
    return _file_response(request.match_info["name"])


async def recent_events(store: Store, since_ms: int) -> list[dict[str, str]]:
    """Events-stream entries written at or after ``since_ms`` (at most ``RANGE_MAX``), oldest first."""
    entries: list[dict[str, str]] = []
    start = f"{since_ms}-0"
    while len(entries) < RANGE_MAX:
        chunk = await store.redis.xrange(store.events_key, min=start, max="+", count=RANGE_CHUNK)
        entries += [fields for _, fields in chunk]
        if len(chunk) < RANGE_CHUNK:
            break
        start = "(" + chunk[-1][0]  # exclusive: the next chunk starts after the last one read
    return entries


async def series(request: web.Request) -> web.Response:
    """``GET /stats/series``: per minute of the last hour, tasks finished, detection latency
    p50/p95 and upstream requests, with the request budget per token."""
    api, sampler = request.app[API], request.app[SAMPLER]
    now_ms = api.clock()
    entries = await recent_events(api.store, now_ms - WINDOW_MINUTES * MINUTE_MS)
    sampler.sample(await live_workers(api.store, now_ms), now_ms)
    body: dict[str, Any] = {
        "finished": finished_series(entries, now_ms),
        "requests": sampler.series(now_ms),
        "budget_per_minute": round(api.rate_limit_rps * 60),
    }
    return web.json_response(body)


async def disabled_urls(request: web.Request) -> web.Response:
    """``GET /hooks/disabled``: webhook URLs a 410 disabled, with when (their deliveries are dead-lettered)."""
    store = request.app[API].store
    found: dict[str, str] = await store.redis.hgetall(store.disabled_key)  # type: ignore[misc]
    urls = [{"url": url, "disabled_at_ms": int(at_ms)} for url, at_ms in sorted(found.items())]
    return web.json_response({"urls": urls})


async def enable_url(request: web.Request) -> web.Response:
    """``POST /hooks/enable`` with ``{"url": ...}``: deliver to a disabled URL again; 404 if it was not disabled."""
    body = await read_json(request)
    url = body.get("url") if isinstance(body, dict) else None
    if not isinstance(url, str) or not url:
        raise ApiError(400, "invalid", "send {'url': <a disabled webhook URL>}", "url")
    if not await request.app[API].store.enable_url(url):
        raise ApiError(404, "not_found", f"webhook URL {url!r} is not disabled")
    return web.json_response({"url": url, "enabled": True})


def add_routes(app: web.Application) -> None:
    """Register the dashboard's routes and its request sampler."""
    app[SAMPLER] = RequestSampler()
    app.router.add_get("/", index)
    app.router.add_get("/docs", docs)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/stats/series", series)
    app.router.add_get("/hooks/disabled", disabled_urls)
    app.router.add_post("/hooks/enable", enable_url)
