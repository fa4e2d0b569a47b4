"""Python hooks (DESIGN.md §4): name resolution, one delivery attempt, and deliveries run by the real arq worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support import Backend, eventually, fast_settings

import probe_hooks
from worker import hooks, jobs, sim
from worker.delivery import Delivery, Outcome, after_try
from worker.errors import ConfigError
from worker.store import Store
from worker.tracker import Tracker

MakeSim = Callable[..., Awaitable[tuple[str, sim.SimState]]]
FAST_RETRY_S = (0.1, 0.1, 0.1)


# --- resolving names ------------------------------------------------------------------------------


def test_resolve_hook_returns_the_async_function() -> None:
    assert hooks.resolve_hook("probe_hooks:record") is probe_hooks.record


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("probe_hooks.record", "must be written as 'package.module:function'"),
        ("probe_hooks", "must be written as 'package.module:function'"),
        (":record", "must be written as 'package.module:function'"),
        ("probe_hooks:", "must be written as 'package.module:function'"),
        ("no_such_module_for_acetrack:fn", "cannot import 'no_such_module_for_acetrack'"),
        ("probe_hooks:no_such_hook", "has no attribute 'no_such_hook'"),
        ("probe_hooks:not_async", "must be an 'async def' function"),
        ("probe_hooks:CALLS", "is a list, not a function"),
    ],
)
def test_resolve_hook_refuses_a_bad_name_naming_it(name: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        hooks.resolve_hook(name)
    assert f"hook {name!r}" in str(info.value)
    assert message in str(info.value)


def test_resolve_hooks_keys_each_hook_by_its_destination_name() -> None:
    resolved = hooks.resolve_hooks(["probe_hooks:record", "probe_hooks:flaky"])
    assert resolved == {"python:probe_hooks:record": probe_hooks.record, "python:probe_hooks:flaky": probe_hooks.flaky}
    assert hooks.resolve_hooks([]) == {}


def test_resolve_hooks_stops_at_the_first_bad_name() -> None:
    with pytest.raises(ConfigError, match="'probe_hooks:not_async'"):
        hooks.resolve_hooks(["probe_hooks:record", "probe_hooks:not_async"])


def test_destinations_by_event_match_the_resolved_hook_names() -> None:
    names = ["probe_hooks:record", "probe_hooks:flaky"]
    table = hooks.destinations_by_event(names, ["task.succeeded", "clip.succeeded"])
    assert table == {
        "task.succeeded": ["python:probe_hooks:record", "python:probe_hooks:flaky"],
        "clip.succeeded": ["python:probe_hooks:record", "python:probe_hooks:flaky"],
    }
    assert set(table["task.succeeded"]) == set(hooks.resolve_hooks(names))
    assert hooks.destinations_by_event([], ["task.failed"]) == {"task.failed": []}
    assert hooks.destinations_by_event(names, []) == {}


# --- one attempt ----------------------------------------------------------------------------------


def delivery(destination: str = "python:t:hook") -> dict[str, Any]:
    event = {"event_id": "evt_1", "type": "task.succeeded", "service": "suno", "id": "t1"}
    return {
        "delivery_id": "dlv_1",
        "event_id": "evt_1",
        "destination": destination,
        "status": "pending",
        "created_at_ms": 1000,
        "attempts": [],
        "event": event,
    }


async def try_once(
    hook_map: dict[str, hooks.Hook],
    body: dict[str, Any],
    now_ms: int,
    retry_s: tuple[float, ...] = hooks.HOOK_RETRY_S,
    timeout_s: float | None = None,
) -> Outcome:
    """One try of a stored delivery, as ``deliver.run_try`` makes it: the hook call, then
    ``after_try`` on the hook's schedule; ``body`` becomes the delivery as stored after it."""
    delivery = Delivery.from_dict(body)
    result = await hooks.attempt(hook_map, delivery, timeout_s)
    after, outcome = after_try(delivery, result, now_ms, hooks.schedule_s(retry_s))
    body.clear()
    body.update(after.to_dict())
    return outcome


def shape(attempt: dict[str, Any]) -> dict[str, Any]:
    return {k: attempt[k] for k in ("at_ms", "ok", "error")}


async def test_attempt_delivers_the_event_and_records_the_attempt() -> None:
    got: list[dict[str, Any]] = []

    async def hook(event: dict[str, Any]) -> None:
        got.append(event)

    body = delivery()
    outcome = await try_once({"python:t:hook": hook}, body, 2000)
    assert outcome == Outcome("delivered")
    assert got == [body["event"]]
    assert body["status"] == "delivered"
    assert [shape(a) for a in body["attempts"]] == [{"at_ms": 2000, "ok": True, "error": None}]


async def test_a_hook_that_does_not_return_in_time_is_a_failed_try_retried_later() -> None:
    async def hangs(event: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    body = delivery()
    outcome = await try_once({"python:t:hook": hangs}, body, 1000, (2.0,), timeout_s=0.05)
    assert outcome == Outcome("retry", 2.0)
    assert [shape(a) for a in body["attempts"]] == [{"at_ms": 1000, "ok": False, "error": "timed out after 0.05 s"}]


async def boom(event: dict[str, Any]) -> None:
    raise RuntimeError(f"boom for {event['id']}")


async def test_a_raising_hook_is_retried_on_the_schedule_then_dead() -> None:
    body = delivery()
    schedule = (1.0, 5.0, 30.0)
    outcomes = [await try_once({"python:t:hook": boom}, body, 1000 * n, schedule) for n in range(1, 5)]
    assert outcomes[:3] == [Outcome("retry", 1.0), Outcome("retry", 5.0), Outcome("retry", 30.0)]
    assert outcomes[3] == Outcome("dead")
    assert body["status"] == "dead"
    assert [a["at_ms"] for a in body["attempts"]] == [1000, 2000, 3000, 4000]
    assert all(a["ok"] is False and a["error"] == "RuntimeError: boom for t1" for a in body["attempts"])


async def test_the_default_schedule_gives_a_hook_six_tries() -> None:
    body = delivery()
    delays = []
    for n in range(6):
        outcome = await try_once({"python:t:hook": boom}, body, n)
        delays.append(outcome.retry_in_s if outcome.status == "retry" else outcome.status)
    assert delays == [*hooks.HOOK_RETRY_S, "dead"]


async def test_a_replayed_delivery_gets_the_whole_schedule_again() -> None:
    body = delivery()
    for n in range(3):
        await try_once({"python:t:hook": boom}, body, n, (1.0, 2.0))
    assert body["status"] == "dead"
    body["status"], body["tries"] = "pending", 0  # what Store.replay does; the old attempts are kept
    outcome = await try_once({"python:t:hook": boom}, body, 10, (1.0, 2.0))
    assert outcome == Outcome("retry", 1.0) and len(body["attempts"]) == 4


async def test_a_retrying_delivery_that_then_succeeds_is_delivered() -> None:
    calls = 0

    async def once_broken(event: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("not yet")

    body = delivery()
    first = await try_once({"python:t:hook": once_broken}, body, 1, (0.5,))
    assert first == Outcome("retry", 0.5) and body["status"] == "retrying"
    second = await try_once({"python:t:hook": once_broken}, body, 2, (0.5,))
    assert second == Outcome("delivered") and body["status"] == "delivered"
    assert [a["ok"] for a in body["attempts"]] == [False, True]


async def test_a_destination_that_is_not_configured_records_an_error() -> None:
    body = delivery("python:gone.module:hook")
    outcome = await try_once({"python:t:hook": probe_hooks.record}, body, 7, (1.0,))
    assert outcome.status in ("retry", "missing")
    [recorded] = body["attempts"]
    assert recorded["ok"] is False and recorded["at_ms"] == 7
    assert "'python:gone.module:hook'" in recorded["error"] and "configured" in recorded["error"]
    assert body["status"] != "delivered"


# --- end to end: the real arq worker --------------------------------------------------------------


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while not await predicate() and loop.time() < give_up:
        await asyncio.sleep(0.05)
    return await predicate()


async def deliveries_of(store: Store, task_id: str) -> dict[str, dict[str, Any]]:
    """Every stored delivery body of one task, by destination."""
    bodies = {}
    async for key in store.redis.scan_iter(match=store.delivery_prefix() + "*"):
        body = await store.load_delivery(key.removeprefix(store.delivery_prefix()))
        if body is not None and body["event"]["id"] == task_id:
            bodies[body["destination"]] = body
    return bodies


def calls_for(task_id: str) -> list[dict[str, Any]]:
    return [event for event in probe_hooks.CALLS if event["id"] == task_id]


def reset_probes(**failures_left: int) -> None:
    probe_hooks.CALLS.clear()
    probe_hooks.FAILURES_LEFT.clear()
    probe_hooks.FAILURES_LEFT.update(failures_left)


async def start(
    backend: Backend, make_sim: MakeSim, task_ids: list[str], clip_gap_s: float = 0.1, **overrides: Any
) -> tuple[dict[str, Any], Store]:
    """Script succeeding Suno tasks in a fresh simulator, enqueue them, and return the worker's kwargs."""
    url, state = await make_sim(auto=False)
    settings = fast_settings(url, **{"hooks": ["probe_hooks:flaky", "probe_hooks:record"], **overrides})
    tracker = Tracker.over(backend.redis, first_poll_s=0.1)
    for task_id in task_ids:
        state.add_task("suno", task_id, script="succeed", run_s=0.3, clip_gap_s=clip_gap_s)
        await tracker.enqueue("suno", task_id)
    kwargs = jobs.worker_settings(
        settings, redis_pool=backend.make_arq_pool(), store_redis=backend.redis, hook_retry_s=FAST_RETRY_S
    )
    return kwargs, backend.store()


async def test_a_flaky_hook_is_retried_until_it_succeeds_without_holding_up_the_other(
    real_backend: Backend, make_sim: MakeSim
) -> None:
    reset_probes(**{"flaky-2": 2})
    kwargs, store = await start(real_backend, make_sim, ["flaky-2"])
    async with jobs.running_worker(kwargs):

        async def flaky_delivered() -> bool:
            body = (await deliveries_of(store, "flaky-2")).get("python:probe_hooks:flaky")
            return body is not None and body["status"] == "delivered"

        assert await wait_for(flaky_delivered, timeout_s=15)
        await asyncio.sleep(0.3)  # a duplicate call would show up here
    calls = calls_for("flaky-2")
    assert len(calls) == 2  # one from `record`, one from the flaky hook's successful call
    assert {c["type"] for c in calls} == {"task.succeeded"} and len({c["event_id"] for c in calls}) == 1
    assert probe_hooks.FAILURES_LEFT["flaky-2"] == 0
    bodies = await deliveries_of(store, "flaky-2")
    flaky, record = bodies["python:probe_hooks:flaky"], bodies["python:probe_hooks:record"]
    assert [a["ok"] for a in flaky["attempts"]] == [False, False, True]
    assert all("flaky hook refuses flaky-2" in a["error"] for a in flaky["attempts"][:2])
    assert record["status"] == "delivered" and [a["ok"] for a in record["attempts"]] == [True]
    # `record` was served on its first try, while the flaky hook was still being retried
    assert record["attempts"][0]["at_ms"] < flaky["attempts"][-1]["at_ms"]
    assert await store.dead_letters() == []


async def test_a_hook_that_keeps_failing_is_dead_lettered_after_its_last_try(
    real_backend: Backend, make_sim: MakeSim
) -> None:
    reset_probes(**{"flaky-10": 10})
    kwargs, store = await start(real_backend, make_sim, ["flaky-10"])
    async with jobs.running_worker(kwargs):

        async def flaky_dead() -> bool:
            return bool(await store.dead_letters())

        assert await wait_for(flaky_dead, timeout_s=15)
        await asyncio.sleep(0.4)  # no further try may follow
    bodies = await deliveries_of(store, "flaky-10")
    flaky = bodies["python:probe_hooks:flaky"]
    assert await store.dead_letters() == [flaky["delivery_id"]]
    dead = await store.load_delivery(flaky["delivery_id"])
    assert dead is not None and dead["status"] == "dead"
    assert len(dead["attempts"]) == len(FAST_RETRY_S) + 1 == 4
    assert all(a["ok"] is False and "flaky hook refuses flaky-10" in a["error"] for a in dead["attempts"])
    assert probe_hooks.FAILURES_LEFT["flaky-10"] == 10 - 4  # called exactly four times
    assert bodies["python:probe_hooks:record"]["status"] == "delivered"
    assert [c["type"] for c in calls_for("flaky-10")] == ["task.succeeded"]  # `record` only, once


async def run_clip_tasks(
    backend: Backend, make_sim: MakeSim, task_ids: list[str]
) -> tuple[Store, list[dict[str, Any]]]:
    """Run Suno tasks whose two clips finish 0.8 s apart, with `record` getting clip and task events."""
    reset_probes()
    kwargs, store = await start(
        backend,
        make_sim,
        task_ids,
        clip_gap_s=0.8,
        hooks=["probe_hooks:record"],
        hook_events=["task.succeeded", "clip.succeeded"],
    )
    async with jobs.running_worker(kwargs):

        async def all_finished() -> bool:
            return sum(c["type"] == "task.succeeded" for c in probe_hooks.CALLS) >= len(task_ids)

        assert await wait_for(all_finished, timeout_s=15)
        await asyncio.sleep(0.3)  # late or duplicate calls would show up here
    return store, list(probe_hooks.CALLS)


async def test_clip_succeeded_events_reach_the_hook_with_their_clip(real_backend: Backend, make_sim: MakeSim) -> None:
    store, calls = await run_clip_tasks(real_backend, make_sim, ["clips-1"])
    assert sorted(c["type"] for c in calls) == ["clip.succeeded", "clip.succeeded", "task.succeeded"]
    clip_events = [c for c in calls if c["type"] == "clip.succeeded"]
    [task_event] = [c for c in calls if c["type"] == "task.succeeded"]
    assert all(c["clip"]["audio_url"].startswith("https://") for c in clip_events)
    assert {c["clip"]["id"] for c in clip_events} == {clip["id"] for clip in task_event["record"]["clips"]}
    # the first song is playable (and its hook called) while the task is still pending
    assert calls[0]["type"] == "clip.succeeded" and calls[0]["state"] == "pending"
    assert all(c["at_ms"] <= task_event["at_ms"] for c in clip_events)
    stream = [f["type"] for _, f in await real_backend.redis.xrange(store.events_key) if f["id"] == "clips-1"]
    assert [t for t in stream if t != "task.progress"] == ["clip.succeeded", "clip.succeeded", "task.succeeded"]


async def test_the_hook_gets_every_clip_event_before_the_task_event(real_backend: Backend, make_sim: MakeSim) -> None:
    task_ids = [f"order-{n}" for n in range(20)]
    _, calls = await run_clip_tasks(real_backend, make_sim, task_ids)
    out_of_order = [
        task_id
        for task_id in task_ids
        if [c["type"] for c in calls if c["id"] == task_id] != ["clip.succeeded", "clip.succeeded", "task.succeeded"]
    ]
    assert out_of_order == []


async def test_a_deliver_job_whose_outbox_lease_was_taken_over_does_nothing(
    real_backend: Backend, make_sim: MakeSim
) -> None:
    """A delivery job that waited past its lease (handed over again since), or that arq runs a second
    time, finds another lease in the outbox: it neither calls the hook nor moves the delivery."""
    url, state = await make_sim(auto=False)
    settings = fast_settings(url, hooks=["probe_hooks:record"], hook_events=["task.succeeded"])
    state.add_task("suno", "stale-1", script="succeed", run_s=0.2, clip_gap_s=0.05)
    tracker = Tracker.over(real_backend.redis, first_poll_s=0.1)
    await tracker.enqueue("suno", "stale-1")
    store = real_backend.store()
    pool = real_backend.make_arq_pool()
    async with jobs.running_worker(jobs.worker_settings(settings, redis_pool=pool, store_redis=real_backend.redis)):
        assert await eventually(lambda: _delivered(store, "stale-1"), 10)
        (body,) = [d for d in await store.deliveries() if d["event"]["id"] == "stale-1"]
        calls = len(probe_hooks.CALLS)
        body["status"] = "retrying"  # as if its next try were due in an hour
        await store.save_delivery(body["delivery_id"], body)
        await store.requeue_delivery(body["delivery_id"], 3_600_000 + store_now_ms())
        job = await pool.enqueue_job(
            "deliver",
            body["delivery_id"],
            12_345,
            _job_id="deliver:stale-test",
            _queue_name=jobs.queue_name_of(settings),
        )
        assert job is not None and await job.result(timeout=10) == "stale"
        assert len(probe_hooks.CALLS) == calls  # the hook was not called again
        assert await store.outbox_score(body["delivery_id"]) is not None  # still waiting for its real try


def store_now_ms() -> int:
    return int(time.time() * 1000)


async def _delivered(store: Store, task_id: str) -> bool:
    return any(d["event"]["id"] == task_id and d["status"] == "delivered" for d in await store.deliveries())
