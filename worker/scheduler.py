"""The worker's long-running loops: intake drain, claims, outbox dispatch and upkeep.

Engine-neutral: jobs are handed to a ``JobQueue`` (arq behind it, see ``jobs``). Each loop
survives a bad iteration and stops on an ``asyncio.Event``. The loops wait for work rather than
poll for it, since every look is a Redis round trip and a wake-up: the claim loop sleeps exactly
until the soonest known due time, which this worker's own polls and registrations move earlier
(``expect``), and so does a registration by another process that no claim loop expects (the wake
channel, followed by the wakes loop); the outbox loop sleeps until its soonest delivery and is
woken by this worker's polls; intake blocks on the stream. Of several workers, only one wakes for
each due time of a queue: the others cede it (``QueuePlan.ceded``) and only look at it now and
then. ``CLAIM_IDLE_S`` and ``OUTBOX_IDLE_S`` bound only how long work written elsewhere (a due
time another worker set before it died, a replay) waits to be seen.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.exceptions import NoPermissionError

from worker import metrics
from worker.classify import first_poll_ms
from worker.clock import Clock
from worker.connect import FULL_LOG, REDIS_DOWN, REFUSED_LOG, is_full, permission_hint
from worker.errors import InvalidInput
from worker.intake import build_request
from worker.redis_policy import eviction_problem
from worker.store import Claimed, Store, Wait
from worker.webhooks import screen

logger = logging.getLogger(__name__)

#: longest sleep between claims of a queue when nothing is known to fall due sooner, while the wake
#: channel is followed (and how often a worker looks at a queue it ceded): every due time is then
#: known from a claim's answer, this worker's polls, or the channel, so this bounds only how late a
#: due time set by a worker that died is seen.
CLAIM_IDLE_S = 5.0
#: unsubscribed (Redis just came back), a task registered by another process (the HTTP API,
#: ``Tracker.enqueue``) is seen only by a look: workers then look every quarter of
#: ``ACETRACK_FIRST_POLL_S`` (``Cadence.claim_idle_ms``), between these, so it is seen before its
#: first poll falls due
CLAIM_UNSUBSCRIBED_IDLE_S = 1.0
CLAIM_MIN_IDLE_S = 0.1
#: a claim loop woken this close to its plan claims (a timer may fire a few ms early), and its
#: claim counts ids due this soon as due now (or it would find nothing and have to ask again)
CLAIM_SLACK_MS = 5
#: longest sleep of the outbox loop when nothing is known to fall due sooner; this worker's own
#: polls wake it at once (``nudge``), so this bounds only a delivery queued by another process
#: (a replay from the HTTP API or the CLI)
OUTBOX_IDLE_S = 5.0
#: intake blocks this long on an empty stream (a new entry ends the wait at once; ``stop`` too)
INTAKE_BLOCK_MS = 5000
#: how long the list of (service, token) queues is reused before it is read again; while the
#: wake channel is followed, a new queue's first task is announced on it, so the list is read
#: only as a safety net
QUEUES_TTL_S = 1.0
QUEUES_TTL_SUBSCRIBED_S = 30.0
#: wait before subscribing again to the wake channel once a subscription broke
RESUBSCRIBE_S = 0.5
HEARTBEAT_S = 5.0
MAX_OUTAGE_SLEEP_S = 5.0
INTAKE_BATCH = 500
OUTBOX_BATCH = 200


class JobQueue(Protocol):
    """Where the scheduler hands work; ``jobs`` implements it over arq."""

    async def poll(self, service: str, token: str, claimed: Claimed) -> None: ...

    async def deliver(self, delivery_id: str, due_ms: int, leased_until_ms: int) -> None: ...


@dataclass
class Cadence:
    """Scheduling numbers, in the units their names say."""

    batch_size: int = 50
    coalesce_ms: int = 1000
    lease_ms: int = 30_000
    rate_limit_rps: float = 50.0
    deadline_s: float = 1800.0
    first_poll_s: float = 3.0
    #: a claim tops up its batch with ids due soon, but not with one polled less than this ago
    min_repoll_ms: int = 0
    #: longest sleep of the claim loop while the wake channel is not followed (``idle_ms_for``)
    claim_idle_ms: int = int(CLAIM_UNSUBSCRIBED_IDLE_S * 1000)

    @staticmethod
    def idle_ms_for(first_poll_s: float) -> int:
        """The claim loop's longest sleep: a new task's first poll falls due at least half of
        ``first_poll_s`` after it is registered (``first_poll_ms``), so a quarter sees it in time;
        never under ``CLAIM_MIN_IDLE_S``, the most DESIGN.md §3 lets a due task wait."""
        return int(1000 * max(CLAIM_MIN_IDLE_S, min(CLAIM_UNSUBSCRIBED_IDLE_S, first_poll_s / 4)))


@dataclass(slots=True)
class QueuePlan:
    """When this worker claims one (service, token) queue next."""

    #: epoch ms of the next claim (0: at once)
    at_ms: int = 0
    #: ``at_ms`` is when an id falls due (a claim's answer, or an ``expect``), not just a look
    due: bool = False
    #: another worker claims this queue's due ids in time (a claim planned for one found it taken
    #: by that worker): this worker only looks at the queue every idle period, so two workers do
    #: not both wake for every due id and one find nothing; until a claim takes something (that
    #: worker fell behind, or died) or a task is announced on the wake channel
    ceded: bool = False

    def settle(self, now_ms: int, wait_ms: int, idle_ms: int, *, due: bool) -> None:
        """Plan the next claim ``wait_ms`` on (-1: nothing is due at all, look after ``idle_ms``),
        unless an ``expect`` during the claim planned it sooner. ``due``: an id falls due then (else
        a refusal ends)."""
        at_ms = now_ms + (wait_ms if wait_ms >= 0 else idle_ms)
        due = due and wait_ms >= 0
        if self.ceded and due:  # the worker this queue is ceded to plans for its due ids
            at_ms, due = max(at_ms, now_ms + idle_ms), False
        if at_ms < self.at_ms:
            self.at_ms, self.due = at_ms, due


@dataclass
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
    """

    store: Store
    queue: JobQueue
    clock: Clock
    cadence: Cadence
    services: Collection[str] = ()
    tokens: Collection[str] = ("default",)
    allow_hosts: Collection[str] = ()
    heartbeat_info: Callable[[], dict[str, object]] = dict
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("claims", "accepted", "rejected"), 0))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _wakers: dict[str, asyncio.Event] = field(default_factory=dict)
    _queues: list[tuple[str, str]] = field(default_factory=list)
    _queues_read_ms: int = -(10**15)
    #: when each queue is claimed next; ``expect`` moves a plan earlier
    _plans: dict[tuple[str, str], QueuePlan] = field(default_factory=dict)
    #: when the sleeping claim loop wakes (epoch ms; 0 while it runs: it reads the plans at its end)
    _claim_wake_ms: int = 0
    #: the wake channel is followed (``wakes_step``)
    _subscribed: bool = False
    #: the eviction warning this worker last gave (None: Redis will not evict)
    _eviction: str | None = None
    #: loops ``stop`` cancels while they wait on Redis (a blocked read would hold it up)
    _waiting: set[asyncio.Task[Any]] = field(default_factory=set)

    def __repr__(self) -> str:
        return f"Scheduler({self.worker_id!r}, {self.counters})"

    async def start(self) -> None:
        """Start every loop in the background."""
        await self.store.ensure_intake_group()
        for name, step in (
            ("intake", self.intake_step),
            ("wakes", self.wakes_step),
            ("claims", self.claim_step),
            ("outbox", self.outbox_step),
            ("upkeep", self.upkeep_step),
        ):
            self._wakers[name] = asyncio.Event()
            task = asyncio.create_task(self._loop(name, step), name=f"acetrack-{name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def begin_stop(self) -> None:
        """Ask every loop to stop, and claim nothing more: called before running polls are cancelled,
        since the ids they give back are announced, and this worker must not claim them again."""
        self.stopping.set()
        for waker in self._wakers.values():
            waker.set()
        for task in self._waiting:
            task.cancel()

    async def stop(self) -> None:
        """Ask every loop to stop and wait for them."""
        self.begin_stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def nudge(self, name: str) -> None:
        """Cut the current sleep of one loop (``"outbox"``, ``"claims"``) short."""
        waker = self._wakers.get(name)
        if waker is not None:
            waker.set()

    def expect(self, service: str, token: str, due_ms: int) -> None:
        """A task of this queue falls due at ``due_ms``, scheduled outside the claim loop (this
        worker's poll, or the wake channel): make sure the claim loop claims it by then. A ceded
        queue is taken back: no other worker may know this due time (a poll here of a batch it
        claimed, queued as a job while its slots were taken; an announced task)."""
        plan = self._plans.get((service, token))
        if plan is not None:
            plan.ceded = False
        self._plan(service, token, due_ms)

    def _plan(self, service: str, token: str, due_ms: int) -> None:
        queue = (service, token)
        plan = self._plans.get(queue)
        if plan is None:
            self._plans[queue] = QueuePlan(due_ms, due=True)
            self._queues = sorted({*self._queues, queue})
        elif due_ms < plan.at_ms and not plan.ceded:
            plan.at_ms, plan.due = due_ms, True
        else:
            return
        if due_ms < self._claim_wake_ms:
            self.nudge("claims")

    async def _loop(self, name: str, step: Callable[[], Awaitable[float]]) -> None:
        outage_s = 0.0
        while not self.stopping.is_set():
            try:
                sleep_s = await step()
                if outage_s:
                    logger.info("%s loop: redis is back", name)
                outage_s = 0.0
            except REDIS_DOWN as e:
                # an outage is expected to end: one line per try, backing off up to MAX_OUTAGE_SLEEP_S
                outage_s = min(MAX_OUTAGE_SLEEP_S, max(0.5, outage_s * 2))
                logger.warning("%s loop: redis unavailable (%s); retrying in %.1fs", name, e, outage_s)
                sleep_s = outage_s
            except Exception as e:
                if is_full(e):
                    # nothing was written: the work stays where it was (intake entries unacknowledged)
                    FULL_LOG.note(f"{name} loop", e, time.monotonic())
                    outage_s = sleep_s = min(MAX_OUTAGE_SLEEP_S, max(0.5, outage_s * 2))
                elif isinstance(e, NoPermissionError):  # an ACL without a grant: no traceback a second
                    REFUSED_LOG.warn(f"{name} loop: {permission_hint(e)}", time.monotonic())
                    sleep_s = MAX_OUTAGE_SLEEP_S
                else:
                    logger.exception("%s loop iteration failed; retrying", name)
                    sleep_s = 1.0
            waker = self._wakers.setdefault(name, asyncio.Event())
            if sleep_s > 0 and not waker.is_set():
                try:
                    await asyncio.wait_for(waker.wait(), timeout=sleep_s)
                except TimeoutError:
                    pass
            waker.clear()

    async def intake_step(self) -> float:
        """Drain new intake entries (blocking briefly when there are none)."""
        async with self._cancelled_by_stop():
            # an entry the read took as ``stop`` cancelled it stays pending: reclaimed after the lease
            entries = await self.store.read_intake(self.worker_id, INTAKE_BATCH, block_ms=INTAKE_BLOCK_MS)
        for entry_id, fields in entries:
            await self.accept(entry_id, fields)
        return 0.0

    async def accept(self, entry_id: str, fields: dict[str, str]) -> None:
        """Register one intake entry, or move it to the rejected stream with the reason."""
        now_ms = self.clock()
        try:
            req = build_request(fields, services=self.services, tokens=self.tokens)
            if req.callback_url:
                await screen(req.callback_url, self.allow_hosts)
        except InvalidInput as e:
            await self.store.reject_intake(entry_id, fields, e.message, now_ms)
            self.counters["rejected"] += 1
            metrics.INTAKE.labels("rejected").inc()
            logger.warning("intake entry %s rejected: %s", entry_id, e.message)
            return
        created, _ = await self.store.register(
            req,
            now_ms,
            deadline_s=self.cadence.deadline_s,
            first_poll_s=self.cadence.first_poll_s,
            intake_entry=entry_id,
        )
        if created:  # a ceded queue's claims say when it falls due to the worker that claims them
            self._plan(req.service, req.token, first_poll_ms(now_ms, self.cadence.first_poll_s))
        self.counters["accepted"] += 1
        metrics.INTAKE.labels("accepted").inc()

    @asynccontextmanager
    async def _cancelled_by_stop(self) -> AsyncIterator[None]:
        """``stop`` cancels the calling loop while it is inside (a wait on Redis, nothing half done).
        Entered with no wait since the loop's look at ``stopping``, so a stop is never missed."""
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            yield
        finally:
            self._waiting.discard(task)

    async def wakes_step(self) -> float:
        """Follow the wake channel: a task another process registered due sooner than every other of
        its queue (or the first of a new queue) wakes the claim loop by its due time. Returns only
        when a subscription that was made breaks (the loop subscribes again after ``RESUBSCRIBE_S``;
        one that cannot be made is an outage, with the loop's back-off)."""
        async with self._cancelled_by_stop(), self.store.wakes() as wakes:
            self._subscribed = True
            try:
                # what was registered before the subscription is not announced: look now
                self._look_at_every_queue()
                async for service, token, due_ms in wakes:
                    # due sooner than any task its queue had: no worker planned for it, not even
                    # the one this worker ceded the queue to (it may be the one that released it)
                    self.expect(service, token, due_ms)
            except REDIS_DOWN as e:
                logger.warning("wake channel lost (%s); subscribing again in %.1fs", e, RESUBSCRIBE_S)
            finally:
                self._subscribed = False
        return RESUBSCRIBE_S

    def _look_at_every_queue(self) -> None:
        self._queues_read_ms = -(10**15)
        for plan in self._plans.values():
            plan.at_ms, plan.due = 0, False
        self.nudge("claims")

    @property
    def claim_idle_ms(self) -> int:
        """The claim loop's longest sleep now (``CLAIM_IDLE_S`` while the wake channel is followed)."""
        return (
            max(self.cadence.claim_idle_ms, int(CLAIM_IDLE_S * 1000))
            if self._subscribed
            else self.cadence.claim_idle_ms
        )

    async def claim_step(self) -> float:
        """Claim every queue whose plan is due; sleep until the soonest plan (at most ``claim_idle_ms``)."""
        now_ms, self._claim_wake_ms = self.clock(), 0
        queues = await self._known_queues()
        for queue in queues:
            plan = self._plans.setdefault(queue, QueuePlan())
            if plan.at_ms - now_ms > self.claim_idle_ms:
                # further off than a look (the clock stepped back, or a new queue's first due): a look
                plan.at_ms, plan.due = now_ms + self.claim_idle_ms, False
            elif plan.at_ms - now_ms <= CLAIM_SLACK_MS:  # a timer may fire a few ms early: not early
                await self._claim_queue(queue, plan)
        now_ms = self.clock()
        look_ms = now_ms + self.claim_idle_ms
        # every plan, a new queue's too: one an ``expect`` made during the claims did not nudge
        self._claim_wake_ms = min([look_ms, *(plan.at_ms for plan in self._plans.values())])
        return max(self._claim_wake_ms - now_ms, 1) / 1000

    async def _claim_queue(self, queue: tuple[str, str], plan: QueuePlan) -> None:
        """Claim the queue's due batches, then plan its next claim from the last answer."""
        planned_ms = plan.at_ms if plan.due else 0
        while not self.stopping.is_set():
            now_ms, idle_ms = self.clock(), self.claim_idle_ms
            # a look, unless the answer knows better, or a poll ``expect``s a due during the claim
            plan.at_ms, plan.due = now_ms + idle_ms, False
            got = await self._claim(queue, now_ms, planned_ms)
            if isinstance(got, Wait):
                plan.ceded = plan.ceded or got.why == "taken"
                plan.settle(now_ms, got.ms, idle_ms, due=got.why in ("later", "taken"))
                return
            plan.ceded, planned_ms = False, 0
            self.counters["claims"] += 1
            await self.queue.poll(*queue, got)
            if got.next_ms != 0:  # no claim can take more now: the claim said when one can
                plan.settle(now_ms, got.next_ms, idle_ms, due=True)
                return

    async def _claim(self, queue: tuple[str, str], now_ms: int, planned_ms: int) -> Claimed | Wait:
        return await self.store.claim(
            *queue,
            now_ms,
            batch=self.cadence.batch_size,
            coalesce_ms=self.cadence.coalesce_ms,
            lease_ms=self.cadence.lease_ms,
            rate_rps=self.cadence.rate_limit_rps,
            min_repoll_ms=self.cadence.min_repoll_ms,
            early_ms=CLAIM_SLACK_MS,
            worker=self.worker_id,
            planned_ms=planned_ms,
        )

    async def _known_queues(self) -> list[tuple[str, str]]:
        now_ms = self.clock()
        ttl_s = QUEUES_TTL_SUBSCRIBED_S if self._subscribed else QUEUES_TTL_S
        if not 0 <= now_ms - self._queues_read_ms < ttl_s * 1000:  # stale, or the clock stepped back
            # a union: a queue announced on the wake channel after this read was sent is kept
            self._queues, self._queues_read_ms = sorted({*await self.store.queues(), *self._queues}), now_ms
        return self._queues

    async def outbox_step(self) -> float:
        """Hand due deliveries to the job queue. They stay in the outbox, leased, until a try ends:
        a worker that dies mid-try loses nothing, the delivery is handed over again after the lease."""
        now_ms = self.clock()
        taken, next_due_ms = await self.store.take_outbox(now_ms, OUTBOX_BATCH, lease_ms=self.cadence.lease_ms)
        for delivery_id, due_ms in taken:  # the job runs only while the outbox still holds this lease
            await self.queue.deliver(delivery_id, due_ms, now_ms + self.cadence.lease_ms)
        if len(taken) == OUTBOX_BATCH:
            return 0.0
        wait_ms = OUTBOX_IDLE_S * 1000 if next_due_ms is None else min(OUTBOX_IDLE_S * 1000, next_due_ms - now_ms)
        return max(wait_ms, 1) / 1000

    async def _check_eviction(self) -> None:
        """Read Redis's eviction policy: a line when a warning appears, changes or goes away."""
        problem = await eviction_problem(self.store.redis)
        if problem != self._eviction:
            if problem:
                logger.warning("%s", problem)
            else:
                logger.info("Redis's maxmemory-policy is noeviction now: nothing of acetrack's will be evicted")
            self._eviction = problem

    async def upkeep_step(self) -> float:
        """Heartbeat, and take over intake entries of dead workers (pruning is arq's cron job)."""
        now_ms = self.clock()
        await self._check_eviction()
        info = {
            "worker_id": self.worker_id,
            "at_ms": now_ms,
            **self.counters,
            **self.heartbeat_info(),
            "warnings": [self._eviction] if self._eviction else [],
        }
        await self.store.heartbeat(self.worker_id, info, ttl_ms=int(HEARTBEAT_S * 3000))
        reclaimed = await self.store.reclaim_intake(self.worker_id, INTAKE_BATCH, min_idle_ms=self.cadence.lease_ms)
        for entry_id, fields in reclaimed:
            await self.accept(entry_id, fields)
        return HEARTBEAT_S
