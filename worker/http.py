"""The HTTP API of DESIGN.md §5 (aiohttp): the app and its routes; ``worker.http_serve`` runs it.

Every error answers ``{"error": {"code", "message", "field"?}}``. A ``POST /tasks`` request is
validated whole before anything is stored.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from config import Settings
from worker import dashboard, metrics, sse, waiters
from worker.cadence import first_poll_ms
from worker.callbacks import ID_PLACES, callback_task_id, key_matches
from worker.control import collect_stats, decode_cursor, encode_cursor, live_workers
from worker.errors import InvalidInput
from worker.httpcore import (
    API,
    MAX_BODY_BYTES,
    Api,
    ApiError,
    auth_middleware,
    errors_middleware,
    read_json,
)
from worker.intake import EnqueueRequest, build_request, check_id, check_service
from worker.models import Record, TaskState
from worker.parts import control_for, store_for
from worker.redis_policy import eviction_problem
from worker.store import Cursor
from worker.waiters import FOLLOWER, get_or_wait
from worker.webhooks import screen

__all__ = ["API", "Api", "ApiError", "api_from_settings", "create_app"]

logger = logging.getLogger(__name__)

MAX_TASKS_PER_REQUEST = 1000
DEFAULT_PAGE = 100
LIMIT_RE = re.compile(r"[0-9]{1,7}")
#: ``GET /tasks/{service}/{id}?wait_s=N``: at most this long (a longer wait belongs in a webhook)
MAX_WAIT_S = 60.0
#: ``GET /tasks?q=TEXT``: the text searched for in ids and meta, 1 to this many characters
MAX_Q_CHARS = 200


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


#: the JSON words for the Python types above, for the error a client reads
_JSON_TYPE: dict[type, str] = {str: "a string", int: "a number", dict: "a JSON object", bool: "true or false"}


def _parse_item(item: Any, where: str, api: Api) -> EnqueueRequest:
    if not isinstance(item, dict):
        raise ApiError(400, "invalid", f"{where} must be an object with 'service' and 'id'", where)
    for key, value in item.items():
        types = _NATIVE_TYPES.get(key)
        if types and value is not None and (not isinstance(value, types) or isinstance(value, bool) != (bool in types)):
            raise ApiError(400, "invalid", f"{where}.{key} must be {_JSON_TYPE[types[0]]}", f"{where}.{key}")
    try:
        return build_request(item, services=api.services, tokens=api.tokens)
    except InvalidInput as e:
        raise ApiError(400, "invalid", e.message, f"{where}.{e.field}") from e


async def post_tasks(request: web.Request) -> web.Response:
    """``POST /tasks``: one task or a list; all validated before any is stored; 202."""
    api, body = request.app[API], await read_json(request)
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
        now_ms = api.clock()
        first_due_ms = first_poll_ms(now_ms, api.first_poll_s)
        created, record = await api.store.register(req, now_ms, deadline_s=api.deadline_s, first_due_ms=first_due_ms)
        stored.append(record.to_dict())
        if not created:
            duplicates.append({"service": req.service, "id": req.id})
    return web.json_response({"tasks": stored, "duplicates": duplicates}, status=202)


def _wait_s(request: web.Request) -> float | None:
    text = request.query.get("wait_s")
    if text is None:
        return None
    try:
        wait_s = float(text)
    except ValueError:
        wait_s = math.nan
    if not 0 < wait_s <= MAX_WAIT_S:  # NaN fails this too
        message = f"wait_s must be a number of seconds, over 0 and at most {MAX_WAIT_S:g}"
        raise ApiError(400, "invalid", message, "wait_s")
    return wait_s


async def get_task(request: web.Request) -> web.Response:
    """``GET /tasks/{service}/{id}[?wait_s=N]``: with ``wait_s``, answer once the task is terminal or
    after N seconds with the record as it is then (200 either way: the state tells)."""
    service, task_id = _path_task(request)
    wait_s, store = _wait_s(request), request.app[API].store
    if wait_s is None:
        record = await store.get(service, task_id)
    else:
        wait_s = min(wait_s, request.app[API].max_wait_s)
        record = await get_or_wait(request.app[FOLLOWER], store, service, task_id, wait_s)
    if record is None:
        raise ApiError(404, "not_found", f"task {service}/{task_id} is not tracked")
    return web.json_response(record.to_dict())


async def lookup(request: web.Request) -> web.Response:
    """``POST /tasks/lookup`` with ``{"tasks": [{"service", "id"}, ...]}``: found records and missing pairs."""
    body = await read_json(request)
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


def _decode_cursor(text: str | None, state: TaskState | None) -> Cursor | None:
    return decode_cursor(text, state) if text else None


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


def _search_text(request: web.Request) -> str | None:
    text = request.query.get("q")
    if text is not None and not 1 <= len(text) <= MAX_Q_CHARS:
        raise ApiError(400, "invalid", f"q must be 1 to {MAX_Q_CHARS} characters of text to search for", "q")
    return text


async def list_tasks(request: web.Request) -> web.Response:
    """``GET /tasks?state=&service=&limit=&cursor=&q=``: oldest first, ``next_cursor`` until the end.

    With ``q``, only tasks whose id or meta JSON contains it (case-insensitive), and how many tasks
    were examined (``scanned``); ``scan_bound`` says the per-request scan bound, not ``limit`` or
    the end, stopped the page: ``next_cursor`` goes on from there.
    """
    service, state, limit = _list_params(request)
    text = _search_text(request)
    after = _decode_cursor(request.query.get("cursor"), state)
    store = request.app[API].store
    if text is None:
        records, next_cursor = await store.list_page(service, state, limit, after)
        extra: dict[str, Any] = {}
    else:
        found = await store.search_page(service, state, text, limit, after)
        records, next_cursor = found.records, found.next_cursor
        extra = {"scanned": found.scanned, "scan_bound": found.bounded}
    cursor = encode_cursor(next_cursor) if next_cursor else None
    return web.json_response({"tasks": [r.to_dict() for r in records], "next_cursor": cursor, **extra})


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
    waiters.setup(app)
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
    app.router.add_post("/callbacks/{service}", upstream_callback)
    sse.add_routes(app)
    dashboard.add_routes(app)
    return app


async def upstream_callback(request: web.Request) -> web.Response:
    """The upstream called back: make the task it names due now (``callbacks``); 202 at once."""
    api = request.app[API]
    if not key_matches(request.query.get("key"), api.callback_key):
        raise web.HTTPNotFound()  # answered as a route that does not exist: the key cannot be probed
    service = request.match_info["service"]
    task_id = callback_task_id(await read_json(request))
    try:
        check_service(service, api.services)
        if task_id is None:
            raise InvalidInput("id", f"the callback body names no task (looked at {ID_PLACES})")
        check_id(task_id)
    except InvalidInput as e:
        raise ApiError(400, "invalid", e.message, e.field) from e
    now_ms = api.clock()
    hint = await api.store.hint(service, task_id, now_ms)
    if hint == "untracked" and api.callback_enqueue:
        req = EnqueueRequest(service, task_id)
        await api.store.register(req, now_ms, deadline_s=api.deadline_s, first_due_ms=now_ms)
        hint = "enqueued"
    return web.json_response({"service": service, "id": task_id, "hint": hint}, status=202)


def api_from_settings(settings: Settings, redis: aioredis.Redis) -> Api:
    """The API's dependencies from the settings and a ready ``decode_responses`` client."""
    store = store_for(settings, redis)
    control = control_for(settings, store)
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
        callback_key=settings.callback_key.get_secret_value() if settings.callback_key else None,
        callback_enqueue=settings.callback_enqueue,
        rate_limit_rps=settings.rate_limit_rps,
    )
