"""A simulator of the Ace Data Cloud Tasks API (``POST /{service}/tasks``), for the demo, tests and compose.

It imports nothing from the ``worker`` package on purpose: every response is built from literal dict
shapes that mirror the vendor's published examples, so it checks the tracker's contract independently.

Scripts (a task's lifecycle): ``succeed``, ``partial`` (Suno: the second clip fails), ``error`` (the task
fails), ``legacy`` (done records look like the old Suno example: no states, no ``finished_at``),
``stuck`` (never finishes) and ``unknown`` (never found). Services other than ``producer`` use the
Suno shape. Control routes: ``POST /_sim/tasks``, ``POST /_sim/fail``, ``GET /_sim/log``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)

Json = dict[str, Any]

#: Every lifecycle script the simulator knows.
SCRIPTS = frozenset({"succeed", "partial", "error", "legacy", "stuck", "unknown"})
#: Scripts chosen for auto-created tasks, with their weights out of 100.
AUTO_WEIGHTS = (("succeed", 70), ("partial", 10), ("error", 10), ("legacy", 10))
#: A task is ``pending`` for this fraction of its ``run_s``, then running.
PENDING_FRACTION = 0.25
#: Page size of ``retrieve_batch`` when the caller sends no ``limit``.
DEFAULT_BATCH_LIMIT = 10
#: Statuses picked by random error injection.
INJECTED_STATUSES = (500, 503, 429)

_USER_ID = "ad7afe47-cea9-4cda-980f-2ad8810e51cf"
_API_IDS = {"suno": "09a26295-5972-4392-9318-dcd9b218f90d", "producer": "01d96900-9f8c-41d7-814c-95c7a885ba61"}
_TITLES = ("Holiday Wishes", "La La La", "Woke up with the sun in my eyes")
_PROMPTS = ("A song for Christmas", "la la la", "a happy pop song about sunny days")
_ERROR_CODES = {
    400: "bad_request",
    401: "invalid_token",
    403: "forbidden",
    404: "no_api",
    413: "payload_too_large",
    429: "too_many_requests",
}


def _digest(*parts: str) -> bytes:
    return hashlib.sha256(":".join(parts).encode()).digest()


def _uuid(*parts: str) -> str:
    return str(uuid.UUID(bytes=_digest(*parts)[:16], version=4))


def _pick(options: tuple[str, ...], *parts: str) -> str:
    return options[_digest(*parts)[0] % len(options)]


def auto_script(task_id: str) -> str:
    """Choose the script of an auto-created task deterministically from its id.

    Args:
        task_id: The upstream task id.
    """
    bucket = int.from_bytes(_digest("script", task_id)[:4], "big") % 100
    for script, weight in AUTO_WEIGHTS:
        if bucket < weight:
            return script
        bucket -= weight
    return "succeed"


def auto_run_s(task_id: str, low_s: float, high_s: float) -> float:
    """Choose the run time of an auto-created task, uniform in ``[low_s, high_s]``, from its id."""
    fraction = int.from_bytes(_digest("run", task_id)[:4], "big") / 0xFFFFFFFF
    return low_s + (high_s - low_s) * fraction


@dataclass
class RequestLog:
    """One request to the Tasks API as the simulator answered it.

    Attributes:
        at_s: Arrival time on the event loop's monotonic clock (``loop.time()``).
        service: The service path segment.
        token: The bearer token sent (empty if none).
        action: The body's ``action`` (empty if unreadable).
        ids: The ids asked for (``id`` or ``ids``).
        status: The HTTP status answered.
    """

    at_s: float
    service: str
    token: str
    action: str
    ids: list[str]
    status: int


@dataclass
class SimTask:
    """A simulated upstream task; its record is computed from the clock on every read."""

    service: str
    id: str
    script: str
    run_s: float
    clip_gap_s: float
    created_at: float

    @property
    def producer(self) -> bool:
        """Whether records use the Producer shape (one clip, progress, no ``success``)."""
        return self.service == "producer"

    @property
    def clip_count(self) -> int:
        """How many clips the task yields."""
        return 1 if self.producer else 2

    def clip_finish_s(self, index: int) -> float:
        """Seconds after creation at which clip ``index`` is final."""
        if self.script == "stuck":
            return math.inf
        return self.run_s + index * self.clip_gap_s


@dataclass(frozen=True)
class SimConfig:
    """The simulator's knobs (see `create_app`)."""

    rate_limit_rps: float | None = 60.0
    burst: int | None = None
    latency_s: float = 0.0
    error_rate: float = 0.0
    auto: bool = True
    auto_run_s: tuple[float, float] = (2.0, 8.0)
    max_batch: int | None = None
    tokens: frozenset[str] | None = None
    services: frozenset[str] = frozenset({"suno", "producer"})
    total_services: frozenset[str] = frozenset()
    seed: int | None = None
    clock: Callable[[], float] = time.time
    #: chaos: share of 200 answers sent as truncated or non-JSON bodies
    garble_rate: float = 0.0
    #: chaos: share of requests that hang for ``hang_s`` before answering
    hang_rate: float = 0.0
    hang_s: float = 60.0
    #: chaos: share of known items left out of a batch answer, and share sent twice
    drop_rate: float = 0.0
    dup_rate: float = 0.0
    #: chaos: add fields the client has never heard of to every record
    extra_fields: bool = False


class TokenBucket:
    """A token bucket per key on a monotonic clock.

    Args:
        rate_per_s: Refill rate in tokens per second.
        capacity: Bucket size (the burst).
    """

    def __init__(self, rate_per_s: float, capacity: int) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (level, updated at)

    def take(self, key: str, now_s: float) -> float:
        """Take one token for ``key``; return 0 if granted, else the seconds until one is available."""
        level, at_s = self._buckets.get(key, (float(self.capacity), now_s))
        level = min(self.capacity, level + (now_s - at_s) * self.rate_per_s)
        granted = level >= 1.0
        self._buckets[key] = (level - 1.0 if granted else level, now_s)
        return 0.0 if granted else (1.0 - level) / self.rate_per_s


class SimState:
    """Mutable state of one simulator: tasks, queued failures, rate limiter and the request log.

    Args:
        config: The knobs; defaults when omitted.
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.log: list[RequestLog] = []
        self.tasks: dict[tuple[str, str], SimTask] = {}
        self.rng = random.Random(self.config.seed)
        self._failures: deque[tuple[int, float | None]] = deque()
        rps = self.config.rate_limit_rps
        burst = self.config.burst if self.config.burst is not None else math.ceil(rps or 1)
        self.limiter = TokenBucket(rps, burst) if rps else None

    def __repr__(self) -> str:
        return f"SimState(tasks={len(self.tasks)}, requests={len(self.log)}, failures={len(self._failures)})"

    def add_task(
        self, service: str, task_id: str, script: str = "succeed", run_s: float = 3.0, clip_gap_s: float = 1.0
    ) -> None:
        """Create (or replace) a task, starting now on the simulator's clock.

        Args:
            service: The service path segment, e.g. ``suno``.
            task_id: The upstream task id.
            script: One of `SCRIPTS`.
            run_s: Seconds until the (first) clip is final.
            clip_gap_s: Seconds between the first and the second Suno clip becoming final.
        """
        if script not in SCRIPTS:
            raise ValueError(f"unknown sim script {script!r}; use one of {sorted(SCRIPTS)}")
        created_at = self.config.clock()
        self.tasks[(service, task_id)] = SimTask(service, task_id, script, run_s, clip_gap_s, created_at)

    def fail_next(self, count: int, status: int, retry_after_s: float | None = None) -> None:
        """Answer the next ``count`` Tasks API requests with ``status`` (and a ``Retry-After`` if given)."""
        self._failures.extend([(status, retry_after_s)] * count)

    def next_failure(self) -> tuple[int, float | None] | None:
        """The forced or randomly injected failure for this request, if any."""
        if self._failures:
            return self._failures.popleft()
        if self.config.error_rate > 0 and self.rng.random() < self.config.error_rate:
            status = self.rng.choice(INJECTED_STATUSES)
            return status, 1.0 if status == 429 else None
        return None

    def lookup(self, service: str, task_id: str) -> SimTask | None:
        """The task as the upstream sees it; with ``auto``, an unseen id is created on first sight."""
        task = self.tasks.get((service, task_id))
        if task is None and self.config.auto:
            low_s, high_s = self.config.auto_run_s
            self.add_task(service, task_id, auto_script(task_id), auto_run_s(task_id, low_s, high_s))
            task = self.tasks[(service, task_id)]
        if task is None or task.script == "unknown":
            return None
        return task

    def record(self, task: SimTask) -> Json:
        """The task's upstream record at the current clock time."""
        return build_record(task, self.config.clock())


SIM_STATE: web.AppKey[SimState] = web.AppKey("sim_state", SimState)


# --- records -------------------------------------------------------------------------------------


def build_record(task: SimTask, now_s: float) -> Json:
    """Build the Tasks API record of ``task`` as it stands at ``now_s`` (epoch seconds).

    Args:
        task: The simulated task.
        now_s: The current time in epoch seconds.
    """
    t = now_s - task.created_at
    record = _base_record(task)
    if task.script == "error" and t >= task.run_s:
        error = {"code": "generation_failed", "message": "the generation failed upstream; try again"}
        record["response"] = {"success": False, "task_id": task.id, "error": error, "data": []}
        return _finish(record, task, task.run_s)
    response: Json = {"task_id": task.id, "data": [_clip(task, i, t) for i in range(task.clip_count)]}
    record["response"] = response if task.producer else {"success": True, **response}
    elapsed = task.clip_finish_s(task.clip_count - 1)
    if t >= elapsed and task.script != "legacy":
        return _finish(record, task, elapsed)
    return record


def _base_record(task: SimTask) -> Json:
    record: Json = {
        "_id": hashlib.sha256(f"{task.service}:{task.id}".encode()).hexdigest()[:24],
        "id": task.id,
        "api_id": _API_IDS.get(task.service) or _uuid("api", task.service),
        "application_id": _uuid("application", task.service),
        "created_at": round(task.created_at, 3),
        "credential_id": _uuid("credential", task.service),
        "request": {"action": "generate", "prompt": _pick(_PROMPTS, "prompt", task.id)},
        "trace_id": _uuid("trace", task.service, task.id),
        "user_id": _USER_ID,
    }
    if task.producer:
        record["type"] = "audios"
        record["request"]["model"] = "FUZZ-2.0 Pro"
    return record


def _finish(record: Json, task: SimTask, elapsed_s: float) -> Json:
    record["duration"] = float(elapsed_s)
    record["finished_at"] = round(task.created_at + elapsed_s, 3)
    return record


def _clip(task: SimTask, index: int, t: float) -> Json:
    clip_id = _uuid("clip", task.service, task.id, str(index))
    if t < PENDING_FRACTION * task.run_s:
        phase = "pending"
    elif t < task.clip_finish_s(index):
        phase = "running"
    else:
        phase = "done"
    if task.producer:
        return _producer_clip(task, clip_id, phase, t)
    return _suno_clip(task, clip_id, index, phase, t)


def _suno_clip(task: SimTask, clip_id: str, index: int, phase: str, t: float) -> Json:
    title = _pick(_TITLES, "title", task.id)
    if phase == "done" and task.script == "partial" and index == 1:
        return {"id": clip_id, "title": title, "state": "error", "error": "clip generation failed"}
    if phase == "done":
        clip = _suno_final(task, clip_id, title)
        return clip if task.script == "legacy" else {**clip, "state": "succeeded"}
    if task.script == "legacy":
        return {"id": clip_id, "title": title, "model": "chirp-v3.5"}
    if phase == "pending":
        return {"id": clip_id, "title": "", "state": "pending"}
    return {
        "id": clip_id,
        "title": title,
        "image_url": f"https://cdn2.suno.ai/image_{clip_id}.jpeg",
        "audio_url": f"https://audiopipe.suno.ai/?item_id={clip_id}",
        "state": "streaming" if t >= task.run_s / 2 else "running",
    }


def _suno_final(task: SimTask, clip_id: str, title: str) -> Json:
    created = datetime.fromtimestamp(task.created_at, UTC).isoformat(timespec="milliseconds")
    return {
        "id": clip_id,
        "title": title,
        "image_url": f"https://cdn2.suno.ai/image_{clip_id}.jpeg",
        "lyric": "[Verse]\nSnow is falling soft and white\nLights are twinkling oh so bright",
        "audio_url": f"https://cdn1.suno.ai/{clip_id}.mp3",
        "video_url": f"https://cdn1.suno.ai/{clip_id}.mp4",
        "created_at": created.replace("+00:00", "Z"),
        "model": "chirp-v3.5",
        "prompt": _pick(_PROMPTS, "prompt", task.id),
        "style": "pop",
        "duration": 120 + int.from_bytes(_digest("duration", clip_id)[:4], "big") % 6000 / 100,
    }


def _producer_clip(task: SimTask, clip_id: str, phase: str, t: float) -> Json:
    title = _pick(_TITLES, "title", task.id)
    if phase == "done":
        clip = _producer_final(task, clip_id, title)
        if task.script == "legacy":
            del clip["progress"], clip["state"]
        return clip
    if task.script == "legacy":
        return {"id": clip_id, "title": title}
    if phase == "pending":
        return {"id": clip_id, "title": "", "state": "pending", "progress": "0%"}
    percent = min(99, max(1, int(100 * t / task.run_s)))
    return {"id": clip_id, "title": title, "state": "running", "progress": f"{percent}%"}


def _producer_final(task: SimTask, clip_id: str, title: str) -> Json:
    base = f"https://storage.googleapis.com/corpusant-app-public/riffs/{_uuid('riff', task.id)}"
    seconds = 90 + int.from_bytes(_digest("duration", clip_id)[:6], "big") / 2**48 * 120
    return {
        "id": clip_id,
        "title": title,
        "image_url": f"{base}/image/{clip_id}.jpg",
        "lyric": "[Verse]\nWoke up with the sun in my eyes\nNo clouds above just blue in the skies",
        "audio_url": f"{base}/audio/{clip_id}.m4a",
        "video_url": None,
        "image_id": clip_id,
        "topic": None,
        "seed": str(int.from_bytes(_digest("seed", clip_id)[:4], "big")),
        "sound": "",
        "created_at": datetime.fromtimestamp(task.created_at, UTC).isoformat().replace("+00:00", "Z"),
        "model": "FUZZ-2.0 Pro",
        "progress": "100%",
        "state": "succeeded",
        "duration": str(seconds),
    }


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


def create_app(
    *,
    rate_limit_rps: float | None = 60.0,
    burst: int | None = None,
    latency_s: float = 0.0,
    error_rate: float = 0.0,
    auto: bool = True,
    auto_run_s: tuple[float, float] = (2.0, 8.0),
    max_batch: int | None = None,
    tokens: frozenset[str] | None = None,
    services: frozenset[str] = frozenset({"suno", "producer"}),
    total_services: frozenset[str] = frozenset(),
    seed: int | None = None,
    clock: Callable[[], float] | None = None,
    garble_rate: float = 0.0,
    hang_rate: float = 0.0,
    hang_s: float = 60.0,
    drop_rate: float = 0.0,
    dup_rate: float = 0.0,
    extra_fields: bool = False,
) -> web.Application:
    """Build the simulator app; its `SimState` is at ``app[SIM_STATE]``.

    Args:
        rate_limit_rps: Token refill per second per bearer token; ``None`` disables the limit.
        burst: Bucket capacity; defaults to ``ceil(rate_limit_rps)``.
        latency_s: Delay added before answering each Tasks API request.
        error_rate: Probability of answering 500, 503 or 429 at random.
        auto: Create never-seen ids on first sight with a script chosen from the id.
        auto_run_s: Range of run times of auto-created tasks.
        max_batch: Most ids a ``retrieve_batch`` accepts (413 above it); ``None`` for no limit.
        tokens: Accepted bearer tokens; ``None`` accepts any non-empty one.
        services: Services with a Tasks API; others answer 404 ``no_api``.
        total_services: Services whose batch answer counts with ``total`` instead of ``count``.
        seed: Seed of the RNG used for shuffling and error injection.
        clock: Epoch seconds for task lifecycles; defaults to ``time.time``.
        garble_rate: Share of 200 answers sent truncated or as non-JSON (chaos).
        hang_rate: Share of requests that hang ``hang_s`` before answering (chaos).
        hang_s: How long a hanging request hangs.
        drop_rate: Share of known items left out of batch answers (chaos).
        dup_rate: Share of items sent twice in batch answers (chaos).
        extra_fields: Add unknown fields to every record (chaos).
    """
    config = SimConfig(
        rate_limit_rps=rate_limit_rps,
        burst=burst,
        latency_s=latency_s,
        error_rate=error_rate,
        auto=auto,
        auto_run_s=auto_run_s,
        max_batch=max_batch,
        tokens=tokens,
        services=services,
        total_services=total_services,
        seed=seed,
        clock=clock or time.time,
        garble_rate=garble_rate,
        hang_rate=hang_rate,
        hang_s=hang_s,
        drop_rate=drop_rate,
        dup_rate=dup_rate,
        extra_fields=extra_fields,
    )
    app = web.Application()
    app[SIM_STATE] = SimState(config)
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
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        logger.info("sim listening on http://%s:%s", bound_host, bound_port)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
