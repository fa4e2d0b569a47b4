"""``GET /events`` (server-sent events) and ``GET /tasks/{service}/{id}?wait_s=N``, over real sockets and
a real redis-server; terminal events come from a real worker polling the simulator, or from a cancel
(which writes its ``task.failed`` event in the same atomic step a worker's terminal write does)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import Backend, eventually, fast_settings

from worker import jobs, sim
from worker.control import Control
from worker.http import API as API_KEY
from worker.http import Api, create_app
from worker.waiters import FOLLOWER

pytestmark = pytest.mark.realredis
TOKEN = "sse-token"
MakeSim = Callable[..., Awaitable[tuple[str, sim.SimState]]]


@dataclass
class Served:
    """One served app: base URL, the app, its ``Api`` and a client session."""

    url: str
    app: web.Application
    api: Api
    session: aiohttp.ClientSession

    async def post(self, *ids: str, headers: dict[str, str] | None = None) -> None:
        body = [{"service": "suno", "id": i} for i in ids]
        async with self.session.post(f"{self.url}/tasks", json=body, headers=headers) as resp:
            assert resp.status == 202, await resp.text()

    async def cancel(self, task_id: str) -> None:
        async with self.session.delete(f"{self.url}/tasks/suno/{task_id}") as resp:
            assert resp.status == 200, await resp.text()


MakeServed = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(real_backend: Backend) -> AsyncIterator[MakeServed]:
    """Factory: serve ``create_app`` over the real backend; keyword arguments go to ``Api``."""
    async with AsyncExitStack() as stack:

        async def make(**api_kwargs: Any) -> Served:
            store = real_backend.store()
            api = Api(store=store, control=Control(store), **api_kwargs)
            app = create_app(api)
            server = await stack.enter_async_context(TestServer(app, host="127.0.0.1"))
            # no connection limit: a hundred waiters must not hold up the requests that end them
            session = await stack.enter_async_context(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
            return Served(str(server.make_url("")).rstrip("/"), app, api, session)

        yield make


@dataclass
class Sse:
    """What one ``/events`` connection has received so far."""

    events: list[tuple[str, str, dict[str, Any]]]  # (id, event type, data)
    comments: list[str]
    ended: bool = False  # the server ended the response cleanly
    closed: bool = False  # the stream stopped, cleanly or not


@asynccontextmanager
async def listen(served: Served, query: str = "", headers: dict[str, str] | None = None) -> AsyncIterator[Sse]:
    """Read ``/events`` in the background while the block runs; the connection closes on exit."""
    seen = Sse([], [])
    async with served.session.get(f"{served.url}/events{query}", headers=headers) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream", await resp.text()

        async def read() -> None:
            try:
                await parse()
            finally:
                seen.closed = True

        async def parse() -> None:
            fields: dict[str, str] = {}
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    seen.comments.append(line[1:].strip())
                elif line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
                elif "data" in fields:
                    seen.events.append((fields["id"], fields["event"], json.loads(fields["data"])))
                    fields = {}
            seen.ended = True

        reader = asyncio.create_task(read())
        await eventually(lambda: _true(bool(seen.comments)), 10)  # ": connected": the stream is open
        try:
            yield seen
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def _true(value: bool) -> bool:
    return value


def ids_of(seen: Sse) -> list[str]:
    return [data["id"] for _, _, data in seen.events]


# -- /events ---------------------------------------------------------------------------------------


async def test_events_bring_the_terminal_event_of_a_task_posted_after_connecting(
    serve: MakeServed, real_backend: Backend, make_sim: MakeSim
) -> None:
    served = await serve()
    url, state = await make_sim(auto=False)
    state.add_task("suno", "sse-1", script="succeed", run_s=0.5, clip_gap_s=0.2)
    kwargs = jobs.worker_settings(
        fast_settings(url, hooks=[]), redis_pool=real_backend.make_arq_pool(), store_redis=real_backend.redis
    )
    async with listen(served, "?type=task.succeeded,task.failed") as seen, jobs.running_worker(kwargs):
        await served.post("sse-1")
        assert await eventually(lambda: _true(bool(seen.events)), 20)
    [(entry_id, event_type, data)] = seen.events
    assert event_type == "task.succeeded" and data["type"] == "task.succeeded" and data["id"] == "sse-1"
    assert data["record"]["state"] == "succeeded" and len(data["record"]["clips"]) == 2
    assert data["event_id"].startswith("evt_") and "-" in entry_id


async def test_events_resume_with_last_event_id_without_a_gap(serve: MakeServed) -> None:
    served = await serve()
    await served.post("r1", "r2", "r3", "r4")
    async with listen(served) as first:
        await served.cancel("r1")
        assert await eventually(lambda: _true(len(first.events) == 1), 10)
    last_id = first.events[-1][0]
    # while nobody listens
    await served.cancel("r2")
    await served.cancel("r3")
    async with listen(served, headers={"Last-Event-ID": last_id}) as second:
        await served.cancel("r4")
        assert await eventually(lambda: _true(len(second.events) == 3), 10)
    assert ids_of(first) == ["r1"] and ids_of(second) == ["r2", "r3", "r4"]
    stream_ids = [entry_id for entry_id, _, _ in first.events + second.events]
    assert stream_ids == sorted(stream_ids, key=lambda i: tuple(map(int, i.split("-"))))


async def test_events_after_0_0_replays_what_the_stream_holds(serve: MakeServed) -> None:
    served = await serve()
    await served.post("old1", "old2")
    await served.cancel("old1")
    await served.cancel("old2")
    async with listen(served, "?after=0-0") as seen:
        assert await eventually(lambda: _true(len(seen.events) == 2), 10)
    assert ids_of(seen) == ["old1", "old2"]


async def test_events_filter_by_service_id_and_type(serve: MakeServed) -> None:
    served = await serve()
    await served.post("f1", "f2", "f3")
    async with AsyncExitStack() as stack:
        by_id = await stack.enter_async_context(listen(served, "?id=f2,f3"))
        by_type = await stack.enter_async_context(listen(served, "?type=task.progress"))
        by_service = await stack.enter_async_context(listen(served, "?service=producer"))
        everything = await stack.enter_async_context(listen(served))
        for task_id in ("f1", "f2", "f3"):
            await served.cancel(task_id)
        assert await eventually(lambda: _true(len(everything.events) == 3 and len(by_id.events) == 2), 10)
    assert ids_of(everything) == ["f1", "f2", "f3"] and ids_of(by_id) == ["f2", "f3"]
    # the same three events passed these connections, and none matched
    assert by_type.events == [] and by_service.events == []


async def test_events_send_a_comment_heartbeat_when_quiet(serve: MakeServed) -> None:
    served = await serve(sse_heartbeat_s=0.2)
    async with listen(served) as seen:
        assert await eventually(lambda: _true(seen.comments.count("ping") >= 3), 10)
    assert seen.events == [] and seen.comments[0] == "connected"


async def test_an_events_response_ends_after_sse_max_s(serve: MakeServed) -> None:
    served = await serve(sse_max_s=0.3, sse_heartbeat_s=0.1)
    async with listen(served) as seen:
        assert await eventually(lambda: _true(seen.ended), 10)
    assert seen.comments[0] == "connected"


@pytest.mark.parametrize(
    ("query", "field"),
    [("?type=task.nope", "type"), ("?service=Bad!", "service"), ("?id=a,,b", "id"), ("?after=12", "after")],
)
async def test_events_refuse_bad_filters_naming_the_field(serve: MakeServed, query: str, field: str) -> None:
    served = await serve()
    async with served.session.get(f"{served.url}/events{query}") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["field"] == field


async def test_events_need_the_token_in_the_header_or_the_query(serve: MakeServed) -> None:
    served = await serve(http_token=TOKEN)
    for query, headers in (("", {}), ("?access_token=wrong", {}), ("", {"authorization": "Bearer wrong"})):
        async with served.session.get(f"{served.url}/events{query}", headers=headers) as resp:
            assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"
    # only /events takes the token in the query: an EventSource cannot set headers
    async with served.session.get(f"{served.url}/stats?access_token={TOKEN}") as resp:
        assert resp.status == 401
    async with listen(served, f"?access_token={TOKEN}") as by_query:
        pass
    async with listen(served, headers={"authorization": f"Bearer {TOKEN}"}) as by_header:
        pass
    assert by_query.comments[0] == by_header.comments[0] == "connected"


# -- ?wait_s= --------------------------------------------------------------------------------------


async def get_task(served: Served, task_id: str, query: str = "") -> tuple[int, dict[str, Any]]:
    async with served.session.get(f"{served.url}/tasks/suno/{task_id}{query}") as resp:
        return resp.status, await resp.json()


async def test_wait_answers_when_the_task_turns_terminal_not_at_its_timeout(serve: MakeServed) -> None:
    served = await serve()
    await served.post("w-done", "w-still")
    done = asyncio.create_task(get_task(served, "w-done", "?wait_s=60"))
    still = asyncio.create_task(get_task(served, "w-still", "?wait_s=60"))
    follower = served.app[FOLLOWER]
    assert await eventually(lambda: _true(follower.waiting == 2), 10)
    await served.cancel("w-done")
    status, record = await done
    # order, not a stopwatch: the other waiter, given the same 60 s, is still waiting
    assert status == 200 and record["state"] == "failed" and record["reason"] == "cancelled"
    assert not still.done() and follower.waiting == 1
    still.cancel()
    await asyncio.gather(still, return_exceptions=True)


async def test_wait_answers_the_pending_record_after_wait_s(serve: MakeServed) -> None:
    served = await serve()
    await served.post("w-slow")
    status, record = await get_task(served, "w-slow", "?wait_s=0.5")
    assert status == 200 and record["state"] == "pending" and record["id"] == "w-slow"
    follower = served.app[FOLLOWER]
    assert follower.waiting == 0 and follower.starts == 1


async def test_wait_answers_a_finished_or_unknown_task_at_once_and_refuses_bad_wait_s(serve: MakeServed) -> None:
    served = await serve()
    await served.post("w-fin")
    await served.cancel("w-fin")
    status, record = await get_task(served, "w-fin", "?wait_s=60")
    assert status == 200 and record["state"] == "failed"
    status, body = await get_task(served, "nope", "?wait_s=60")
    assert status == 404 and body["error"]["code"] == "not_found"
    for bad in ("61", "0", "-1", "abc", "nan", "inf", ""):
        status, body = await get_task(served, "w-fin", f"?wait_s={bad}")
        assert status == 400 and body["error"]["field"] == "wait_s", bad
    # the answers above needed no stream reader: the record was terminal (or unknown) at the first read
    assert served.app[FOLLOWER].reads <= served.app[FOLLOWER].starts


async def command_calls(redis: Any) -> dict[str, int]:
    """``INFO commandstats`` as {command: calls}."""
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_a_hundred_waiters_share_one_stream_reader(serve: MakeServed, real_backend: Backend) -> None:
    served = await serve()
    ids = [f"many-{n}" for n in range(100)]
    await served.post(*ids)
    follower = served.app[FOLLOWER]
    waiters = [asyncio.create_task(get_task(served, i, "?wait_s=60")) for i in ids]
    try:
        assert await eventually(lambda: _true(follower.waiting == 100), 20)
        redis = real_backend.redis
        blocked: list[dict[str, str]] = []

        async def one_blocked() -> bool:  # a connection blocked in XREAD now ("b"), not one that ran it once
            blocked[:] = [c for c in await redis.client_list() if c["cmd"] == "xread" and "b" in c["flags"]]
            return bool(blocked)

        assert await eventually(one_blocked, 10)
        before, reads_before = await command_calls(redis), follower.reads
        await asyncio.sleep(2.5)  # a quiet stretch: what do 100 waiters cost Redis per second?
        after, reads = await command_calls(redis), follower.reads - reads_before
        spent = {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name, 0)}
        # the only commands in the stretch: the follower's XREADs and this test's own INFO
        assert set(spent) <= {"xread", "info"} and spent.get("xread", 0) == reads, spent
        # one blocked reader for 100 waiters, one read per block
        assert 1 <= reads <= 4 and len(blocked) == 1, (reads, blocked)
        for task_id in ids[:50]:
            await served.cancel(task_id)
        answered = await asyncio.gather(*waiters[:50])
        assert [r["state"] for _, r in answered] == ["failed"] * 50 and follower.starts == 1
    finally:  # a failure above must not leave 100 requests running into the session's close
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def test_stopping_the_api_answers_waiters_and_ends_streams_at_once(real_backend: Backend) -> None:
    store = real_backend.store()
    app = create_app(Api(store=store, control=Control(store)))
    # aiohttp waits up to shutdown_timeout for running handlers: an hour, so only our shutdown hooks
    # can let cleanup() return before the test's own timeout
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=3600)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        served = Served(f"http://{host}:{port}", app, app[API_KEY], session)
        await served.post("stopping")
        waiter = asyncio.create_task(get_task(served, "stopping", "?wait_s=60"))
        async with listen(served) as seen:
            assert await eventually(lambda: _true(app[FOLLOWER].waiting == 1), 10)
            await runner.cleanup()
            status, record = await waiter
            # cancelled mid-stream: the connection drops (an EventSource reconnects and resumes)
            assert await eventually(lambda: _true(seen.closed), 10)
    assert status == 200 and record["state"] == "pending"
