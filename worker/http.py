"""``acetrack serve``: the HTTP API of DESIGN.md §5 (aiohttp).

Every error answers ``{"error": {"code", "message", "field"?}}``. A ``POST /tasks`` request is
validated whole before anything is stored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from config import Settings
from worker import metrics
from worker.clock import Clock, system_clock
from worker.connect import FULL_HINT, FULL_LOG, create_redis, is_full
from worker.control import Control, collect_stats, live_workers
from worker.errors import ConfigError, InvalidInput, StoreError
from worker.hooks import destinations_by_event
from worker.intake import EnqueueRequest, build_request, check_id, check_service
from worker.models import Record, TaskState
from worker.redis_policy import eviction_problem
from worker.store import Cursor, Store
from worker.webhooks import screen

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_TASKS_PER_REQUEST = 1000
DEFAULT_PAGE = 100
LIMIT_RE = re.compile(r"[0-9]{1,7}")
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
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
    clock: Clock = system_clock
    openapi: bytes = field(default_factory=lambda: resources.files("worker").joinpath("openapi.json").read_bytes())


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


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With ``ACETRACK_HTTP_TOKEN`` set, every route but health checks needs the bearer token."""
    token = request.app[API].http_token
    if token and request.path not in OPEN_PATHS:
        # surrogateescape: a header with stray non-UTF-8 bytes is simply wrong, never a crash
        given = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            raise ApiError(401, "unauthorized", "send 'authorization: Bearer <ACETRACK_HTTP_TOKEN>'")
    return await handler(request)


async def _json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, and ints over Python's digit limit
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {e}") from e
    except RecursionError as e:
        raise ApiError(400, "invalid_json", "request body is nested too deeply") from e


def _path_task(request: web.Request) -> tuple[str, str]:
    return check_service(request.match_info["service"]), check_id(request.match_info["id"])


_NATIVE_TYPES: dict[str, tuple[type, ...]] = {
    "service": (str,),
    "id": (str,),
    "callback_url": (str,),
    "token": (str,),
    "deadline_s": (int, float),
    "meta": (dict,),
    "reopen": (bool,),
}


def _parse_item(item: Any, where: str, api: Api) -> EnqueueRequest:
    if not isinstance(item, dict):
        raise ApiError(400, "invalid", f"{where} must be an object with 'service' and 'id'", where)
    for key, value in item.items():
        types = _NATIVE_TYPES.get(key)
        if types and value is not None and (not isinstance(value, types) or isinstance(value, bool) != (bool in types)):
            raise ApiError(400, "invalid", f"{where}.{key} must be of type {types[0].__name__}", f"{where}.{key}")
    try:
        return build_request(item, services=api.services, tokens=api.tokens)
    except InvalidInput as e:
        raise ApiError(400, "invalid", e.message, f"{where}.{e.field}") from e


async def post_tasks(request: web.Request) -> web.Response:
    """``POST /tasks``: one task or a list; all validated before any is stored; 202."""
    api, body = request.app[API], await _json(request)
    items = body if isinstance(body, list) else [body]
    if len(items) > MAX_TASKS_PER_REQUEST:
        raise ApiError(413, "too_many", f"{len(items)} tasks in one request; send at most {MAX_TASKS_PER_REQUEST}")
    if not items:
        raise ApiError(400, "invalid", "send a task object or a non-empty list of them")
    requests = [_parse_item(item, f"tasks[{n}]", api) for n, item in enumerate(items)]
    for n, req in enumerate(requests):
        if req.callback_url:
            try:
                await screen(req.callback_url, api.allow_hosts)
            except InvalidInput as e:
                raise ApiError(400, "invalid", e.message, f"tasks[{n}].callback_url") from e
    stored, duplicates = [], []
    for req in requests:
        created, record = await api.store.register(
            req, api.clock(), deadline_s=api.deadline_s, first_poll_s=api.first_poll_s
        )
        stored.append(record.to_dict())
        if not created:
            duplicates.append({"service": req.service, "id": req.id})
    return web.json_response({"tasks": stored, "duplicates": duplicates}, status=202)


async def get_task(request: web.Request) -> web.Response:
    """``GET /tasks/{service}/{id}``."""
    service, task_id = _path_task(request)
    record = await request.app[API].store.get(service, task_id)
    if record is None:
        raise ApiError(404, "not_found", f"task {service}/{task_id} is not tracked")
    return web.json_response(record.to_dict())


async def lookup(request: web.Request) -> web.Response:
    """``POST /tasks/lookup`` with ``{"tasks": [{"service", "id"}, ...]}``: found records and missing pairs."""
    body = await _json(request)
    pairs = body.get("tasks") if isinstance(body, dict) else None
    if not isinstance(pairs, list) or len(pairs) > MAX_TASKS_PER_REQUEST:
        raise ApiError(
            400,
            "invalid",
            f"send {{'tasks': [{{'service', 'id'}}, ...]}} with at most {MAX_TASKS_PER_REQUEST} items",
            "tasks",
        )
    keys = []
    for n, pair in enumerate(pairs):
        if not isinstance(pair, dict):
            raise ApiError(400, "invalid", f"tasks[{n}] must be an object", f"tasks[{n}]")
        try:
            keys.append((check_service(pair.get("service")), check_id(pair.get("id"))))
        except InvalidInput as e:
            raise ApiError(400, "invalid", e.message, f"tasks[{n}].{e.field}") from e
    records = await request.app[API].store.get_many(keys)
    missing = [{"service": s, "id": i} for (s, i), r in zip(keys, records, strict=True) if r is None]
    return web.json_response({"tasks": [r.to_dict() for r in records if r], "missing": missing})


def _encode_cursor(cursor: Cursor | None) -> str | None:
    return None if cursor is None else base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode()


def _decode_cursor(text: str | None, state: TaskState | None) -> Cursor | None:
    if not text:
        return None
    try:
        cursor_state, score, member = json.loads(base64.urlsafe_b64decode(text.encode()))
        cursor = (TaskState(cursor_state).value, int(score), str(member))
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error) as e:
        raise ApiError(400, "invalid", "cursor is not one this API returned; start again without it", "cursor") from e
    if state is not None and cursor[0] != state.value:
        raise ApiError(400, "invalid", "cursor belongs to another listing; start again without it", "cursor")
    return cursor


def _list_params(request: web.Request) -> tuple[str | None, TaskState | None, int]:
    query = request.query
    service = check_service(query["service"]) if query.get("service") else None
    try:
        state = TaskState(query["state"]) if query.get("state") else None
    except ValueError as e:
        raise ApiError(400, "invalid", "state must be pending, succeeded or failed", "state") from e
    text = query.get("limit", str(DEFAULT_PAGE))
    if not LIMIT_RE.fullmatch(text):
        raise ApiError(400, "invalid", "limit must be an integer", "limit")
    limit = int(text)
    if not 1 <= limit <= MAX_TASKS_PER_REQUEST:
        raise ApiError(400, "invalid", f"limit must be from 1 to {MAX_TASKS_PER_REQUEST}", "limit")
    return service, state, limit


async def list_tasks(request: web.Request) -> web.Response:
    """``GET /tasks?state=&service=&limit=&cursor=``: oldest first, ``next_cursor`` until the end."""
    service, state, limit = _list_params(request)
    after = _decode_cursor(request.query.get("cursor"), state)
    records, next_cursor = await request.app[API].store.list_page(service, state, limit, after)
    return web.json_response({"tasks": [r.to_dict() for r in records], "next_cursor": _encode_cursor(next_cursor)})


async def cancel_task(request: web.Request) -> web.Response:
    """``DELETE /tasks/{service}/{id}[?silent=1]``: 200 with the cancelled record, 409 if finished."""
    service, task_id = _path_task(request)
    silent = request.query.get("silent") in ("1", "true")
    outcome, record = await request.app[API].control.cancel(service, task_id, silent=silent)
    return _control_answer(outcome, record, service, task_id, conflict="already_finished")


async def reopen_task(request: web.Request) -> web.Response:
    """``POST /tasks/{service}/{id}/reopen``: 200 with the pending record, 409 if not finished."""
    service, task_id = _path_task(request)
    outcome, record = await request.app[API].control.reopen(service, task_id)
    return _control_answer(outcome, record, service, task_id, conflict="pending")


def _control_answer(outcome: str, record: Record | None, service: str, task_id: str, conflict: str) -> web.Response:
    if outcome == "not_found" or record is None:
        raise ApiError(404, "not_found", f"task {service}/{task_id} is not tracked")
    if outcome == conflict:
        code = "already_finished" if conflict == "already_finished" else "not_finished"
        raise ApiError(409, code, f"task {service}/{task_id} is {record.state.value}")
    return web.json_response(record.to_dict())


async def list_hooks(request: web.Request) -> web.Response:
    """``GET /hooks[?dead=1]``: deliveries with their attempts."""
    store = request.app[API].store
    if request.query.get("dead") in ("1", "true"):
        bodies = [await store.load_delivery(d) for d in await store.dead_letters()]
        deliveries = [b for b in bodies if b]
    else:
        deliveries = await store.deliveries()
    return web.json_response({"deliveries": deliveries})


async def replay_hook(request: web.Request) -> web.Response:
    """``POST /hooks/{delivery_id}/replay``: send again (re-signed, same webhook-id); 202."""
    api, delivery_id = request.app[API], request.match_info["delivery_id"]
    if not await api.store.replay(delivery_id, api.clock()):
        raise ApiError(404, "not_found", f"delivery {delivery_id!r} is unknown or expired")
    return web.json_response({"delivery_id": delivery_id, "status": "pending"}, status=202)


async def stats(request: web.Request) -> web.Response:
    """``GET /stats``: counts by service and state, backlog, oldest pending age, workers."""
    api = request.app[API]
    return web.json_response(await collect_stats(api.store, api.clock()))


async def healthz(_: web.Request) -> web.Response:
    """The process is up."""
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """Redis answers, at least one worker beats, and no token is paused (503 otherwise). A Redis
    that may evict acetrack's keys is a ``problems`` entry too, but a warning: still 200."""
    store = request.app[API].store
    problems = []
    try:
        await store.redis.ping()
        workers = await live_workers(store, request.app[API].clock())
        warning = await eviction_problem(store.redis)
    except RedisError as e:
        return web.json_response({"ready": False, "problems": [f"redis: {e}"]}, status=503)
    if not workers:
        problems.append("no live worker heartbeat")
    problems += [f"token {t!r} paused" for w in workers for t in w.get("paused_tokens", [])]
    ready = not problems
    problems += [warning] if warning else []
    return web.json_response({"ready": ready, "problems": problems}, status=200 if ready else 503)


async def metrics_route(request: web.Request) -> web.StreamResponse:
    """Prometheus metrics, with task counts read from Redis at scrape time."""
    store = request.app[API].store
    for service in await store.services():
        for state, count in (await store.count_by_state(service)).items():
            metrics.TASKS.labels(service, state).set(count)
    return await metrics.metrics_handler(request)


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3 document of this API."""
    return web.Response(body=request.app[API].openapi, content_type="application/json")


def create_app(api: Api) -> web.Application:
    """The aiohttp application over ready dependencies."""
    app = web.Application(middlewares=[errors_middleware, auth_middleware], client_max_size=MAX_BODY_BYTES)
    app[API] = api
    app.router.add_post("/tasks", post_tasks)
    app.router.add_get("/tasks", list_tasks)
    app.router.add_post("/tasks/lookup", lookup)
    app.router.add_get("/tasks/{service}/{id}", get_task)
    app.router.add_delete("/tasks/{service}/{id}", cancel_task)
    app.router.add_post("/tasks/{service}/{id}/reopen", reopen_task)
    app.router.add_get("/hooks", list_hooks)
    app.router.add_post("/hooks/{delivery_id}/replay", replay_hook)
    app.router.add_get("/stats", stats)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_route)
    app.router.add_get("/openapi.json", openapi)
    return app


def control_from_settings(settings: Settings, store: Store) -> Control:
    """Cancel/reopen with the same hook destinations a worker uses."""
    destinations = destinations_by_event(
        settings.hooks, settings.hook_events, settings.webhook_urls, settings.webhook_events
    )
    return Control(store, destinations, frozenset(settings.webhook_events), settings.deadline_s, settings.first_poll_s)


def api_from_settings(settings: Settings, redis: aioredis.Redis) -> Api:
    """The API's dependencies from the settings and a ready ``decode_responses`` client."""
    store = Store(redis, settings.key_prefix, retention_s=settings.retention_s, events_maxlen=settings.events_maxlen)
    control = control_from_settings(settings, store)
    token = settings.http_token.get_secret_value() if settings.http_token else None
    return Api(
        store,
        control,
        services=settings.services,
        tokens=frozenset(settings.tokens()) or None,
        allow_hosts=settings.webhook_allow_hosts,
        deadline_s=settings.deadline_s,
        first_poll_s=settings.first_poll_s,
        http_token=token or None,
    )


async def serve(settings: Settings) -> None:
    """Serve the API on ``ACETRACK_HTTP_HOST:ACETRACK_HTTP_PORT`` until cancelled."""
    if settings.redis_url is None:
        raise ConfigError("ACETRACK_REDIS_URL is not set; e.g. redis://localhost:6379/0")
    redis = create_redis(settings.redis_url)
    runner = web.AppRunner(create_app(api_from_settings(settings, redis)), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.http_host, settings.http_port).start()
        logger.info("acetrack API listening on http://%s:%s", settings.http_host, settings.http_port)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await redis.aclose()
