"""Tests of the Tasks API simulator over real HTTP on loopback, with a controllable clock."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from worker.sim import SIM_STATE, SimState, create_app, run_sim
from worker.sim_tasks import SCRIPTS, auto_run_s, auto_script

Json = dict[str, Any]
T0 = 1_767_119_745.5
PREVIEW = "https://audiopipe.suno.ai/"


class FakeClock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Sim:
    url: str
    state: SimState
    session: aiohttp.ClientSession

    async def post(self, service: str, body: object, token: str | None = "tok") -> tuple[int, Any, Mapping[str, str]]:
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        async with self.session.post(f"{self.url}/{service}/tasks", json=body, headers=headers) as resp:
            return resp.status, await resp.json(), resp.headers

    async def retrieve(self, service: str, task_id: str) -> Json:
        status, body, _ = await self.post(service, {"action": "retrieve", "id": task_id})
        assert status == 200
        assert isinstance(body, dict)
        return body

    async def batch(self, service: str, ids: list[str], limit: int | None = None) -> Json:
        body: Json = {"action": "retrieve_batch", "ids": ids, "limit": len(ids) if limit is None else limit}
        status, answer, _ = await self.post(service, body)
        assert status == 200
        assert isinstance(answer, dict)
        return answer


MakeSim = Callable[..., Awaitable[Sim]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_sim(clock: FakeClock) -> AsyncIterator[MakeSim]:
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())

        async def make(**knobs: Any) -> Sim:
            knobs.setdefault("clock", clock)
            knobs.setdefault("seed", 7)
            app = create_app(**knobs)
            server = await stack.enter_async_context(TestServer(app))
            return Sim(str(server.make_url("")).rstrip("/"), app[SIM_STATE], session)

        yield make


@pytest.fixture
async def sim(make_sim: MakeSim) -> Sim:
    return await make_sim(auto=False)


def clips(record: Json) -> list[Json]:
    data = record["response"]["data"]
    assert isinstance(data, list)
    return data


# --- lifecycles ----------------------------------------------------------------------------------


async def test_suno_succeed_lifecycle(sim: Sim, clock: FakeClock) -> None:
    sim.state.add_task("suno", "s1", run_s=4.0, clip_gap_s=1.0)

    pending = await sim.retrieve("suno", "s1")
    assert [c["state"] for c in clips(pending)] == ["pending", "pending"]
    assert not any("audio_url" in c for c in clips(pending))
    assert "finished_at" not in pending and "duration" not in pending

    clock.now = T0 + 1.5
    running = await sim.retrieve("suno", "s1")
    assert running["response"]["success"] is True  # the real service says so while running
    assert [c["state"] for c in clips(running)] == ["running", "running"]
    assert all(c["audio_url"] == f"{PREVIEW}?item_id={c['id']}" for c in clips(running))
    assert "finished_at" not in running

    clock.now = T0 + 3.0
    assert {c["state"] for c in clips(await sim.retrieve("suno", "s1"))} == {"streaming"}

    clock.now = T0 + 4.5
    first, second = clips(await sim.retrieve("suno", "s1"))
    assert first["state"] == "succeeded" and second["state"] == "streaming"
    assert first["audio_url"] == f"https://cdn1.suno.ai/{first['id']}.mp3"
    assert first["video_url"] == f"https://cdn1.suno.ai/{first['id']}.mp4"
    assert first["image_url"].startswith("https://") and first["title"]
    assert isinstance(first["duration"], float)

    clock.now = T0 + 9.0
    done = await sim.retrieve("suno", "s1")
    assert {c["state"] for c in clips(done)} == {"succeeded"}
    assert done["duration"] == 5.0
    assert done["finished_at"] == pytest.approx(T0 + 5.0)
    assert done["response"]["success"] is True
    assert first["id"] != second["id"]


async def test_producer_succeed_lifecycle(sim: Sim, clock: FakeClock) -> None:
    sim.state.add_task("producer", "p1", run_s=10.0)

    pending = await sim.retrieve("producer", "p1")
    assert clips(pending) == [{"id": clips(pending)[0]["id"], "title": "", "state": "pending", "progress": "0%"}]

    progress = []
    for at in (3.0, 6.0, 9.0):
        clock.now = T0 + at
        (clip,) = clips(await sim.retrieve("producer", "p1"))
        assert clip["state"] == "running" and "audio_url" not in clip
        progress.append(int(clip["progress"].rstrip("%")))
    assert progress == sorted(progress) and progress[0] < progress[-1] < 100

    clock.now = T0 + 10.0
    done = await sim.retrieve("producer", "p1")
    (clip,) = clips(done)
    assert clip["state"] == "succeeded" and clip["progress"] == "100%"
    assert re.fullmatch(r"https://storage\.googleapis\.com/.+/audio/" + clip["id"] + r"\.m4a", clip["audio_url"])
    assert isinstance(clip["duration"], str) and float(clip["duration"]) > 0
    assert clip["video_url"] is None
    assert "success" not in done["response"]
    assert done["type"] == "audios"
    assert done["duration"] == 10.0 and done["finished_at"] == pytest.approx(T0 + 10.0)


async def test_suno_partial_second_clip_fails(sim: Sim, clock: FakeClock) -> None:
    sim.state.add_task("suno", "part", script="partial", run_s=2.0, clip_gap_s=1.0)
    clock.now = T0 + 3.0
    done = await sim.retrieve("suno", "part")
    good, bad = clips(done)
    assert good["state"] == "succeeded" and good["audio_url"].endswith(".mp3")
    assert bad["state"] == "error" and bad["error"] and "audio_url" not in bad
    assert done["finished_at"] == pytest.approx(T0 + 3.0)


async def test_producer_partial_is_a_success(sim: Sim, clock: FakeClock) -> None:
    sim.state.add_task("producer", "part", script="partial", run_s=2.0)
    clock.now = T0 + 2.0
    (clip,) = clips(await sim.retrieve("producer", "part"))
    assert clip["state"] == "succeeded" and clip["audio_url"].endswith(".m4a")


@pytest.mark.parametrize("service", ["suno", "producer"])
async def test_error_script_fails_at_run_s(sim: Sim, clock: FakeClock, service: str) -> None:
    sim.state.add_task(service, "bad", script="error", run_s=4.0)
    clock.now = T0 + 1.5
    before = await sim.retrieve(service, "bad")
    assert {c["state"] for c in clips(before)} == {"running"} and "finished_at" not in before
    clock.now = T0 + 3.9
    assert "finished_at" not in await sim.retrieve(service, "bad")

    clock.now = T0 + 4.0
    after = await sim.retrieve(service, "bad")
    assert after["response"]["success"] is False
    assert after["response"]["error"]["code"] == "generation_failed"
    assert after["response"]["data"] == [] and after["response"]["task_id"] == "bad"
    assert after["finished_at"] == pytest.approx(T0 + 4.0)


async def test_legacy_looks_like_the_suno_seed(sim: Sim, clock: FakeClock) -> None:
    sim.state.add_task("suno", "old", script="legacy", run_s=4.0, clip_gap_s=2.0)
    for at in (0.0, 2.0):
        clock.now = T0 + at
        for clip in clips(await sim.retrieve("suno", "old")):
            assert "state" not in clip and "audio_url" not in clip and "image_url" not in clip

    clock.now = T0 + 5.0
    first, second = clips(await sim.retrieve("suno", "old"))
    assert first["audio_url"].startswith("https://cdn1.suno.ai/") and "audio_url" not in second

    clock.now = T0 + 6.0
    done = await sim.retrieve("suno", "old")
    assert "finished_at" not in done and "duration" not in done
    assert done["response"]["success"] is True
    for clip in clips(done):
        assert "state" not in clip
        assert clip["audio_url"] == f"https://cdn1.suno.ai/{clip['id']}.mp3"
        assert clip["video_url"] == f"https://cdn1.suno.ai/{clip['id']}.mp4"


async def test_stuck_never_finishes(sim: Sim, clock: FakeClock) -> None:
    sim.state.add_task("suno", "stuck", script="stuck", run_s=2.0)
    sim.state.add_task("producer", "stuck", script="stuck", run_s=2.0)
    clock.now = T0 + 10_000.0
    suno = await sim.retrieve("suno", "stuck")
    assert {c["state"] for c in clips(suno)} == {"streaming"} and "finished_at" not in suno
    (clip,) = clips(await sim.retrieve("producer", "stuck"))
    assert clip["state"] == "running" and clip["progress"] == "99%"


async def test_unknown_script_is_never_found(make_sim: MakeSim) -> None:
    sim = await make_sim(auto=True)
    sim.state.add_task("suno", "ghost", script="unknown")
    assert await sim.retrieve("suno", "ghost") == {}
    assert (await sim.batch("suno", ["ghost"]))["items"] == []


@pytest.mark.parametrize("service", ["suno", "producer"])
async def test_common_record_fields(sim: Sim, service: str) -> None:
    sim.state.add_task(service, "c1")
    record = await sim.retrieve(service, "c1")
    assert re.fullmatch(r"[0-9a-f]{24}", record["_id"])
    for key in ("api_id", "application_id", "credential_id", "user_id", "trace_id"):
        assert re.fullmatch(r"[0-9a-f-]{36}", record[key]), key
    assert record["id"] == "c1" and record["created_at"] == pytest.approx(T0)
    assert record["request"]["action"] == "generate" and record["request"]["prompt"]
    assert record["response"]["task_id"] == "c1"
    assert ("type" in record) is (service == "producer")


# --- retrieve and retrieve_batch -----------------------------------------------------------------


async def test_retrieve_unknown_id_without_auto_is_empty(sim: Sim) -> None:
    assert await sim.retrieve("suno", "nobody") == {}
    assert sim.state.tasks == {}


async def test_batch_omits_unknown_ids_and_counts(sim: Sim) -> None:
    for i in range(3):
        sim.state.add_task("suno", f"k{i}")
    answer = await sim.batch("suno", ["k0", "nope", "k1", "k2", "gone"])
    assert sorted(item["id"] for item in answer["items"]) == ["k0", "k1", "k2"]
    assert answer["count"] == 3 and "total" not in answer


async def test_batch_limit_and_default_page_size(sim: Sim) -> None:
    ids = [f"id{i}" for i in range(15)]
    for task_id in ids:
        sim.state.add_task("producer", task_id)
    limited = await sim.batch("producer", ids, limit=4)
    assert len(limited["items"]) == 4 and limited["count"] == 4
    assert {item["id"] for item in limited["items"]} <= set(ids)
    status, paged, _ = await sim.post("producer", {"action": "retrieve_batch", "ids": ids})
    assert status == 200 and paged["count"] == 10  # no limit sent: a default page cuts the batch


async def test_batch_order_is_shuffled(sim: Sim) -> None:
    ids = [f"o{i}" for i in range(12)]
    for task_id in ids:
        sim.state.add_task("suno", task_id)
    orders = [[item["id"] for item in (await sim.batch("suno", ids))["items"]] for _ in range(3)]
    assert all(sorted(order) == sorted(ids) for order in orders)
    assert any(order != ids for order in orders)


async def test_batch_duplicate_ids_come_back_twice(sim: Sim) -> None:
    sim.state.add_task("suno", "dup")
    answer = await sim.batch("suno", ["dup", "dup"])
    assert [item["id"] for item in answer["items"]] == ["dup", "dup"]


async def test_total_key_for_total_services(make_sim: MakeSim) -> None:
    sim = await make_sim(auto=False, services=frozenset({"suno", "luma"}), total_services=frozenset({"luma"}))
    sim.state.add_task("luma", "l1")
    answer = await sim.batch("luma", ["l1", "l2"])
    assert answer["total"] == 1 and "count" not in answer
    assert "count" in await sim.batch("suno", ["x"])


async def test_auto_creates_on_first_sight(make_sim: MakeSim, clock: FakeClock) -> None:
    sim = await make_sim(auto=True, auto_run_s=(2.0, 4.0))
    clock.now = T0 + 100.0
    record = await sim.retrieve("suno", "fresh")
    assert record["id"] == "fresh" and record["created_at"] == pytest.approx(T0 + 100.0)
    task = sim.state.tasks[("suno", "fresh")]
    assert task.script == auto_script("fresh") and 2.0 <= task.run_s <= 4.0
    clock.now = T0 + 200.0
    assert (await sim.batch("suno", ["fresh"]))["items"][0]["created_at"] == pytest.approx(T0 + 100.0)


def test_auto_script_is_deterministic_and_weighted() -> None:
    counts = Counter(auto_script(f"task-{i}") for i in range(4000))
    assert set(counts) == {"succeed", "partial", "error", "legacy"}
    assert 0.65 < counts["succeed"] / 4000 < 0.75
    for script in ("partial", "error", "legacy"):
        assert 0.07 < counts[script] / 4000 < 0.13
    assert auto_script("abc") == auto_script("abc")
    runs = [auto_run_s(f"t{i}", 2.0, 8.0) for i in range(200)]
    assert all(2.0 <= r <= 8.0 for r in runs) and max(runs) - min(runs) > 4.0
    assert auto_run_s("abc", 2.0, 8.0) == auto_run_s("abc", 2.0, 8.0)


def test_add_task_rejects_an_unknown_script() -> None:
    with pytest.raises(ValueError, match="'bogus'"):
        SimState().add_task("suno", "x", script="bogus")
    assert "unknown" in SCRIPTS


# --- errors ---------------------------------------------------------------------------------------


async def test_missing_or_bad_token_is_401(make_sim: MakeSim) -> None:
    sim = await make_sim(tokens=frozenset({"good"}))
    for token in (None, "", "wrong"):
        status, body, _ = await sim.post("suno", {"action": "retrieve", "id": "a"}, token=token)
        assert status == 401, token
        assert body["success"] is False and body["error"]["code"] == "invalid_token"
        assert re.fullmatch(r"[0-9a-f-]{36}", body["trace_id"])
    status, _, _ = await sim.post("suno", {"action": "retrieve", "id": "a"}, token="good")
    assert status == 200


async def test_unknown_service_is_404_no_api(sim: Sim) -> None:
    status, body, _ = await sim.post("midjourney", {"action": "retrieve", "id": "a"})
    assert status == 404 and body["error"]["code"] == "no_api" and body["success"] is False


async def test_bad_body_and_unknown_action(sim: Sim) -> None:
    status, body, _ = await sim.post("suno", ["not", "an", "object"])
    assert status == 400 and body["error"]["code"] == "bad_request"
    status, body, _ = await sim.post("suno", {"action": "generate", "prompt": "x"})
    assert status == 400 and body["error"]["code"] == "api_not_implemented"
    status, body, _ = await sim.post("suno", {"action": "retrieve_batch", "ids": "abc"})
    assert status == 400 and body["error"]["code"] == "bad_request"


async def test_max_batch_is_413(make_sim: MakeSim) -> None:
    sim = await make_sim(max_batch=3)
    status, body, _ = await sim.post("suno", {"action": "retrieve_batch", "ids": list("abcd"), "limit": 4})
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert len((await sim.batch("suno", list("abc")))["items"]) == 3


async def test_fail_next_with_retry_after(sim: Sim) -> None:
    sim.state.fail_next(2, 503, retry_after_s=1.2)
    sim.state.fail_next(1, 429)
    for _ in range(2):
        status, body, headers = await sim.post("suno", {"action": "retrieve", "id": "a"})
        assert status == 503 and body["error"]["code"] == "api_error" and headers["Retry-After"] == "2"
    status, body, headers = await sim.post("suno", {"action": "retrieve", "id": "a"})
    assert status == 429 and body["error"]["code"] == "too_many_requests" and "Retry-After" not in headers
    status, _, _ = await sim.post("suno", {"action": "retrieve", "id": "a"})
    assert status == 200


async def test_rate_limit_is_per_token(make_sim: MakeSim) -> None:
    sim = await make_sim(rate_limit_rps=0.5, burst=3)
    statuses = [(await sim.post("suno", {"action": "retrieve", "id": "a"}, token="t1"))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    status, body, headers = await sim.post("suno", {"action": "retrieve", "id": "a"}, token="t1")
    assert status == 429 and body["error"]["code"] == "too_many_requests"
    assert int(headers["Retry-After"]) >= 1
    assert (await sim.post("suno", {"action": "retrieve", "id": "a"}, token="t2"))[0] == 200


async def test_default_burst_is_ceil_of_rate(make_sim: MakeSim) -> None:
    sim = await make_sim(rate_limit_rps=1.5)
    statuses = [(await sim.post("suno", {"action": "retrieve", "id": "a"}))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_no_rate_limit(make_sim: MakeSim) -> None:
    sim = await make_sim(rate_limit_rps=None)
    statuses = {(await sim.post("suno", {"action": "retrieve", "id": "a"}))[0] for _ in range(100)}
    assert statuses == {200}


async def test_error_rate_injects_retryable_errors(make_sim: MakeSim) -> None:
    sim = await make_sim(error_rate=1.0)
    statuses = {(await sim.post("suno", {"action": "retrieve", "id": "a"}))[0] for _ in range(30)}
    assert statuses <= {500, 503, 429} and len(statuses) >= 2


async def test_latency_delays_answers(make_sim: MakeSim) -> None:
    sim = await make_sim(latency_s=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await sim.retrieve("suno", "a")
    assert loop.time() - started >= 0.05


# --- log and control routes -----------------------------------------------------------------------


async def test_log_records_every_request(make_sim: MakeSim) -> None:
    sim = await make_sim(rate_limit_rps=100.0, tokens=frozenset({"tok"}))
    await sim.post("suno", {"action": "retrieve", "id": "a"})
    await sim.post("producer", {"action": "retrieve_batch", "ids": ["b", "c"], "limit": 2})
    await sim.post("suno", {"action": "retrieve", "id": "d"}, token="bad")
    await sim.post("nope", {"action": "retrieve", "id": "e"})
    log = sim.state.log
    assert [(e.service, e.token, e.action, e.ids, e.status) for e in log] == [
        ("suno", "tok", "retrieve", ["a"], 200),
        ("producer", "tok", "retrieve_batch", ["b", "c"], 200),
        ("suno", "bad", "retrieve", ["d"], 401),
        ("nope", "tok", "retrieve", ["e"], 404),
    ]
    assert all(a.at_s <= b.at_s for a, b in zip(log, log[1:], strict=False))
    async with sim.session.get(f"{sim.url}/_sim/log") as resp:
        assert resp.status == 200
        entries = await resp.json()
    assert [e["status"] for e in entries] == [200, 200, 401, 404]
    assert set(entries[0]) == {"at_s", "service", "token", "action", "ids", "status"}


async def test_control_route_adds_tasks(sim: Sim, clock: FakeClock) -> None:
    specs = [{"service": "suno", "id": "r1", "script": "error", "run_s": 1}, {"service": "producer", "id": "r2"}]
    async with sim.session.post(f"{sim.url}/_sim/tasks", json=specs) as resp:
        assert resp.status == 201 and await resp.json() == {"added": 2}
    async with sim.session.post(f"{sim.url}/_sim/tasks", json={"service": "suno", "id": "r3"}) as resp:
        assert resp.status == 201 and await resp.json() == {"added": 1}
    async with sim.session.post(f"{sim.url}/_sim/tasks", json={"service": "suno", "script": "x"}) as resp:
        assert resp.status == 400
    clock.now = T0 + 1.0
    assert (await sim.retrieve("suno", "r1"))["response"]["success"] is False
    assert (await sim.retrieve("producer", "r2"))["id"] == "r2"
    assert set(sim.state.tasks) == {("suno", "r1"), ("producer", "r2"), ("suno", "r3")}
    assert sim.state.log and all(e.service != "_sim" for e in sim.state.log)


async def test_control_route_fails_next(sim: Sim) -> None:
    fail = {"count": 1, "status": 500, "retry_after_s": 3}
    async with sim.session.post(f"{sim.url}/_sim/fail", json=fail) as resp:
        assert resp.status == 200
    status, body, headers = await sim.post("suno", {"action": "retrieve", "id": "a"})
    assert status == 500 and body["error"] == {"code": "api_error", "message": "fetch failed"}
    assert headers["Retry-After"] == "3"
    assert (await sim.post("suno", {"action": "retrieve", "id": "a"}))[0] == 200
    async with sim.session.post(f"{sim.url}/_sim/fail", json={"status": 500}) as resp:
        assert resp.status == 400


async def test_run_sim_serves_and_logs_its_url(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="worker.sim")
    task = asyncio.create_task(run_sim("127.0.0.1", 0, auto=True))
    try:
        async with asyncio.timeout(5):
            while not (records := [r for r in caplog.records if r.name == "worker.sim"]):
                await asyncio.sleep(0.01)
        match = re.search(r"http://127\.0\.0\.1:\d+", records[0].getMessage())
        assert match is not None
        async with aiohttp.ClientSession() as session:
            headers = {"authorization": "Bearer t"}
            body = {"action": "retrieve", "id": "live"}
            async with session.post(f"{match.group()}/suno/tasks", json=body, headers=headers) as resp:
                assert resp.status == 200 and (await resp.json())["id"] == "live"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
