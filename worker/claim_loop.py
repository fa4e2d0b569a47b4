"""The claim loop: when this worker claims each (service, token) queue, and the claims themselves.

It sleeps exactly until the soonest known due time, which a claim's answer, this worker's own polls
and registrations (``expect``), and the wake channel move earlier. Of several workers, only one
wakes for each due time of a queue: the others cede it (``QueuePlan.ceded``) and only look at it
now and then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from worker.clock import Clock
from worker.store import Claimed, Store, Wait

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
#: how long the list of (service, token) queues is reused before it is read again; while the
#: wake channel is followed, a new queue's first task is announced on it, so the list is read
#: only as a safety net
QUEUES_TTL_S = 1.0
QUEUES_TTL_SUBSCRIBED_S = 30.0

Queue = tuple[str, str]


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
    #: the coalesce window per service (``cadence.Pace.coalesce_ms``); None: ``coalesce_ms`` for all
    coalesce_for: Callable[[str], int] | None = None
    #: told how long the ids each claim left due had waited (``cadence.Pace.note_claim``): the poller
    #: places finishing tasks ahead of a backlog
    note_claim: Callable[[str, str, int, int], None] | None = None

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


class ClaimLoop:
    """Plans and makes this worker's claims; hands each claimed batch to the job queue.

    Args:
        store: the Redis store.
        queue: where claimed batches go.
        clock: epoch-ms clock.
        cadence: batch, lease and rate settings.
        worker_id: this worker's name in the claims (``Wait.why == 'taken'`` names another's).
        wake: cuts the loop's current sleep short (a plan moved earlier than it).
        stopping: set when the worker stops: no claim after it.
    """

    def __init__(
        self,
        store: Store,
        queue: JobQueue,
        clock: Clock,
        cadence: Cadence,
        *,
        worker_id: str,
        wake: Callable[[], None],
        stopping: asyncio.Event,
    ) -> None:
        self.store, self.queue, self.clock, self.cadence = store, queue, clock, cadence
        self.worker_id, self.wake, self.stopping = worker_id, wake, stopping
        #: when each queue is claimed next; ``expect`` moves a plan earlier
        self.plans: dict[Queue, QueuePlan] = {}
        #: the wake channel is followed (the wakes loop says so): due times are then all known
        self.subscribed = False
        self.claims = 0
        self._queues: list[Queue] = []
        self._queues_read_ms = -(10**15)
        #: when the sleeping loop wakes (epoch ms; 0 while it runs: it reads the plans at its end)
        self._wake_ms = 0

    def expect(self, service: str, token: str, due_ms: int) -> None:
        """A task of this queue falls due at ``due_ms``, scheduled outside the claim loop (this
        worker's poll, or the wake channel): make sure the claim loop claims it by then. A ceded
        queue is taken back: no other worker may know this due time (a poll here of a batch it
        claimed, queued as a job while its slots were taken; an announced task)."""
        plan = self.plans.get((service, token))
        if plan is not None:
            plan.ceded = False
        self.plan(service, token, due_ms)

    def plan(self, service: str, token: str, due_ms: int) -> None:
        """A task of this queue falls due at ``due_ms``: claim by then, unless the queue is ceded
        (its claims tell the worker that claims it)."""
        queue = (service, token)
        plan = self.plans.get(queue)
        if plan is None:
            self.plans[queue] = QueuePlan(due_ms, due=True)
            self._queues = sorted({*self._queues, queue})
        elif due_ms < plan.at_ms and not plan.ceded:
            plan.at_ms, plan.due = due_ms, True
        else:
            return
        if due_ms < self._wake_ms:
            self.wake()

    def look_at_every_queue(self) -> None:
        """Read the list of queues again and claim each at once (what was registered while the wake
        channel was not followed was not announced)."""
        self._queues_read_ms = -(10**15)
        for plan in self.plans.values():
            plan.at_ms, plan.due = 0, False
        self.wake()

    @property
    def idle_ms(self) -> int:
        """The loop's longest sleep now (``CLAIM_IDLE_S`` while the wake channel is followed)."""
        unsubscribed_ms = self.cadence.claim_idle_ms
        return max(unsubscribed_ms, int(CLAIM_IDLE_S * 1000)) if self.subscribed else unsubscribed_ms

    async def step(self) -> float:
        """Claim every queue whose plan is due; sleep until the soonest plan (at most ``idle_ms``)."""
        now_ms, self._wake_ms = self.clock(), 0
        for queue in await self.known_queues():
            plan = self.plans.setdefault(queue, QueuePlan())
            if plan.at_ms - now_ms > self.idle_ms:
                # further off than a look (the clock stepped back, or a new queue's first due): a look
                plan.at_ms, plan.due = now_ms + self.idle_ms, False
            elif plan.at_ms - now_ms <= CLAIM_SLACK_MS:  # a timer may fire a few ms early: not early
                await self._claim_queue(queue, plan)
        now_ms = self.clock()
        look_ms = now_ms + self.idle_ms
        # every plan, a new queue's too: one an ``expect`` made during the claims did not wake
        self._wake_ms = min([look_ms, *(plan.at_ms for plan in self.plans.values())])
        return max(self._wake_ms - now_ms, 1) / 1000

    async def _claim_queue(self, queue: Queue, plan: QueuePlan) -> None:
        """Claim the queue's due batches, then plan its next claim from the last answer."""
        planned_ms = plan.at_ms if plan.due else 0
        while not self.stopping.is_set():
            now_ms, idle_ms = self.clock(), self.idle_ms
            # a look, unless the answer knows better, or a poll ``expect``s a due during the claim
            plan.at_ms, plan.due = now_ms + idle_ms, False
            got = await self._claim(queue, now_ms, planned_ms)
            if isinstance(got, Wait):
                plan.ceded = plan.ceded or got.why == "taken"
                plan.settle(now_ms, got.ms, idle_ms, due=got.why in ("later", "taken"))
                return
            plan.ceded, planned_ms = False, 0
            self.claims += 1
            if self.cadence.note_claim is not None:
                self.cadence.note_claim(*queue, got.late_ms, now_ms)
            await self.queue.poll(*queue, got)
            if got.next_ms != 0:  # no claim can take more now: the claim said when one can
                plan.settle(now_ms, got.next_ms, idle_ms, due=True)
                return

    async def _claim(self, queue: Queue, now_ms: int, planned_ms: int) -> Claimed | Wait:
        c = self.cadence
        return await self.store.claim(
            *queue,
            now_ms,
            batch=c.batch_size,
            coalesce_ms=c.coalesce_ms if c.coalesce_for is None else c.coalesce_for(queue[0]),
            lease_ms=c.lease_ms,
            rate_rps=c.rate_limit_rps,
            min_repoll_ms=c.min_repoll_ms,
            early_ms=CLAIM_SLACK_MS,
            worker=self.worker_id,
            planned_ms=planned_ms,
        )

    @property
    def queues(self) -> list[Queue]:
        """The queues this loop knows now (as last read, and any planned since)."""
        return list(self._queues)

    async def known_queues(self) -> list[Queue]:
        """Every (service, token) queue, read again when the last read is stale."""
        now_ms = self.clock()
        ttl_s = QUEUES_TTL_SUBSCRIBED_S if self.subscribed else QUEUES_TTL_S
        if not 0 <= now_ms - self._queues_read_ms < ttl_s * 1000:  # stale, or the clock stepped back
            # a union: a queue announced on the wake channel after this read was sent is kept
            self._queues, self._queues_read_ms = sorted({*await self.store.queues(), *self._queues}), now_ms
        return self._queues
