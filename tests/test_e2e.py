"""End to end: the real arq worker, the simulator over real sockets, fakeredis and a real redis-server."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import pytest
from support import Backend, fast_settings, require_real_redis

import probe_hooks
from worker import jobs, sim
from worker.models import ClipState, Reason, Record, TaskState
from worker.store import Store
from worker.tracker import Tracker

MakeSim = Callable[..., Awaitable[tuple[str, sim.SimState]]]
MIX = (
    ("suno", "succeed", 80),
    ("suno", "partial", 30),
    ("suno", "error", 20),
    ("suno", "legacy", 20),
    ("producer", "succeed", 30),
    ("suno", "unknown", 10),
    ("suno", "stuck", 10),
)


async def wait_all_terminal(tracker: Tracker, ids: Sequence[tuple[str, str]], timeout_s: float) -> list[Record]:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while True:
        records = await tracker.store.get_many(ids)
        if all(r is not None and r.terminal for r in records) or loop.time() > give_up:
            return [r for r in records if r is not None]
        await asyncio.sleep(0.1)


async def wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while not predicate() and loop.time() < give_up:
        await asyncio.sleep(0.05)
    return predicate()


async def enqueue_mix(tracker: Tracker, state: sim.SimState, rng: random.Random) -> dict[tuple[str, str], str]:
    scripts = {}
    for service, script, count in MIX:
        for n in range(count):
            task_id = f"{script}-{service}-{n}"
            state.add_task(service, task_id, script=script, run_s=rng.uniform(0.4, 2.5), clip_gap_s=0.4)
            await tracker.enqueue(service, task_id, deadline_s=4.0 if script == "stuck" else None)
            scripts[(service, task_id)] = script
    return scripts


def check_outcome(record: Record, script: str) -> None:
    expected = {
        "succeed": TaskState.SUCCEEDED,
        "partial": TaskState.SUCCEEDED,
        "legacy": TaskState.SUCCEEDED,
        "error": TaskState.FAILED,
        "unknown": TaskState.FAILED,
        "stuck": TaskState.FAILED,
    }[script]
    assert record.state is expected, (record.id, record.state)
    if script == "partial":
        assert record.partial is True
        assert [c.state for c in record.clips] == [ClipState.SUCCEEDED, ClipState.FAILED]
        assert record.clips[0].audio_url and record.clips[1].error
    if script in ("succeed", "legacy"):
        assert record.partial is False and all(c.audio_url for c in record.clips)
        assert record.response is not None
    reasons = {"error": Reason.UPSTREAM_ERROR, "unknown": Reason.NOT_FOUND, "stuck": Reason.DEADLINE}
    assert record.reason is reasons.get(script)


async def test_two_hundred_tasks_end_in_the_right_state_with_one_hook_call_each(
    real_backend: Backend, make_sim: MakeSim
) -> None:
    url, state = await make_sim(auto=False, rate_limit_rps=60.0, seed=3)
    settings = fast_settings(url, hooks=["probe_hooks:record"])
    tracker = Tracker.over(real_backend.redis, first_poll_s=settings.first_poll_s)
    scripts = await enqueue_mix(tracker, state, random.Random(11))
    probe_hooks.CALLS.clear()
    kwargs = jobs.worker_settings(settings, redis_pool=real_backend.make_arq_pool(), store_redis=real_backend.redis)
    async with jobs.running_worker(kwargs):
        records = await wait_all_terminal(tracker, list(scripts), timeout_s=40)
        assert len(records) == 200 and all(r.terminal for r in records)
        assert await wait_for(lambda: len(probe_hooks.CALLS) >= 200, timeout_s=15)
        await asyncio.sleep(0.5)  # a duplicate call would show up here
    for record in records:
        check_outcome(record, scripts[(record.service, record.id)])
    calls = Counter((c["service"], c["id"]) for c in probe_hooks.CALLS)
    assert set(calls) == set(scripts) and set(calls.values()) == {1}
    polled_ids = sum(len(entry.ids) for entry in state.log)
    assert len(state.log) * 5 < polled_ids  # batches: many ids per request


async def test_wait_returns_the_terminal_record_from_the_events_stream(
    real_backend: Backend, make_sim: MakeSim
) -> None:
    url, state = await make_sim(auto=False)
    settings = fast_settings(url, hooks=[])
    tracker = Tracker.over(real_backend.redis, first_poll_s=0.1)
    state.add_task("suno", "waited", script="succeed", run_s=0.6, clip_gap_s=0.2)
    await tracker.enqueue("suno", "waited")
    kwargs = jobs.worker_settings(settings, redis_pool=real_backend.make_arq_pool(), store_redis=real_backend.redis)
    async with jobs.running_worker(kwargs):
        record = await tracker.wait("suno", "waited", timeout_s=20)
    assert record.state is TaskState.SUCCEEDED and len(record.clips) == 2
    with pytest.raises(KeyError, match="not tracked"):
        await tracker.wait("suno", "never-enqueued", timeout_s=1)


BAD_ENTRIES: list[tuple[dict[str, str], str]] = [
    ({"service": "suno"}, "id is required"),
    ({"service": "suno", "id": ""}, "id is required"),
    ({"service": "suno", "id": "x" * 129}, "1-128 characters"),
    ({"service": "suno", "id": "ok-1", "colour": "red"}, "unknown field"),
    ({"service": "suno", "id": "ok-2", "meta": "{not json"}, "not valid JSON"),
    ({"service": "suno", "id": "ok-3", "meta": '{"k": "' + "v" * 5000 + '"}'}, "4096"),
    ({"service": "Suno!", "id": "ok-4"}, "must match"),
    ({"service": "suno", "id": "ok-5", "deadline_s": "0"}, "deadline_s"),
    ({"service": "suno", "id": "ok-6", "token": "nope"}, "not a configured token"),
]


async def test_bad_intake_entries_are_rejected_and_good_ones_around_them_kept(
    real_backend: Backend, make_sim: MakeSim
) -> None:
    url, state = await make_sim(auto=False)
    settings = fast_settings(url, hooks=[])
    store = real_backend.store()
    good = [f"good-{i}" for i in range(len(BAD_ENTRIES) + 1)]
    for i, (fields, _) in enumerate(BAD_ENTRIES):
        await real_backend.redis.xadd(store.intake_key, {"service": "suno", "id": good[i]})
        await real_backend.redis.xadd(store.intake_key, fields)
    await real_backend.redis.xadd(store.intake_key, {"service": "suno", "id": good[-1], "meta": '{"a": 1}'})
    kwargs = jobs.worker_settings(settings, redis_pool=real_backend.make_arq_pool(), store_redis=real_backend.redis)
    async with jobs.running_worker(kwargs):
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 10
        while await real_backend.redis.xlen(store.rejected_key) < len(BAD_ENTRIES) and loop.time() < give_up:
            await asyncio.sleep(0.05)
        records = await store.get_many(("suno", g) for g in good)
    rejected = [fields for _, fields in await real_backend.redis.xrange(store.rejected_key)]
    assert len(rejected) == len(BAD_ENTRIES)
    for (fields, reason_part), entry in zip(BAD_ENTRIES, rejected, strict=True):
        assert reason_part in entry["reason"] and "rejected_at_ms" in entry
        assert {k: entry[k] for k in fields} == fields
    assert all(r is not None for r in records)
    assert records[-1] is not None and records[-1].meta == {"a": 1}
    assert await real_backend.redis.xlen(store.intake_key) == 0  # processed entries are trimmed


async def test_two_workers_never_poll_an_id_twice_at_once(
    real_redis_url: str | None, request: pytest.FixtureRequest, make_sim: MakeSim
) -> None:
    url = require_real_redis(real_redis_url, request)
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, decode_responses=True)
    await client.flushall()
    sim_url, state = await make_sim(auto=False, seed=5)
    settings = fast_settings(sim_url, hooks=[], batch_size=10)
    tracker = Tracker.over(client, first_poll_s=0.1)
    ids = [("suno", f"pair-{i}") for i in range(100)]
    for service, task_id in ids:
        state.add_task(service, task_id, script="succeed", run_s=random.uniform(1.0, 3.0), clip_gap_s=0.3)
        await tracker.enqueue(service, task_id)
    pools = [jobs.arq_pool_over(aioredis.ConnectionPool.from_url(url)) for _ in range(2)]
    kw = [jobs.worker_settings(settings, redis_pool=p, store_redis=client) for p in pools]
    async with jobs.running_worker(kw[0]) as w1, jobs.running_worker(kw[1]) as w2:
        records = await wait_all_terminal(tracker, ids, timeout_s=30)
        claims = [jobs.runtime_of_worker(w).started.scheduler.counters["claims"] for w in (w1, w2)]
    assert all(r.state is TaskState.SUCCEEDED for r in records) and len(records) == 100
    assert min(claims) > 0, claims  # both workers did real work
    seen: dict[str, list[float]] = {}
    for entry in state.log:
        for task_id in entry.ids:
            seen.setdefault(task_id, []).append(entry.at_s)
    gaps = [b - a for times in seen.values() for a, b in zip(sorted(times), sorted(times)[1:], strict=False)]
    assert gaps and min(gaps) > 0.1, min(gaps)  # a double claim would poll an id twice within milliseconds
    await client.flushall()
    await client.aclose()


async def test_claims_of_a_killed_worker_come_back_after_the_lease(
    real_redis_url: str | None, request: pytest.FixtureRequest, make_sim: MakeSim
) -> None:
    url = require_real_redis(real_redis_url, request)
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, decode_responses=True)
    await client.flushall()
    slow_url, slow = await make_sim(auto=False, latency_s=30.0)
    fast_url, fast = await make_sim(auto=False)
    ids = [("suno", f"orphan-{i}") for i in range(20)]
    tracker = Tracker.over(client, first_poll_s=0.0)
    for service, task_id in ids:
        for state in (slow, fast):
            state.add_task(service, task_id, script="succeed", run_s=0.1, clip_gap_s=0.0)
        await tracker.enqueue(service, task_id)
    lease_s = 3.0
    env = {
        **os.environ,
        "ACETRACK_REDIS_URL": url,
        "ACETRACK_API_BASE_URL": slow_url,
        "ACETRACK_API_TOKEN": "t",
        "ACETRACK_LEASE_S": str(lease_s),
        "ACETRACK_POLL_S": "0.4",
        "ACETRACK_FIRST_POLL_S": "0",
    }
    proc = subprocess.Popen([sys.executable, "-m", "worker", "worker"], env=env, stderr=subprocess.DEVNULL)
    store = Store(client)
    try:
        # the slow simulator holds the worker's request open: wait until every id is claimed
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 20
        while loop.time() < give_up and proc.poll() is None:
            held = [await client.hexists(store.task_key(s, i), "claim") for s, i in ids]
            if all(held):
                break
            await asyncio.sleep(0.05)
        assert proc.poll() is None, "the worker subprocess exited early"
        assert all(held), "the worker never claimed the ids"
        await asyncio.sleep(1.0)  # let its poll job start: its request now hangs in the slow simulator
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = asyncio.get_running_loop().time()
    settings = fast_settings(fast_url, hooks=[], lease_s=lease_s)
    kwargs = jobs.worker_settings(
        settings, redis_pool=jobs.arq_pool_over(aioredis.ConnectionPool.from_url(url)), store_redis=client
    )
    async with jobs.running_worker(kwargs):
        records = await wait_all_terminal(tracker, ids, timeout_s=20)
    assert all(r.state is TaskState.SUCCEEDED for r in records) and len(records) == 20
    first_retry_after_kill_s = min(e.at_s for e in fast.log) - killed_at
    assert first_retry_after_kill_s > lease_s * 0.5  # held by the dead worker's lease until it ran out
    await client.flushall()
    await client.aclose()


async def test_a_slow_upstream_does_not_stop_the_cadence(real_backend: Backend, make_sim: MakeSim) -> None:
    # every answer takes 1 s, more than the poll interval (0.4 s): polls of other ids due meanwhile
    # go out while a request is in flight, and each id is polled again once its answer came back
    latency_s = 1.0
    url, state = await make_sim(auto=False, latency_s=latency_s)
    settings = fast_settings(url, hooks=[])
    tracker = Tracker.over(real_backend.redis, first_poll_s=settings.first_poll_s)
    kwargs = jobs.worker_settings(settings, redis_pool=real_backend.make_arq_pool(), store_redis=real_backend.redis)
    ids = [f"slow-{n}" for n in range(12)]
    async with jobs.running_worker(kwargs):
        for n, task_id in enumerate(ids):  # in three groups 0.4 s apart: due at different times
            state.add_task("suno", task_id, script="succeed", run_s=3.0, clip_gap_s=0.3)
            await tracker.enqueue("suno", task_id)
            if n % 4 == 3:
                await asyncio.sleep(0.4)
        records = await wait_all_terminal(tracker, [("suno", i) for i in ids], timeout_s=30)
    assert [r.state for r in records] == [TaskState.SUCCEEDED] * len(ids)
    starts = sorted(entry.at_s for entry in state.log)
    overlapping = sum(1 for a, b in zip(starts, starts[1:], strict=False) if b - a < latency_s)
    assert overlapping >= 1, starts  # a request went out while the one before it was still unanswered
    for task_id in ids:  # and no id was asked for again while its own answer was on the way
        asked = sorted(entry.at_s for entry in state.log if task_id in entry.ids)
        assert all(b - a >= latency_s for a, b in zip(asked, asked[1:], strict=False)), (task_id, asked)
