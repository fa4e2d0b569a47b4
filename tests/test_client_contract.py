"""The producer client (``client/acetrack``) and the worker agree on the contract: key names, the
intake's fields and rules, the record's, clip's and event's fields, and how a record is stored. The
client cannot import the worker, so these tests are what keeps the two from drifting apart."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import zlib
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from support import RECORD_FIELDS, fake_pool

import acetrack
from acetrack import keys as client_keys
from acetrack import records as client_records
from acetrack import rules
from acetrack.redis_transport import RedisTransport
from worker import intake
from worker.errors import InvalidInput as WorkerInvalidInput
from worker.errors import StoreError as WorkerStoreError
from worker.events import event_fields
from worker.models import Clip, ClipState, EventType, Record, TaskState
from worker.store import Keys, Store, codecs
from worker.store.tasks import RECORD_FIELDS as HASH_FIELDS


@pytest.mark.parametrize("prefix", ["acetrack", "team-a"])
def test_key_names_are_the_workers(prefix: str) -> None:
    mine, theirs = client_keys.Keys(prefix), Keys(prefix)
    assert (mine.intake, mine.rejected, mine.events) == (theirs.intake_key, theirs.rejected_key, theirs.events_key)
    assert mine.task("suno", "a.b:c-1") == theirs.task_key("suno", "a.b:c-1")
    # the task hash's public fields; ``sched`` is the workers' own
    assert {client_keys.RECORD_FIELD, client_keys.RESPONSE_FIELD} == set(HASH_FIELDS) - {"sched"}
    assert client_keys.RECORD_ZDICT == codecs.RECORD_ZDICT and client_keys.RECORD_ZDICTS == codecs.RECORD_ZDICTS


def test_record_clip_and_event_fields_are_the_workers() -> None:
    record = Record("suno", "x", clips=[Clip("c", "t", ClipState.SUCCEEDED)])
    assert list(record.to_dict()) == client_records.RECORD_FIELDS
    assert set(client_records.RECORD_FIELDS) == RECORD_FIELDS
    assert tuple(record.clips[0].to_dict()) == client_records.CLIP_FIELDS
    assert tuple(event_fields(EventType.TASK_PROGRESS, record, 1, "evt_1", "")) == client_records.EVENT_FIELDS
    assert {f.name for f in dataclasses.fields(acetrack.Record)} == RECORD_FIELDS
    assert tuple(f.name for f in dataclasses.fields(acetrack.Clip)) == client_records.CLIP_FIELDS
    assert client_records.EVENT_TYPES == {t.value for t in EventType}


def test_intake_fields_patterns_and_limits_are_the_workers() -> None:
    assert rules.FIELDS == intake.FIELDS
    assert rules.SERVICE_RE.pattern == intake.SERVICE_RE.pattern and rules.ID_RE.pattern == intake.ID_RE.pattern
    limits = (rules.MAX_URL_CHARS, rules.MAX_META_BYTES, rules.MAX_DEADLINE_S)
    assert limits == (intake.MAX_URL_CHARS, intake.MAX_META_BYTES, intake.MAX_DEADLINE_S)


CASES: list[dict[str, Any]] = [
    {"service": "suno", "id": "ok-1"},
    {"service": "producer", "id": "a" * 128, "deadline_s": 1, "reopen": True},
    {"service": "s" * 32, "id": "x:y.z_1-2", "deadline_s": 604800.0, "meta": {"song": "intro", "n": [1, 2.5]}},
    {"service": "suno", "id": "cb", "callback_url": "https://hooks.example/x?y=1", "token": "team-a"},
    {"service": "Suno", "id": "x"},
    {"service": "-suno", "id": "x"},
    {"service": "s" * 33, "id": "x"},
    {"service": "suno", "id": ""},
    {"service": "suno", "id": "a b"},
    {"service": "suno", "id": "a" * 129},
    {"service": "suno", "id": "é"},
    {"service": "suno", "id": "x", "deadline_s": 0.5},
    {"service": "suno", "id": "x", "deadline_s": 604801},
    {"service": "suno", "id": "x", "deadline_s": math.nan},
    {"service": "suno", "id": "x", "deadline_s": math.inf},
    {"service": "suno", "id": "x", "callback_url": "ftp://hooks.example/x"},
    {"service": "suno", "id": "x", "callback_url": "https://"},
    {"service": "suno", "id": "x", "callback_url": "http://[::1"},
    {"service": "suno", "id": "x", "callback_url": "https://h.example/" + "a" * 2048},
    {"service": "suno", "id": "x", "meta": ["not", "an", "object"]},
    {"service": "suno", "id": "x", "meta": {"big": "a" * 4096}},
    {"service": "suno", "id": "x", "meta": {"n": 2**64}},
    {"service": "suno", "id": "x", "meta": {"n": -(2**63)}},
    {"service": "suno", "id": "x", "meta": {"n": math.nan}},
]


def _field_of(error: Exception | None) -> str | None:
    return getattr(error, "field", None) if error else None


@pytest.mark.parametrize("case", CASES, ids=[str(n) for n in range(len(CASES))])
def test_the_client_accepts_and_refuses_what_the_workers_do(case: dict[str, Any]) -> None:
    theirs: Exception | None = None
    mine: Exception | None = None
    try:
        intake.build_request(case)
    except WorkerInvalidInput as e:
        theirs = e
    args = {k: v for k, v in case.items() if k not in ("service", "id")}
    try:
        checked = rules.check_intake(case["service"], case["id"], **args)
    except acetrack.InvalidInput as e:
        mine = e
    assert _field_of(mine) == _field_of(theirs), (mine, theirs)
    if mine is None:
        # what the client writes on the stream is what the workers accept, and means the same
        assert intake.build_request(checked.stream_fields()) == intake.build_request(case)


async def test_a_stored_record_reads_the_same_through_the_client() -> None:
    server = fakeredis.FakeServer()
    redis = aioredis.Redis(connection_pool=fake_pool(server, decode_responses=True))
    store = Store(redis)
    req = intake.build_request({"service": "suno", "id": "read-me", "meta": {"song": "intro"}})
    _, record = await store.register(req, 1_000, deadline_s=600, first_due_ms=2_000)
    transport = RedisTransport(redis, client_keys.Keys())
    pending = await transport.get("suno", "read-me")
    assert pending == acetrack.Record.from_dict(record.to_dict())
    clips = [Clip("c1", "Intro", ClipState.SUCCEEDED, audio_url="https://cdn.example/1.mp3", duration_s=61.5)]
    done = record.evolve(
        state=TaskState.SUCCEEDED, progress=100, finished_at_ms=5_000, clips=clips, response={"data": [{"id": "c1"}]}
    )
    assert await store.finish(done, 5_000, [], sample=None)
    stored = await store.get("suno", "read-me")
    mine = await transport.get("suno", "read-me")
    assert stored is not None and mine is not None
    assert mine == acetrack.Record.from_dict(stored.to_dict())
    assert mine.response == {"data": [{"id": "c1"}]} and mine.clips[0].audio_url == "https://cdn.example/1.mp3"
    assert mine.terminal and mine.meta == {"song": "intro"}
    await redis.aclose()


async def test_a_record_finished_by_an_earlier_acetrack_reads_whole_through_the_client() -> None:
    # an earlier acetrack kept a finished record as JSON and packed only its raw answer, apart
    redis = aioredis.Redis(connection_pool=fake_pool(fakeredis.FakeServer(), decode_responses=True))
    answer = {"data": [{"id": "c1", "lyric": "la"}]}
    packed = base64.b64encode(zlib.compress(json.dumps(answer).encode())).decode()
    plain = json.dumps({"service": "suno", "id": "old", "state": "succeeded", "progress": 100})
    await redis.hset(client_keys.Keys().task("suno", "old"), mapping={"record": plain, "response": packed})
    record = await RedisTransport(redis, client_keys.Keys()).get("suno", "old")
    assert record is not None and record.terminal and record.response == answer
    await redis.aclose()


async def test_a_record_packed_without_the_dictionary_reads_whole_through_worker_and_client() -> None:
    # acetrack before RECORD_ZDICT packed a finished record whole with plain zlib
    redis = aioredis.Redis(connection_pool=fake_pool(fakeredis.FakeServer(), decode_responses=True))
    whole = {"service": "suno", "id": "old", "state": "succeeded", "progress": 100, "response": {"data": [{}]}}
    packed = base64.b64encode(zlib.compress(json.dumps(whole).encode())).decode()
    await redis.hset(client_keys.Keys().task("suno", "old"), mapping={"record": packed, "state": "succeeded"})
    mine, theirs = (
        await RedisTransport(redis, client_keys.Keys()).get("suno", "old"),
        await Store(redis).get("suno", "old"),
    )
    assert mine is not None and theirs is not None and mine.response == theirs.response == {"data": [{}]}
    assert mine == acetrack.Record.from_dict(theirs.to_dict()) and mine.terminal
    await redis.aclose()


def test_the_record_dictionary_is_never_edited() -> None:
    # records packed with it are kept for days (ACETRACK_RETENTION_S): a better one goes beside it
    assert list(codecs.RECORD_ZDICTS) == [0x97CE5DC1] == [zlib.adler32(codecs.RECORD_ZDICT)]


def _packed_with(zdict: bytes, text: bytes) -> bytes:
    packer = zlib.compressobj(6, zdict=zdict)
    return packer.compress(text) + packer.flush()


@pytest.mark.parametrize("damage", ["unknown-dictionary", "cut-short"])
async def test_a_record_packed_by_a_later_acetrack_or_cut_short_is_named_not_misread(damage: str) -> None:
    whole = json.dumps({"service": "suno", "id": "odd", "state": "succeeded"}).encode() * 20
    data = _packed_with(b'{"service":"suno","id":"","state":"succeeded","later":true}', whole)
    if damage == "cut-short":
        data = _packed_with(codecs.RECORD_ZDICT, whole)[:-12]
    redis = aioredis.Redis(connection_pool=fake_pool(fakeredis.FakeServer(), decode_responses=True))
    packed = base64.b64encode(data).decode()
    await redis.hset(client_keys.Keys().task("suno", "odd"), mapping={"record": packed, "state": "succeeded"})
    words = "does not know" if damage == "unknown-dictionary" else "cut short"
    with pytest.raises(WorkerStoreError, match=words):
        await Store(redis).get("suno", "odd")
    client_error = acetrack.Unsupported if damage == "unknown-dictionary" else acetrack.Unavailable
    with pytest.raises(client_error, match="unknown here" if damage == "unknown-dictionary" else "cut short"):
        await RedisTransport(redis, client_keys.Keys()).get("suno", "odd")
    await redis.aclose()


def test_records_and_events_from_a_later_acetrack_still_parse() -> None:
    data = {"service": "suno", "id": "x", "state": "succeeded", "clips": [{"state": "succeeded", "bpm": 120}]}
    record = acetrack.Record.from_dict({**data, "v": 2, "mood": "new field"})
    assert record.terminal and record.clips == (acetrack.Clip(None, None, "succeeded"),) and record.v == 2
    assert record.meta is None and record.reason is None and record.attempts == 0  # left out when null
    fields = event_fields(EventType.TASK_PROGRESS, Record("suno", "x", progress=45, meta={"a": 1}), 7, "evt_1", "")
    event = acetrack.Event.from_fields("1-0", {**fields, "extra": "ignored"})
    assert (event.type, event.progress, event.meta, event.record, event.clip, event.reason) == (
        "task.progress",
        45,
        {"a": 1},
        None,
        None,
        None,
    )
