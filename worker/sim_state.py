"""The simulator's state: its knobs (``SimConfig``), tasks, queued failures, rate limiter and request log."""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.sim_callbacks import CallbackSender
from worker.sim_tasks import SCRIPTS, SimTask, auto_run_s, auto_script, build_record

Json = dict[str, Any]

#: Statuses picked by random error injection.
INJECTED_STATUSES = (500, 503, 429)


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


@dataclass(frozen=True)
class SimConfig:
    """The simulator's knobs (`create_app` takes them as keyword arguments)."""

    #: token refill per second per bearer token; None disables the limit
    rate_limit_rps: float | None = 60.0
    #: bucket capacity; None: ``ceil(rate_limit_rps)``
    burst: int | None = None
    #: delay added before answering each Tasks API request
    latency_s: float = 0.0
    #: probability of answering 500, 503 or 429 at random
    error_rate: float = 0.0
    #: create never-seen ids on first sight with a script chosen from the id
    auto: bool = True
    #: range of run times of auto-created tasks
    auto_run_s: tuple[float, float] = (2.0, 8.0)
    #: most ids a ``retrieve_batch`` accepts (413 above it); None for no limit
    max_batch: int | None = None
    #: accepted bearer tokens; None accepts any non-empty one
    tokens: frozenset[str] | None = None
    #: services with a Tasks API; others answer 404 ``no_api``
    services: frozenset[str] = frozenset({"suno", "producer"})
    #: services whose batch answer counts with ``total`` instead of ``count``
    total_services: frozenset[str] = frozenset()
    #: seed of the RNG used for shuffling and error injection
    seed: int | None = None
    #: epoch seconds for task lifecycles
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
    #: where a finished task's callback goes when the task has no ``callback_url`` of its own
    callback_url: str | None = None
    #: share of callbacks lost (never sent), and how late each sent one is (a uniform range, s)
    callback_loss: float = 0.0
    callback_delay_s: tuple[float, float] = (0.0, 0.0)


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
        c = self.config
        rng = random.Random(None if c.seed is None else f"callbacks:{c.seed}")
        self.callbacks = CallbackSender(c.callback_url, c.callback_loss, c.callback_delay_s, c.clock, rng)

    def __repr__(self) -> str:
        return f"SimState(tasks={len(self.tasks)}, requests={len(self.log)}, failures={len(self._failures)})"

    def add_task(
        self,
        service: str,
        task_id: str,
        script: str = "succeed",
        run_s: float = 3.0,
        clip_gap_s: float = 1.0,
        callback_url: str | None = None,
    ) -> None:
        """Create (or replace) a task, starting now on the simulator's clock.

        Args:
            service: The service path segment, e.g. ``suno``.
            task_id: The upstream task id.
            script: One of `SCRIPTS`.
            run_s: Seconds until the (first) clip is final.
            clip_gap_s: Seconds between the first and the second Suno clip becoming final.
            callback_url: Where its callback goes when it finishes (else the ``callback_url`` knob).
        """
        if script not in SCRIPTS:
            raise ValueError(f"unknown sim script {script!r}; use one of {sorted(SCRIPTS)}")
        task = SimTask(service, task_id, script, run_s, clip_gap_s, self.config.clock())
        self.tasks[(service, task_id)] = task
        self.callbacks.schedule(task, callback_url)

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
