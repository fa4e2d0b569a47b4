"""The batch plan, table-tested like ``classify``: from pending tasks and answers to writes, events,
samples and next due times, with no Redis and no clock."""

from __future__ import annotations

import json
from typing import Any

import pytest

from worker.cadence import Policy
from worker.classify import fingerprint
from worker.models import Reason, Record, TaskState
from worker.plan import BatchPlan, PlanContext, plan_batch, plan_failure
from worker.store.codecs import PendingTask, pending_task, sched_text
from worker.wire import UpstreamTask

ENQUEUED_MS = 1_767_119_799_000
Json = dict[str, Any]


def answer(*states: str, task_id: str = "t1", progress: int | None = None, finished_at: float | None = None) -> Json:
    """A Tasks API record of one task whose clips are in ``states``."""
    items: list[Json] = []
    for n, state in enumerate(states):
        item: Json = {"id": f"c{n}", "state": state}
        if state == "succeeded":
            item["audio_url"] = f"https://cdn.example.test/{task_id}-{n}.mp3"
        if progress is not None:
            item["progress"] = progress
        items.append(item)
    raw: Json = {"id": task_id, "response": {"success": True, "task_id": task_id, "data": items}}
    if finished_at is not None:
        raw["finished_at"] = finished_at
    return raw


def upstream(raw: Json) -> UpstreamTask:
    task = UpstreamTask.from_wire(raw)
    assert task is not None
    return task


def pending(task_id: str = "t1", *, last: Json | None = None, deadline_in_s: float = 600, **sched: Any) -> PendingTask:
    """A pending task as a claim reads it; ``last``: the answer its previous poll got."""
    record = Record("suno", task_id, enqueued_at_ms=ENQUEUED_MS, updated_at_ms=ENQUEUED_MS)
    fields = {"enqueued_ms": ENQUEUED_MS, "answer": fingerprint(upstream(last)) if last else "", **sched}
    return pending_task(json.dumps(record.to_dict()), sched_text(ENQUEUED_MS + int(deadline_in_s * 1000), **fields))


def ctx(age_s: float, **kw: Any) -> PlanContext:
    return PlanContext(ENQUEUED_MS + int(age_s * 1000), Policy(poll_s=3.0, max_poll_s=60.0), rng=lambda: 0.5, **kw)


def shape(plan: BatchPlan) -> tuple[list[str], list[str], list[str]]:
    """Which ids the plan touches, updates and finishes."""
    return (
        [task_id for task_id, _, _ in plan.touched],
        [u.record.id for u in plan.updates],
        [f.record.id for f in plan.finishes],
    )


RUNNING = answer("running", "running")
CASES = [
    # (what the task's last poll got, this answer, age s, touched/updated/finished)
    pytest.param(RUNNING, RUNNING, 30, (["t1"], [], []), id="the same answer again: only the schedule moves"),
    pytest.param(None, answer("queued"), 5, ([], ["t1"], []), id="first answer: the record gets its clips"),
    pytest.param(None, answer("running", progress=40), 20, ([], ["t1"], []), id="progress: an update with its event"),
    pytest.param(
        RUNNING, answer("succeeded", "succeeded", finished_at=1_767_119_900.0), 90, ([], [], ["t1"]), id="done"
    ),
    pytest.param(RUNNING, answer("succeeded", "running"), 60, ([], ["t1"], []), id="one clip of two: a partial update"),
]


@pytest.mark.parametrize(("last", "now", "age_s", "expected"), CASES)
def test_plan_batch_sorts_each_task_into_touch_update_or_finish(
    last: Json | None, now: Json, age_s: float, expected: tuple[list[str], list[str], list[str]]
) -> None:
    task = pending(last=last, polled_ms=ENQUEUED_MS + 1000, attempts=1)
    plan = plan_batch({"t1": task}, {"t1": upstream(now)}, ctx(age_s))
    assert shape(plan) == expected


def test_a_repeated_answer_is_rescheduled_without_decoding_the_record() -> None:
    task = pending(last=RUNNING, polled_ms=ENQUEUED_MS + 20_000, attempts=3)
    plan = plan_batch({"t1": task}, {"t1": upstream(RUNNING)}, ctx(30))
    ((task_id, due_ms, sched),) = plan.touched
    after = pending_task(task.raw, sched)
    assert "record" not in vars(task)  # the cached record was never built
    assert (after.attempts, after.polled_ms, after.answer) == (4, ENQUEUED_MS + 30_000, task.answer)
    assert due_ms > ENQUEUED_MS + 30_000 and plan.soonest_due_ms == due_ms


def test_a_repeated_answer_past_the_deadline_is_decided_and_fails() -> None:
    task = pending(last=RUNNING, deadline_in_s=20, polled_ms=ENQUEUED_MS + 15_000, attempts=2)
    plan = plan_batch({"t1": task}, {"t1": upstream(RUNNING)}, ctx(30))
    (finish,) = plan.finishes
    assert finish.record.state is TaskState.FAILED and finish.record.reason is Reason.DEADLINE
    assert finish.sample is None  # a deadline says nothing of how long the service's tasks take


def test_a_success_teaches_its_lifetime_and_stage_marks() -> None:
    task = pending(last=RUNNING, polled_ms=ENQUEUED_MS + 60_000, attempts=5, marks=((0, 0), (1000, 3000)))
    done = answer("succeeded", "succeeded", finished_at=1_767_119_880.0)
    plan = plan_batch({"t1": task}, {"t1": upstream(done)}, ctx(90))
    (finish,) = plan.finishes
    assert finish.sample is not None and finish.sample.ok and finish.sample.lifetime_s == 90.0
    assert finish.sample.marks[:2] == ((0, 0), (1000, 3000))
    assert [e.fields["type"] for e in finish.events][-1] == "task.succeeded"
    assert plan.soonest_due_ms is None  # nothing of this batch stays pending


def test_a_stage_seen_after_a_miss_is_bounded_by_the_last_answered_poll() -> None:
    # queued when answered at 10 s; left out of the answer at 13 s; running at 16 s
    task = pending(
        seen=True,
        missing_since_ms=ENQUEUED_MS + 13_000,
        misses=1,
        polled_ms=ENQUEUED_MS + 13_000,
        marks=((10_000, 10_000),),
        attempts=2,
    )
    plan = plan_batch({"t1": task}, {"t1": upstream(answer("running"))}, ctx(16))
    (update,) = plan.updates  # its clips appear
    sched = update.sched
    assert pending_task(task.raw, sched).marks[1] == (10_000, 16_000)  # not (13_000, ...): the miss saw nothing


def test_an_id_left_out_of_the_answer_keeps_its_marks_and_counts_a_miss() -> None:
    task = pending(seen=True, polled_ms=ENQUEUED_MS + 10_000, marks=((10_000, 10_000),), attempts=2)
    plan = plan_batch({"t1": task}, {}, ctx(13))
    ((_, _, sched),) = plan.touched
    after = pending_task(task.raw, sched)
    assert (after.misses, after.missing_since_ms, after.marks) == (1, ENQUEUED_MS + 13_000, task.marks)


def test_plan_failure_fails_every_task_with_the_reason_and_queues_their_deliveries() -> None:
    tasks = {i: pending(i) for i in ("a", "b")}
    context = ctx(5, destinations={"task.failed": ["https://hooks.example.test/x"]})
    plan = plan_failure(tasks, Reason.REJECTED, {"code": "400", "message": "bad ids"}, context)
    assert shape(plan) == ([], [], ["a", "b"])
    assert all(f.record.reason is Reason.REJECTED and f.sample is None for f in plan.finishes)
    assert all(f.record.error == {"code": "400", "message": "bad ids"} for f in plan.finishes)
    assert plan.has_deliveries and not plan_failure(tasks, Reason.REJECTED, {}, ctx(5)).has_deliveries


def test_soonest_due_is_the_earliest_next_poll_of_what_stays_pending() -> None:
    tasks = {"young": pending("young", polled_ms=ENQUEUED_MS + 1000), "old": pending("old", polled_ms=ENQUEUED_MS)}
    answers = {i: upstream(answer("running", task_id=i)) for i in tasks}
    plan = plan_batch(tasks, answers, ctx(4))
    dues = [u.next_due_ms for u in plan.updates]
    assert len(dues) == 2 and plan.soonest_due_ms == min(dues)
