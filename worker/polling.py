"""One batch poll: ask the upstream about claimed ids once, decide, write back (DESIGN.md §1, §3).

Engine-neutral: the job wiring (``jobs``) calls ``poll_batch``; nothing here knows arq.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from worker import classify, metrics
from worker.api import UpstreamClient
from worker.classify import Policy
from worker.clock import Clock
from worker.errors import (
    ConfigError,
    UnknownService,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTooLarge,
    UpstreamUnavailable,
)
from worker.events import build_events
from worker.models import EventType, OutEvent, Reason, Record, TaskState, UpstreamTask
from worker.store import PendingTask, ScriptCall, Store, next_sched

logger = logging.getLogger(__name__)

#: how long a token that got 401/403 stays paused before one batch probes it again
AUTH_PAUSE_S = 300.0
#: service back-off after a 429/5xx without Retry-After: base and cap
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
#: how long what a service's finished tasks teach is reused before it is read again
LEARN_EVERY_S = 5.0


#: failures that end a task on the upstream's own schedule (they teach how early a task can end)
NATURAL_FAILURES = frozenset({Reason.UPSTREAM_ERROR})


@dataclass(frozen=True)
class Outcome:
    """One task's poll: the task as loaded, the decision, and its stage marks after."""

    task: PendingTask
    decision: classify.Decision
    marks: tuple[classify.Mark | None, ...]
    #: ``classify.fingerprint`` of the upstream answer ('' when the id was left out)
    answer: str = ""

    @property
    def before(self) -> Record:
        """The record before this poll."""
        return self.task.record

    @property
    def unchanged(self) -> bool:
        """Still pending with nothing a reader sees changed: only the poll count and schedule move."""
        after = self.decision.record
        return (
            not self.decision.terminal
            and not self.decision.events
            and after.clips == self.before.clips
            and after.progress == self.before.progress
        )

    def next_poll_ms(self, now_ms: int) -> int:
        """When to poll it next (now, if the decision did not say)."""
        return self.decision.next_poll_ms if self.decision.next_poll_ms is not None else now_ms

    def sched(self, now_ms: int) -> str:
        """The task's scheduling fields after this poll."""
        decision = self.decision
        return next_sched(
            self.task, decision.record.attempts, now_ms, decision.missing_since_ms, self.marks, self.answer
        )

    def sample(self, now_ms: int) -> classify.Sample | None:
        """What a finished task teaches the schedule; None for an ending that says nothing of lifetimes."""
        record = self.decision.record
        if record.reason is not None and record.reason not in NATURAL_FAILURES:
            return None
        ok = record.state is TaskState.SUCCEEDED
        return classify.Sample((now_ms - self.task.enqueued_at_ms) / 1000, ok, self.marks)


@dataclass(slots=True)
class Repeat:
    """A poll whose answer repeated the last one: only its schedule moves (no record is decoded).
    Not frozen: most ids of a poll end as one, and a frozen dataclass is built several times slower."""

    task_id: str
    next_poll_ms: int
    sched: str


@dataclass
class Poller:
    """What a batch poll needs, built once per worker process."""

    store: Store
    api: UpstreamClient
    clock: Clock
    policy: Policy
    rate_limit_rps: float
    destinations: Mapping[str, Sequence[str]] = field(default_factory=dict)
    callback_events: frozenset[str] = frozenset()
    rng: classify.Rng = random.random
    paused_tokens: set[str] = field(default_factory=set)
    #: called with the queue and the soonest due time each batch's write scheduled (the claim loop's
    #: ``expect``)
    on_schedule: Callable[[str, str, int], None] | None = None
    #: called when a batch's write queued hook deliveries (wakes the outbox loop)
    on_deliveries: Callable[[], None] | None = None
    #: what each service's finished tasks teach, with when it was read (ms)
    _learned: dict[str, tuple[int, classify.Lifetimes]] = field(default_factory=dict)

    async def poll_batch(
        self,
        service: str,
        token: str,
        claim_id: str,
        ids: Sequence[str],
        pending: Mapping[str, PendingTask] | None = None,
    ) -> int:
        """Poll ``ids`` (claimed under ``claim_id``) with one ``retrieve_batch``; returns tasks finished.
        ``pending``: the tasks as the claim read them (None: read them here)."""
        try:
            return await self._poll(service, token, claim_id, ids, pending)
        except asyncio.CancelledError:
            # a stopping worker gives its claims back at once instead of waiting out the lease
            await asyncio.shield(self.store.release(service, token, claim_id, ids, self.clock()))
            raise

    async def _poll(
        self, service: str, token: str, claim_id: str, ids: Sequence[str], pending: Mapping[str, PendingTask] | None
    ) -> int:
        if pending is None:
            pending = await self.store.load_pending(service, ids)
        if not pending:
            return 0
        try:
            found = await self._retrieve(service, token, list(pending))
        except UpstreamUnavailable as e:
            await self._back_off(service, token, claim_id, list(pending), e)
            return 0
        except UpstreamAuthError as e:
            await self._pause(service, token, claim_id, list(pending), e)
            return 0
        except UnknownService as e:
            return await self._fail_all(pending, Reason.UNKNOWN_SERVICE, e)
        except UpstreamRejected as e:
            return await self._split(service, token, claim_id, pending, e)
        except ConfigError as e:  # a task names a token this worker does not have
            return await self._fail_all(pending, Reason.REJECTED, e)
        self.paused_tokens.discard(token)
        return await self.apply(service, token, claim_id, pending, found)

    async def _retrieve(self, service: str, token: str, ids: list[str]) -> Mapping[str, UpstreamTask]:
        started_s = asyncio.get_running_loop().time()
        code = "200"
        try:
            return await self.api.retrieve_batch(service, ids, token)
        except UpstreamError as e:
            code = str(e.status) if e.status else "network"
            raise
        finally:
            metrics.REQUESTS.labels(service, code).inc()
            metrics.REQUEST_SECONDS.labels(service).observe(asyncio.get_running_loop().time() - started_s)
            metrics.BATCH_SIZE.observe(len(ids))

    async def apply(
        self,
        service: str,
        token: str,
        claim_id: str,
        pending: Mapping[str, PendingTask],
        found: Mapping[str, UpstreamTask],
    ) -> int:
        """Decide every pending task from what the upstream said and write the outcomes back at once
        (the request went through, so the service's past failures are forgotten in that write)."""
        now_ms = self.clock()
        lifetimes = await self._lifetimes(service, now_ms)
        outcomes = [
            self._decide(task_id, task, found.get(task_id), now_ms, lifetimes) for task_id, task in pending.items()
        ]
        return await self._write(service, token, outcomes, claim_id, now_ms, answered=True)

    async def _lifetimes(self, service: str, now_ms: int) -> classify.Lifetimes:
        # a batch every few ms need not re-read and re-sort 200 samples (a Redis round trip and ~1 ms of
        # CPU): lifetimes of tens of seconds are learned well enough from samples a few seconds old
        read_ms, learned = self._learned.get(service, (0, classify.Lifetimes()))
        if now_ms - read_ms >= LEARN_EVERY_S * 1000 or now_ms < read_ms:
            learned = classify.lifetimes_from(await self.store.lifetime_samples(service))
            self._learned[service] = (now_ms, learned)
        return learned

    def _decide(
        self,
        task_id: str,
        task: PendingTask,
        upstream: UpstreamTask | None,
        now_ms: int,
        lifetimes: classify.Lifetimes,
    ) -> Outcome | Repeat:
        enqueued_ms = task.enqueued_at_ms
        before_ms = (task.polled_ms or enqueued_ms) - enqueued_ms
        if task.missing_since_ms is not None:
            # the polls since the upstream last answered for it saw nothing: the last stage seen bounds it
            before_ms = max((mark[1] for mark in task.marks if mark), default=0)
        age_ms = now_ms - enqueued_ms
        answer = classify.fingerprint(upstream) if upstream is not None else ""
        if answer and answer == task.answer and now_ms < task.deadline_at_ms:
            # the upstream said just what it said last time: the same record, no event, no verdict
            stage = classify.reached_stage(task.marks)
            marks = classify.advance_marks(task.marks, stage, before_ms, age_ms)
            next_ms = classify.schedule_ms(
                now_ms,
                enqueued_ms,
                task.deadline_at_ms,
                self.policy,
                usual_s=lifetimes.usual_s,
                earliest_s=lifetimes.earliest_for(marks),
                stage=stage,
                rng=self.rng,
            )
            attempts = (task.attempts or 0) + 1
            return Repeat(task_id, next_ms, next_sched(task, attempts, now_ms, None, marks, answer))
        stage = classify.observed_stage(upstream)
        # an id the upstream left out of this answer shows no stage
        marks = task.marks if upstream is None else classify.advance_marks(task.marks, stage, before_ms, age_ms)
        decision = classify.decide(
            upstream,
            task.record,
            now_ms,
            deadline_at_ms=task.deadline_at_ms,
            missing_since_ms=task.missing_since_ms,
            policy=self.policy,
            usual_lifetime_s=lifetimes.usual_s,
            earliest_lifetime_s=lifetimes.earliest_for(marks),
            seen=task.seen,
            misses=task.misses,
            rng=self.rng,
            stage=stage,
        )
        return Outcome(task, decision, marks, answer)

    async def _write(
        self,
        service: str,
        token: str,
        outcomes: Sequence[Outcome | Repeat],
        claim_id: str,
        now_ms: int,
        *,
        answered: bool = False,
    ) -> int:
        changed: list[Outcome] = []
        touched: list[tuple[str, int, str]] = []
        for outcome in outcomes:
            if isinstance(outcome, Repeat):
                touched.append((outcome.task_id, outcome.next_poll_ms, outcome.sched))
            elif outcome.unchanged:
                touched.append((outcome.before.id, outcome.next_poll_ms(now_ms), outcome.sched(now_ms)))
            else:
                changed.append(outcome)
        events = [self._events(outcome, now_ms) for outcome in changed]
        calls = [self._call(outcome, out, claim_id, now_ms) for outcome, out in zip(changed, events, strict=True)]
        if touched:
            calls.append(self.store.touch_call(service, token, claim_id, touched))
        written = await self.store.run_calls(calls, clear_backoff=(service, token) if answered else None)
        metrics.OBSERVATIONS.labels(service).inc(len(outcomes))
        self._expect(service, token, touched, changed, now_ms)
        if self.on_deliveries is not None and any(e.deliveries for out in events for e in out):
            self.on_deliveries()
        finished = 0
        for outcome, wrote in zip(changed, written, strict=False):
            if outcome.decision.terminal and wrote:
                _count_terminal(outcome.decision.record, now_ms)
                finished += 1
        return finished

    def _expect(
        self,
        service: str,
        token: str,
        touched: Sequence[tuple[str, int, str]],
        changed: Sequence[Outcome],
        now_ms: int,
    ) -> None:
        # tell the claim loop when the soonest of these falls due again, so it need not poll to find out
        if self.on_schedule is None:
            return
        dues = [due_ms for _, due_ms, _ in touched]
        dues += [o.next_poll_ms(now_ms) for o in changed if not o.decision.terminal]
        if dues:
            self.on_schedule(service, token, min(dues))

    def _events(self, outcome: Outcome, now_ms: int) -> list[OutEvent]:
        decision = outcome.decision
        return build_events(
            decision.events,
            outcome.before,
            decision.record,
            now_ms,
            self.destinations,
            callback_events=self.callback_events,
        )

    def _call(self, outcome: Outcome, events: list[OutEvent], claim_id: str, now_ms: int) -> ScriptCall:
        decision = outcome.decision
        if decision.terminal:
            return self.store.finish_call(decision.record, now_ms, events, sample=outcome.sample(now_ms))
        return self.store.update_call(
            decision.record,
            claim_id,
            now_ms,
            next_due_ms=outcome.next_poll_ms(now_ms),
            sched=outcome.sched(now_ms),
            events=events,
        )

    async def _back_off(
        self, service: str, token: str, claim_id: str, ids: list[str], error: UpstreamUnavailable
    ) -> None:
        failures = await self.store.backoff_failures(service, token)
        delay_s = classify.backoff_s(failures, BACKOFF_BASE_S, BACKOFF_CAP_S, error.retry_after_s, self.rng)
        until_ms = self.clock() + int(delay_s * 1000)
        await self.store.back_off(service, token, until_ms)
        metrics.BACKOFFS.labels(service).inc()
        await self.store.release(service, token, claim_id, ids, until_ms)
        logger.warning("%s/%s backing off %.1fs after %r", service, token, delay_s, error)

    async def _pause(self, service: str, token: str, claim_id: str, ids: list[str], error: UpstreamAuthError) -> None:
        until_ms = self.clock() + int(AUTH_PAUSE_S * 1000)
        await self.store.pause_token(token, int(AUTH_PAUSE_S * 1000), str(error))
        await self.store.release(service, token, claim_id, ids, until_ms)
        if token not in self.paused_tokens:
            logger.error(
                "token %r was refused (%s); polling with it is paused for %.0fs and its tasks stay pending. "
                "Check ACETRACK_API_TOKEN / ACETRACK_API_TOKENS.",
                token,
                error,
                AUTH_PAUSE_S,
            )
        self.paused_tokens.add(token)

    async def _split(
        self, service: str, token: str, claim_id: str, pending: Mapping[str, PendingTask], error: UpstreamRejected
    ) -> int:
        ids = list(pending)
        if len(ids) == 1 or not (isinstance(error, UpstreamTooLarge) or error.status == 400):
            return await self._fail_all(pending, Reason.REJECTED, error)
        half = len(ids) // 2
        logger.info(
            "%s batch of %d refused (%s); retrying as %d + %d", service, len(ids), error.status, half, len(ids) - half
        )
        finished = 0
        for part in (ids[:half], ids[half:]):
            await self._wait_for_budget(token)
            finished += await self._poll(service, token, claim_id, part, None)  # read again after the wait
        return finished

    async def _wait_for_budget(self, token: str) -> None:
        # the split's extra request spends the shared budget like any other
        while (wait_ms := await self.store.spend(token, self.clock(), self.rate_limit_rps)) > 0:
            await asyncio.sleep(wait_ms / 1000)

    async def _fail_all(
        self, pending: Mapping[str, PendingTask], reason: Reason, error: UpstreamRejected | ConfigError
    ) -> int:
        now_ms = self.clock()
        code = (error.code or str(error.status)) if isinstance(error, UpstreamRejected) else "unknown_token"
        detail: dict[str, str | None] = {"code": code, "message": str(error)}
        outcomes = [
            Outcome(
                task,
                classify.Decision(classify.fail(task.record, reason, now_ms, detail), [EventType.TASK_FAILED]),
                task.marks,
            )
            for task in pending.values()
        ]
        first = next(iter(pending.values())).record  # decoded above already
        finished = await self._write(first.service, first.token, outcomes, "", now_ms)
        logger.warning("%d task(s) failed with reason %s: %s", finished, reason.value, error)
        return finished


def _count_terminal(record: Record, now_ms: int) -> None:
    reason = record.reason.value if record.reason else ""
    metrics.TERMINAL.labels(record.service, record.state.value, reason).inc()
    if record.upstream_finished_at is not None:
        detection_s = max(0.0, now_ms / 1000 - record.upstream_finished_at)
        metrics.DETECTION_SECONDS.labels(record.service).observe(detection_s)
