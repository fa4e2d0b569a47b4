"""One batch poll's decisions, with no I/O: from the pending tasks as claimed and the upstream's
answers to the writes, the events, the lifetime samples and the next due times.

The poller does the I/O around it: load, retrieve, ``plan_batch``, write, notify. Table-tested in
``tests/test_plan.py`` like ``classify``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from worker import cadence, classify
from worker.cadence import Lifetimes, Policy, Rng
from worker.events import build_events
from worker.models import EventType, Mark, OutEvent, Reason, Record, Sample, TaskState
from worker.store.codecs import PendingTask, next_sched
from worker.wire import UpstreamTask

#: failures that end a task on the upstream's own schedule (they teach how early a task can end)
NATURAL_FAILURES = frozenset({Reason.UPSTREAM_ERROR})


@dataclass(frozen=True)
class PlanContext:
    """What every task of one batch is decided against."""

    now_ms: int
    policy: Policy
    #: what the service's recently finished tasks teach
    lifetimes: Lifetimes = field(default_factory=Lifetimes)
    rng: Rng = random.random
    #: hook and webhook destinations by event type (``hooks.destinations_by_event``)
    destinations: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: event types a task's own ``callback_url`` hears
    callback_events: frozenset[str] = frozenset()
    #: how far the queue's claims run behind (``cadence.schedule_ms``)
    backlog_ms: int = 0


@dataclass(frozen=True)
class Update:
    """A still-pending task whose record changed: the record, its next poll, its events."""

    record: Record
    next_due_ms: int
    #: the task's scheduling fields after this poll (``store.codecs.sched_text``)
    sched: str
    events: list[OutEvent]


@dataclass(frozen=True)
class Finish:
    """A task that ends with this poll: its terminal record, its events, what it teaches."""

    record: Record
    events: list[OutEvent]
    #: None: an ending that says nothing of the service's lifetimes (a deadline, a rejection)
    sample: Sample | None


@dataclass
class BatchPlan:
    """Everything one batch poll writes."""

    #: tasks whose record did not change: (id, next due ms, scheduling fields)
    touched: list[tuple[str, int, str]] = field(default_factory=list)
    updates: list[Update] = field(default_factory=list)
    finishes: list[Finish] = field(default_factory=list)

    @property
    def soonest_due_ms(self) -> int | None:
        """When the soonest task of this batch that stays pending falls due again."""
        dues = [due_ms for _, due_ms, _ in self.touched] + [u.next_due_ms for u in self.updates]
        return min(dues) if dues else None

    @property
    def has_deliveries(self) -> bool:
        """True when a write of this plan queues a hook or webhook delivery."""
        changed: list[Update | Finish] = [*self.updates, *self.finishes]
        return any(e.deliveries for each in changed for e in each.events)


def plan_batch(pending: Mapping[str, PendingTask], found: Mapping[str, UpstreamTask], ctx: PlanContext) -> BatchPlan:
    """Decide every pending task from what the upstream said (``found``: the answers by id; an id
    left out was not in the answer)."""
    plan = BatchPlan()
    for task_id, task in pending.items():
        _plan_task(plan, task_id, task, found.get(task_id), ctx)
    return plan


def plan_failure(
    pending: Mapping[str, PendingTask], reason: Reason, detail: dict[str, str | None], ctx: PlanContext
) -> BatchPlan:
    """Fail every pending task for ``reason`` (the upstream refused the batch as a whole)."""
    plan = BatchPlan()
    for task in pending.values():
        failed = classify.fail(task.record, reason, ctx.now_ms, detail)
        _add_change(plan, task, classify.Decision(failed, [EventType.TASK_FAILED]), task.marks, "", ctx)
    return plan


def _plan_task(
    plan: BatchPlan, task_id: str, task: PendingTask, upstream: UpstreamTask | None, ctx: PlanContext
) -> None:
    now_ms, enqueued_ms = ctx.now_ms, task.enqueued_at_ms
    before_ms = (task.polled_ms or enqueued_ms) - enqueued_ms
    if task.missing_since_ms is not None:
        # the polls since the upstream last answered for it saw nothing: the last stage seen bounds it
        before_ms = max((mark[1] for mark in task.marks if mark), default=0)
    age_ms = now_ms - enqueued_ms
    answer = classify.fingerprint(upstream) if upstream is not None else ""
    if answer and answer == task.answer and now_ms < task.deadline_at_ms:
        # the upstream said just what it said last time: the same record, no event, no verdict, and
        # no record decoded (most ids of most polls end here)
        plan.touched.append(_repeat(task_id, task, before_ms, age_ms, answer, ctx))
        return
    stage = classify.observed_stage(upstream)
    # an id the upstream left out of this answer shows no stage
    marks = task.marks if upstream is None else cadence.advance_marks(task.marks, stage, before_ms, age_ms)
    decision = classify.decide(
        upstream,
        task.record,
        now_ms,
        deadline_at_ms=task.deadline_at_ms,
        missing_since_ms=task.missing_since_ms,
        policy=ctx.policy,
        usual_lifetime_s=ctx.lifetimes.usual_s,
        earliest_lifetime_s=ctx.lifetimes.earliest_for(marks),
        seen=task.seen,
        misses=task.misses,
        rng=ctx.rng,
        stage=stage,
        backlog_ms=ctx.backlog_ms,
    )
    _add_change(plan, task, decision, marks, answer, ctx)


def _repeat(
    task_id: str, task: PendingTask, before_ms: int, age_ms: int, answer: str, ctx: PlanContext
) -> tuple[str, int, str]:
    stage = cadence.reached_stage(task.marks)
    marks = cadence.advance_marks(task.marks, stage, before_ms, age_ms)
    next_ms = cadence.schedule_ms(
        ctx.now_ms,
        task.enqueued_at_ms,
        task.deadline_at_ms,
        ctx.policy,
        usual_s=ctx.lifetimes.usual_s,
        earliest_s=ctx.lifetimes.earliest_for(marks),
        stage=stage,
        rng=ctx.rng,
        backlog_ms=ctx.backlog_ms,
    )
    attempts = (task.attempts or 0) + 1
    return task_id, next_ms, next_sched(task, attempts, ctx.now_ms, None, marks, answer)


def _add_change(
    plan: BatchPlan,
    task: PendingTask,
    decision: classify.Decision,
    marks: tuple[Mark | None, ...],
    answer: str,
    ctx: PlanContext,
) -> None:
    now_ms, before, after = ctx.now_ms, task.record, decision.record
    if decision.terminal:
        events = _events(decision, before, ctx)
        plan.finishes.append(Finish(after, events, _sample(task, after, marks, ctx)))
        return
    next_due_ms = decision.next_poll_ms if decision.next_poll_ms is not None else now_ms
    sched = next_sched(task, after.attempts, now_ms, decision.missing_since_ms, marks, answer)
    if not decision.events and after.clips == before.clips and after.progress == before.progress:
        # nothing a reader sees changed: only the poll count and the schedule move
        plan.touched.append((before.id, next_due_ms, sched))
        return
    plan.updates.append(Update(after, next_due_ms, sched, _events(decision, before, ctx)))


def _events(decision: classify.Decision, before: Record, ctx: PlanContext) -> list[OutEvent]:
    return build_events(
        decision.events, before, decision.record, ctx.now_ms, ctx.destinations, callback_events=ctx.callback_events
    )


def _sample(task: PendingTask, record: Record, marks: tuple[Mark | None, ...], ctx: PlanContext) -> Sample | None:
    if record.reason is not None and record.reason not in NATURAL_FAILURES:
        return None
    ok = record.state is TaskState.SUCCEEDED
    lifetime_s = (ctx.now_ms - task.enqueued_at_ms) / 1000
    if record.upstream_finished_at is None:
        return Sample(lifetime_s, ok, marks)
    # how late this poll found it, at the interval in effect (a clock behind the upstream's: 0)
    latency_s = max(0.0, ctx.now_ms / 1000 - record.upstream_finished_at)
    return Sample(lifetime_s, ok, marks, latency_s, ctx.policy.poll_s)
