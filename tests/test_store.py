"""The Redis schema's atomic steps, on fakeredis and on a real redis-server (``backend`` runs both)."""

from __future__ import annotations

import asyncio
import base64
import json
import zlib
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from support import RECORD_FIELDS, Backend, require_real_redis

from worker.classify import fail
from worker.connect import create_redis
from worker.events import build_events
from worker.intake import EnqueueRequest
from worker.models import EventType, Reason, Record, TaskState
from worker.store import Claimed, Store, Wait, codecs, sched_text
from worker.wire import UpstreamTask

NOW_MS = 1_767_000_000_000
CLAIM = {"batch": 50, "coalesce_ms": 1000, "lease_ms": 30_000, "rate_rps": 1e6}


async def register(store: Store, task_id: str, now_ms: int = NOW_MS, **kw: object) -> tuple[bool, Record]:
    req = EnqueueRequest(service="suno", id=task_id, **kw)  # type: ignore[arg-type]
    return await store.register(req, now_ms, deadline_s=1800, first_due_ms=now_ms + 3000)


async def test_register_is_idempotent_and_keeps_first_record(backend: Backend) -> None:
    store = backend.store()
    created, first = await register(store, "t1", meta={"n": 1})
    again, second = await register(store, "t1", now_ms=NOW_MS + 5000, meta={"n": 2})
    assert (created, again) == (True, False)
    assert second == first and second.meta == {"n": 1}
    assert await backend.redis.zscore(store.due_key("suno", "default"), "t1") == NOW_MS + 3000


async def test_every_record_field_is_present_though_nulls_are_not_stored(backend: Backend) -> None:
    store = backend.store()
    await register(store, "t1")
    record = await store.get("suno", "t1")
    assert record is not None and set(record.to_dict()) == RECORD_FIELDS
    assert record.state.value == "pending" and record.response is None
    raw = json.loads(await backend.redis.hget(store.task_key("suno", "t1"), "record"))
    assert None not in raw.values() and set(raw) < RECORD_FIELDS  # compact in Redis


async def test_claims_are_exclusive_until_the_lease_ends(backend: Backend) -> None:
    store = backend.store()
    for i in range(3):
        await register(store, f"t{i}")
    due_ms = NOW_MS + 3000
    first = await store.claim("suno", "default", due_ms, **CLAIM)
    assert isinstance(first, Claimed) and sorted(first[1]) == ["t0", "t1", "t2"]
    second = await store.claim("suno", "default", due_ms + 100, **CLAIM)
    assert isinstance(second, Wait) and second.why == "later" and second.ms > 0  # all are leased
    # the claimer "died": after the lease the same ids are due again for anyone
    third = await store.claim("suno", "default", due_ms + 30_001, **CLAIM)
    assert isinstance(third, Claimed) and sorted(third[1]) == ["t0", "t1", "t2"]


async def test_a_claim_says_taken_only_when_another_worker_claimed_since_its_plan(backend: Backend) -> None:
    store = backend.store()
    for i in range(2):
        await register(store, f"t{i}")
    await register(store, "later", now_ms=NOW_MS + 60_000)
    due_ms = NOW_MS + 3000
    exact = {**CLAIM, "coalesce_ms": 0}
    got = await store.claim("suno", "default", due_ms, **exact, worker="w1", planned_ms=due_ms)
    assert isinstance(got, Claimed) and sorted(got.ids) == ["t0", "t1"]
    # w2 was told the same ids fall due then: w1 took them, and plans for the queue
    assert (await store.claim("suno", "default", due_ms + 2, **exact, worker="w2", planned_ms=due_ms)).why == "taken"
    # no plan (a look), or its own claim, or a plan made after w1's claim: nothing was taken from it
    assert (await store.claim("suno", "default", due_ms + 2, **exact, worker="w2")).why == "later"
    assert (await store.claim("suno", "default", due_ms + 2, **exact, worker="w1", planned_ms=due_ms)).why == "later"
    later = {**exact, "worker": "w2", "planned_ms": due_ms + 1000}
    assert (await store.claim("suno", "default", due_ms + 1000, **later)).why == "later"
    # w1 may have topped its batch up with ids due up to coalesce_ms (+ early_ms) after its claim
    window = {**CLAIM, "early_ms": 5, "worker": "w2"}
    assert (await store.claim("suno", "default", due_ms + 2, **window, planned_ms=due_ms + 1005)).why == "taken"
    assert (await store.claim("suno", "default", due_ms + 2, **window, planned_ms=due_ms + 1006)).why == "later"


async def test_a_claim_reads_what_its_poll_needs_in_the_same_step(backend: Backend) -> None:
    store = backend.store()
    for i in range(3):
        await register(store, f"t{i}", meta={"n": i})
    # t2 finished elsewhere while still due (a race the poll must skip): claimed, but not pending
    await backend.redis.hset(store.task_key("suno", "t2"), "state", "succeeded")
    got = await store.claim("suno", "default", NOW_MS + 3000, **CLAIM)
    assert isinstance(got, Claimed) and sorted(got.ids) == ["t0", "t1", "t2"] and got.pending is not None
    assert got.pending == await store.load_pending("suno", got.ids)
    assert sorted(got.pending) == ["t0", "t1"] and got.pending["t1"].record.meta == {"n": 1}


async def test_a_claim_counts_an_id_due_within_early_ms_as_due_now(backend: Backend) -> None:
    store = backend.store()
    await register(store, "t1")
    due_ms = NOW_MS + 3000
    exact = {**CLAIM, "coalesce_ms": 0}
    assert await store.claim("suno", "default", due_ms - 3, **exact) == Wait(3, "later")  # a timer 3 ms early
    got = await store.claim("suno", "default", due_ms - 3, **exact, early_ms=5)  # type: ignore[arg-type]
    assert isinstance(got, Claimed) and got.ids == ["t1"]


async def test_claim_takes_ids_due_within_the_coalesce_window(backend: Backend) -> None:
    store = backend.store()
    await register(store, "now")
    await register(store, "soon", now_ms=NOW_MS + 800)
    await register(store, "later", now_ms=NOW_MS + 5000)
    got = await store.claim("suno", "default", NOW_MS + 3000, **CLAIM)
    assert isinstance(got, Claimed) and sorted(got[1]) == ["now", "soon"]


async def test_rate_budget_is_shared_and_says_how_long_to_wait(backend: Backend) -> None:
    store = backend.store()
    for i in range(5):
        await register(store, f"t{i}")
    limits = {**CLAIM, "batch": 1, "rate_rps": 2.0}
    t = NOW_MS + 3000
    granted = [await store.claim("suno", "default", t, **limits) for _ in range(3)]
    assert [isinstance(g, Claimed) for g in granted] == [True, False, False]
    # evenly spaced, 2% wide of the budget: the next request is allowed 510 ms later, not before
    assert granted[1] == Wait(510, "rate")
    assert await store.claim("suno", "default", t + 509, **limits) == Wait(1, "rate")
    assert isinstance(await store.claim("suno", "default", t + 510, **limits), Claimed)
    # a second worker shares the same budget (same key): nothing more before t + 1020
    assert await store.claim("suno", "default", t + 1019, **limits) == Wait(1, "rate")


async def test_a_full_batch_says_when_the_rate_budget_allows_the_next_claim(backend: Backend) -> None:
    store = backend.store()
    for i in range(3):
        await register(store, f"t{i}")
    t = NOW_MS + 3000
    # more ids are due, but the budget spaces requests 510 ms apart: a claim sooner would be refused
    got = await store.claim("suno", "default", t, **{**CLAIM, "batch": 1, "rate_rps": 2.0})
    assert isinstance(got, Claimed) and got.next_ms == 510
    # 1020 / 7 = 145.7 ms apart: a refusal says 146 (rounded up), never a wait that ends too soon
    limits = {**CLAIM, "batch": 1, "rate_rps": 7.0}
    assert isinstance(await store.claim("suno", "default", t + 510, **limits), Claimed)
    assert await store.claim("suno", "default", t + 510, **limits) == Wait(146, "rate")
    assert isinstance(await store.claim("suno", "default", t + 510 + 146, **limits), Claimed)


async def test_back_off_and_pause_hold_claims(backend: Backend) -> None:
    store = backend.store()
    await register(store, "t1")
    t = NOW_MS + 3000
    await store.back_off("suno", "default", t + 2000)
    assert await store.claim("suno", "default", t, **CLAIM) == Wait(2000, "backoff")
    await store.run_calls([], clear_backoff=("suno", "default"))
    assert await store.run_calls([]) == []
    await store.pause_token("default", 60_000, "401 invalid_token")
    wait = await store.claim("suno", "default", t, **CLAIM)
    assert isinstance(wait, Wait) and wait.why == "paused" and 59_000 < wait.ms <= 60_000
    assert await store.paused_tokens(["default", "other"]) == {"default": "401 invalid_token"}


async def test_finish_happens_once_with_event_and_outbox(backend: Backend) -> None:
    store = backend.store()
    _, record = await register(store, "t1")
    failed = fail(record, Reason.DEADLINE, NOW_MS + 10, {"code": "deadline", "message": "late"})
    events = build_events([EventType.TASK_FAILED], record, failed, NOW_MS + 10, {"task.failed": ["python:x:y"]})
    assert await store.finish(failed, NOW_MS + 10, events, sample=None) is True
    assert await store.finish(failed, NOW_MS + 20, events, sample=None) is False
    entries = await backend.redis.xrange(store.events_key)
    assert len(entries) == 1
    fields = entries[0][1]
    assert {"event_id", "type", "service", "id", "state", "reason", "progress", "at_ms", "record"} <= set(fields)
    assert (fields["type"], fields["state"], fields["reason"]) == ("task.failed", "failed", "deadline")
    assert await backend.redis.zcard(store.outbox_key) == 1
    assert await backend.redis.zscore(store.due_key("suno", "default"), "t1") is None
    assert 0 < await backend.redis.pttl(store.task_key("suno", "t1")) <= store.retention_ms
    assert await store.count_by_state("suno") == {"pending": 0, "succeeded": 0, "failed": 1}


async def test_update_needs_the_claim(backend: Backend) -> None:
    store = backend.store()
    _, record = await register(store, "t1")
    got = await store.claim("suno", "default", NOW_MS + 3000, **CLAIM)
    assert isinstance(got, Claimed)
    kw = {"next_due_ms": NOW_MS + 9000, "sched": sched_text(NOW_MS + 60_000, seen=True), "events": []}
    assert await store.update(record, "someone-else", NOW_MS + 3100, **kw) is False
    assert await store.update(record, got[0], NOW_MS + 3100, **kw) is True
    assert await backend.redis.zscore(store.due_key("suno", "default"), "t1") == NOW_MS + 9000


async def test_release_gives_claims_back_now(backend: Backend) -> None:
    store = backend.store()
    await register(store, "t1")
    got = await store.claim("suno", "default", NOW_MS + 3000, **CLAIM)
    assert isinstance(got, Claimed)
    assert await store.release("suno", "default", got[0], got[1], NOW_MS + 3001) == 1
    again = await store.claim("suno", "default", NOW_MS + 3001, **CLAIM)
    assert isinstance(again, Claimed) and again[1] == ["t1"]


async def test_reopen_restarts_a_finished_task(backend: Backend) -> None:
    store = backend.store()
    _, record = await register(store, "t1")
    await store.finish(fail(record, Reason.CANCELLED, NOW_MS, None), NOW_MS, [], sample=None)
    created, reopened = await register(store, "t1", now_ms=NOW_MS + 1, reopen=True)
    assert created is True and reopened.state is TaskState.PENDING
    assert await backend.redis.pttl(store.task_key("suno", "t1")) == -1
    assert await store.count_by_state("suno") == {"pending": 1, "succeeded": 0, "failed": 0}


async def test_pending_tasks_stay_small(backend: Backend) -> None:
    store = backend.store()
    await register(store, "t" * 128, meta={"k": "v" * 1000})
    size = await backend.redis.memory_usage(store.task_key("suno", "t" * 128)) if backend.kind == "real" else None
    raw = await backend.redis.hget(store.task_key("suno", "t" * 128), "record")
    assert len(raw) < 2048
    assert size is None or size <= 2048 + 512


LEASE_MS = 30_000


@pytest.mark.parametrize("count", [1, 3])
async def test_outbox_lease_and_done(backend: Backend, count: int) -> None:
    store = backend.store()
    for i in range(count):
        await backend.redis.zadd(store.outbox_key, {f"dlv_{i}": NOW_MS})
    await backend.redis.zadd(store.outbox_key, {"later": NOW_MS + 10 * LEASE_MS})
    taken, next_due_ms = await store.take_outbox(NOW_MS, 100, lease_ms=LEASE_MS)
    assert sorted(taken) == [(f"dlv_{i}", NOW_MS) for i in range(count)]
    assert next_due_ms == NOW_MS + LEASE_MS  # the leased ones fall due again first
    # leased to the first dispatcher; "later" is not due yet
    assert await store.take_outbox(NOW_MS + 1, 100, lease_ms=LEASE_MS) == ([], NOW_MS + LEASE_MS)
    for delivery_id, _ in taken:
        await store.outbox_done(delivery_id)
    assert await store.take_outbox(NOW_MS + 1, 100) == ([], NOW_MS + 10 * LEASE_MS)
    await store.outbox_done("later")
    assert await store.take_outbox(NOW_MS + 1, 100) == ([], None)


async def test_meta_comes_back_untouched_nulls_included(backend: Backend) -> None:
    store = backend.store()
    meta = {"song": None, "tags": [None, "x"], "nested": {"k": None}}
    await register(store, "t1", meta=meta)
    record = await store.get("suno", "t1")
    assert record is not None and record.meta == meta


async def test_listing_every_state_pages_across_state_boundaries(backend: Backend) -> None:
    store = backend.store()
    for i in range(7):
        _, record = await register(store, f"t{i}", now_ms=NOW_MS)  # tied scores
        if i % 3 == 1:
            await store.finish(fail(record, Reason.CANCELLED, NOW_MS + i, None), NOW_MS + i, [], sample=None)
    seen, after, pages = [], None, 0
    while True:
        records, after = await store.list_page(None, None, 2, after)
        seen += [(r.state.value, r.id) for r in records]
        pages += 1
        if after is None:
            break
    assert pages == 4 and len(seen) == 7 and len(set(seen)) == 7
    assert [s for s, _ in seen] == ["pending"] * 5 + ["failed"] * 2  # pending first, then succeeded, then failed


async def test_enqueueing_a_pending_task_again_returns_its_current_poll_count(backend: Backend) -> None:
    store = backend.store()
    await register(store, "t1")
    key = store.task_key("suno", "t1")
    await backend.redis.hset(key, "sched", sched_text(NOW_MS + 60_000, attempts=7, polled_ms=NOW_MS + 9000))
    created, record = await register(store, "t1")
    assert not created and (record.attempts, record.updated_at_ms) == (7, NOW_MS + 9000)


async def test_a_claim_tops_up_with_ids_due_soon_but_not_one_polled_moments_ago(backend: Backend) -> None:
    store = backend.store()
    for task_id in ("due", "soon", "just-polled"):
        await register(store, task_id)  # first poll due at NOW_MS + 3000
    due_key = store.due_key("suno", "default")
    await backend.redis.zadd(due_key, {"soon": NOW_MS + 3500, "just-polled": NOW_MS + 3500})
    key = store.task_key("suno", "just-polled")
    await backend.redis.hset(key, "sched", sched_text(NOW_MS + 60_000, attempts=1, polled_ms=NOW_MS + 2900))
    kw = {**CLAIM, "coalesce_ms": 1000}
    got = await store.claim("suno", "default", NOW_MS + 3000, **kw, min_repoll_ms=750)  # type: ignore[arg-type]
    assert isinstance(got, Claimed) and sorted(got[1]) == ["due", "soon"]
    got = await store.claim("suno", "default", NOW_MS + 3500, **kw, min_repoll_ms=750)  # type: ignore[arg-type]
    assert isinstance(got, Claimed) and got[1] == ["just-polled"]  # once due, it is polled like any other


async def test_a_batch_of_writes_after_the_server_lost_its_scripts_runs_each_write_once(backend: Backend) -> None:
    store = backend.store()
    for task_id in ("t1", "t2"):
        await register(store, task_id)
    got = await store.claim("suno", "default", NOW_MS + 3000, **CLAIM)
    assert isinstance(got, Claimed)
    records = {task_id: await store.get("suno", task_id) for task_id in ("t1", "t2")}
    failed = fail(records["t2"], Reason.DEADLINE, NOW_MS + 3100)  # type: ignore[arg-type]
    events = build_events([EventType.TASK_FAILED], records["t2"], failed, NOW_MS + 3100, {})  # type: ignore[arg-type]
    kw = {"next_due_ms": NOW_MS + 9000, "sched": sched_text(NOW_MS + 60_000, seen=True), "events": []}
    calls = [
        store.update_call(records["t1"], got[0], NOW_MS + 3100, **kw),  # type: ignore[arg-type]
        store.finish_call(failed, NOW_MS + 3100, events, sample=None),
    ]
    await backend.redis.script_flush()  # as after a restart: the next EVALSHA finds no script
    assert await store.run_calls(calls, clear_backoff=("suno", "default")) == [True, True]
    assert await backend.redis.zscore(store.due_key("suno", "default"), "t1") == NOW_MS + 9000
    assert await backend.redis.xlen(store.events_key) == 1  # the terminal event once, not once per try
    assert await store.run_calls(calls) == [False, False]  # the claim was used up; t2 is finished


async def test_the_wake_channel_pings_when_silent_and_gives_up_on_a_server_that_does_not_answer(
    backend: Backend,
) -> None:
    store = backend.store()
    async with store.wakes(read_s=0.2) as wakes:
        waiting = asyncio.ensure_future(anext(wakes))
        await asyncio.sleep(1.0)  # silent for 5 reads: each PING answered, still following
        assert not waiting.done()
        await register(store, "t1")
        assert (await asyncio.wait_for(waiting, 5.0))[:2] == ("suno", "default")
        if backend.kind == "real":  # a server that stops answering (fakeredis cannot pause)
            await backend.redis.execute_command("CLIENT", "PAUSE", 1500, "ALL")
            try:
                with pytest.raises(RedisConnectionError, match="no answer on the wake channel"):
                    await asyncio.wait_for(anext(wakes), 5.0)
            finally:
                await backend.redis.execute_command("CLIENT", "UNPAUSE")


async def test_a_quiet_intake_read_blocks_less_than_the_connections_socket_timeout(
    real_redis_url: str | None, request: pytest.FixtureRequest
) -> None:
    url = require_real_redis(real_redis_url, request)
    client = create_redis(f"{url}?socket_timeout=0.4")
    try:
        store = Store(client, prefix="quiet")
        await store.ensure_intake_group()
        # blocks 0.2 s, not the 5 s asked: a longer block would read as a timeout, i.e. an outage
        assert await store.read_intake("c1", 10, block_ms=5000) == []
    finally:
        await client.aclose()


async def test_a_finished_record_is_stored_packed_whole_and_read_back_whole(backend: Backend) -> None:
    store = backend.store()
    _, record = await register(store, "t1")
    raw = {"id": "t1", "response": {"data": [{"lyric": "la la la\n" * 300, "title": "Song"}]}}
    done = record.evolve(state=TaskState.SUCCEEDED, finished_at_ms=NOW_MS + 10, response=raw)
    assert await store.finish(done, NOW_MS + 10, [], sample=None)
    key = store.task_key("suno", "t1")
    fields = await backend.redis.hgetall(key)
    assert set(fields) == {"record", "state"}, fields  # no scheduling fields left, no answer apart
    unpacker = zlib.decompressobj(zdict=codecs.RECORD_ZDICT)  # zlib with the records' preset dictionary
    unpacked = json.loads(unpacker.decompress(base64.b64decode(fields["record"])))
    assert unpacked["response"] == raw and len(fields["record"]) < len(json.dumps(raw)) / 4  # lyrics pack well
    assert (await store.get("suno", "t1")) == done  # every reader gets the whole record back
    assert (await store.get_many([("suno", "t1")])) == [done]
    created, again = await register(store, "t1")  # a duplicate enqueue answers the stored record
    assert not created and again == done


@pytest.mark.parametrize("seed_name", ["suno_retrieve", "producer_retrieve"])
def test_the_preset_dictionary_packs_the_vendors_own_records_smaller(seed_name: str) -> None:
    raw = json.loads((Path(__file__).parent / "seeds" / f"{seed_name}.json").read_text(encoding="utf-8"))
    task = UpstreamTask.from_wire(raw)
    assert task is not None
    done = Record(
        "suno", task.id, TaskState.SUCCEEDED, progress=100, attempts=9, finished_at_ms=NOW_MS, response=task.kept
    )
    packed = codecs.finished_json(done)
    plain = base64.b64encode(zlib.compress(codecs.record_json(done), codecs.RECORD_LEVEL)).decode()
    assert len(packed) < 0.9 * len(plain), (len(packed), len(plain))
    assert Record.from_dict(json.loads(codecs.record_text(packed))) == done


async def test_a_record_finished_by_an_earlier_version_is_read_whole(backend: Backend) -> None:
    # before finished records were packed whole: the record as JSON, the raw answer packed apart;
    # an upgrade reads those for as long as they are kept (ACETRACK_RETENTION_S)
    store = backend.store()
    _, record = await register(store, "old")
    raw = {"id": "old", "response": {"data": [{"title": "Song"}]}}
    done = record.evolve(state=TaskState.SUCCEEDED, finished_at_ms=NOW_MS + 10, response=raw)
    key = store.task_key("suno", "old")
    await backend.redis.delete(key)
    packed = base64.b64encode(zlib.compress(json.dumps(raw).encode())).decode()
    plain = json.dumps({k: v for k, v in done.to_dict().items() if v is not None and k != "response"})
    await backend.redis.hset(key, mapping={"record": plain, "state": "succeeded", "response": packed})
    assert await store.get("suno", "old") == done
    assert await store.get_many([("suno", "old")]) == [done]
