"""Property tests (hypothesis): the completion rules and the intake rules never raise on any input,
a terminal result never reverts, and every clip's outcome is kept."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import fake_pool

from worker import codec
from worker.cadence import Policy
from worker.classify import decide, item_state
from worker.errors import InvalidInput, UpstreamUnavailable
from worker.intake import EnqueueRequest, build_request
from worker.models import ClipState, Record, TaskState
from worker.store import Store, sched_text
from worker.wire import UpstreamItem, UpstreamTask

NOW_MS = 1_767_000_000_000
WORDS = [
    "pending",
    "running",
    "succeeded",
    "error",
    "succeed",
    "success",
    "completed",
    "complete",
    "done",
    "finished",
    "failed",
    "failure",
    "cancelled",
    "canceled",
    "rejected",
    "queued",
    "queue",
    "submitted",
    "processing",
    "streaming",
    "",
    "SUCCEEDED",
    " Running ",
    "weird",
]
URLS = [
    None,
    "",
    "https://cdn1.suno.ai/a.mp3",
    "https://audiopipe.suno.ai/?item_id=1",
    "ftp://x/y",
    "not a url",
    "http://example.com/v.mp4",
    5,
]
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8))
anything = st.recursive(
    json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8
)

item = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=6), st.integers()),
        "state": st.sampled_from(WORDS) | anything,
        "status": st.sampled_from(WORDS),
        "audio_url": st.sampled_from(URLS),
        "video_url": st.sampled_from(URLS),
        "image_url": st.sampled_from(URLS),
        "text": st.one_of(st.none(), st.text(max_size=5)),
        "duration": st.one_of(st.none(), st.floats(), st.text(max_size=6)),
        "progress": st.one_of(st.none(), st.integers(-5, 500), st.floats(), st.text(max_size=5)),
        "error": anything,
        "title": anything,
    },
)
response = st.fixed_dictionaries(
    {},
    optional={
        "success": anything,
        "task_id": st.just("t1"),
        "data": st.one_of(st.lists(item | anything, max_size=4), item, anything),
        "error": anything,
    },
)
record_wire = st.fixed_dictionaries(
    {"id": st.just("t1")},
    optional={
        "finished_at": st.one_of(st.none(), st.floats(), st.integers(), st.text(max_size=4)),
        "duration": anything,
        "response": response | anything,
        "created_at": anything,
    },
)
POLICY = Policy(poll_s=3.0, max_poll_s=60.0, not_found_grace_s=60.0)


def pending_record() -> Record:
    return Record(service="suno", id="t1", enqueued_at_ms=NOW_MS - 10_000, updated_at_ms=NOW_MS - 10_000)


def run(wire: dict[str, Any], record: Record, now_ms: int) -> Record:
    task = UpstreamTask.from_wire(wire)
    return decide(
        task,
        record,
        now_ms,
        deadline_at_ms=NOW_MS + 600_000,
        missing_since_ms=None,
        policy=POLICY,
        usual_lifetime_s=100.0,
    ).record


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(record_wire)
def test_the_completion_rules_never_raise_and_keep_every_clip(wire: dict[str, Any]) -> None:
    try:
        task = UpstreamTask.from_wire(wire)
    except UpstreamUnavailable:
        return  # a broken answer is an outage, never a verdict
    after = run(wire, pending_record(), NOW_MS)
    assert task is not None
    assert len(after.clips) == len(task.items)
    for clip, raw_item in zip(after.clips, task.items, strict=True):
        assert clip.state is item_state(raw_item)
    if after.state is TaskState.SUCCEEDED:
        assert any(c.state is ClipState.SUCCEEDED for c in after.clips)
        assert after.partial == any(c.state is not ClipState.SUCCEEDED for c in after.clips)
    if after.state is TaskState.FAILED:
        assert not any(c.state is ClipState.SUCCEEDED for c in after.clips) and after.error is not None
    assert after.progress is None or 0 <= after.progress <= 100


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(record_wire, record_wire)
def test_a_terminal_result_never_reverts(first: dict[str, Any], second: dict[str, Any]) -> None:
    """Whatever a later poll sees, the store keeps the first terminal record (fakeredis, real Lua)."""
    try:
        done = run(first, pending_record(), NOW_MS)
        later = run(second, pending_record(), NOW_MS + 5000)
    except UpstreamUnavailable:
        return
    if done.terminal:
        # JSON has no NaN or Infinity: the store writes them as null, as a JSON reader reads them
        assert asyncio.run(_store_twice(done, later)) == Record.from_dict(codec.loads(codec.dumps(done.to_dict())))


async def _store_twice(done: Record, later: Record) -> Record:
    redis = aioredis.Redis(connection_pool=fake_pool(fakeredis.FakeServer(), decode_responses=True))
    store = Store(redis)
    await store.register(EnqueueRequest("suno", "t1"), NOW_MS - 10_000, deadline_s=600, first_due_ms=NOW_MS - 10_000)
    assert await store.finish(done, NOW_MS, [], sample=None)
    if later.terminal:
        assert not await store.finish(later, NOW_MS + 5000, [], sample=None)
    else:
        kw = {"next_due_ms": 0, "sched": sched_text(NOW_MS), "events": []}
        assert not await store.update(later, "any-claim", NOW_MS + 5000, **kw)  # type: ignore[arg-type]
    stored = await store.get("suno", "t1")
    await redis.aclose()
    assert stored is not None
    return stored


@settings(max_examples=400)
@given(
    st.dictionaries(
        st.sampled_from(["service", "id", "callback_url", "deadline_s", "token", "meta", "reopen", "other"])
        | st.text(max_size=5),
        st.text(max_size=40) | anything,
        max_size=6,
    )
)
def test_intake_parsing_accepts_as_documented_or_rejects_with_a_reason(fields: dict[str, Any]) -> None:
    try:
        req = build_request(fields, services=(), tokens=None)
    except InvalidInput as e:
        assert isinstance(e.field, str) and e.message
        return
    assert set(fields) <= {"service", "id", "callback_url", "deadline_s", "token", "meta", "reopen"}
    assert req.service == fields["service"] and req.id == fields["id"]


PREVIEWS = [None, "", "https://audiopipe.suno.ai/?item_id=1", "http://audiopipe.suno.ai/stream/2"]


@given(st.sampled_from(PREVIEWS), st.sampled_from(PREVIEWS), st.sampled_from(URLS))
def test_a_preview_url_alone_never_means_done(audio: Any, video: Any, image: Any) -> None:
    state = item_state(UpstreamItem.from_wire({"audio_url": audio, "video_url": video, "image_url": image}))
    # only an image task's final image may finish an item that has no final audio or video
    assert state is not ClipState.SUCCEEDED or (not audio and not video and image)
