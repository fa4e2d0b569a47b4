"""``GET /events``: the events stream as server-sent events.

Each SSE event carries the stream entry's id as ``id:``, the event type as ``event:`` and the event
as hooks see it as ``data:`` (a task's end carries its record, the other events what changed). A
client that reconnects with ``Last-Event-ID`` (browsers' ``EventSource`` does it on its own) gets
every entry after that id that the stream still holds, so nothing is missed across a disconnect.
``?after=<id>`` does the same for a first connection (``after=0-0``: everything the stream holds).
Filters: ``?service=``, ``?id=``, ``?type=`` (comma-separated).
With ``ACETRACK_HTTP_TOKEN`` set, the token goes in the ``authorization`` header or, since
``EventSource`` cannot set headers, as ``?access_token=`` (compared in constant time like the header).

Each connection is one blocking ``XREAD`` at a time on its own Redis connection; a comment line
(``: ping``) goes out when nothing else did for ``sse_heartbeat_s``, so idle proxies keep it open. A
response ends after ``sse_max_s`` (default 1 hour); ``EventSource`` then reconnects and resumes.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from worker.events import event_from_fields
from worker.httpcore import API, ApiError
from worker.intake import check_id, check_service
from worker.models import EventType

#: 15 digits a side: every id Redis can hold for centuries, and never one it refuses to parse
STREAM_ID_RE = re.compile(r"[0-9]{1,15}-[0-9]{1,15}")
#: entries sent per XREAD: a burst reaches the client in a few writes
READ_COUNT = 200
#: how long the browser waits before it reconnects (the SSE ``retry:`` field)
RETRY_MS = 2000
EVENT_TYPES = frozenset(t.value for t in EventType)
#: the running ``/events`` handlers, cancelled as the app stops (aiohttp would wait for them otherwise)
STREAMS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("sse_streams")


@dataclass(frozen=True)
class Filters:
    """Which events one ``/events`` client wants (empty: all)."""

    services: Collection[str] = ()
    ids: Collection[str] = ()
    types: Collection[str] = ()

    def wants(self, fields: dict[str, str]) -> bool:
        """Whether an events-stream entry passes every filter."""
        return (
            (not self.services or fields.get("service") in self.services)
            and (not self.ids or fields.get("id") in self.ids)
            and (not self.types or fields.get("type") in self.types)
        )


def _split(text: str | None, name: str) -> list[str]:
    parts = text.split(",") if text else []
    if "" in parts:
        raise ApiError(400, "invalid", f"{name} must be a comma-separated list without empty items", name)
    return parts


def parse_filters(query: dict[str, str]) -> Filters:
    """``?service=&id=&type=`` (each comma-separated); a bad value is a 400 naming the parameter."""
    types = _split(query.get("type"), "type")
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise ApiError(400, "invalid", f"type must be among {sorted(EVENT_TYPES)}; got {unknown[0]!r}", "type")
    services = [check_service(s) for s in _split(query.get("service"), "service")]
    return Filters(services, [check_id(i) for i in _split(query.get("id"), "id")], types)


def _start_id(request: web.Request) -> str | None:
    """Where to resume: ``Last-Event-ID`` (a reconnect), else ``?after=``, else None (from now on)."""
    given = request.headers.get("Last-Event-ID") or request.query.get("after")
    if given is None or given == "":
        return None
    if not STREAM_ID_RE.fullmatch(given):
        raise ApiError(400, "invalid", "Last-Event-ID (or after) must be an events-stream id such as 0-0", "after")
    return given


def format_event(entry_id: str, fields: dict[str, str]) -> bytes:
    """One SSE event: ``id``, ``event`` (the type) and one ``data`` line of JSON."""
    data = json.dumps(event_from_fields(fields), separators=(",", ":"))
    return f"id: {entry_id}\nevent: {fields.get('type', 'message')}\ndata: {data}\n\n".encode()


async def _open(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no"}
    )
    await response.prepare(request)
    # the retry hint, and a first comment so a client knows the stream is open before any event
    await response.write(f"retry: {RETRY_MS}\n: connected\n\n".encode())
    return response


async def events(request: web.Request) -> web.StreamResponse:
    """``GET /events``: follow the events stream until the client goes away or ``sse_max_s`` passed."""
    api = request.app[API]
    filters, after_id = parse_filters(dict(request.query)), _start_id(request)
    if after_id is None:
        after_id = await api.store.last_event_id()
    response = await _open(request)
    streams, task = request.app[STREAMS], asyncio.current_task()
    if task is not None:
        streams.add(task)
    try:
        await _follow(request, response, after_id, filters)
    except ConnectionResetError:  # the client went away: aiohttp's write raises a subclass of it
        pass
    finally:
        if task is not None:
            streams.discard(task)
    return response


async def _follow(request: web.Request, response: web.StreamResponse, after_id: str, filters: Filters) -> None:
    api = request.app[API]
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    # a bounded lifetime: load balancers can move clients, and EventSource reconnects with Last-Event-ID
    close_at = quiet_since + api.sse_max_s
    while (left_s := close_at - loop.time()) > 0:
        block_ms = max(1, int(min(api.sse_heartbeat_s, left_s) * 1000))
        entries = await api.store.read_events(after_id, block_ms, count=READ_COUNT)
        chunk = b"".join(format_event(i, f) for i, f in entries if filters.wants(f))
        after_id = entries[-1][0] if entries else after_id
        if chunk:
            await response.write(chunk)
            quiet_since = loop.time()
        elif loop.time() - quiet_since >= api.sse_heartbeat_s:
            # a write is also how a client that went away is noticed (it raises)
            await response.write(b": ping\n\n")
            quiet_since = loop.time()
    await response.write_eof()


async def _end_streams(app: web.Application) -> None:
    streams = app[STREAMS]
    for task in list(streams):
        task.cancel()


def add_routes(app: web.Application) -> None:
    """Register ``GET /events``; its streams end as the app stops."""
    streams: set[asyncio.Task[Any]] = set()
    app[STREAMS] = streams
    app.on_shutdown.append(_end_streams)
    app.router.add_get("/events", events)
