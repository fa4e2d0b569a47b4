"""One batch poll against the simulator over real sockets: the per-request error rules of DESIGN.md §1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from support import Backend

from worker.api import UpstreamClient
from worker.cadence import Pace, Policy
from worker.clock import system_clock
from worker.intake import EnqueueRequest
from worker.models import Reason, Sample, TaskState
from worker.polling import Poller
from worker.sim import SimState
from worker.store import Claimed, Store, Wait, sample_text

MakeSim = Callable[..., Awaitable[tuple[str, SimState]]]
CLAIM = {"batch": 50, "coalesce_ms": 0, "lease_ms": 30_000, "rate_rps": 1000.0}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


async def claimed(store: Store, service: str, ids: list[str]) -> str:
    """Register ``ids`` due now and claim them all; returns the claim id."""
    now_ms = system_clock()
    for task_id in ids:
        await store.register(EnqueueRequest(service, task_id), now_ms - 10, deadline_s=600, first_due_ms=now_ms - 10)
    got = await store.claim(service, "default", system_clock(), **CLAIM)  # type: ignore[arg-type]
    assert isinstance(got, Claimed) and sorted(got[1]) == sorted(ids)
    return got[0]


def make_poller(store: Store, session: aiohttp.ClientSession, url: str) -> Poller:
    api = UpstreamClient(session, url, {"default": "tok"})
    return Poller(store, api, system_clock, Policy(poll_s=1.0, max_poll_s=5.0), rate_limit_rps=1000.0)


async def test_503_with_retry_after_backs_off_the_service_and_fails_nothing(
    backend: Backend, make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    url, state = await make_sim(auto=False)
    store = backend.store()
    ids = [f"t{i}" for i in range(5)]
    claim_id = await claimed(store, "suno", ids)
    state.fail_next(1, 503, retry_after_s=7)
    before_ms = system_clock()
    assert await make_poller(store, session, url).poll_batch("suno", "default", claim_id, ids) == 0
    records = await store.get_many(("suno", i) for i in ids)
    assert all(r is not None and r.state is TaskState.PENDING for r in records)
    wait = await store.claim("suno", "default", system_clock(), **CLAIM)  # type: ignore[arg-type]
    assert isinstance(wait, Wait) and wait.why == "backoff" and 6000 < wait.ms <= 7000  # Retry-After honoured
    due = await backend.redis.zrange(store.due_key("suno", "default"), 0, -1, withscores=True)
    assert all(score >= before_ms + 7000 for _, score in due)


async def test_an_answered_poll_forgets_past_failures_and_reports_its_soonest_due(
    backend: Backend, make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    url, state = await make_sim(auto=False)
    store = backend.store()
    await store.back_off("suno", "default", system_clock() - 1)  # one failure, its hold over
    assert await store.backoff_failures("suno", "default") == 1
    ids = [f"t{i}" for i in range(3)]
    claim_id = await claimed(store, "suno", ids)
    poller = make_poller(store, session, url)
    scheduled: list[tuple[str, str, int]] = []
    poller.on_schedule = lambda service, token, due_ms: scheduled.append((service, token, due_ms))
    await poller.poll_batch("suno", "default", claim_id, ids)
    assert await store.backoff_failures("suno", "default") == 0
    due = await backend.redis.zrange(store.due_key("suno", "default"), 0, -1, withscores=True)
    soonest_ms = min(score for _, score in due)
    assert scheduled == [("suno", "default", soonest_ms)] and soonest_ms > system_clock() - 1000


async def test_401_pauses_the_token_and_keeps_tasks_pending(
    backend: Backend, make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    url, _ = await make_sim(auto=False, tokens=frozenset({"someone-else"}))
    store = backend.store()
    ids = [f"t{i}" for i in range(3)]
    claim_id = await claimed(store, "suno", ids)
    poller = make_poller(store, session, url)
    await poller.poll_batch("suno", "default", claim_id, ids)
    assert poller.paused_tokens == {"default"}
    assert "401" in (await store.paused_tokens(["default"]))["default"]
    records = await store.get_many(("suno", i) for i in ids)
    assert all(r is not None and r.state is TaskState.PENDING for r in records)


async def test_413_halves_the_batch_until_it_fits(
    backend: Backend, make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    url, state = await make_sim(auto=False, max_batch=3)
    store = backend.store()
    ids = [f"t{i}" for i in range(10)]
    for task_id in ids:
        state.add_task("suno", task_id, run_s=0.0, clip_gap_s=0.0)
    claim_id = await claimed(store, "suno", ids)
    finished = await make_poller(store, session, url).poll_batch("suno", "default", claim_id, ids)
    assert finished == 10
    statuses = [(len(e.ids), e.status) for e in state.log]
    assert (10, 413) in statuses and all(n <= 3 for n, s in statuses if s == 200)
    records = await store.get_many(("suno", i) for i in ids)
    assert all(r is not None and r.state is TaskState.SUCCEEDED for r in records)


async def test_a_single_id_still_refused_with_400_fails_as_rejected(
    backend: Backend, make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    url, state = await make_sim(auto=False)
    store = backend.store()
    claim_id = await claimed(store, "suno", ["lonely"])
    state.fail_next(1, 400)
    await make_poller(store, session, url).poll_batch("suno", "default", claim_id, ["lonely"])
    record = await store.get("suno", "lonely")
    assert record is not None and record.state is TaskState.FAILED and record.reason is Reason.REJECTED


async def test_no_api_fails_the_services_tasks_as_unknown_service(
    backend: Backend, make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    url, _ = await make_sim(auto=False)
    store = backend.store()
    claim_id = await claimed(store, "nosuch", ["a", "b"])
    await make_poller(store, session, url).poll_batch("nosuch", "default", claim_id, ["a", "b"])
    records = await store.get_many([("nosuch", "a"), ("nosuch", "b")])
    assert all(r is not None and r.reason is Reason.UNKNOWN_SERVICE for r in records)
    events = await backend.redis.xrange(store.events_key)
    assert [f["type"] for _, f in events] == ["task.failed", "task.failed"]


async def test_network_error_keeps_tasks_pending(backend: Backend, session: aiohttp.ClientSession) -> None:
    store = backend.store()
    claim_id = await claimed(store, "suno", ["t1"])
    await make_poller(store, session, "http://127.0.0.1:9").poll_batch("suno", "default", claim_id, ["t1"])
    record = await store.get("suno", "t1")
    assert record is not None and record.state is TaskState.PENDING
    assert await store.backoff_failures("suno", "default") == 1


async def test_a_task_naming_an_unconfigured_token_fails_as_rejected(
    backend: Backend, make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    url, _ = await make_sim(auto=False)
    store = backend.store()
    now_ms = system_clock() - 10
    await store.register(EnqueueRequest("suno", "t1", token="backup"), now_ms, deadline_s=60, first_due_ms=now_ms)
    got = await store.claim("suno", "backup", system_clock(), **CLAIM)  # type: ignore[arg-type]
    assert isinstance(got, Claimed)
    await make_poller(store, session, url).poll_batch("suno", "backup", got[0], got[1])
    record = await store.get("suno", "t1")
    assert record is not None and record.reason is Reason.REJECTED
    assert record.error is not None and "backup" in str(record.error["message"])


async def test_a_poll_that_changes_nothing_moves_only_the_poll_count_and_schedule(
    backend: Backend, make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    url, state = await make_sim(auto=False)
    state.add_task("suno", "slow", "succeed", run_s=60.0)  # queued for 15 s, then running
    store = backend.store()
    poller = make_poller(store, session, url)
    key = store.task_key("suno", "slow")
    await poller.poll_batch("suno", "default", await claimed(store, "suno", ["slow"]), ["slow"])
    stored_json = await backend.redis.hget(key, "record")
    got = await store.claim("suno", "default", system_clock() + 5000, **CLAIM)  # type: ignore[arg-type]
    assert isinstance(got, Claimed) and got[1] == ["slow"]
    second_ms = system_clock()
    await poller.poll_batch("suno", "default", got[0], ["slow"])
    assert await backend.redis.hget(key, "record") == stored_json  # not rewritten
    record = await store.get("suno", "slow")
    assert record is not None and record.attempts == 2 and record.updated_at_ms >= second_ms
    assert (await store.get_many([("suno", "slow")]))[0] == record
    due = await backend.redis.zscore(store.due_key("suno", "default"), "slow")
    assert due is not None and second_ms < due <= second_ms + 1000  # rescheduled, at most one interval on
    assert await backend.redis.hget(key, "claim") is None  # and the claim let go


async def test_a_finished_task_teaches_when_it_was_first_seen_running(
    backend: Backend, make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    url, state = await make_sim(auto=False)
    state.add_task("suno", "quick", "succeed", run_s=0.8, clip_gap_s=0.1)  # queued until 0.2 s, done at 0.9 s
    store = backend.store()
    poller = make_poller(store, session, url)
    await poller.poll_batch("suno", "default", await claimed(store, "suno", ["quick"]), ["quick"])
    for wait_s in (0.3, 0.7):
        await asyncio.sleep(wait_s)
        got = await store.claim("suno", "default", system_clock() + 5000, **CLAIM)  # type: ignore[arg-type]
        assert isinstance(got, Claimed)
        await poller.poll_batch("suno", "default", got[0], got[1])
    record = await store.get("suno", "quick")
    assert record is not None and record.state is TaskState.SUCCEEDED and record.attempts == 3
    [sample] = await store.lifetime_samples("suno")
    assert record.finished_at_ms is not None and sample.ok and sample.lifetime_s >= 0.9  # two waits of 0.3 + 0.7 s
    assert sample.lifetime_s == (record.finished_at_ms - record.enqueued_at_ms) / 1000  # enqueue to the terminal write
    queued, running, streaming, clip_done = sample.marks
    assert queued is not None and queued[0] == queued[1] < 200  # seen queued at poll 1 only
    assert running is not None and running[0] == queued[0] and 200 <= running[1] < 1000  # running at poll 2
    # streaming and a clip done were first seen together, at the last poll
    assert streaming == clip_done and streaming is not None and streaming[0] == running[1]
    # found this late after the upstream's finished_at, at the interval then in effect
    assert sample.poll_s == 1.0 and sample.latency_s is not None and 0 <= sample.latency_s < 1.0


async def test_while_the_upstream_calls_back_polls_are_a_sparse_safety_net(
    backend: Backend, make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    url, state = await make_sim(auto=False)
    store = backend.store()
    counts = store.callbacks_key("suno")

    async def next_poll_in_ms(task_id: str, budget_rps: float = 0.01) -> tuple[float, float]:
        """How long after the poll the task is due next: (at least, at most). The budget: polling
        one task every second in batches of one spends 100 times a budget of 0.01 requests/s."""
        state.add_task("suno", task_id, run_s=600.0)  # running all along
        claim_id = await claimed(store, "suno", [task_id])
        poller = make_poller(store, session, url)
        poller.rate_limit_rps, poller.batch_size = budget_rps, 1
        before_ms = system_clock()
        await poller.poll_batch("suno", "default", claim_id, [task_id])
        after_ms = system_clock()
        due_key = store.due_key("suno", "default")
        due_ms = await backend.redis.zscore(due_key, task_id)
        await backend.redis.zrem(due_key, task_id)  # out of the next step's claim
        await backend.redis.delete(store.rate_key("default"))  # a fresh budget for it
        assert due_ms is not None
        return due_ms - after_ms, due_ms - before_ms

    # poll_s 1, max_poll_s 5: every second without callbacks
    assert (await next_poll_in_ms("t0"))[0] <= 1000
    await backend.redis.hset(counts, mapping={"finished": 40, "called": 39})  # callbacks come: spaced out
    assert (await next_poll_in_ms("t1"))[1] > 2400  # 5 s, moved back onto a grid of 2.5 s
    # the same callbacks, but polling the few tasks every second spends little of the budget: polls stay
    assert (await next_poll_in_ms("t1b", budget_rps=50.0))[0] <= 1000
    await backend.redis.hset(counts, mapping={"finished": 100, "called": 39})  # they stopped coming
    assert (await next_poll_in_ms("t2"))[0] <= 1000


async def test_a_latency_target_moves_the_interval_and_the_claims_coalesce_window_with_it(
    backend: Backend, make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    url, state = await make_sim(auto=False)
    store = backend.store()
    # 30 finishes found half an interval late: a p95 of 2 s takes polls every 4 s
    # (lifetimes 0-580 s: no age is skipped, and a new task is young)
    learned = [sample_text(Sample(20.0 * i, True, (), latency_s=0.5, poll_s=1.0)) for i in range(30)]
    await backend.redis.lpush(store.lifetimes_key("suno"), *learned)

    async def next_poll_in_ms(task_id: str, target_p95_s: float | None, pace: Pace) -> float:
        state.add_task("suno", task_id, run_s=600.0)
        claim_id = await claimed(store, "suno", [task_id])
        poller = make_poller(store, session, url)
        poller.target_p95_s, poller.pace = target_p95_s, pace
        await poller.poll_batch("suno", "default", claim_id, [task_id])
        due_ms = await backend.redis.zscore(store.due_key("suno", "default"), task_id)
        await backend.redis.zrem(store.due_key("suno", "default"), task_id)
        assert due_ms is not None
        return due_ms - system_clock()

    pace = Pace(1.0)
    assert await next_poll_in_ms("plain", None, pace) <= 1000 and pace.coalesce_ms("suno") == 500
    assert await next_poll_in_ms("aimed", 2.0, pace) > 1900  # 4 s, moved back onto a grid of 2 s
    assert pace.coalesce_ms("suno") == 2000 and pace.coalesce_ms("producer") == 500  # per service
    assert Pace(1.0, fixed_coalesce_s=0.3).coalesce_ms("suno") == 300  # set by hand: it stays


async def test_behind_a_backlog_the_poll_of_a_finishing_task_is_placed_ahead(
    backend: Backend, make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    # the claim loop told the worker's Pace its last claim of the queue ran 3 s late
    url, state = await make_sim(auto=False)
    state.add_task("suno", "fin", script="succeed", run_s=0.0, clip_gap_s=600.0)  # one clip done at once
    state.add_task("suno", "run", script="succeed", run_s=600.0)  # nothing done
    store = backend.store()
    claim_id = await claimed(store, "suno", ["fin", "run"])
    pace = Pace(1.0)
    pace.note_claim("suno", "default", 3000, system_clock())
    poller = make_poller(store, session, url)
    poller.pace = pace
    before_ms = system_clock()
    assert await poller.poll_batch("suno", "default", claim_id, ["fin", "run"]) == 0
    due = dict(await backend.redis.zrange(store.due_key("suno", "default"), 0, -1, withscores=True))
    assert due["fin"] < before_ms - 2000  # its 0.5 s interval counted from the backlog's head
    assert due["run"] >= before_ms  # the running task takes the wait
