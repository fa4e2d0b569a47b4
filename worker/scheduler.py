"""The worker's long-running loops, run and stopped together (``Scheduler``).

Engine-neutral: jobs are handed to a ``JobQueue`` (arq behind it, see ``jobs``). One class per
loop: claims (``claim_loop``), intake, the wake channel, the outbox and upkeep (``loops``). The
loops wait for work rather than poll for it, since every look is a Redis round trip and a wake-up:
the claim loop sleeps until the soonest known due time, the outbox loop until its soonest delivery
(this worker's polls wake it), intake blocks on the stream. ``CLAIM_IDLE_S`` and ``OUTBOX_IDLE_S``
bound only how long work written elsewhere (a due time another worker set before it died, a
replay) waits to be seen. Each loop survives a bad round and stops on ``stop()``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Collection

from redis.exceptions import NoPermissionError

from worker.claim_loop import CLAIM_IDLE_S, Cadence, ClaimLoop, JobQueue, QueuePlan
from worker.clock import Clock
from worker.connect import FULL_LOG, REDIS_DOWN, REFUSED_LOG, is_full, permission_hint
from worker.loops import HEARTBEAT_S, IntakeLoop, OutboxLoop, StopGuard, UpkeepLoop, WakeLoop
from worker.store import Store

__all__ = ["CLAIM_IDLE_S", "HEARTBEAT_S", "Cadence", "JobQueue", "QueuePlan", "Scheduler"]

logger = logging.getLogger(__name__)

MAX_OUTAGE_SLEEP_S = 5.0


class Outage:
    """One line when Redis goes away and one when it is back, however many loops notice."""

    def __init__(self) -> None:
        self.since_s: float | None = None

    def down(self, name: str, error: BaseException, retry_s: float) -> None:
        """A loop found Redis unavailable; only the first since it was last up says so."""
        if self.since_s is None:
            self.since_s = time.monotonic()
            logger.warning("redis unavailable (%s, in the %s loop); retrying every %.1fs at most", error, name, retry_s)

    def up(self) -> None:
        """A loop's round went through."""
        if self.since_s is not None:
            logger.info("redis is back after %.1fs", time.monotonic() - self.since_s)
            self.since_s = None


class Scheduler:
    """Runs the loops of one worker until ``stop()``.

    Args:
        store: the Redis store.
        queue: where claimed batches and deliveries go.
        clock: epoch-ms clock.
        cadence: batch, lease and rate settings.
        services: allow-list of services for intake (empty: any valid name).
        tokens: configured token names (intake rejects others).
        allow_hosts: callback hosts allowed despite resolving to private addresses.
        heartbeat_info: what else the heartbeat says (the poller's paused tokens).
    """

    def __init__(
        self,
        store: Store,
        queue: JobQueue,
        clock: Clock,
        cadence: Cadence,
        *,
        services: Collection[str] = (),
        tokens: Collection[str] = ("default",),
        allow_hosts: Collection[str] = (),
        heartbeat_info: Callable[[], dict[str, object]] = dict,
        worker_id: str | None = None,
    ) -> None:
        self.store = store
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stopping = asyncio.Event()
        self._wakers: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._guard = StopGuard()
        self._outage = Outage()
        self.claims = ClaimLoop(
            store,
            queue,
            clock,
            cadence,
            worker_id=self.worker_id,
            wake=lambda: self.nudge("claims"),
            stopping=self.stopping,
        )
        self.intake = IntakeLoop(
            store, clock, cadence, self.claims, self._guard, services=services, tokens=tokens, allow_hosts=allow_hosts
        )
        self.wakes = WakeLoop(store, self.claims, self._guard)
        self.outbox = OutboxLoop(store, queue, clock, cadence.lease_ms)
        self.upkeep = UpkeepLoop(store, clock, self.intake, lambda: {**self.counters, **heartbeat_info()})

    def __repr__(self) -> str:
        return f"Scheduler({self.worker_id!r}, {self.counters})"

    @property
    def counters(self) -> dict[str, int]:
        """Claims made and intake entries accepted and rejected by this worker."""
        return {"claims": self.claims.claims, "accepted": self.intake.accepted, "rejected": self.intake.rejected}

    @property
    def running(self) -> bool:
        """True while any loop runs."""
        return bool(self._tasks)

    async def start(self) -> None:
        """Start every loop in the background."""
        await self.store.ensure_intake_group()
        steps: dict[str, Callable[[], Awaitable[float]]] = {
            "intake": self.intake.step,
            "wakes": self.wakes.step,
            "claims": self.claims.step,
            "outbox": self.outbox.step,
            "upkeep": self.upkeep.step,
        }
        for name, step in steps.items():
            self._wakers[name] = asyncio.Event()
            task = asyncio.create_task(self._run(name, step), name=f"acetrack-{name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def begin_stop(self) -> None:
        """Ask every loop to stop, and claim nothing more: called before running polls are cancelled,
        since the ids they give back are announced, and this worker must not claim them again."""
        self.stopping.set()
        for waker in self._wakers.values():
            waker.set()
        self._guard.cancel_all()

    async def stop(self) -> None:
        """Ask every loop to stop, wait for them, and take this worker's heartbeat down (a stopped
        worker is not counted live until its heartbeat expires)."""
        self.begin_stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.store.forget_worker(self.worker_id)
        except REDIS_DOWN:
            pass  # it expires by itself within three heartbeats

    def nudge(self, name: str) -> None:
        """Cut the current sleep of one loop (``"outbox"``, ``"claims"``) short."""
        waker = self._wakers.get(name)
        if waker is not None:
            waker.set()

    def expect(self, service: str, token: str, due_ms: int) -> None:
        """A task of this queue falls due at ``due_ms`` (``ClaimLoop.expect``)."""
        self.claims.expect(service, token, due_ms)

    async def _run(self, name: str, step: Callable[[], Awaitable[float]]) -> None:
        outage_s = 0.0
        while not self.stopping.is_set():
            try:
                sleep_s = await step()
                self._outage.up()
                outage_s = 0.0
            except REDIS_DOWN as e:
                # an outage is expected to end: back off up to MAX_OUTAGE_SLEEP_S, one line for all loops
                outage_s = sleep_s = min(MAX_OUTAGE_SLEEP_S, max(0.5, outage_s * 2))
                self._outage.down(name, e, MAX_OUTAGE_SLEEP_S)
            except Exception as e:
                sleep_s = outage_s = self._failed(name, e, outage_s)
            await self._sleep(name, sleep_s)

    @staticmethod
    def _failed(name: str, error: Exception, outage_s: float) -> float:
        """Log a round that failed for another reason; returns how long to wait before the next."""
        if is_full(error):
            # nothing was written: the work stays where it was (intake entries unacknowledged)
            FULL_LOG.note(f"{name} loop", error, time.monotonic())
            return min(MAX_OUTAGE_SLEEP_S, max(0.5, outage_s * 2))
        if isinstance(error, NoPermissionError):  # an ACL without a grant: no traceback a second
            REFUSED_LOG.warn(f"{name} loop: {permission_hint(error)}", time.monotonic())
            return MAX_OUTAGE_SLEEP_S
        logger.exception("%s loop iteration failed; retrying", name)
        return 1.0

    async def _sleep(self, name: str, sleep_s: float) -> None:
        waker = self._wakers.setdefault(name, asyncio.Event())
        if sleep_s > 0 and not waker.is_set():
            try:
                await asyncio.wait_for(waker.wait(), timeout=sleep_s)
            except TimeoutError:
                pass
        waker.clear()
