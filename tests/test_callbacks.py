"""The upstream's callbacks as hints: the id found in any body shape, the key, and a callback that
makes a real worker confirm a finished task long before its scheduled poll."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from receivers import Answer, Receiver, serve
from support import Backend, eventually, fast_settings

from worker import jobs
from worker.cadence import Policy, callback_share, polling_demand, with_callbacks
from worker.callbacks import callback_task_id
from worker.control import Control
from worker.http import Api, create_app
from worker.intake import EnqueueRequest
from worker.models import Sample, TaskState
from worker.sim import SimState
from worker.store import CALLBACK_WINDOW, Claimed, Store

MakeSim = Callable[..., Awaitable[tuple[str, SimState]]]
KEY = "cb-key-0123456789"
NOW_MS = 1_767_000_000_000
SEEDS = Path(__file__).parent / "seeds"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"task_id": "t1", "data": [{"task_id": "other"}]}, "t1"),
        ({"id": "t2"}, "t2"),
        ({"data": {"task_id": "t3"}}, "t3"),
        ({"success": True, "data": [{"id": "clip"}, {"task_id": "t4"}]}, "t4"),
        ({"task_id": "", "id": "t5"}, "t5"),
        ({"data": [{"task_id": 7}]}, None),
        ([{"task_id": "t6"}], None),
        ("t7", None),
        ({}, None),
    ],
)
def test_the_task_id_is_found_where_the_upstream_puts_it(body: Any, expected: str | None) -> None:
    assert callback_task_id(body) == expected


@pytest.mark.parametrize("seed", ["suno_retrieve.json", "producer_retrieve.json"])
def test_the_task_id_is_found_in_the_seeds_task_shapes(seed: str) -> None:
    task = json.loads((SEEDS / seed).read_text())
    assert callback_task_id(task) == task["id"]  # the whole task, as a retrieve answers it
    assert callback_task_id(task["response"]) == task["id"]  # its response: {success, task_id, data}


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"not json", "invalid_json"), (b"", "invalid_json"), (b'[{"task_id": "t1"}]', "invalid"), (b"7", "invalid")],
)
async def test_a_garbage_callback_is_a_400_and_stores_nothing(
    backend: Backend, session: aiohttp.ClientSession, body: bytes, code: str
) -> None:
    store = backend.store()
    await store.register(EnqueueRequest("suno", "t1"), NOW_MS, deadline_s=600, first_due_ms=NOW_MS + 60_000)
    keys_before = sorted(await backend.redis.keys("*"))
    server, url = await serve_api(store, callback_key=KEY, callback_enqueue=True, clock=lambda: NOW_MS)
    try:
        async with session.post(f"{url}/callbacks/suno?key={KEY}", data=body) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["code"] == code
    finally:
        await server.close()
    assert sorted(await backend.redis.keys("*")) == keys_before
    assert await backend.redis.zscore(store.due_key("suno", "default"), "t1") == NOW_MS + 60_000


async def serve_api(store: Store, **api_kwargs: Any) -> tuple[TestServer, str]:
    control = Control(store, {}, frozenset(), first_poll_s=3.0)
    api = Api(store=store, control=control, **api_kwargs)
    server = TestServer(create_app(api), host="127.0.0.1")
    await server.start_server()
    return server, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_a_callback_makes_a_pending_task_due_now_and_nothing_else(
    backend: Backend, session: aiohttp.ClientSession
) -> None:
    store = backend.store()
    req = EnqueueRequest("suno", "t1")
    await store.register(req, NOW_MS, deadline_s=600, first_due_ms=NOW_MS + 60_000)
    server, url = await serve_api(store, callback_key=KEY, http_token="bearer-secret", clock=lambda: NOW_MS + 5000)
    try:
        async with session.post(f"{url}/callbacks/suno?key={KEY}", json={"data": {"task_id": "t1"}}) as resp:
            assert resp.status == 202 and (await resp.json())["hint"] == "hinted"  # no bearer token needed
        assert await backend.redis.zscore(store.due_key("suno", "default"), "t1") == NOW_MS + 5000
        async with session.post(f"{url}/callbacks/suno?key={KEY}", json={"task_id": "t1"}) as resp:
            assert (await resp.json())["hint"] == "due"  # a second callback changes nothing
        async with session.post(f"{url}/callbacks/suno?key={KEY}", json={"task_id": "nosuch"}) as resp:
            assert resp.status == 202 and (await resp.json())["hint"] == "untracked"
        assert await store.get("suno", "nosuch") is None  # dropped: nothing stored
        async with session.post(f"{url}/callbacks/suno?key={KEY}", json={"status": "done"}) as resp:
            assert resp.status == 400 and "task_id, id, data.task_id" in (await resp.json())["error"]["message"]
        record = await store.get("suno", "t1")
        assert record is not None and record.state is TaskState.PENDING  # the body is never the result
    finally:
        await server.close()


@pytest.mark.parametrize("query", ["", "?key=wrong", "?key="])
async def test_a_missing_or_wrong_key_is_answered_as_a_route_that_does_not_exist(
    backend: Backend, session: aiohttp.ClientSession, query: str
) -> None:
    server, url = await serve_api(backend.store(), callback_key=KEY)
    try:
        async with session.post(f"{url}/callbacks/suno{query}", json={"task_id": "t1"}) as resp:
            wrong = (resp.status, await resp.read())
        async with session.post(f"{url}/no/such/route", json={}) as resp:
            absent = (resp.status, await resp.read())
        assert wrong == absent and wrong[0] == 404
    finally:
        await server.close()


async def test_without_a_key_set_callbacks_are_off(backend: Backend, session: aiohttp.ClientSession) -> None:
    server, url = await serve_api(backend.store())
    try:
        async with session.post(f"{url}/callbacks/suno?key=", json={"task_id": "t1"}) as resp:
            assert resp.status == 404
    finally:
        await server.close()


async def test_callback_enqueue_starts_tracking_an_unknown_task(
    backend: Backend, session: aiohttp.ClientSession
) -> None:
    store = backend.store()
    server, url = await serve_api(store, callback_key=KEY, callback_enqueue=True, clock=lambda: NOW_MS)
    try:
        async with session.post(f"{url}/callbacks/producer?key={KEY}", json={"task_id": "new-1"}) as resp:
            assert resp.status == 202 and (await resp.json())["hint"] == "enqueued"
        record = await store.get("producer", "new-1")
        assert record is not None and record.state is TaskState.PENDING
        assert await backend.redis.zscore(store.due_key("producer", "default"), "new-1") == NOW_MS  # due now
    finally:
        await server.close()


@asynccontextmanager
async def worker_and_api(backend: Backend, sim_url: str, poll_s: float = 0.4) -> AsyncIterator[tuple[Store, str]]:
    """A real worker against the simulator and the HTTP API taking callbacks, each task's first poll
    a minute away: (the store, the API's URL)."""
    store = backend.store()
    settings = fast_settings(sim_url, first_poll_s=60.0, poll_s=poll_s, max_poll_s=max(2.0, poll_s), hooks=[])
    server, url = await serve_api(store, callback_key=KEY, first_poll_s=60.0)
    try:
        kwargs = jobs.worker_settings(settings, redis_pool=backend.make_arq_pool(), store_redis=backend.redis)
        async with jobs.running_worker(kwargs):
            yield store, url
    finally:
        await server.close()


async def test_a_callback_has_a_real_worker_confirm_the_task_before_its_scheduled_poll(
    real_backend: Backend, make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    sim_url, state = await make_sim(auto=False)
    state.add_task("suno", "cb-1", script="succeed", run_s=0.0, clip_gap_s=0.0)  # done when it calls back
    async with worker_and_api(real_backend, sim_url) as (store, url):
        async with session.post(f"{url}/tasks", json={"service": "suno", "id": "cb-1"}) as resp:
            assert resp.status == 202
        record = await store.get("suno", "cb-1")
        assert record is not None
        scheduled_ms = record.enqueued_at_ms + 30_000  # the grid puts the first poll 30-60 s on
        async with session.post(f"{url}/callbacks/suno?key={KEY}", json={"task_id": "cb-1"}) as resp:
            assert (await resp.json())["hint"] == "hinted"
        done = await eventually(lambda: _succeeded(store, "cb-1"), timeout_s=20)
    record = await store.get("suno", "cb-1")
    assert done and record is not None and record.finished_at_ms is not None
    assert record.finished_at_ms < scheduled_ms  # in that order: confirmed long before its own poll
    assert [e.ids for e in state.log] == [["cb-1"]]  # one request, the callback's confirmation


async def test_a_forged_callback_for_a_running_task_does_not_finish_it(
    real_backend: Backend, make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    sim_url, state = await make_sim(auto=False)
    state.add_task("suno", "cb-run", script="succeed", run_s=600.0)  # runs for ten minutes
    # its next poll after the confirming one is a minute away: the test sees the confirmation alone
    async with worker_and_api(real_backend, sim_url, poll_s=60.0) as (store, url):
        async with session.post(f"{url}/tasks", json={"service": "suno", "id": "cb-run"}) as resp:
            assert resp.status == 202
        forged = {"success": True, "task_id": "cb-run", "data": [{"id": "x", "state": "succeeded"}]}
        async with session.post(f"{url}/callbacks/suno?key={KEY}", json=forged) as resp:
            assert (await resp.json())["hint"] == "hinted"
        assert await eventually(lambda: _polled(store, "cb-run"), timeout_s=20)
    record = await store.get("suno", "cb-run")
    assert record is not None and record.state is TaskState.PENDING  # the confirming poll said running
    assert record.attempts == 1 and record.finished_at_ms is None
    assert [e.ids for e in state.log] == [["cb-run"]]  # one request: the confirmation


async def test_ten_thousand_callbacks_for_one_task_cause_one_confirming_poll(
    real_backend: Backend, make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    sim_url, state = await make_sim(auto=False)
    state.add_task("suno", "cb-many", script="succeed", run_s=0.0, clip_gap_s=0.0)
    async with worker_and_api(real_backend, sim_url) as (store, url):
        async with session.post(f"{url}/tasks", json={"service": "suno", "id": "cb-many"}) as resp:
            assert resp.status == 202

        async def call_back() -> str:
            async with session.post(f"{url}/callbacks/suno?key={KEY}", json={"task_id": "cb-many"}) as resp:
                return str((await resp.json())["hint"])

        # they race the worker's poll: some come before it, some while it is in flight, some after
        hints = await asyncio.gather(*(call_back() for _ in range(10_000)))
        assert await eventually(lambda: _succeeded(store, "cb-many"), timeout_s=20)
    assert hints.count("hinted") == 1 and len(hints) == 10_000
    assert set(hints) <= {"hinted", "due", "in_flight", "finished"}
    assert [e.ids for e in state.log] == [["cb-many"]]  # one request in all


async def _polled(store: Store, task_id: str) -> bool:
    record = await store.get("suno", task_id)
    return record is not None and record.attempts > 0


async def _succeeded(store: Store, task_id: str) -> bool:
    record = await store.get("suno", task_id)
    return record is not None and record.state is TaskState.SUCCEEDED


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real HTTP endpoint that records the callbacks it is sent and answers 202."""
    async with serve(default=Answer(202, json={})) as sink:
        yield sink


async def test_the_simulator_calls_back_when_a_task_finishes(make_sim: MakeSim, receiver: Receiver) -> None:
    url = receiver.url
    _, state = await make_sim(auto=False, callback_url=f"{url}/all")
    state.add_task("suno", "ok-1", script="succeed", run_s=0.1, clip_gap_s=0.1)
    state.add_task("suno", "bad-1", script="error", run_s=0.1)
    state.add_task("producer", "own-1", script="succeed", run_s=0.1, callback_url=f"{url}/own")
    state.add_task("suno", "stuck-1", script="stuck")  # never finishes: never calls back
    # the sender counts a callback once its answer came back
    assert await eventually(lambda: _true(len(state.callbacks.sent) == 3), timeout_s=10)
    bodies = {hit.json()["task_id"]: (hit.path, hit.json()) for hit in receiver.hits}
    assert sorted(bodies) == ["bad-1", "ok-1", "own-1"]
    path, ok = bodies["ok-1"]
    assert path == "/all" and ok["success"] is True and [c["state"] for c in ok["data"]] == ["succeeded"] * 2
    assert bodies["bad-1"][1]["success"] is False and bodies["bad-1"][1]["error"]["code"] == "generation_failed"
    assert bodies["own-1"][0] == "/own" and len(bodies["own-1"][1]["data"]) == 1  # Producer: one clip
    assert [s.status for s in state.callbacks.sent] == [202] * 3


async def test_the_simulator_loses_and_delays_callbacks_as_told(make_sim: MakeSim, receiver: Receiver) -> None:
    url = receiver.url
    _, state = await make_sim(auto=False, callback_url=f"{url}/all", callback_loss=0.5, callback_delay_s=(0.3, 0.3))
    started = asyncio.get_running_loop().time()
    for n in range(20):
        state.add_task("suno", f"t{n}", script="error", run_s=0.05)
    lost = state.callbacks.lost  # decided when each task is added
    assert 0 < lost < 20
    assert await eventually(lambda: _true(len(receiver.hits) == 20 - lost), timeout_s=10)
    assert all(hit.at_s - started >= 0.3 for hit in receiver.hits)  # each one late by the delay


async def test_a_callback_from_the_simulator_has_a_real_worker_confirm_the_task(
    real_backend: Backend, make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    sim_url, state = await make_sim(auto=False)
    async with worker_and_api(real_backend, sim_url) as (store, url):
        async with session.post(f"{url}/tasks", json={"service": "suno", "id": "cb-2"}) as resp:
            assert resp.status == 202
        # the producer's generation request named acetrack as its callback_url
        state.add_task("suno", "cb-2", run_s=0.5, clip_gap_s=0.2, callback_url=f"{url}/callbacks/suno?key={KEY}")
        done = await eventually(lambda: _succeeded(store, "cb-2"), timeout_s=20)
        assert await eventually(lambda: _true(len(state.callbacks.sent) == 1), timeout_s=10)
    assert done and [s.status for s in state.callbacks.sent] == [202]
    assert [e.ids for e in state.log] == [["cb-2"]]  # one request: the callback's confirmation


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize(
    ("finished", "called", "share"),
    [(0, 0, 0.0), (19, 19, 0.0), (20, 18, 0.9), (50, 55, 1.0), (40, 10, 0.25)],
)
def test_the_callback_share_waits_for_enough_finishes(finished: int, called: int, share: float) -> None:
    assert callback_share(finished, called) == pytest.approx(share)


@pytest.mark.parametrize(
    ("share", "poll_s"),
    # a tenth lost: twice as long; a twentieth or less: max_poll_s (the lost ones stay within the p95)
    [(0.0, 3.0), (0.49, 3.0), (0.8, 4.0), (0.9, 6.0), (0.95, 60.0), (1.0, 60.0)],
)
def test_polls_space_out_as_far_as_lost_callbacks_allow(share: float, poll_s: float) -> None:
    # polling every task every 3 s would need 100 times the budget
    policy = with_callbacks(Policy(poll_s=3.0, max_poll_s=60.0, not_found_grace_s=45.0), share, demand=100.0)
    assert policy.poll_s == pytest.approx(poll_s) and (policy.max_poll_s, policy.not_found_grace_s) == (60.0, 45.0)
    # while polling fits the budget, polls stay as they are
    assert with_callbacks(Policy(poll_s=3.0), share, demand=1.0) == Policy(poll_s=3.0)
    # past it, only as far as it takes to fit: a budget 1.5 times short, 1.5 times the interval at most
    assert with_callbacks(Policy(poll_s=3.0), share, demand=1.5).poll_s == pytest.approx(min(poll_s, 4.5))


def test_the_polling_demand_is_the_share_of_the_budget_polling_every_task_would_spend() -> None:
    # 7,500 tasks every 3 s in batches of 50: 50 requests/s, all of a 50 requests/s budget
    assert polling_demand(7500, Policy(poll_s=3.0), 50, 50.0) == pytest.approx(1.0)
    assert polling_demand(300, Policy(poll_s=3.0), 50, 50.0) == pytest.approx(0.04)


async def test_the_first_callback_per_task_is_counted_and_finishes_halve_the_counts(backend: Backend) -> None:
    store = backend.store()
    for n in range(3):
        await store.register(EnqueueRequest("suno", f"t{n}"), NOW_MS, deadline_s=600, first_due_ms=NOW_MS + 60_000)
    for task_id in ("t0", "t0", "t1", "nosuch"):  # t0 twice: one count
        await store.hint("suno", task_id, NOW_MS)
    assert await store.callback_counts("suno") == (0, 2)
    record = await store.get("suno", "t2")
    assert record is not None
    for n in range(2 * CALLBACK_WINDOW - 1):  # the finishes, as the write path counts them
        done = record.evolve(id=f"f{n}", state=TaskState.SUCCEEDED, finished_at_ms=NOW_MS)
        await store.register(EnqueueRequest("suno", f"f{n}"), NOW_MS, deadline_s=600, first_due_ms=NOW_MS)
        assert await store.finish(done, NOW_MS, [], sample=Sample(60.0))
    assert await store.callback_counts("suno") == (2 * CALLBACK_WINDOW - 1, 2)
    await store.finish(record.evolve(state=TaskState.SUCCEEDED), NOW_MS, [], sample=Sample(60.0))
    assert await store.callback_counts("suno") == (CALLBACK_WINDOW, 1)  # halved: what happens now counts
    assert await store.hint("suno", "t2", NOW_MS) == "finished"  # a late callback still counts
    assert await store.callback_counts("suno") == (CALLBACK_WINDOW, 2)


async def test_a_callback_while_a_poll_is_in_flight_makes_the_task_due_when_it_answers(backend: Backend) -> None:
    store = backend.store()
    await store.register(EnqueueRequest("suno", "t1"), NOW_MS, deadline_s=600, first_due_ms=NOW_MS)
    got = await store.claim("suno", "default", NOW_MS, batch=50, coalesce_ms=0, lease_ms=30_000, rate_rps=1e6)
    assert isinstance(got, Claimed) and got.ids == ["t1"]
    assert await store.hint("suno", "t1", NOW_MS + 500) == "in_flight"
    # the poll's answer (sent before the callback) says running: its next poll would be a minute away
    [written] = await store.run_calls(
        [store.touch_call("suno", "default", got.claim_id, [("t1", NOW_MS + 60_000, "")])]
    )
    assert written and await backend.redis.zscore(store.due_key("suno", "default"), "t1") == NOW_MS + 500
    assert not await backend.redis.hexists(store.task_key("suno", "t1"), "hint_ms")  # used once


async def test_a_callback_puts_its_task_ahead_of_a_backlog_of_due_polls(backend: Backend) -> None:
    # the rate budget fell short: 120 polls are overdue, oldest first; a callback's task jumps them
    store = backend.store()
    for n in range(120):
        req = EnqueueRequest("suno", f"late-{n}")
        await store.register(req, NOW_MS - 90_000, deadline_s=600, first_due_ms=NOW_MS - 60_000 + n)
    for task_id, due_ms in (("cb-later", NOW_MS + 60_000), ("cb-due", NOW_MS - 30_000), ("cb-held", NOW_MS - 70_000)):
        await store.register(EnqueueRequest("suno", task_id), NOW_MS - 90_000, deadline_s=600, first_due_ms=due_ms)
    held = await store.claim("suno", "default", NOW_MS, batch=1, coalesce_ms=0, lease_ms=30_000, rate_rps=1e6)
    assert isinstance(held, Claimed) and held.ids == ["cb-held"]  # its poll is in flight
    assert await store.hint("suno", "cb-held", NOW_MS) == "in_flight"
    assert await store.hint("suno", "cb-later", NOW_MS) == "hinted"
    assert await store.hint("suno", "cb-due", NOW_MS + 1) == "due"  # due already, behind 120 others
    # the in-flight poll answers "running": the write makes its task due ahead of the backlog too
    [written] = await store.run_calls(
        [store.touch_call("suno", "default", held.claim_id, [("cb-held", NOW_MS + 60_000, "")])]
    )
    assert written
    got = await store.claim("suno", "default", NOW_MS + 2, batch=3, coalesce_ms=0, lease_ms=30_000, rate_rps=1e6)
    assert isinstance(got, Claimed) and sorted(got.ids) == ["cb-due", "cb-held", "cb-later"]
    again = await store.claim("suno", "default", NOW_MS + 3, batch=50, coalesce_ms=0, lease_ms=30_000, rate_rps=1e6)
    assert isinstance(again, Claimed) and again.ids == [f"late-{n}" for n in range(50)]  # then oldest first


async def test_a_claim_says_how_long_the_ids_it_left_have_been_due(backend: Backend) -> None:
    store = backend.store()
    for n, due_ms in enumerate((NOW_MS - 4000, NOW_MS - 1000, NOW_MS + 500)):
        await store.register(EnqueueRequest("suno", f"t{n}"), NOW_MS - 60_000, deadline_s=600, first_due_ms=due_ms)
    got = await store.claim("suno", "default", NOW_MS, batch=1, coalesce_ms=0, lease_ms=30_000, rate_rps=1e6)
    assert isinstance(got, Claimed) and got.ids == ["t0"] and got.late_ms == 1000  # t1 still waits, 1 s late
    # t2 tops the batch up from the coalesce window: nothing is left overdue, so no backlog
    got = await store.claim("suno", "default", NOW_MS + 10, batch=2, coalesce_ms=1000, lease_ms=30_000, rate_rps=1e6)
    assert isinstance(got, Claimed) and got.ids == ["t1", "t2"] and got.late_ms == 0


async def test_a_task_placed_ahead_of_a_drained_backlog_is_no_backlog_of_its_own(backend: Backend) -> None:
    # a poll placed a finishing task 3 s before now, the backlog then drained: it is the only id due
    store = backend.store()
    await store.register(EnqueueRequest("suno", "fin"), NOW_MS - 60_000, deadline_s=600, first_due_ms=NOW_MS - 3000)
    await store.register(EnqueueRequest("suno", "later"), NOW_MS - 60_000, deadline_s=600, first_due_ms=NOW_MS + 900)
    got = await store.claim("suno", "default", NOW_MS, batch=50, coalesce_ms=0, lease_ms=30_000, rate_rps=1e6)
    assert isinstance(got, Claimed) and got.ids == ["fin"] and got.late_ms == 0  # its next poll is not moved
