"""The worker's other loops, one class each: intake, the wake channel, the outbox, upkeep.

Each has one ``step`` that does one round and returns how long to sleep before the next; the
scheduler (``scheduler.Scheduler``) runs them, survives a bad round, and stops them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any

from worker import metrics
from worker.cadence import first_poll_ms
from worker.claim_loop import Cadence, ClaimLoop, JobQueue
from worker.clock import Clock
from worker.connect import REDIS_DOWN
from worker.errors import InvalidInput
from worker.intake import build_request
from worker.redis_policy import eviction_problem
from worker.store import Store
from worker.webhooks import screen

logger = logging.getLogger(__name__)

#: longest sleep of the outbox loop when nothing is known to fall due sooner; this worker's own
#: polls wake it at once (``nudge``), so this bounds only a delivery queued by another process
#: (a replay from the HTTP API or the CLI)
OUTBOX_IDLE_S = 5.0
#: intake blocks this long on an empty stream (a new entry ends the wait at once; ``stop`` too)
INTAKE_BLOCK_MS = 5000
#: wait before subscribing again to the wake channel once a subscription broke
RESUBSCRIBE_S = 0.5
HEARTBEAT_S = 5.0
INTAKE_BATCH = 500
OUTBOX_BATCH = 200


class StopGuard:
    """Lets ``stop`` cancel a loop while it waits on Redis (a blocked read would hold it up)."""

    def __init__(self) -> None:
        self._waiting: set[asyncio.Task[Any]] = set()

    @asynccontextmanager
    async def waiting(self) -> AsyncIterator[None]:
        """``cancel_all`` cancels the calling task while it is inside (a wait on Redis, nothing half
        done). Entered with no wait since the loop's look at ``stopping``, so a stop is never missed."""
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            yield
        finally:
            self._waiting.discard(task)

    def cancel_all(self) -> None:
        """Cancel every task waiting inside ``waiting``."""
        for task in self._waiting:
            task.cancel()


class IntakeLoop:
    """Registers the intake stream's new entries, and takes over those of dead workers."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        cadence: Cadence,
        claims: ClaimLoop,
        guard: StopGuard,
        *,
        services: Collection[str] = (),
        tokens: Collection[str] = ("default",),
        allow_hosts: Collection[str] = (),
    ) -> None:
        self.store, self.clock, self.cadence, self.claims, self.guard = store, clock, cadence, claims, guard
        self.services, self.tokens, self.allow_hosts = services, tokens, allow_hosts
        self.accepted = self.rejected = 0

    async def step(self) -> float:
        """Drain new intake entries (blocking briefly when there are none)."""
        async with self.guard.waiting():
            # an entry the read took as ``stop`` cancelled it stays pending: reclaimed after the lease
            entries = await self.store.read_intake(self.claims.worker_id, INTAKE_BATCH, block_ms=INTAKE_BLOCK_MS)
        for entry_id, fields in entries:
            await self.accept(entry_id, fields)
        return 0.0

    async def reclaim(self) -> None:
        """Take over entries a dead worker read but never acknowledged."""
        worker_id, lease_ms = self.claims.worker_id, self.cadence.lease_ms
        for entry_id, fields in await self.store.reclaim_intake(worker_id, INTAKE_BATCH, min_idle_ms=lease_ms):
            await self.accept(entry_id, fields)

    async def accept(self, entry_id: str, fields: dict[str, str]) -> None:
        """Register one intake entry, or move it to the rejected stream with the reason."""
        now_ms = self.clock()
        try:
            req = build_request(fields, services=self.services, tokens=self.tokens)
            if req.callback_url:
                await screen(req.callback_url, self.allow_hosts)
        except InvalidInput as e:
            await self.store.reject_intake(entry_id, fields, e.message, now_ms)
            self.rejected += 1
            metrics.INTAKE.labels("rejected").inc()
            logger.warning("intake entry %s rejected: %s", entry_id, e.message)
            return
        first_due_ms = first_poll_ms(now_ms, self.cadence.first_poll_s)
        created, _ = await self.store.register(
            req, now_ms, deadline_s=self.cadence.deadline_s, first_due_ms=first_due_ms, intake_entry=entry_id
        )
        if created:  # a ceded queue's claims say when it falls due to the worker that claims them
            self.claims.plan(req.service, req.token, first_due_ms)
        self.accepted += 1
        metrics.INTAKE.labels("accepted").inc()


class WakeLoop:
    """Follows the wake channel: a task another process registered due sooner than every other of
    its queue (or the first of a new queue) wakes the claim loop by its due time."""

    def __init__(self, store: Store, claims: ClaimLoop, guard: StopGuard) -> None:
        self.store, self.claims, self.guard = store, claims, guard

    async def step(self) -> float:
        """Returns only when a subscription that was made breaks (the loop subscribes again after
        ``RESUBSCRIBE_S``; one that cannot be made is an outage, with the runner's back-off)."""
        async with self.guard.waiting(), self.store.wakes() as wakes:
            self.claims.subscribed = True
            try:
                # what was registered before the subscription is not announced: look now
                self.claims.look_at_every_queue()
                async for service, token, due_ms in wakes:
                    # due sooner than any task its queue had: no worker planned for it, not even
                    # the one this worker ceded the queue to (it may be the one that released it)
                    self.claims.expect(service, token, due_ms)
            except REDIS_DOWN as e:
                logger.warning("wake channel lost (%s); subscribing again in %.1fs", e, RESUBSCRIBE_S)
            finally:
                self.claims.subscribed = False
        return RESUBSCRIBE_S


class OutboxLoop:
    """Hands due deliveries to the job queue. They stay in the outbox, leased, until a try ends: a
    worker that dies mid-try loses nothing, the delivery is handed over again after the lease."""

    def __init__(self, store: Store, queue: JobQueue, clock: Clock, lease_ms: int) -> None:
        self.store, self.queue, self.clock, self.lease_ms = store, queue, clock, lease_ms

    async def step(self) -> float:
        """Hand over what is due; sleep until the next delivery falls due (at most ``OUTBOX_IDLE_S``)."""
        now_ms = self.clock()
        taken, next_due_ms = await self.store.take_outbox(now_ms, OUTBOX_BATCH, lease_ms=self.lease_ms)
        for delivery_id, due_ms in taken:  # the job runs only while the outbox still holds this lease
            await self.queue.deliver(delivery_id, due_ms, now_ms + self.lease_ms)
        if len(taken) == OUTBOX_BATCH:
            return 0.0
        wait_ms = OUTBOX_IDLE_S * 1000 if next_due_ms is None else min(OUTBOX_IDLE_S * 1000, next_due_ms - now_ms)
        return max(wait_ms, 1) / 1000


class UpkeepLoop:
    """The heartbeat (what this worker does, and Redis's eviction policy), and the intake entries
    of dead workers. Pruning is arq's cron job."""

    def __init__(self, store: Store, clock: Clock, intake: IntakeLoop, info: Callable[[], dict[str, object]]) -> None:
        self.store, self.clock, self.intake, self.info = store, clock, intake, info
        #: the eviction warning this worker last gave (None: Redis will not evict)
        self.eviction: str | None = None

    async def step(self) -> float:
        """Beat, look at the eviction policy, reclaim; then sleep ``HEARTBEAT_S``."""
        await self._check_eviction()
        worker_id = self.intake.claims.worker_id
        info = {"worker_id": worker_id, "at_ms": self.clock(), **self.info()}
        info["warnings"] = [self.eviction] if self.eviction else []
        await self.store.heartbeat(worker_id, info, ttl_ms=int(HEARTBEAT_S * 3000))
        await self.intake.reclaim()
        return HEARTBEAT_S

    async def _check_eviction(self) -> None:
        """Read Redis's eviction policy: a line when a warning appears, changes or goes away."""
        problem = await eviction_problem(self.store.redis)
        if problem != self.eviction:
            if problem:
                logger.warning("%s", problem)
            else:
                logger.info("Redis's maxmemory-policy is noeviction now: nothing of acetrack's will be evicted")
            self.eviction = problem
