"""A simulator of the Ace Data Cloud Tasks API (``POST /{service}/tasks``), for the demo, tests and compose.

It imports nothing from the ``worker`` package on purpose: every response is built from literal dict
shapes that mirror the vendor's published examples, so it checks the tracker's contract independently.

Scripts (a task's lifecycle): ``succeed``, ``partial`` (Suno: the second clip fails), ``error`` (the task
fails), ``legacy`` (done records look like the old Suno example: no states, no ``finished_at``),
``stuck`` (never finishes) and ``unknown`` (never found). Services other than ``producer`` use the
Suno shape. Control routes: ``POST /_sim/tasks``, ``POST /_sim/fail``, ``GET /_sim/log``. A finished
task's callback is sent as the real upstream does (``sim_callbacks``), with loss and delay knobs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from dataclasses import asdict
from typing import Any

from aiohttp import web

# the simulator's public face: its state classes are imported from here (``sim.SimState``)
from worker.httpcore import listen
from worker.sim_state import RequestLog as RequestLog
from worker.sim_state import SimConfig as SimConfig
from worker.sim_state import SimState as SimState
from worker.sim_state import TokenBucket as TokenBucket
from worker.sim_tasks import SCRIPTS

logger = logging.getLogger(__name__)

_ERROR_CODES = {
    400: "bad_request",
    401: "invalid_token",
    403: "forbidden",
    404: "no_api",
    413: "payload_too_large",
    429: "too_many_requests",
}


Json = dict[str, Any]

#: Page size of ``retrieve_batch`` when the caller sends no ``limit``.
DEFAULT_BATCH_LIMIT = 10
SIM_STATE: web.AppKey[SimState] = web.AppKey("sim_state", SimState)


# --- HTTP ----------------------------------------------------------------------------------------


def _error(status: int, code: str, message: str, retry_after_s: float | None = None) -> web.Response:
    body = {"success": False, "error": {"code": code, "message": message}, "trace_id": str(uuid.uuid4())}
    headers = {"Retry-After": str(math.ceil(retry_after_s))} if retry_after_s is not None else None
    return web.json_response(body, status=status, headers=headers)


def _failure_response(status: int, retry_after_s: float | None) -> web.Response:
    code = "api_error" if status >= 500 else _ERROR_CODES.get(status, "api_error")
    message = "fetch failed" if status >= 500 else f"simulated failure with status {status}"
    return _error(status, code, message, retry_after_s)


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _describe(body: object) -> tuple[str, list[str]]:
    if not isinstance(body, dict):
        return "", []
    action = body.get("action")
    ids = body.get("ids") if "ids" in body else [body.get("id")]
    id_list = [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []
    return (action if isinstance(action, str) else ""), id_list


async def _read_body(request: web.Request) -> object:
    try:
        return json.loads(await request.read())
    except ValueError:
        return None


async def tasks_handler(request: web.Request) -> web.Response:
    """``POST /{service}/tasks``: the Tasks API, with every request logged."""
    state = request.app[SIM_STATE]
    at_s = asyncio.get_running_loop().time()
    service, token = request.match_info["service"], _bearer(request)
    body = await _read_body(request)
    response = await _answer(state, service, token, body, at_s)
    action, ids = _describe(body)
    state.log.append(RequestLog(at_s, service, token, action, ids, response.status))
    logger.debug("%s %s %s -> %d", service, action, ids[:3], response.status)
    return response


async def _answer(state: SimState, service: str, token: str, body: object, at_s: float) -> web.Response:
    config = state.config
    if config.latency_s > 0:
        await asyncio.sleep(config.latency_s)
    failure = state.next_failure()
    if failure is not None:
        return _failure_response(*failure)
    if not token or (config.tokens is not None and token not in config.tokens):
        return _error(401, "invalid_token", "the authorization token is missing or invalid")
    if service not in config.services:
        return _error(404, "no_api", f"no api for service {service!r}")
    wait_s = state.limiter.take(token, at_s) if state.limiter else 0.0
    if wait_s > 0:
        return _error(429, "too_many_requests", "rate limit exceeded", max(1.0, wait_s))
    if not isinstance(body, dict):
        return _error(400, "bad_request", "the body must be a JSON object")
    if config.hang_rate and state.rng.random() < config.hang_rate:
        await asyncio.sleep(config.hang_s)
    response = _dispatch(state, service, body)
    if response.status == 200 and config.garble_rate and state.rng.random() < config.garble_rate:
        text = response.text or ""
        garbled = text[: len(text) // 2] if state.rng.random() < 0.5 else "<html>502 Bad Gateway</html>"
        return web.Response(status=200, text=garbled, content_type="application/json")
    return response


def _dispatch(state: SimState, service: str, body: Json) -> web.Response:
    action = body.get("action")
    if action == "retrieve":
        task_id = body.get("id")
        if not isinstance(task_id, str):
            return _error(400, "bad_request", "'id' must be a string")
        task = state.lookup(service, task_id)
        return web.json_response(state.record(task) if task else {})
    if action == "retrieve_batch":
        return _retrieve_batch(state, service, body)
    return _error(400, "api_not_implemented", f"action {action!r} is not implemented")


def _retrieve_batch(state: SimState, service: str, body: Json) -> web.Response:
    ids, limit = body.get("ids"), body.get("limit", DEFAULT_BATCH_LIMIT)
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return _error(400, "bad_request", "'ids' must be a list of strings")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        return _error(400, "bad_request", "'limit' must be a non-negative integer")
    max_batch = state.config.max_batch
    if max_batch is not None and len(ids) > max_batch:
        return _error(413, "payload_too_large", f"at most {max_batch} ids per batch, got {len(ids)}")
    tasks = [task for task in (state.lookup(service, i) for i in ids) if task is not None]
    items = [state.record(task) for task in tasks if not _chance(state, state.config.drop_rate)]
    items += [dict(item) for item in items if _chance(state, state.config.dup_rate)]
    if state.config.extra_fields:
        items = [{**item, "x_new_field": {"nested": [1, 2]}, "region": "eu"} for item in items]
    state.rng.shuffle(items)
    items = items[:limit]
    count_key = "total" if service in state.config.total_services else "count"
    return web.json_response({"items": items, count_key: len(items)})


def _chance(state: SimState, rate: float) -> bool:
    return rate > 0 and state.rng.random() < rate


# --- control routes ------------------------------------------------------------------------------


async def add_tasks_handler(request: web.Request) -> web.Response:
    """``POST /_sim/tasks``: add one task spec or a list of them."""
    body = await _read_body(request)
    specs = body if isinstance(body, list) else [body]
    try:
        all_kwargs = [_task_kwargs(spec) for spec in specs]
    except (TypeError, ValueError, KeyError) as e:
        return _error(400, "bad_request", f"bad sim task: {e}")
    for kwargs in all_kwargs:
        request.app[SIM_STATE].add_task(**kwargs)
    return web.json_response({"added": len(all_kwargs)}, status=201)


def _task_kwargs(spec: object) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise ValueError("each task must be a JSON object")
    kwargs: dict[str, Any] = {"service": str(spec["service"]), "task_id": str(spec["id"])}
    if spec.get("script", "succeed") not in SCRIPTS:
        raise ValueError(f"unknown script {spec['script']!r}; use one of {sorted(SCRIPTS)}")
    for key in ("script", "run_s", "clip_gap_s"):
        if key in spec:
            kwargs[key] = spec[key] if key == "script" else float(spec[key])
    if spec.get("callback_url") is not None:
        kwargs["callback_url"] = str(spec["callback_url"])
    return kwargs


async def fail_handler(request: web.Request) -> web.Response:
    """``POST /_sim/fail``: fail the next ``count`` requests with ``status``."""
    body = await _read_body(request)
    if not isinstance(body, dict):
        return _error(400, "bad_request", "the body must be a JSON object")
    try:
        count, status = int(body["count"]), int(body["status"])
        retry_after = body.get("retry_after_s")
        retry_after_s = None if retry_after is None else float(retry_after)
    except (TypeError, ValueError, KeyError) as e:
        return _error(400, "bad_request", f"bad fail spec: {e!r}")
    request.app[SIM_STATE].fail_next(count, status, retry_after_s)
    return web.json_response({"queued": count})


async def log_handler(request: web.Request) -> web.Response:
    """``GET /_sim/log``: every Tasks API request so far."""
    return web.json_response([asdict(entry) for entry in request.app[SIM_STATE].log])


def create_app(**knobs: Any) -> web.Application:
    """Build the simulator app; its `SimState` is at ``app[SIM_STATE]``.

    Args:
        **knobs: the fields of `SimConfig` (``clock=None`` means ``time.time``).
    """
    if knobs.get("clock") is None:
        knobs.pop("clock", None)
    app = web.Application()
    app[SIM_STATE] = state = SimState(SimConfig(**knobs))
    app.cleanup_ctx.append(state.callbacks.running)
    app.router.add_post("/_sim/tasks", add_tasks_handler)
    app.router.add_post("/_sim/fail", fail_handler)
    app.router.add_get("/_sim/log", log_handler)
    app.router.add_post("/{service}/tasks", tasks_handler)
    return app


async def run_sim(host: str, port: int, **knobs: Any) -> None:
    """Serve the simulator on ``host:port`` until cancelled.

    Args:
        host: Interface to bind.
        port: Port to bind; 0 picks a free one (the logged URL shows it).
        **knobs: Keyword arguments of `create_app`.
    """
    runner = web.AppRunner(create_app(**knobs), access_log=None)
    await runner.setup()
    try:
        await listen(runner, host, port, "acetrack sim --port", "acetrack sim --host")
        bound_host, bound_port = runner.addresses[0][:2]
        logger.info("sim listening on http://%s:%s", bound_host, bound_port)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
