"""The producer client (``client/acetrack``) against real parts: a real redis-server, the simulator over
real sockets, a real arq worker in this process and the HTTP API served on a loopback port; async and
sync, over Redis and over HTTP."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from clientstack import (
    HTTP_TOKEN,
    Stack,
    stack_fixture,  # noqa: F401  # the fixture "stack"
    via_fixture,  # noqa: F401  # the fixture "via"
)
from servers import free_port
from support import fake_pool

from acetrack import (
    Client,
    Event,
    InvalidInput,
    NotFound,
    Record,
    SyncClient,
    Timeout,
    Unauthorized,
    Unavailable,
    Unsupported,
)

pytestmark = pytest.mark.realredis


def assert_succeeded(record: Record, task_id: str, meta: dict[str, Any] | None = None) -> None:
    assert (record.service, record.id, record.state, record.reason) == ("suno", task_id, "succeeded", None)
    assert record.terminal and record.partial is False and record.progress == 100
    assert len(record.clips) == 2 and all(c.state == "succeeded" and c.audio_url for c in record.clips)
    assert record.meta == meta and record.finished_at_ms is not None and record.attempts >= 1


async def test_async_client_enqueues_waits_and_reads_the_result(stack: Stack, via: str) -> None:
    task_id = f"async-{via}"
    stack.add(task_id)
    async with stack.client(via) as client:
        enqueued = await client.enqueue("suno", task_id, meta={"song": "intro"}, deadline_s=120)
        # over HTTP the task is stored at once; over Redis a worker takes it from the intake stream
        assert enqueued is None if via == "redis" else (enqueued and enqueued.state == "pending")
        record = await client.wait("suno", task_id, timeout_s=60)
        assert_succeeded(record, task_id, {"song": "intro"})
        got = await client.get("suno", task_id)
    assert got is not None and got.response is not None  # the raw upstream answer, put back
    assert got.clips == record.clips and got.state == record.state
    assert await stack.backend.redis.xlen("acetrack:intake:rejected") == 0


async def test_enqueueing_twice_keeps_the_first_record(stack: Stack, via: str) -> None:
    stack.add("twice")
    async with stack.client(via) as client:
        await client.enqueue("suno", "twice", meta={"n": 1})
        first = await client.wait("suno", "twice", timeout_s=60)
        again = await client.enqueue("suno", "twice", meta={"n": 2})
        assert again is None or again.meta == {"n": 1}
        assert await client.wait("suno", "twice", timeout_s=60) == first


async def test_sync_client_enqueues_waits_and_reads_the_result(stack: Stack, via: str) -> None:
    task_id = f"sync-{via}"
    stack.add(task_id)

    def produce(client: SyncClient) -> tuple[Record, Record | None]:
        client.enqueue("suno", task_id, meta={"via": via})
        return client.wait("suno", task_id, timeout_s=60), client.get("suno", task_id)

    with stack.sync_client(via) as client:
        # the worker runs on this test's event loop: the blocking calls go to a thread
        record, got = await asyncio.to_thread(produce, client)
    assert_succeeded(record, task_id, {"via": via})
    assert got is not None and got.response is not None and got.clips == record.clips


BAD_INPUT: list[tuple[dict[str, Any], str]] = [
    ({"service": "Suno"}, "service"),
    ({"service": "s" * 33}, "service"),
    ({"id": ""}, "id"),
    ({"id": "has space"}, "id"),
    ({"id": "x" * 129}, "id"),
    ({"meta": ["not", "an", "object"]}, "meta"),
    ({"meta": {"big": "x" * 5000}}, "meta"),
    ({"meta": {"n": 2**70}}, "meta"),
    ({"meta": {"when": object()}}, "meta"),
    ({"deadline_s": 0}, "deadline_s"),
    ({"deadline_s": 10**6}, "deadline_s"),
    ({"callback_url": "ftp://hooks.example/x"}, "callback_url"),
    ({"reopen": "yes"}, "reopen"),
]


@pytest.mark.parametrize(("change", "field"), BAD_INPUT, ids=[f"{f}-{n}" for n, (_, f) in enumerate(BAD_INPUT)])
async def test_bad_input_raises_invalid_input_naming_the_field_and_sends_nothing(
    change: dict[str, Any], field: str
) -> None:
    redis = aioredis.Redis(connection_pool=fake_pool(fakeredis.FakeServer(), decode_responses=True))
    args: dict[str, Any] = {"service": "suno", "id": "ok", **change}
    async with Client.over_redis(redis) as client:
        with pytest.raises(InvalidInput) as caught:
            await client.enqueue(**args)
    assert caught.value.field == field and field in str(caught.value)
    assert await redis.exists("acetrack:intake") == 0
    with pytest.raises(InvalidInput, match="id") as caught:
        await client.get("suno", "no/slash")
    assert caught.value.field == "id"
    await redis.aclose()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"services": "suno"}, "services"),
        ({"services": ["Suno"]}, "service"),
        ({"ids": ["a b"]}, "id"),
        ({"types": ["task.done"]}, "types"),
        ({"after": "latest"}, "after"),
    ],
)
def test_bad_events_arguments_raise_at_the_call(kwargs: dict[str, Any], field: str) -> None:
    with SyncClient.from_http("http://127.0.0.1:9") as client:
        with pytest.raises(InvalidInput) as caught:
            client.events(**kwargs)
        assert caught.value.field == field


def test_a_url_that_cannot_work_is_invalid_input() -> None:
    threads = threading.active_count()
    for make, url in ((SyncClient.from_redis, "http://localhost:6379"), (SyncClient.from_http, "localhost:8080")):
        with pytest.raises(InvalidInput, match=repr(url)) as caught:
            make(url)
        assert caught.value.field in ("url", "base_url")
    assert threading.active_count() == threads  # the sync client's loop thread stopped


async def test_a_token_the_workers_do_not_configure_is_invalid_input(stack: Stack, via: str) -> None:
    stack.add("team-x")
    async with stack.client(via) as client:
        with pytest.raises(InvalidInput, match="team-x") as caught:
            # over HTTP the API answers 400; over Redis the entry is rejected and the wait says why
            await client.enqueue("suno", "team-x", token="team-x")
            await client.wait("suno", "team-x", timeout_s=30)
    assert caught.value.field == "token"


async def test_wait_times_out_on_a_task_that_does_not_finish(stack: Stack, via: str) -> None:
    stack.add("stuck", script="stuck")
    async with stack.client(via) as client:
        await client.enqueue("suno", "stuck")
        with pytest.raises(Timeout, match="suno/stuck did not finish within 1.5s") as caught:
            await client.wait("suno", "stuck", timeout_s=1.5)
        record = await client.get("suno", "stuck")
    assert isinstance(caught.value, TimeoutError)
    assert record is not None and record.state == "pending" and not record.terminal


async def test_wait_for_a_task_never_enqueued_is_not_found(stack: Stack, via: str) -> None:
    async with stack.client(via) as client:
        assert await client.get("suno", "never") is None
        with pytest.raises(NotFound, match="suno/never"):
            await client.wait("suno", "never", timeout_s=1.5)


async def collect(events: AsyncIterator[Event], task_id: str) -> list[Event]:
    """The events of ``task_id`` until its end."""
    seen = []
    async for event in events:
        assert event.id == task_id
        seen.append(event)
        if event.type in ("task.succeeded", "task.failed"):
            return seen
    raise AssertionError("the events stream ended")


async def test_events_follow_a_task_to_its_end_and_resume_after_an_entry(stack: Stack, via: str) -> None:
    stack.add("followed", run_s=1.0)
    stack.add("other", run_s=0.4)
    async with stack.client(via) as client:
        await client.enqueue("suno", "other")
        await client.enqueue("suno", "followed", meta={"song": "intro"})
        seen = await collect(client.events(after="0-0", ids=["followed"]), "followed")
        clips = [e for e in seen if e.type == "clip.succeeded"]
        assert len(clips) == 2 and all(e.clip and e.clip.audio_url for e in clips)
        assert all(e.meta == {"song": "intro"} for e in seen[:-1])
        end = seen[-1]
        assert end.type == "task.succeeded" and end.state == "succeeded" and end.record is not None
        assert end.record.state == "succeeded" and end.record.meta == {"song": "intro"} and end.event_id
        resumed = await collect(client.events(after=seen[0].entry_id, ids=["followed"]), "followed")
        assert resumed == seen[1:]
        ends = client.events(after="0-0", types=["task.succeeded"])
        assert {(await anext(ends)).id, (await anext(ends)).id} == {"other", "followed"}
        await ends.aclose()  # type: ignore[attr-defined]


async def test_sync_events_iterator_follows_a_task_to_its_end(stack: Stack, via: str) -> None:
    stack.add("sync-followed")

    def follow(client: SyncClient) -> list[Event]:
        client.enqueue("suno", "sync-followed")
        seen = []
        for event in client.events(after="0-0", ids=["sync-followed"]):
            seen.append(event)
            if event.type == "task.succeeded":
                break  # leaving the loop closes the stream
        return seen

    with stack.sync_client(via) as client:
        seen = await asyncio.to_thread(follow, client)
    assert seen[-1].type == "task.succeeded" and seen[-1].record is not None
    assert [e.type for e in seen].count("clip.succeeded") == 2


async def test_cancel_over_http_fails_the_task_and_over_redis_says_it_needs_http(stack: Stack) -> None:
    stack.add("to-cancel", script="stuck")
    async with stack.client("http") as client:
        await client.enqueue("suno", "to-cancel")
        cancelled = await client.cancel("suno", "to-cancel")
        assert (cancelled.state, cancelled.reason) == ("failed", "cancelled")
        assert await client.wait("suno", "to-cancel", timeout_s=10) == cancelled
        assert await client.cancel("suno", "to-cancel") == cancelled  # finished already: it stays as it is
        with pytest.raises(NotFound, match="suno/never"):
            await client.cancel("suno", "never")
    async with stack.client("redis") as client:
        with pytest.raises(Unsupported, match="acetrack cancel suno to-cancel"):
            await client.cancel("suno", "to-cancel")
    with SyncClient.from_http(stack.http_url, HTTP_TOKEN) as sync:
        assert await asyncio.to_thread(sync.cancel, "suno", "to-cancel") == cancelled


async def test_a_missing_or_wrong_http_token_is_unauthorized(stack: Stack) -> None:
    for token in (None, "wrong"):
        async with Client.from_http(stack.http_url, token=token) as client:
            with pytest.raises(Unauthorized, match="ACETRACK_HTTP_TOKEN"):
                await client.get("suno", "any")
            with pytest.raises(Unauthorized):
                await anext(client.events())


async def test_an_unreachable_redis_or_api_is_unavailable() -> None:
    port = free_port()
    async with Client.from_redis(f"redis://127.0.0.1:{port}/0") as client:
        with pytest.raises(Unavailable, match="check the Redis URL"):
            await client.enqueue("suno", "x")
        with pytest.raises(Unavailable):
            await client.wait("suno", "x", timeout_s=5)
    async with Client.from_http(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
            await client.get("suno", "x")
        with pytest.raises(Unavailable):
            await anext(client.events())
    with SyncClient.from_redis(f"redis://127.0.0.1:{port}/0") as sync, pytest.raises(Unavailable):
        sync.get("suno", "x")
