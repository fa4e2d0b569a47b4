"""Signed webhooks (DESIGN.md §4) against a real receiving server on loopback.

The receiver (``receivers.serve``) is an aiohttp app served by ``TestServer`` on 127.0.0.1. It records every request and
checks the signature itself with ``standardwebhooks.Webhook(secret).verify``. Each test scripts its
answers (500 then 200, 429/503 with ``Retry-After``, 410, a slow answer, a 307 redirect). Deliveries
are made by the real arq worker polling the simulator, on fakeredis and on a real redis-server.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import arq.worker
import pytest
import redis.asyncio as aioredis
from receivers import Answer, Hit, Receiver, serve
from support import Backend, fast_settings, require_real_redis

from config import Settings
from worker import jobs, sim, webhooks
from worker.api import DEFAULT_TIMEOUT_S
from worker.delivery import WEBHOOK_PREFIX, Delivery, Outcome, after_try
from worker.errors import InvalidInput
from worker.events import build_events
from worker.models import EventType, Record, TaskState
from worker.queue import MAX_JOBS
from worker.store import Store
from worker.tracker import Tracker

MakeSim = Callable[..., Awaitable[tuple[str, sim.SimState]]]
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
ROOT = Path(__file__).resolve().parents[1]


# --- the receiving server ---------------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """Records every request, verifying its signature; answers per path from a script, then 200."""
    async with serve(SECRET) as rec:
        yield rec


# --- helpers --------------------------------------------------------------------------------------


def hook_settings(sim_url: str, receiver: Receiver, path: str | None = "/hook", **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "hooks": [],
        "webhook_urls": [receiver.url + path] if path else [],
        "webhook_secret": SECRET,
        "webhook_allow_hosts": ["127.0.0.1"],
        "webhook_schedule_s": [0, 0.2, 0.2, 0.2],
        "first_poll_s": 0.1,
        "poll_s": 0.2,
    }
    values.update(overrides)
    return fast_settings(sim_url, **values)


def worker(backend: Backend, settings: Settings) -> AbstractAsyncContextManager[arq.worker.Worker]:
    kwargs = jobs.worker_settings(settings, redis_pool=backend.make_arq_pool(), store_redis=backend.redis)
    return jobs.running_worker(kwargs)


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 10.0) -> bool:
    """Poll ``check`` every 20 ms until it holds or ``timeout_s`` passes; returns its last value."""
    give_up = time.monotonic() + timeout_s
    while True:
        result = check()
        ok = bool(await result) if inspect.isawaitable(result) else bool(result)
        if ok or time.monotonic() > give_up:
            return ok
        await asyncio.sleep(0.02)


async def add_tasks(
    tracker: Tracker, state: sim.SimState, ids: list[str], run_s: float = 0.2, callback_url: str | None = None
) -> None:
    for task_id in ids:
        state.add_task("suno", task_id, script="succeed", run_s=run_s, clip_gap_s=0.05)
        await tracker.enqueue("suno", task_id, callback_url=callback_url)


async def succeeded_events(redis: aioredis.Redis, store: Store) -> dict[str, dict[str, str]]:
    """The task.succeeded entry of each task in the events stream (asserting there is one per task)."""
    out: dict[str, dict[str, str]] = {}
    for _, fields in await redis.xrange(store.events_key):
        if fields["type"] == EventType.TASK_SUCCEEDED.value:
            assert fields["id"] not in out, f"two task.succeeded events for {fields['id']}"
            out[fields["id"]] = fields
    return out


async def deliveries_of(store: Store, task_id: str) -> list[dict[str, Any]]:
    return [d for d in await store.deliveries() if d["event"]["id"] == task_id]


async def delivery_of(store: Store, task_id: str) -> dict[str, Any]:
    found = await deliveries_of(store, task_id)
    assert len(found) == 1, found
    return found[0]


async def settled(store: Store, task_id: str, status: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Wait until the task's one delivery reaches ``status``; return its body."""

    async def check() -> bool:
        found = await deliveries_of(store, task_id)
        return len(found) == 1 and found[0]["status"] == status

    assert await eventually(check, timeout_s), await deliveries_of(store, task_id)
    return await delivery_of(store, task_id)


async def _any(items: Awaitable[list[Any]]) -> bool:
    return bool(await items)


def assert_signed(hits: list[Hit]) -> None:
    for hit in hits:
        assert hit.method == "POST"
        assert hit.error is None and hit.payload is not None, hit.error
        assert hit.headers["content-type"].startswith("application/json")


# --- 1, 2: end to end -----------------------------------------------------------------------------


async def test_each_finished_task_is_posted_once_signed_with_its_event_id(
    real_backend: Backend, make_sim: MakeSim, receiver: Receiver
) -> None:
    url, state = await make_sim(auto=False)
    settings = hook_settings(url, receiver)
    store = real_backend.store()
    tracker = Tracker.over(real_backend.redis, first_poll_s=0.1)
    ids = [f"e2e-{i}" for i in range(6)]
    await add_tasks(tracker, state, ids, run_s=0.3)
    async with worker(real_backend, settings):
        assert await eventually(lambda: len(receiver.hits) >= len(ids), 15)
        await asyncio.sleep(0.5)  # a duplicate would show up here
    hits = receiver.at("/hook")
    assert len(hits) == len(receiver.hits) == len(ids)
    assert_signed(hits)
    assert sorted(h.task_id for h in hits) == sorted(ids)
    events = await succeeded_events(real_backend.redis, store)
    for hit in hits:
        event = events[hit.task_id]
        assert hit.webhook_id == event["event_id"]
        assert hit.payload is not None
        assert set(hit.payload) == {"type", "timestamp", "data"}
        assert hit.payload["type"] == "task.succeeded"
        assert hit.payload["data"] == json.loads(event["record"])
        sent = datetime.fromisoformat(hit.payload["timestamp"])
        assert sent.tzinfo is not None and abs((datetime.now(UTC) - sent).total_seconds()) < 60
        assert int(hit.headers["webhook-timestamp"]) == int(sent.timestamp())
        stored = await store.get("suno", hit.task_id)
        assert stored is not None and stored.state is TaskState.SUCCEEDED
        assert hit.payload["data"] == {**stored.to_dict(), "response": None}  # the raw answer stays in Redis
        body = await delivery_of(store, hit.task_id)
        assert body["status"] == "delivered" and body["destination"] == WEBHOOK_PREFIX + receiver.url + "/hook"
        assert [(a["ok"], a["status"]) for a in body["attempts"]] == [(True, 200)]
    assert await store.dead_letters() == []


async def test_a_per_task_callback_url_is_delivered_alongside_the_global_url(
    real_backend: Backend, make_sim: MakeSim, receiver: Receiver
) -> None:
    url, state = await make_sim(auto=False)
    settings = hook_settings(url, receiver)
    store = real_backend.store()
    tracker = Tracker.over(real_backend.redis, first_poll_s=0.1, allow_hosts=["127.0.0.1"])
    await add_tasks(tracker, state, ["with-cb"], callback_url=receiver.url + "/cb")
    await add_tasks(tracker, state, ["without-cb"])
    async with worker(real_backend, settings):
        assert await eventually(lambda: len(receiver.hits) >= 3, 15)
        await asyncio.sleep(0.4)
    cb, glob = receiver.at("/cb"), receiver.at("/hook")
    assert len(cb) == 1 and len(glob) == 2 and len(receiver.hits) == 3
    assert_signed(receiver.hits)
    assert cb[0].task_id == "with-cb"
    assert cb[0].payload is not None and cb[0].payload["data"]["callback_url"] == receiver.url + "/cb"
    same_event = [h for h in glob if h.task_id == "with-cb"]
    assert len(same_event) == 1 and same_event[0].webhook_id == cb[0].webhook_id  # one event, one webhook-id
    events = await succeeded_events(real_backend.redis, store)
    assert cb[0].webhook_id == events["with-cb"]["event_id"]
    assert {d["destination"] for d in await deliveries_of(store, "with-cb")} == {
        WEBHOOK_PREFIX + receiver.url + "/cb",
        WEBHOOK_PREFIX + receiver.url + "/hook",
    }


async def test_an_intake_entry_with_an_allowed_private_callback_host_is_accepted(
    real_backend: Backend, make_sim: MakeSim, receiver: Receiver
) -> None:
    url, state = await make_sim(auto=False)
    settings = hook_settings(url, receiver, path=None)
    store = real_backend.store()
    state.add_task("suno", "intake-cb", script="succeed", run_s=0.2, clip_gap_s=0.05)
    await real_backend.redis.xadd(
        store.intake_key, {"service": "suno", "id": "intake-cb", "callback_url": receiver.url}
    )

    async def delivered_or_rejected() -> bool:
        return len(receiver.hits) >= 1 or await real_backend.redis.xlen(store.rejected_key) > 0

    async with worker(real_backend, settings):
        await eventually(delivered_or_rejected, 5)
    rejected = [fields["reason"] for _, fields in await real_backend.redis.xrange(store.rejected_key)]
    assert rejected == []
    assert await store.get("suno", "intake-cb") is not None
    assert len(receiver.hits) == 1 and receiver.hits[0].error is None


# --- 3, 4, 6, 10: retries ---------------------------------------------------------------------------


async def test_a_500_is_retried_with_the_same_webhook_id_and_a_valid_signature_each_time(
    real_backend: Backend, make_sim: MakeSim, receiver: Receiver
) -> None:
    url, state = await make_sim(auto=False)
    receiver.answer("/hook", Answer(500), Answer(500))
    store = real_backend.store()
    tracker = Tracker.over(real_backend.redis, first_poll_s=0.1)
    await add_tasks(tracker, state, ["flaky-receiver"])
    async with worker(real_backend, hook_settings(url, receiver)):
        body = await settled(store, "flaky-receiver", "delivered")
        await asyncio.sleep(0.4)
    hits = receiver.hits
    assert len(hits) == 3
    assert_signed(hits)
    assert len({h.webhook_id for h in hits}) == 1
    assert hits[0].webhook_id == (await succeeded_events(real_backend.redis, store))["flaky-receiver"]["event_id"]
    assert len({json.dumps({**(h.payload or {}), "timestamp": None}) for h in hits}) == 1  # only the time changes
    gaps = [b.at_s - a.at_s for a, b in zip(hits, hits[1:], strict=False)]
    assert min(gaps) >= 0.17, gaps  # schedule 0.2 s with 10 % jitter
    assert body["tries"] == 3 and len(body["attempts"]) == 3
    assert [(a["ok"], a["status"]) for a in body["attempts"]] == [(False, 500), (False, 500), (True, 200)]
    assert body["attempts"][0]["error"] == "HTTP 500"
    assert await store.dead_letters() == []


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured_over_a_shorter_schedule(
    real_backend: Backend, make_sim: MakeSim, receiver: Receiver, status: int
) -> None:
    url, state = await make_sim(auto=False)
    receiver.answer("/hook", Answer(status, {"Retry-After": "1"}))
    store = real_backend.store()
    tracker = Tracker.over(real_backend.redis, first_poll_s=0.1)
    await add_tasks(tracker, state, ["busy-receiver"])
    async with worker(real_backend, hook_settings(url, receiver, webhook_schedule_s=[0, 0.1, 0.1])):
        body = await settled(store, "busy-receiver", "delivered")
    first, second = receiver.hits
    assert second.at_s - first.at_s >= 0.95, second.at_s - first.at_s  # not before the schedule's 1 s
    assert first.webhook_id == second.webhook_id
    assert [a["status"] for a in body["attempts"]] == [status, 200]


async def test_a_timeout_is_a_failed_try_and_the_next_try_delivers(receiver: Receiver) -> None:
    # jobs._build() makes WebhookConfig without timeout_s, and its default binds REQUEST_TIMEOUT_S when
    # the class is defined, so patching the module constant would not shorten it: call attempt() directly.
    receiver.answer("/slow", Answer(sleep_s=1.0))
    config = webhooks.WebhookConfig(SECRET, (0, 0.1, 0.1), frozenset({"127.0.0.1"}), timeout_s=0.3)
    record = Record(service="suno", id="slow-1", enqueued_at_ms=1, updated_at_ms=1)
    now_ms = int(time.time() * 1000)
    (event,) = build_events(
        [EventType.TASK_SUCCEEDED],
        record,
        record,
        now_ms,
        {"task.succeeded": [WEBHOOK_PREFIX + receiver.url + "/slow"]},
    )
    ((_, raw),) = event.deliveries
    delivery = Delivery.from_dict(json.loads(raw))
    timeout = aiohttp.ClientTimeout(total=DEFAULT_TIMEOUT_S, connect=10)  # as the worker's session
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.monotonic()
        first = await webhooks.attempt(session, config, delivery, now_ms)
        took_s = time.monotonic() - started
        assert first is not None
        delivery, outcome = after_try(delivery, first, now_ms, config.schedule_s)
        second = await webhooks.attempt(session, config, delivery, now_ms + 100)
        assert second is not None
        delivery, last = after_try(delivery, second, now_ms + 100, config.schedule_s)
    assert outcome == Outcome("retry", 0.1) and took_s >= 0.25, (outcome, took_s)  # it waited for its timeout
    assert last == Outcome("delivered")
    assert delivery.status == "delivered" and delivery.tries == 2
    failed = delivery.attempts[0]
    assert not failed.ok and failed.status is None and failed.error is not None and "Timeout" in failed.error
    assert len(receiver.hits) == 2 and receiver.hits[0].webhook_id == receiver.hits[1].webhook_id == delivery.event_id
    assert_signed(receiver.hits)


async def test_a_redirect_is_not_followed_and_counts_as_a_failed_try(
    real_backend: Backend, make_sim: MakeSim, receiver: Receiver
) -> None:
    url, state = await make_sim(auto=False)
    receiver.answer("/hook", Answer(307, {"Location": receiver.url + "/target"}))
    store = real_backend.store()
    tracker = Tracker.over(real_backend.redis, first_poll_s=0.1)
    await add_tasks(tracker, state, ["redirected"])
    async with worker(real_backend, hook_settings(url, receiver, webhook_schedule_s=[0, 0.1, 0.1])):
        body = await settled(store, "redirected", "delivered")
        await asyncio.sleep(0.3)
    assert receiver.at("/target") == []
    assert len(receiver.at("/hook")) == 2
    assert [(a["ok"], a["status"], a["error"]) for a in body["attempts"]] == [
        (False, 307, "HTTP 307"),
        (True, 200, None),
    ]


# --- 5, 7, 8: 410, dead letters, replay --------------------------------------------------------------


async def test_410_disables_the_url_until_enabled_and_a_replay_then_delivers(
    real_backend: Backend, make_sim: MakeSim, receiver: Receiver
) -> None:
    url, state = await make_sim(auto=False)
    receiver.answer("/hook", Answer(410))
    hook_url = receiver.url + "/hook"
    store = real_backend.store()
    tracker = Tracker.over(real_backend.redis, first_poll_s=0.1)
    started_ms = int(time.time() * 1000)
    await add_tasks(tracker, state, ["gone-1"])
    async with worker(real_backend, hook_settings(url, receiver)):
        first = await settled(store, "gone-1", "dead")
        assert first["reason"] == "gone" and [a["status"] for a in first["attempts"]] == [410]
        assert await store.is_disabled(hook_url)
        assert first["delivery_id"] in await store.dead_letters()
        assert first["delivery_id"] in await store.dead_since(started_ms)
        await asyncio.sleep(0.5)  # no retry after a 410
        assert len(receiver.hits) == 1

        await add_tasks(tracker, state, ["gone-2"])  # a later task: dead at once, nothing sent
        second = await settled(store, "gone-2", "dead")
        assert second["reason"] == "gone" and len(second["attempts"]) == 1
        assert second["attempts"][0]["status"] is None and "410" in second["attempts"][0]["error"]
        assert len(receiver.hits) == 1

        assert await store.replay(second["delivery_id"], int(time.time() * 1000))  # still disabled: dead again
        again = await settled(store, "gone-2", "dead")
        assert again["reason"] == "gone" and again.get("replays") == 1 and len(receiver.hits) == 1

        assert await store.enable_url(hook_url)
        assert not await store.is_disabled(hook_url)
        assert not await store.enable_url(hook_url)
        for delivery in (first, second):
            assert await store.replay(delivery["delivery_id"], int(time.time() * 1000))
        replayed = [await settled(store, task_id, "delivered") for task_id in ("gone-1", "gone-2")]
    assert await store.dead_letters() == []
    assert len(receiver.hits) == 3
    assert_signed(receiver.hits)
    assert {h.webhook_id for h in receiver.hits[1:]} == {first["event_id"], second["event_id"]}
    assert receiver.hits[0].webhook_id == first["event_id"]
    assert all(d["attempts"][-1]["status"] == 200 for d in replayed)


async def dead_after_three_500s(
    backend: Backend, make_sim: MakeSim, receiver: Receiver, task_id: str
) -> tuple[dict[str, Any], int]:
    """Run one task whose webhook always gets 500 until its delivery is dead; returns (body, started_ms)."""
    url, state = await make_sim(auto=False)
    receiver.default = Answer(500)
    store = backend.store()
    tracker = Tracker.over(backend.redis, first_poll_s=0.1)
    started_ms = int(time.time() * 1000)
    await add_tasks(tracker, state, [task_id])
    async with worker(backend, hook_settings(url, receiver, webhook_schedule_s=[0, 0.1, 0.1])):
        body = await settled(store, task_id, "dead")
        await asyncio.sleep(0.4)  # nothing more after the last try
    return body, started_ms


async def test_a_delivery_is_dead_lettered_after_its_last_try(
    real_backend: Backend, make_sim: MakeSim, receiver: Receiver
) -> None:
    body, started_ms = await dead_after_three_500s(real_backend, make_sim, receiver, "always-500")
    store = real_backend.store()
    assert len(receiver.hits) == 3
    assert_signed(receiver.hits)
    assert len({h.webhook_id for h in receiver.hits}) == 1
    assert body["reason"] == "exhausted" and body["tries"] == 3
    assert [(a["ok"], a["status"]) for a in body["attempts"]] == [(False, 500)] * 3
    assert await store.dead_letters() == [body["delivery_id"]]
    assert await store.dead_since(started_ms) == [body["delivery_id"]]
    assert await store.dead_since(int(time.time() * 1000) + 60_000) == []
    counters = await store.counters()
    assert counters.get("deliveries_retry") == 2 and counters.get("deliveries_dead") == 1


async def test_a_replay_resends_with_the_same_webhook_id_and_a_fresh_signature(
    real_backend: Backend, make_sim: MakeSim, receiver: Receiver
) -> None:
    body, _ = await dead_after_three_500s(real_backend, make_sim, receiver, "replayed")
    store = real_backend.store()
    assert await store.replay("dlv_unknown", int(time.time() * 1000)) is False
    receiver.default = Answer(200)
    await asyncio.sleep(1.05 - (time.time() % 1.0))  # a new second: the signature must change with it
    url, _ = await make_sim(auto=False)
    async with worker(real_backend, hook_settings(url, receiver, webhook_schedule_s=[0, 0.1, 0.1])):
        assert await store.replay(body["delivery_id"], int(time.time() * 1000))
        after = await settled(store, "replayed", "delivered")
        await asyncio.sleep(0.3)
    assert len(receiver.hits) == 4
    assert_signed(receiver.hits)
    last, before = receiver.hits[-1], receiver.hits[-2]
    assert last.webhook_id == before.webhook_id == body["event_id"]
    assert int(last.headers["webhook-timestamp"]) > int(before.headers["webhook-timestamp"])
    assert last.headers["webhook-signature"] != before.headers["webhook-signature"]
    assert last.payload is not None and before.payload is not None
    assert last.payload["data"] == before.payload["data"]
    assert after["replays"] == 1 and after["tries"] == 1 and after["reason"] is None
    assert [a["status"] for a in after["attempts"]] == [500, 500, 500, 200]
    assert await store.dead_letters() == []


# --- 9: screening -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allow_hosts_hint"),
    [
        ("ftp://x", False),
        ("http://", False),
        ("http://127.0.0.1/", True),
        ("http://10.0.0.1/", True),
        ("http://192.168.1.20:8080/hook", True),
        ("http://169.254.169.254/", True),
        ("http://[::1]/", True),
        ("http://0.0.0.0/", True),
    ],
)
async def test_screen_refuses_non_http_and_private_urls(url: str, allow_hosts_hint: bool) -> None:
    with pytest.raises(InvalidInput) as info:
        await webhooks.screen(url, allow_hosts=["example.org"])
    assert info.value.field == "callback_url"
    assert ("ACETRACK_WEBHOOK_ALLOW_HOSTS" in info.value.message) is allow_hosts_hint
    if not allow_hosts_hint:
        assert "http:// or https://" in info.value.message


async def test_screen_allows_listed_hosts_case_insensitively_and_exactly() -> None:
    await webhooks.screen("http://127.0.0.1:9/x", ["127.0.0.1"])
    await webhooks.screen("https://LocalHost/x", ["localhost"])
    await webhooks.screen("http://localhost/x", ["LOCALHOST"])
    with pytest.raises(InvalidInput, match="ACETRACK_WEBHOOK_ALLOW_HOSTS"):
        await webhooks.screen("http://localhost/x", ["127.0.0.1"])  # the name as written, not its address


async def test_screen_uses_the_resolved_addresses_of_a_name() -> None:
    async def public(host: str) -> list[str]:
        return ["93.184.216.34"]

    async def mixed(host: str) -> list[str]:
        return ["93.184.216.34", "10.1.2.3"]

    async def nothing(host: str) -> list[str]:
        return []

    async def broken(host: str) -> list[str]:
        raise OSError("no such host")

    await webhooks.screen("https://hooks.example.com/in", [], resolver=public)
    with pytest.raises(InvalidInput, match="ACETRACK_WEBHOOK_ALLOW_HOSTS"):
        await webhooks.screen("https://hooks.example.com/in", [], resolver=mixed)
    with pytest.raises(InvalidInput, match="ACETRACK_WEBHOOK_ALLOW_HOSTS"):
        await webhooks.screen("https://hooks.example.com/in", [], resolver=nothing)
    with pytest.raises(InvalidInput, match="does not resolve"):
        await webhooks.screen("https://hooks.example.com/in", [], resolver=broken)
    await webhooks.screen("https://hooks.example.com/in", ["HOOKS.example.com"], resolver=broken)


@pytest.mark.parametrize("backend", ["fake"], indirect=True)
async def test_enqueue_with_a_private_callback_url_raises_and_stores_nothing(backend: Backend) -> None:
    tracker = Tracker.over(backend.redis)
    with pytest.raises(InvalidInput) as info:
        await tracker.enqueue("suno", "private", callback_url="http://10.0.0.1/hook")
    assert info.value.field == "callback_url" and "ACETRACK_WEBHOOK_ALLOW_HOSTS" in info.value.message
    assert await tracker.get("suno", "private") is None
    assert await backend.redis.dbsize() == 0


async def test_an_intake_entry_with_a_private_callback_url_is_rejected(
    real_backend: Backend, make_sim: MakeSim, receiver: Receiver
) -> None:
    url, _ = await make_sim(auto=False)
    store = real_backend.store()
    bad = {"service": "suno", "id": "private-cb", "callback_url": "http://10.0.0.1/hook"}
    await real_backend.redis.xadd(store.intake_key, bad)
    await real_backend.redis.xadd(store.intake_key, {"service": "suno", "id": "fine"})
    async with worker(real_backend, hook_settings(url, receiver)):
        assert await eventually(lambda: real_backend.redis.xlen(store.rejected_key), 5)
        assert await eventually(lambda: real_backend.redis.exists(store.task_key("suno", "fine")), 5)
    ((_, entry),) = await real_backend.redis.xrange(store.rejected_key)
    assert {k: entry[k] for k in bad} == bad
    assert "ACETRACK_WEBHOOK_ALLOW_HOSTS" in entry["reason"] and "rejected_at_ms" in entry
    assert await store.get("suno", "private-cb") is None


# --- 11: a worker killed between terminal writes and deliveries --------------------------------------


async def test_a_killed_worker_loses_no_webhook_and_duplicates_are_few(
    real_redis_url: str | None,
    request: pytest.FixtureRequest,
    make_sim: MakeSim,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    redis_url = require_real_redis(real_redis_url, request)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await client.flushall()
    try:
        await crash_and_recover(client, redis_url, make_sim, receiver, tmp_path)
    finally:
        await client.flushall()
        await client.aclose()


async def crash_and_recover(
    client: aioredis.Redis, redis_url: str, make_sim: MakeSim, receiver: Receiver, tmp_path: Path
) -> None:
    store = Store(client)
    sim_url, state = await make_sim(auto=False)
    receiver.default = Answer(sleep_s=0.05)  # answers take a little while: some are in flight at the kill
    tracker = Tracker.over(client, first_poll_s=0.1)
    ids = [f"crash-{i}" for i in range(30)]
    env = {
        **os.environ,
        "ACETRACK_REDIS_URL": redis_url,
        "ACETRACK_API_BASE_URL": sim_url,
        "ACETRACK_API_TOKEN": "t",
        "ACETRACK_WEBHOOK_URLS": receiver.url + "/hook",
        "ACETRACK_WEBHOOK_SECRET": SECRET,
        "ACETRACK_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        "ACETRACK_POLL_S": "0.3",
        "ACETRACK_FIRST_POLL_S": "0.1",
        "ACETRACK_LEASE_S": "2",
        "ACETRACK_WEBHOOK_SCHEDULE_S": "0,0.5,0.5,0.5",
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "worker", "worker"], env=env, cwd=ROOT, stderr=err)
    try:
        # enqueue once the worker is up, so the staggered finishes happen while it runs however slow it starts
        up = await eventually(lambda: proc.poll() is not None or _any(store.workers()), 20)
        assert up and proc.poll() is None, log.read_text()[-2000:]
        for i, task_id in enumerate(ids):  # six groups of five, 0.3 s apart
            state.add_task("suno", task_id, script="succeed", run_s=0.5 + (i // 5) * 0.3, clip_gap_s=0.0)
            await tracker.enqueue("suno", task_id)
        arrived = await eventually(lambda: len(receiver.hits) > 0 or proc.poll() is not None, 20)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert arrived and proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    hits_at_kill = len(receiver.hits)
    terminal_at_kill = sum(1 for r in await store.get_many(("suno", i) for i in ids) if r and r.terminal)
    assert 0 < terminal_at_kill < len(ids)

    # A delivery the dead worker was sending stays leased for its try (the 15 s webhook timeout) plus the
    # lease, then is handed over again. Make those due now instead of waiting the 17 s out.
    now_ms = int(time.time() * 1000)
    leased = await client.zrangebyscore(store.outbox_key, now_ms + 500, "+inf", withscores=True)
    for delivery_id, _ in leased:
        await client.zadd(store.outbox_key, {delivery_id: now_ms})

    settings = hook_settings(
        sim_url, receiver, poll_s=0.3, lease_s=2.0, webhook_schedule_s=[0, 0.5, 0.5, 0.5], redis_url=redis_url
    )
    pool = jobs.arq_pool_over(aioredis.ConnectionPool.from_url(redis_url))
    kwargs = jobs.worker_settings(settings, redis_pool=pool, store_redis=client)
    async with jobs.running_worker(kwargs):
        all_arrived = await eventually(lambda: {h.task_id for h in receiver.hits} >= set(ids), 25)
        await asyncio.sleep(0.5)  # late duplicates show up here
    assert all_arrived, sorted(set(ids) - {h.task_id for h in receiver.hits})
    assert_signed(receiver.hits)
    events = await succeeded_events(client, store)  # one terminal event per task despite the crash
    assert set(events) == set(ids)
    by_task: dict[str, set[str]] = {}
    for hit in receiver.hits:
        by_task.setdefault(hit.task_id, set()).add(hit.webhook_id)
    assert all(by_task[t] == {events[t]["event_id"]} for t in ids), by_task
    copies = Counter(h.task_id for h in receiver.hits)
    duplicates = len(receiver.hits) - len(ids)
    counters = await store.counters()
    print(
        f"\ncrash: {terminal_at_kill}/{len(ids)} terminal and {hits_at_kill} webhooks at the kill; "
        f"{len(leased)} outbox entries leased; {duplicates} duplicate webhooks "
        f"({sorted(t for t, n in copies.items() if n > 1)}); counters {counters}"
    )
    # a copy is sent again only for a delivery whose try was cut off, and each such try is counted
    assert duplicates <= min(len(leased), counters.get("possible_duplicate_deliveries", 0))
    assert [(await delivery_of(store, t))["status"] for t in ids] == ["delivered"] * len(ids)


#: the slow destination answers after this: longer than every task takes to finish
SLOW_ANSWER_S = 10.0


async def test_a_slow_destination_never_delays_polling(
    real_backend: Backend, make_sim: MakeSim, receiver: Receiver
) -> None:
    """More slow deliveries than a worker has job slots: every task still finishes on polling's own time."""
    url, state = await make_sim(auto=False)
    receiver.default = Answer(sleep_s=SLOW_ANSWER_S)
    tracker = Tracker.over(real_backend.redis, first_poll_s=0.1)
    ids = [f"slow-{i}" for i in range(MAX_JOBS + 20)]
    for task_id in ids:
        state.add_task("suno", task_id, script="succeed", run_s=0.3, clip_gap_s=0.0)
        await tracker.enqueue("suno", task_id)
    async with worker(real_backend, hook_settings(url, receiver, poll_s=0.3)):
        done = await eventually(lambda: _all_terminal(tracker, ids), timeout_s=SLOW_ANSWER_S - 1)
        # in that order: every task finished while no webhook had been answered yet
        answered = [d for d in [await delivery_of(real_backend.store(), t) for t in ids] if d["attempts"]]
        in_flight = len(receiver.hits)
    assert done, "tasks waited for slow webhook deliveries"
    assert not answered and in_flight < len(ids), (answered[:3], in_flight)


async def _all_terminal(tracker: Tracker, ids: list[str]) -> bool:
    records = await tracker.store.get_many(("suno", i) for i in ids)
    return all(r is not None and r.terminal for r in records)
