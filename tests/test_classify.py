"""Completion rules and polling maths (``worker.classify``): table-driven, synchronous, no event loop.

The vendor's own examples (``tests/seeds/*.json``, repaired from DESIGN.md §1's seed pages) are
among the cases.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from worker.cadence import (
    BACKLOG_FRESH_MS,
    MIN_SKIP_SAMPLES,
    MIN_TARGET_SAMPLES,
    STAGE_CLIP_DONE,
    STAGE_QUEUED,
    STAGE_RUNNING,
    STAGE_STREAMING,
    Pace,
    Policy,
    advance_marks,
    backoff_s,
    first_poll_ms,
    late_ratio_p95,
    next_poll_delay_s,
    on_grid_ms,
    reached_stage,
    usual_lifetime_s,
    with_target,
)
from worker.cadence import lifetimes_from as classify_lifetimes
from worker.classify import (
    MIN_MISSES,
    Decision,
    Sample,
    decide,
    fingerprint,
    has_final_artifact,
    is_preview_url,
    is_terminal,
    item_state,
    newly_succeeded,
    normalise_progress,
    observe,
    observed_stage,
)
from worker.errors import UpstreamUnavailable
from worker.models import (
    ACTIVE_CLIP_STATES,
    Clip,
    ClipState,
    EventType,
    Reason,
    Record,
    TaskState,
)
from worker.store.codecs import parse_sample, sample_text
from worker.wire import ACCOUNT_FIELDS, UpstreamItem, UpstreamTask

Json = dict[str, Any]

SEEDS = Path(__file__).parent / "seeds"
REPO = Path(__file__).resolve().parent.parent
NOW_MS = 1_767_119_799_000  # on the 3 s poll grid
ENQUEUED_MS = NOW_MS - 10_000
DEADLINE_MS = NOW_MS + 1_800_000
FINISHED_AT = 1_767_119_785.589
POLICY = Policy(poll_s=3.0, max_poll_s=60.0, not_found_grace_s=60.0)

CDN_MP3 = "https://cdn1.suno.ai/b8a4f691-4b14-4120-a7e1-a54a27a0e57e.mp3"
CDN_MP4 = "https://cdn1.suno.ai/b8a4f691-4b14-4120-a7e1-a54a27a0e57e.mp4"
COVER = "https://cdn2.suno.ai/image_b8a4f691-4b14-4120-a7e1-a54a27a0e57e.jpeg"
PREVIEW = "https://audiopipe.suno.ai/?item_id=b8a4f691-4b14-4120-a7e1-a54a27a0e57e"

SUCCESS_WORDS = ["succeeded", "succeed", "success", "completed", "complete", "done", "finished"]
FAILURE_WORDS = ["error", "failed", "failure", "cancelled", "canceled", "rejected"]
PENDING_WORDS = ["pending", "queued", "queue", "submitted", ""]
RUNNING_WORDS = ["running", "processing", "streaming"]


def seed(name: str) -> Json:
    """One repaired vendor example from ``tests/seeds``."""
    data: Json = json.loads((SEEDS / f"{name}.json").read_text(encoding="utf-8"))
    return data


def wire(
    *items: Json,
    task_id: str = "task-1",
    finished_at: Any = None,
    success: bool | None = None,
    error: Any = None,
    data: Any = None,
) -> Json:
    """A task record shaped like the Tasks API's, with only the fields a case cares about."""
    response: Json = {"task_id": task_id, "data": list(items) if data is None else data}
    if success is not None:
        response["success"] = success
    if error is not None:
        response["error"] = error
    raw: Json = {"id": task_id, "created_at": 1_767_119_745.524, "response": response}
    if finished_at is not None:
        raw["finished_at"] = finished_at
    return raw


def parse(raw: Json) -> UpstreamTask:
    """``UpstreamTask.from_wire`` for a record known to be present."""
    task = UpstreamTask.from_wire(raw)
    assert task is not None
    return task


def make_record(task_id: str = "task-1", service: str = "suno", **fields: Any) -> Record:
    """A pending record as the store would hand it to ``decide``."""
    return Record(service=service, id=task_id, enqueued_at_ms=ENQUEUED_MS, updated_at_ms=ENQUEUED_MS, **fields)


def fixed(value: float) -> Callable[[], float]:
    """An injected rng that always answers ``value``."""
    return lambda: value


def run(
    raw: Json | None,
    record: Record | None = None,
    *,
    now_ms: int = NOW_MS,
    deadline_at_ms: int = DEADLINE_MS,
    missing_since_ms: int | None = None,
    usual_s: float = 300.0,
    **extra: Any,
) -> Decision:
    """``decide`` with the test defaults; ``raw=None`` means the id is unknown upstream."""
    task = None if raw is None else parse(raw)
    return decide(
        task,
        record or make_record(),
        now_ms,
        deadline_at_ms=deadline_at_ms,
        missing_since_ms=missing_since_ms,
        policy=POLICY,
        usual_lifetime_s=usual_s,
        rng=fixed(0.5),
        **extra,
    )


# --- item_state -------------------------------------------------------------------------------

WORD_CASES = [
    *[pytest.param(w, ClipState.SUCCEEDED, id=f"success-{w}") for w in SUCCESS_WORDS],
    *[pytest.param(w, ClipState.FAILED, id=f"failure-{w}") for w in FAILURE_WORDS],
    *[pytest.param(w, ClipState.PENDING, id=f"pending-{w or 'empty'}") for w in PENDING_WORDS],
    *[pytest.param(w, ClipState.RUNNING, id=f"running-{w}") for w in RUNNING_WORDS],
    pytest.param(" Complete ", ClipState.SUCCEEDED, id="case-and-space"),
    pytest.param("SUCCEEDED", ClipState.SUCCEEDED, id="upper"),
]


@pytest.mark.parametrize("key", ["state", "status"])
@pytest.mark.parametrize(("word", "expected"), WORD_CASES)
def test_item_state_words(key: str, word: str, expected: ClipState) -> None:
    assert item_state(UpstreamItem.from_wire({key: word})) is expected


INFER_CASES = [
    pytest.param({"audio_url": CDN_MP3}, ClipState.SUCCEEDED, id="audio-final"),
    pytest.param({"video_url": CDN_MP4}, ClipState.SUCCEEDED, id="video-final"),
    pytest.param({"image_url": COVER}, ClipState.SUCCEEDED, id="image-task"),
    pytest.param({"file_url": "https://files.example.com/a.zip"}, ClipState.SUCCEEDED, id="file-url"),
    pytest.param({"url": "http://files.example.com/a.png"}, ClipState.SUCCEEDED, id="plain-url-http"),
    pytest.param({"audio_url": PREVIEW}, ClipState.RUNNING, id="preview-audio"),
    pytest.param({"video_url": "https://audiopipe.suno.ai/v"}, ClipState.RUNNING, id="preview-video"),
    pytest.param({"audio_url": PREVIEW, "image_url": COVER}, ClipState.RUNNING, id="preview-plus-cover"),
    pytest.param({}, ClipState.PENDING, id="nothing"),
    pytest.param({"audio_url": "", "video_url": None}, ClipState.PENDING, id="empty-urls"),
    pytest.param({"audio_url": "s3://bucket/a.mp3"}, ClipState.PENDING, id="non-http-url"),
    pytest.param({"text": "some lyrics"}, ClipState.PENDING, id="text-without-word"),
    pytest.param({"state": "weird", "audio_url": CDN_MP3}, ClipState.SUCCEEDED, id="unknown-word-inferred"),
    pytest.param({"state": "weird"}, ClipState.PENDING, id="unknown-word-nothing"),
    pytest.param({"state": 3, "audio_url": CDN_MP3}, ClipState.SUCCEEDED, id="non-string-word-inferred"),
    # an explicit word wins over what the URLs suggest
    pytest.param({"state": "pending", "audio_url": CDN_MP3}, ClipState.PENDING, id="word-pending-beats-url"),
    pytest.param({"state": "running", "audio_url": CDN_MP3}, ClipState.RUNNING, id="word-running-beats-url"),
    pytest.param({"state": "error", "audio_url": CDN_MP3}, ClipState.FAILED, id="word-error-beats-url"),
    pytest.param({"status": "complete", "text": "[Verse]..."}, ClipState.SUCCEEDED, id="lyrics-complete"),
]


@pytest.mark.parametrize(("raw", "expected"), INFER_CASES)
def test_item_state_inferred(raw: Json, expected: ClipState) -> None:
    assert item_state(UpstreamItem.from_wire(raw)) is expected


def test_empty_word_with_final_url_is_in_progress() -> None:
    assert item_state(UpstreamItem.from_wire({"status": "", "audio_url": CDN_MP3})) in ACTIVE_CLIP_STATES


# --- normalise_progress -----------------------------------------------------------------------

PROGRESS_CASES = [
    ("45%", 45),
    (45, 45),
    (0.45, 45),
    ("100%", 100),
    (None, None),
    ("abc", None),
    (150, 100),
    (True, None),
    (False, None),
    (" 45 % ", 45),
    ("45", 45),
    ("45.6%", 46),
    (-5, 0),
    ("-5%", 0),
    (0, 0),
    (0.0, 0),
    (1.0, 100),
    (1, 1),
    (100, 100),
    ("", None),
    ("%", None),
    ("nan", None),
    (float("inf"), None),
    (float("nan"), None),
    ([45], None),
    ({"p": 45}, None),
]


@pytest.mark.parametrize(("value", "expected"), PROGRESS_CASES, ids=[repr(v) for v, _ in PROGRESS_CASES])
def test_normalise_progress(value: Any, expected: int | None) -> None:
    result = normalise_progress(value)
    assert result == expected
    assert result is None or type(result) is int


# --- is_preview_url ---------------------------------------------------------------------------

PREVIEW_CASES = [
    (PREVIEW, True),
    ("http://audiopipe.suno.ai/x", True),
    ("https://AUDIOPIPE.SUNO.AI/x", True),
    ("https://audiopipe.suno.ai:443/x", True),
    (CDN_MP3, False),
    (COVER, False),
    ("https://audiopipe.suno.ai.example.com/x", False),
    ("https://example.com/audiopipe.suno.ai", False),
    ("ftp://audiopipe.suno.ai/x", False),
    ("audiopipe.suno.ai/x", False),
    # the fast paths (no preview host named; an http(s) prefix) agree with urlsplit on the rest
    ("HTTPS://audiopipe.suno.ai/x", True),
    (" https://audiopipe.suno.ai/x", True),
    ("https://user@audiopipe.suno.ai/x", True),
    ("https://audio\tpipe.suno.ai/x", True),  # urlsplit drops tabs and line breaks anywhere
    ("https://audiopipe.suno\n.ai/x", True),
    ("https://[audiopipe.suno.ai]/x", False),  # a malformed host: no preview, and no error
    ("", False),
    (None, False),
]


@pytest.mark.parametrize(("url", "expected"), PREVIEW_CASES, ids=[repr(u) for u, _ in PREVIEW_CASES])
def test_is_preview_url(url: str | None, expected: bool) -> None:
    assert is_preview_url(url) is expected


@pytest.mark.parametrize(
    "url", [CDN_MP3, "HTTP://cdn1.suno.ai/a.mp3", " https://cdn1.suno.ai/a.mp3", "ftp://cdn1.suno.ai/a", "cdn1/a", ""]
)
def test_final_artifact_url_rule_is_urlsplit_scheme(url: str) -> None:
    item = UpstreamItem.from_wire({"id": "c", "audio_url": url})
    assert has_final_artifact(item) is (urlsplit(url).scheme in ("http", "https"))


@pytest.mark.parametrize("url", ["http://[::1/x", "http://]x/a", "https://[evil]/x", "https://cdn1.suno.ai\uff03/x"])
def test_a_url_urlsplit_refuses_is_no_artifact_and_fails_nothing(url: str) -> None:
    with pytest.raises(ValueError):
        urlsplit(url)
    item = UpstreamItem.from_wire({"id": "c", "audio_url": url})
    assert has_final_artifact(item) is False
    assert is_preview_url(url) is False


# --- is_terminal ------------------------------------------------------------------------------

OK = {"id": "c1", "audio_url": CDN_MP3}
OK2 = {"id": "c2", "audio_url": "https://cdn1.suno.ai/c2.mp3"}
RUNNING = {"id": "c2", "state": "running", "audio_url": PREVIEW}
FAILED_CLIP = {"id": "c2", "state": "error", "error_message": "moderation: lyrics rejected"}

TERMINAL_CASES = [
    pytest.param(wire(), False, id="no-items-just-submitted"),
    pytest.param(wire(success=True), False, id="success-true-alone"),
    pytest.param(wire(success=False), False, id="success-false-without-error"),
    pytest.param(wire(success=False, error={"code": "x", "message": "y"}), True, id="explicit-failure"),
    pytest.param(wire(success=False, error="boom"), True, id="explicit-failure-string"),
    pytest.param(wire(finished_at=FINISHED_AT), True, id="no-items-finished"),
    pytest.param(wire(OK, OK2), True, id="all-final-no-finished-at"),
    pytest.param(wire(OK, RUNNING), False, id="one-running"),
    pytest.param(wire(OK, RUNNING, success=True), False, id="one-running-success-true"),
    pytest.param(wire(OK, RUNNING, finished_at=FINISHED_AT), False, id="one-running-finished-at"),
    pytest.param(wire({"audio_url": PREVIEW}), False, id="preview-only"),
    pytest.param(wire({"state": "succeeded"}, success=True), False, id="word-only-no-artifact"),
    pytest.param(wire({"status": "complete", "text": "la la"}), True, id="lyrics"),
    # DESIGN §1: without finished_at only "every item has a final artifact" ends it
    pytest.param(wire(OK, FAILED_CLIP), False, id="ok-and-error-no-finished-at"),
    pytest.param(wire(OK, FAILED_CLIP, finished_at=FINISHED_AT), True, id="ok-and-error-finished"),
    pytest.param(wire(data={"id": "c1", "image_url": COVER}), True, id="data-dict"),
]


@pytest.mark.parametrize(("raw", "expected"), TERMINAL_CASES)
def test_is_terminal(raw: Json, expected: bool) -> None:
    assert is_terminal(parse(raw)) is expected


# --- observe / decide: outcomes ---------------------------------------------------------------

CS, TS, TF, TP = EventType.CLIP_SUCCEEDED, EventType.TASK_SUCCEEDED, EventType.TASK_FAILED, EventType.TASK_PROGRESS
PRODUCER_RUNNING = {"id": "p1", "state": "running", "progress": "45%", "duration": None}

OUTCOME_CASES = [
    # raw, state, reason, partial, progress, events
    pytest.param(seed("suno_retrieve"), TaskState.SUCCEEDED, None, False, 100, [CS, CS, TS], id="suno-seed"),
    pytest.param(seed("producer_retrieve"), TaskState.SUCCEEDED, None, False, 100, [CS, TS], id="producer-seed"),
    pytest.param(wire(OK, RUNNING), TaskState.PENDING, None, None, None, [CS], id="one-running"),
    pytest.param(wire(OK, RUNNING, success=True), TaskState.PENDING, None, None, None, [CS], id="running-success"),
    pytest.param(
        wire(OK, FAILED_CLIP, finished_at=FINISHED_AT), TaskState.SUCCEEDED, None, True, 100, [CS, TS], id="partial"
    ),
    pytest.param(
        wire({**FAILED_CLIP, "id": "c1"}, FAILED_CLIP, finished_at=FINISHED_AT),
        TaskState.FAILED,
        Reason.UPSTREAM_ERROR,
        False,
        None,
        [TF],
        id="both-clips-error",
    ),
    pytest.param(
        wire(success=False, error={"code": "api_error", "message": "fetch failed"}),
        TaskState.FAILED,
        Reason.UPSTREAM_ERROR,
        False,
        None,
        [TF],
        id="success-false-error",
    ),
    pytest.param(
        wire(success=False, error="quota exhausted"),
        TaskState.FAILED,
        Reason.UPSTREAM_ERROR,
        False,
        None,
        [TF],
        id="error-string",
    ),
    pytest.param(wire(), TaskState.PENDING, None, None, None, [], id="no-items"),
    pytest.param(wire(success=True), TaskState.PENDING, None, None, None, [], id="success-true-alone"),
    pytest.param(wire({"id": "c1", "audio_url": PREVIEW}), TaskState.PENDING, None, None, None, [], id="preview"),
    pytest.param(wire(PRODUCER_RUNNING), TaskState.PENDING, None, None, 45, [TP], id="producer-running-45"),
    pytest.param(
        wire({"id": "l1", "text": "[Verse]\nla", "status": "complete"}),
        TaskState.SUCCEEDED,
        None,
        False,
        100,
        [CS, TS],
        id="lyrics",
    ),
    pytest.param(
        wire(data={"id": "i1", "image_url": COVER}), TaskState.SUCCEEDED, None, False, 100, [CS, TS], id="data-dict"
    ),
    pytest.param(
        wire(finished_at=FINISHED_AT), TaskState.FAILED, Reason.UPSTREAM_ERROR, False, None, [TF], id="finished-empty"
    ),
]


@pytest.mark.parametrize(("raw", "state", "reason", "partial", "progress", "events"), OUTCOME_CASES)
def test_decide_outcome(
    raw: Json,
    state: TaskState,
    reason: Reason | None,
    partial: bool | None,
    progress: int | None,
    events: list[EventType],
) -> None:
    decision = run(raw, make_record(task_id=raw["id"]))
    record = decision.record
    assert (record.state, record.reason, record.partial, record.progress) == (state, reason, partial, progress)
    assert decision.events == events
    assert record.attempts == 1
    assert record.updated_at_ms == NOW_MS
    assert decision.terminal is (state is not TaskState.PENDING)
    if decision.terminal:
        assert decision.next_poll_ms is None
        assert record.finished_at_ms == NOW_MS
        assert record.response == {k: v for k, v in raw.items() if k not in ACCOUNT_FIELDS}
        assert (record.error is None) is (state is TaskState.SUCCEEDED)
    else:
        assert decision.next_poll_ms is not None
        assert record.finished_at_ms is None and record.response is None and record.error is None
    json.dumps(record.to_dict())  # the record stays plain JSON


def test_suno_seed_clips() -> None:
    raw = seed("suno_retrieve")
    assert "finished_at" not in raw and all("state" not in c for c in raw["response"]["data"])
    record = run(raw, make_record(raw["id"])).record
    assert record.state is TaskState.SUCCEEDED
    assert record.upstream_finished_at is None
    assert [(c.id, c.state, c.title, c.audio_url, c.video_url, c.duration_s) for c in record.clips] == [
        (c["id"], ClipState.SUCCEEDED, "Holiday Wishes", c["audio_url"], c["video_url"], c["duration"])
        for c in raw["response"]["data"]
    ]
    assert [c.duration_s for c in record.clips] == [154.44, 147.16]
    assert record.clips[0].audio_url == CDN_MP3
    assert all(c.error is None for c in record.clips)


def test_a_finished_record_keeps_the_answer_but_the_account_ids() -> None:
    raw = seed("suno_retrieve")
    response = run(raw, make_record(raw["id"])).record.response
    assert response is not None and ACCOUNT_FIELDS <= set(raw) and not ACCOUNT_FIELDS & set(response)
    assert response == {k: v for k, v in raw.items() if k not in ACCOUNT_FIELDS}
    assert response["trace_id"] == raw["trace_id"] and response["request"] == raw["request"]


def test_producer_seed() -> None:
    raw = seed("producer_retrieve")
    assert "success" not in raw["response"]
    record = run(raw, make_record(raw["id"], service="producer")).record
    assert (record.state, record.progress, record.upstream_finished_at) == (TaskState.SUCCEEDED, 100, FINISHED_AT)
    (clip,) = record.clips
    assert clip.duration_s == pytest.approx(135.2330158730159)
    assert clip.title == "Woke up with the sun in my eyes"
    assert clip.audio_url is not None and clip.audio_url.endswith("1dd08826-478e-43a6-868f-aff5ababac2c.m4a")
    assert clip.image_url is not None and clip.image_url.endswith(".jpg")
    assert clip.video_url is None


BATCH_ITEMS = [pytest.param(name, i, id=f"{name}-{i}") for name in ("suno_batch", "producer_batch") for i in range(2)]


@pytest.mark.parametrize(("name", "index"), BATCH_ITEMS)
def test_batch_seed_items_succeed(name: str, index: int) -> None:
    batch = seed(name)
    assert batch["count"] == len(batch["items"]) == 2
    raw = batch["items"][index]
    decision = run(raw, make_record(raw["id"]))
    assert decision.record.state is TaskState.SUCCEEDED
    assert decision.record.partial is False
    assert all(c.state is ClipState.SUCCEEDED and c.audio_url for c in decision.record.clips)
    assert len(decision.record.clips) == len(raw["response"]["data"])
    assert decision.events[-1] is EventType.TASK_SUCCEEDED


def test_partial_keeps_failed_clip_and_its_error() -> None:
    record = run(wire(OK, FAILED_CLIP, finished_at=FINISHED_AT)).record
    assert [(c.id, c.state) for c in record.clips] == [("c1", ClipState.SUCCEEDED), ("c2", ClipState.FAILED)]
    assert record.clips[1].error == "moderation: lyrics rejected"
    assert record.clips[0].error is None
    assert record.error is None


ERROR_CASES = [
    pytest.param(
        wire(success=False, error={"code": "api_error", "message": "fetch failed"}),
        {"code": "api_error", "message": "fetch failed"},
        id="error-object",
    ),
    pytest.param(wire(success=False, error="quota exhausted"), {"code": None, "message": "quota exhausted"}, id="str"),
    pytest.param(
        wire(
            {"id": "c1", "state": "error", "error": {"code": "moderation", "message": "lyrics rejected"}},
            {"id": "c2", "status": "failed", "error_message": "timeout"},
            finished_at=FINISHED_AT,
        ),
        {"code": "clip_failed", "message": "lyrics rejected; timeout"},
        id="clip-errors",
    ),
    pytest.param(wire(finished_at=FINISHED_AT), {"code": "no_output", "message": "no item succeeded"}, id="no-output"),
]


@pytest.mark.parametrize(("raw", "error"), ERROR_CASES)
def test_failed_error(raw: Json, error: Json) -> None:
    record = run(raw).record
    assert (record.state, record.reason) == (TaskState.FAILED, Reason.UPSTREAM_ERROR)
    assert record.error == error


def test_preview_audio_is_not_stored_as_final() -> None:
    (clip,) = run(wire({"id": "c1", "audio_url": PREVIEW, "image_url": COVER})).record.clips
    assert (clip.state, clip.audio_url, clip.image_url) == (ClipState.RUNNING, None, COVER)


def test_producer_running_progress_then_unchanged_progress_has_no_event() -> None:
    first = run(wire(PRODUCER_RUNNING), make_record(service="producer"))
    assert (first.record.progress, first.record.clips[0].state, first.events) == (45, ClipState.RUNNING, [TP])
    again = run(wire(PRODUCER_RUNNING), first.record, now_ms=NOW_MS + 3000)
    assert again.events == []
    assert again.record.attempts == 2
    later = run(wire({**PRODUCER_RUNNING, "progress": "60%"}), again.record, now_ms=NOW_MS + 6000)
    assert (later.record.progress, later.events) == (60, [TP])


PROGRESS_MIX = [
    pytest.param([{"progress": "40%"}, {"progress": 0.8}], 60, id="mean"),
    pytest.param([{"progress": "40%"}, {"audio_url": CDN_MP3, "state": "running"}], 20, id="unreported-counts-0"),
    pytest.param([{"progress": "40%", "state": "running"}, {"state": "running"}], 20, id="running-unreported"),
    pytest.param([{"state": "running"}, {"state": "running"}], None, id="nothing-reported"),
]


@pytest.mark.parametrize(("items", "progress"), PROGRESS_MIX)
def test_task_progress(items: list[Json], progress: int | None) -> None:
    assert run(wire(*items)).record.progress == progress


# --- clip.succeeded events only for newly succeeded clips -------------------------------------

CLIP_A = Clip(id="c1", title=None, state=ClipState.SUCCEEDED, audio_url=CDN_MP3)
CLIP_B_RUNNING = Clip(id="c2", title=None, state=ClipState.RUNNING)

CLIP_EVENT_CASES = [
    pytest.param([], wire(OK, RUNNING), [CS], id="first-clip"),
    pytest.param([CLIP_A, CLIP_B_RUNNING], wire(OK, RUNNING), [], id="nothing-new"),
    pytest.param([CLIP_A, CLIP_B_RUNNING], wire(OK, OK2), [CS, TS], id="second-clip-and-done"),
    pytest.param([], wire(OK, OK2), [CS, CS, TS], id="both-at-once"),
    pytest.param([CLIP_A, CLIP_B_RUNNING], wire(OK, FAILED_CLIP, finished_at=FINISHED_AT), [TS], id="no-event-fail"),
]


@pytest.mark.parametrize(("before", "raw", "events"), CLIP_EVENT_CASES)
def test_clip_succeeded_events_only_for_new_clips(before: list[Clip], raw: Json, events: list[EventType]) -> None:
    assert run(raw, make_record(clips=list(before))).events == events


CLIP_B = Clip(id="c2", title=None, state=ClipState.SUCCEEDED, audio_url="https://cdn1.suno.ai/c2.mp3")
CLIP_A_FAILED = Clip(id="c1", title=None, state=ClipState.FAILED, error="x")

NEWLY_CASES = [
    pytest.param([], [], [], id="nothing"),
    pytest.param([], [CLIP_A, CLIP_B_RUNNING], ["c1"], id="first"),
    pytest.param([CLIP_A, CLIP_B_RUNNING], [CLIP_A, CLIP_B], ["c2"], id="second"),
    pytest.param([CLIP_A, CLIP_B], [CLIP_A, CLIP_B], [], id="repeat-observation"),
    pytest.param([CLIP_A_FAILED], [CLIP_A], ["c1"], id="failed-then-succeeded"),
    pytest.param([CLIP_B], [CLIP_A, CLIP_B], ["c1"], id="order-free"),
]


@pytest.mark.parametrize(("before", "after", "ids"), NEWLY_CASES)
def test_newly_succeeded(before: list[Clip], after: list[Clip], ids: list[str]) -> None:
    assert [c.id for c in newly_succeeded(before, after)] == ids


# --- decide: not found, deadline, scheduling ---------------------------------------------------

GRACE_MS = int(POLICY.not_found_grace_s * 1000)

MISSING_CASES = [
    # missing_since_ms, expected state, expected missing_since_ms
    pytest.param(None, TaskState.PENDING, NOW_MS, id="first-miss-sets-it"),
    pytest.param(NOW_MS - 5000, TaskState.PENDING, NOW_MS - 5000, id="within-grace-kept"),
    pytest.param(NOW_MS - GRACE_MS + 1, TaskState.PENDING, NOW_MS - GRACE_MS + 1, id="just-inside"),
    pytest.param(NOW_MS - GRACE_MS, TaskState.FAILED, None, id="at-grace"),
    pytest.param(NOW_MS - 10 * GRACE_MS, TaskState.FAILED, None, id="long-past"),
]


@pytest.mark.parametrize(("since", "state", "since_after"), MISSING_CASES)
def test_unknown_id(since: int | None, state: TaskState, since_after: int | None) -> None:
    assert UpstreamTask.from_wire({}) is None
    # two earlier answers already left it out: this is the third miss in a row
    decision = run(None, missing_since_ms=since, misses=MIN_MISSES - 1)
    assert decision.record.state is state
    assert decision.record.attempts == 1
    assert decision.missing_since_ms == since_after
    if state is TaskState.FAILED:
        assert decision.record.reason is Reason.NOT_FOUND
        assert decision.record.error is not None and decision.record.error["code"] == "not_found"
        assert decision.events == [TF]
        assert decision.next_poll_ms is None
    else:
        assert decision.events == []
        # never answered for: looked for every grace / MIN_MISSES (60 s / 5), not every poll_s
        assert decision.next_poll_ms == NOW_MS + 12_000


def test_an_id_answered_for_before_and_missing_now_is_polled_as_usual() -> None:
    decision = run(None, missing_since_ms=NOW_MS - 5000, seen=True, misses=1)
    assert decision.record.state is TaskState.PENDING and decision.next_poll_ms == NOW_MS + 3000


@pytest.mark.parametrize(
    ("seen", "misses"), [(True, 10), (False, 0), (False, 1)], ids=["seen-before", "first-miss", "second-miss"]
)
def test_a_miss_is_not_found_only_after_grace_and_several_answers_for_an_id_never_seen(seen: bool, misses: int) -> None:
    decision = run(None, missing_since_ms=NOW_MS - 10 * GRACE_MS, seen=seen, misses=misses)
    assert decision.record.state is TaskState.PENDING and decision.events == []


def test_task_seen_again_clears_missing_since() -> None:
    decision = run(wire(RUNNING), missing_since_ms=NOW_MS - 5000)
    assert decision.missing_since_ms is None
    assert decision.record.state is TaskState.PENDING


DEADLINE_CASES = [
    # raw, deadline_at_ms, state, reason
    pytest.param(wire(RUNNING), NOW_MS - 1, TaskState.FAILED, Reason.DEADLINE, id="passed"),
    pytest.param(wire(RUNNING), NOW_MS, TaskState.FAILED, Reason.DEADLINE, id="exactly-now"),
    pytest.param(wire(RUNNING), NOW_MS + 1, TaskState.PENDING, None, id="not-yet"),
    pytest.param(wire(), NOW_MS - 1, TaskState.FAILED, Reason.DEADLINE, id="no-items-passed"),
    pytest.param(wire(OK, OK2), NOW_MS - 1, TaskState.SUCCEEDED, None, id="done-beats-deadline"),
    pytest.param(None, NOW_MS - 1, TaskState.FAILED, Reason.DEADLINE, id="unknown-id-passed"),
]


@pytest.mark.parametrize(("raw", "deadline", "state", "reason"), DEADLINE_CASES)
def test_deadline(raw: Json | None, deadline: int, state: TaskState, reason: Reason | None) -> None:
    decision = run(raw, deadline_at_ms=deadline)
    assert (decision.record.state, decision.record.reason) == (state, reason)
    if reason is Reason.DEADLINE:
        assert decision.events[-1] is TF
        assert decision.record.error == {"code": "deadline", "message": "deadline passed"}
        assert decision.record.finished_at_ms == NOW_MS
        assert decision.next_poll_ms is None


def test_deadline_with_a_succeeded_clip_keeps_it() -> None:
    decision = run(wire(OK, RUNNING), deadline_at_ms=NOW_MS)
    assert (decision.record.state, decision.record.partial) == (TaskState.FAILED, True)
    assert decision.events == [CS, TF]
    assert decision.record.clips[0].audio_url == CDN_MP3


SCHEDULE_CASES = [
    # now_ms, deadline_at_ms, usual_s, next_poll_ms
    pytest.param(NOW_MS, DEADLINE_MS, 300.0, NOW_MS + 3000, id="young-polls-every-poll_s"),
    pytest.param(NOW_MS, NOW_MS + 1000, 300.0, NOW_MS + 1000, id="clamped-to-deadline"),
    # age 10 s, usual 1 s: 3 poll_s overdue, cap = 3 * 1.5**3 = 10.125, rng 0.5 -> 6.5625 s, back onto the grid
    pytest.param(NOW_MS, DEADLINE_MS, 1.0, NOW_MS + 6000, id="overdue-grows"),
    # age 10 s, usual 0 s: cap reaches max_poll_s = 60, rng 0.5 -> 31.5 s (on the 1.5 s grid)
    pytest.param(NOW_MS, DEADLINE_MS, -1000.0, NOW_MS + 31_500, id="long-overdue-capped"),
    pytest.param(NOW_MS + 700, DEADLINE_MS, 300.0, NOW_MS + 3000, id="polled-late-keeps-the-grid"),
    pytest.param(NOW_MS + 2300, DEADLINE_MS, 300.0, NOW_MS + 4500, id="polled-very-late-keeps-the-grid"),
]


@pytest.mark.parametrize(("now_ms", "deadline", "usual_s", "next_poll_ms"), SCHEDULE_CASES)
def test_decide_schedules_next_poll(now_ms: int, deadline: int, usual_s: float, next_poll_ms: int) -> None:
    decision = run(wire(RUNNING), now_ms=now_ms, deadline_at_ms=deadline, usual_s=usual_s)
    assert decision.next_poll_ms == next_poll_ms


def test_a_task_with_a_clip_done_is_polled_twice_as_often_on_the_half_grid() -> None:
    decision = run(wire(OK, RUNNING), now_ms=NOW_MS + 200, stage=STAGE_CLIP_DONE)
    assert decision.next_poll_ms == NOW_MS + 1500
    late = run(wire(OK, RUNNING), now_ms=NOW_MS + 900, stage=STAGE_CLIP_DONE)
    assert late.next_poll_ms == NOW_MS + 3000  # not 0.6 s after a poll that ran late
    overdue = run(wire(OK, RUNNING), now_ms=NOW_MS + 200, stage=STAGE_CLIP_DONE, usual_s=1.0)
    assert overdue.next_poll_ms is not None and overdue.next_poll_ms >= NOW_MS + 3000  # past usual: growth as ever


def test_behind_a_backlog_a_finishing_task_is_placed_ahead_and_the_others_take_the_wait() -> None:
    # claims run 4 s behind their queue: the task with a clip done keeps its place about 1.5 s from
    # the backlog's head, on the 1.5 s grid; a running task keeps its due time and waits in line
    finishing = run(wire(OK, RUNNING), now_ms=NOW_MS + 200, stage=STAGE_CLIP_DONE, backlog_ms=4000)
    assert finishing.next_poll_ms == NOW_MS + 1500 - 3000
    # a claim a few ms late is no backlog
    on_time = run(wire(OK, RUNNING), now_ms=NOW_MS + 200, stage=STAGE_CLIP_DONE, backlog_ms=1400)
    assert on_time.next_poll_ms == NOW_MS + 1500
    running = run(wire(RUNNING), now_ms=NOW_MS + 200, stage=STAGE_STREAMING, backlog_ms=4000)
    assert running.next_poll_ms == run(wire(RUNNING), now_ms=NOW_MS + 200, stage=STAGE_STREAMING).next_poll_ms
    overdue = run(wire(OK, RUNNING), now_ms=NOW_MS + 200, stage=STAGE_CLIP_DONE, usual_s=1.0, backlog_ms=4000)
    assert overdue.next_poll_ms is not None and overdue.next_poll_ms >= NOW_MS + 3000  # not finishing soon


def test_a_claims_lateness_counts_as_a_backlog_only_while_it_is_fresh() -> None:
    pace = Pace(3.0)
    assert pace.backlog_ms("suno", "default", NOW_MS) == 0
    pace.note_claim("suno", "default", 4000, NOW_MS)
    assert pace.backlog_ms("suno", "default", NOW_MS + BACKLOG_FRESH_MS) == 4000
    assert pace.backlog_ms("producer", "default", NOW_MS) == 0  # per queue
    assert pace.backlog_ms("suno", "default", NOW_MS + BACKLOG_FRESH_MS + 1) == 0  # no claim since: none
    assert pace.backlog_ms("suno", "default", NOW_MS - 1) == 0  # the clock stepped back


@pytest.mark.parametrize(
    ("due_ms", "grid_ms", "after_ms", "expected_ms"),
    [(10_500, 3000, 7_500, 9_000), (9_000, 3000, 7_500, 9_000), (8_900, 3000, 7_500, 9_000), (5_000, 0, 0, 5_000)],
    ids=["moved-back", "on-the-grid", "not-before-after", "no-grid"],
)
def test_due_times_move_back_onto_the_grid(due_ms: int, grid_ms: int, after_ms: int, expected_ms: int) -> None:
    assert on_grid_ms(due_ms, grid_ms, after_ms) == expected_ms


def test_the_first_poll_falls_on_the_grid_within_first_poll_s() -> None:
    assert first_poll_ms(NOW_MS + 2900, 3.0) == NOW_MS + 4500  # the half grid
    assert first_poll_ms(NOW_MS, 3.0) == NOW_MS + 3000
    assert first_poll_ms(NOW_MS + 100, 0.0) == NOW_MS + 100


def test_observe_does_not_schedule() -> None:
    decision = observe(parse(wire(RUNNING)), make_record(), NOW_MS)
    assert decision.next_poll_ms is None and decision.record.state is TaskState.PENDING


# --- next_poll_delay_s / usual_lifetime_s / backoff_s ------------------------------------------

DELAY_CASES = [
    # age_s, usual_s, rng, expected
    (0.0, 300.0, 0.9, 3.0),
    (299.0, 300.0, 1.0, 3.0),
    (300.0, 300.0, 1.0, 3.0),
    (303.0, 300.0, 1.0, 4.5),
    (306.0, 300.0, 1.0, 6.75),
    (303.0, 300.0, 0.0, 3.0),
    (10_000.0, 300.0, 1.0, 60.0),
    (10_000.0, 300.0, 0.0, 3.0),
    (10_000.0, 300.0, 0.5, 31.5),
    (1e12, 300.0, 1.0, 60.0),
]


@pytest.mark.parametrize(("age_s", "usual_s", "rng", "expected"), DELAY_CASES)
def test_next_poll_delay_s(age_s: float, usual_s: float, rng: float, expected: float) -> None:
    assert next_poll_delay_s(age_s, usual_s, POLICY, fixed(rng)) == pytest.approx(expected)


@pytest.mark.parametrize("rng", [0.0, 0.25, 1.0])
def test_next_poll_delay_grows_and_never_exceeds_max(rng: float) -> None:
    delays = [next_poll_delay_s(float(age), 60.0, POLICY, fixed(rng)) for age in range(0, 3600, 7)]
    assert all(POLICY.poll_s <= d <= POLICY.max_poll_s for d in delays)
    assert delays == sorted(delays)
    if rng == 1.0:
        assert delays[0] == POLICY.poll_s and delays[-1] == POLICY.max_poll_s


def test_next_poll_delay_default_rng_stays_in_bounds() -> None:
    for _ in range(200):
        assert POLICY.poll_s <= next_poll_delay_s(5000.0, 300.0, POLICY) <= POLICY.max_poll_s


LIFETIME_CASES = [
    pytest.param([], {}, 300.0, id="no-samples-default"),
    pytest.param([10.0, 20.0, 30.0, 40.0], {}, 300.0, id="too-few"),
    pytest.param([], {"default_s": 120.0}, 120.0, id="custom-default"),
    pytest.param([5.0, 1.0, 4.0, 2.0, 3.0], {}, 5.0, id="five-unsorted"),
    pytest.param([float(i) for i in range(1, 11)], {}, 9.0, id="p90-of-10"),
    pytest.param([float(i) for i in range(1, 21)], {}, 18.0, id="p90-of-20"),
    pytest.param([30.0] * 9 + [900.0], {}, 30.0, id="one-outlier-ignored"),
]


@pytest.mark.parametrize(("samples", "kwargs", "expected"), LIFETIME_CASES)
def test_usual_lifetime_s(samples: list[float], kwargs: dict[str, float], expected: float) -> None:
    result = usual_lifetime_s(samples, **kwargs)
    assert result == expected and type(result) is float


BACKOFF_CASES = [
    # failures, base_s, cap_s, retry_after_s, rng, expected
    pytest.param(1, 1.0, 60.0, 30.0, 0.5, 30.0, id="retry-after-above-computed"),
    pytest.param(8, 1.0, 60.0, 0.5, 1.0, 0.5, id="retry-after-below-computed"),
    pytest.param(1, 1.0, 60.0, 0.0, 1.0, 0.0, id="retry-after-zero"),
    pytest.param(1, 1.0, 60.0, -5.0, 1.0, 0.0, id="retry-after-negative"),
    pytest.param(1, 1.0, 60.0, 10_000.0, 1.0, 600.0, id="retry-after-bounded"),
    pytest.param(0, 1.0, 60.0, None, 0.0, 0.5, id="first-low"),
    pytest.param(0, 1.0, 60.0, None, 1.0, 1.0, id="first-high"),
    pytest.param(3, 1.0, 60.0, None, 0.0, 4.0, id="third-low"),
    pytest.param(3, 1.0, 60.0, None, 1.0, 8.0, id="third-high"),
    pytest.param(10, 1.0, 60.0, None, 0.0, 30.0, id="capped-low"),
    pytest.param(10, 1.0, 60.0, None, 1.0, 60.0, id="capped-high"),
    pytest.param(10_000, 1.0, 60.0, None, 1.0, 60.0, id="no-overflow"),
]


@pytest.mark.parametrize(("failures", "base", "cap", "retry_after", "rng", "expected"), BACKOFF_CASES)
def test_backoff_s(
    failures: int, base: float, cap: float, retry_after: float | None, rng: float, expected: float
) -> None:
    assert backoff_s(failures, base, cap, retry_after, fixed(rng)) == pytest.approx(expected)


# --- the wire format (worker.models) as classify sees it ----------------------------------------

BROKEN_WIRE = [
    pytest.param([], id="list"),
    pytest.param("oops", id="string"),
    pytest.param(None, id="null"),
    pytest.param({"response": {"data": []}}, id="no-id"),
    pytest.param(seed("error"), id="error-response-seed"),
]


@pytest.mark.parametrize("raw", BROKEN_WIRE)
def test_broken_record_is_an_outage_not_a_verdict(raw: Any) -> None:
    with pytest.raises(UpstreamUnavailable):
        UpstreamTask.from_wire(raw)


WIRE_CASES = [
    pytest.param({"response": {"task_id": "t9", "data": []}}, "t9", None, None, 0, id="task-id-fallback"),
    pytest.param(wire(error="boom"), "task-1", None, {"code": None, "message": "boom"}, 0, id="error-string"),
    pytest.param(
        {"id": "t1", "error": {"code": 500, "message": "x"}}, "t1", None, {"code": "500", "message": "x"}, 0, id="top"
    ),
    pytest.param(wire(finished_at="1767119785.589"), "task-1", FINISHED_AT, None, 0, id="finished-at-string"),
    pytest.param(wire(data={"id": "x"}), "task-1", None, None, 1, id="data-dict"),
    pytest.param(wire(data="nope"), "task-1", None, None, 0, id="data-junk"),
    pytest.param(wire(data=[{"id": "x"}, "junk", None]), "task-1", None, None, 1, id="non-dict-items-skipped"),
]


@pytest.mark.parametrize(("raw", "task_id", "finished_at", "error", "n_items"), WIRE_CASES)
def test_upstream_task_from_wire(
    raw: Json, task_id: str, finished_at: float | None, error: Json | None, n_items: int
) -> None:
    task = parse(raw)
    assert (task.id, task.finished_at, task.error, len(task.items)) == (task_id, finished_at, error, n_items)


def test_record_to_dict_has_every_documented_field_and_round_trips() -> None:
    record = run(wire(OK, FAILED_CLIP, finished_at=FINISHED_AT)).record
    data = record.to_dict()
    assert list(data) == [
        *["v", "service", "id", "state", "reason", "partial", "progress", "clips", "error", "attempts"],
        *["enqueued_at_ms", "updated_at_ms", "finished_at_ms", "upstream_finished_at", "callback_url", "token"],
        *["meta", "response"],
    ]
    assert set(data["clips"][0]) == {
        "id",
        "title",
        "state",
        "audio_url",
        "video_url",
        "image_url",
        "duration_s",
        "error",
    }
    assert Record.from_dict(json.loads(json.dumps(data))) == record


# --- purity -------------------------------------------------------------------------------------

BLOCKED_IMPORTS = ("aiohttp", "redis", "arq", "asyncio")


def test_classify_imports_no_io_libraries() -> None:
    script = textwrap.dedent(
        f"""
        import sys

        BLOCKED = {BLOCKED_IMPORTS!r}

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"worker.classify must not import {{name}}")
                return None

        assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), "already imported at startup"
        sys.meta_path.insert(0, Block())
        import worker.classify
        import worker.models
        import worker.wire
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


# --- learned lifetimes: skip the ages nothing finishes at ------------------------------------------


def test_lifetimes_need_enough_samples_before_polls_skip_anything() -> None:
    few = classify_lifetimes([50.0] * (MIN_SKIP_SAMPLES - 1))
    assert few.earliest_s == 0.0
    many = classify_lifetimes([40.0 + i for i in range(100)])  # 40..139 s
    assert many.earliest_s == 41.0  # the 1st percentile
    assert many.usual_s == pytest.approx(1.5 * 129.0)  # half as long again past the p90 (129 s)


def test_early_failures_pull_the_earliest_age_down_but_not_the_usual_lifetime() -> None:
    succeeded = [Sample(60.0 + i) for i in range(95)]  # 60..154 s
    failed = [Sample(10.0 + i, ok=False) for i in range(5)]  # 10..14 s
    learned = classify_lifetimes([*succeeded, *failed])
    assert learned.earliest_s == 11.0  # the 1st percentile of every ending, failures included
    assert learned.usual_s == pytest.approx(1.5 * 145.0)  # the p90 of the successes only


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        ([], STAGE_QUEUED),
        ([{"state": "queued"}], STAGE_QUEUED),
        ([{"state": "running", "audio_url": "https://audiopipe.suno.ai/?item_id=x"}], STAGE_RUNNING),
        ([{"state": "pending"}, {"state": "streaming"}], STAGE_STREAMING),
        ([{"state": "streaming"}, {"state": "succeeded", "audio_url": "https://cdn1.suno.ai/a.mp3"}], STAGE_CLIP_DONE),
        ([{"state": "error", "error": "x"}], STAGE_CLIP_DONE),
    ],
    ids=["no-items", "queued", "running", "streaming", "a-clip-done", "a-clip-failed"],
)
def test_the_stage_is_the_furthest_any_item_shows(stage: list[Json], expected: int) -> None:
    task = UpstreamTask.from_wire({"id": "t1", "response": {"success": True, "task_id": "t1", "data": stage}})
    assert observed_stage(task) == expected


def test_a_stage_is_marked_once_between_the_poll_before_and_the_poll_that_saw_it() -> None:
    marks = advance_marks((), STAGE_QUEUED, 0, 3_000)
    assert marks == ((3_000, 3_000), None, None, None)
    marks = advance_marks(marks, STAGE_QUEUED, 3_000, 12_000)  # still queued: the latest age counts
    assert marks == ((12_000, 12_000), None, None, None)
    marks = advance_marks(marks, STAGE_RUNNING, 15_000, 18_000)
    assert marks == ((12_000, 12_000), (15_000, 18_000), None, None)
    marks = advance_marks(marks, STAGE_CLIP_DONE, 18_000, 42_000)  # polls skipped: streaming seen late too
    assert marks == ((12_000, 12_000), (15_000, 18_000), (18_000, 42_000), (18_000, 42_000))
    assert advance_marks(marks, STAGE_RUNNING, 42_000, 45_000) == marks  # seen before: kept


def test_a_learned_stage_ratio_moves_the_earliest_poll_of_one_task() -> None:
    # every task ended 4x as old as it was when first seen running (seen 3 s after it started)
    running = [(9_000 + i * 1000, 12_000 + i * 1000) for i in range(40)]
    samples = [Sample(4.0 * (12.0 + i), marks=(None, mark)) for i, mark in enumerate(running)]
    learned = classify_lifetimes(samples)
    assert learned.stage_ratios[STAGE_RUNNING] == pytest.approx(4.0)
    assert learned.stage_ratios[STAGE_STREAMING:] == (0.0, 0.0)  # no task told of those stages
    # running since after age 20 s: ends at 4 x 20 s at the earliest (a lower bound on the start)
    assert learned.earliest_for((None, (20_000, 23_000))) == pytest.approx(80.0)
    assert learned.earliest_for(()) == learned.earliest_s  # nothing seen: the age rule alone


def test_a_task_still_queued_late_is_not_polled_before_its_learned_lifetime() -> None:
    # every task ended at least 3x as old as the last age it was seen queued at
    samples = [Sample(3.0 * (5.0 + i) + i, marks=((5_000 + i * 1000, 5_000 + i * 1000),)) for i in range(40)]
    learned = classify_lifetimes(samples)
    assert learned.stage_ratios[STAGE_QUEUED] == pytest.approx(3.0)
    assert learned.earliest_for(((10_000, 10_000),)) == pytest.approx(30.0)


def test_a_stage_seen_on_the_first_poll_teaches_nothing() -> None:
    samples = [Sample(50.0, marks=(None, (0, 3_000))) for _ in range(40)]
    assert classify_lifetimes(samples).stage_ratios[STAGE_RUNNING] == 0.0


@pytest.mark.parametrize(
    ("age_s", "expected_s"),
    [(0.5, 39.5), (20.0, 20.0), (37.5, 3.0), (40.0, 3.0), (100.0, 3.0)],
    ids=["first-poll-waits-for-earliest", "midway", "within-one-interval", "at-earliest", "young"],
)
def test_polls_wait_for_the_earliest_lifetime(age_s: float, expected_s: float) -> None:
    policy = Policy(poll_s=3.0, max_poll_s=60.0)
    assert next_poll_delay_s(age_s, 200.0, policy, lambda: 0.5, earliest_s=40.0) == pytest.approx(expected_s)


def test_waiting_for_the_earliest_lifetime_is_capped_by_max_poll() -> None:
    policy = Policy(poll_s=3.0, max_poll_s=10.0)
    assert next_poll_delay_s(1.0, 500.0, policy, lambda: 0.5, earliest_s=300.0) == 10.0


# --- fingerprint: a repeated answer may skip decoding the record -----------------------------------

BASE_ITEM: Json = {"id": "c1", "title": "t", "state": "streaming", "audio_url": "https://audiopipe.suno.ai/?item_id=c1"}


def answer(item: Json | None = None, **top: Any) -> UpstreamTask:
    raw = {"id": "t1", "response": {"success": True, "task_id": "t1", "data": [item or BASE_ITEM]}, **top}
    task = UpstreamTask.from_wire(raw)
    assert task is not None
    return task


def test_the_same_answer_has_the_same_fingerprint() -> None:
    assert fingerprint(answer()) == fingerprint(answer(dict(BASE_ITEM)))
    assert len(fingerprint(answer())) == 16


@pytest.mark.parametrize(
    ("item", "top"),
    [
        ({**BASE_ITEM, "state": "succeeded"}, {}),
        ({**BASE_ITEM, "audio_url": "https://cdn1.suno.ai/c1.mp3"}, {}),
        ({**BASE_ITEM, "progress": "50%"}, {}),
        ({**BASE_ITEM, "title": "other"}, {}),
        ({**BASE_ITEM, "error": "boom"}, {}),
        ({**BASE_ITEM, "duration": 120.5}, {}),
        ({**BASE_ITEM, "lyric": "la la"}, {}),
        (BASE_ITEM, {"finished_at": 1_767_119_785.5}),
    ],
    ids=["state", "audio_url", "progress", "title", "error", "duration", "text", "finished_at"],
)
def test_anything_observe_reads_changes_the_fingerprint(item: Json, top: Json) -> None:
    assert fingerprint(answer(item, **top)) != fingerprint(answer())


def test_the_stage_reached_is_the_furthest_marked() -> None:
    assert reached_stage(()) == STAGE_QUEUED
    assert reached_stage(((3_000, 3_000), None, None, None)) == STAGE_QUEUED
    assert reached_stage(((3_000, 3_000), (3_000, 6_000), (6_000, 9_000), None)) == STAGE_STREAMING


def test_a_ratio_is_not_stretched_past_the_oldest_age_it_was_learned_at() -> None:
    # learned: queued until 5-44 s, ended at 3x that or later
    samples = [Sample(3.0 * (5.0 + i) + i, marks=((5_000 + i * 1000, 5_000 + i * 1000),)) for i in range(40)]
    learned = classify_lifetimes(samples)
    assert learned.earliest_for(((44_000, 44_000),)) == pytest.approx(132.0)
    # still queued at 63 s: stuck in a backlog, not a task 3x as long: the age rule alone
    assert learned.earliest_for(((63_000, 63_000),)) == learned.earliest_s


def test_record_evolve_copies_with_changes_and_refuses_unknown_fields() -> None:
    before = Record(service="suno", id="t1", meta={"user": "u1"}, attempts=2)
    after = before.evolve(attempts=3, progress=40)
    assert (after.attempts, after.progress, after.meta) == (3, 40, {"user": "u1"})
    assert (before.attempts, before.progress) == (2, None)  # the original is untouched
    assert after == Record(service="suno", id="t1", meta={"user": "u1"}, attempts=3, progress=40)
    with pytest.raises(TypeError, match="progres"):
        before.evolve(progres=1)


# --- a latency target ------------------------------------------------------------------------------


def _late(ratios: list[float], poll_s: float = 2.0) -> list[Sample]:
    return [Sample(60.0, True, (), latency_s=r * poll_s, poll_s=poll_s) for r in ratios]


def test_the_late_ratio_needs_enough_finishes_with_a_known_finish_time() -> None:
    assert late_ratio_p95(_late([0.5] * (MIN_TARGET_SAMPLES - 1))) == 0.0
    assert late_ratio_p95(_late([0.5] * MIN_TARGET_SAMPLES) + [Sample(60.0)] * 50) == 0.5  # unknown ones skipped
    # the 95th of 100: five finishes later than it
    assert late_ratio_p95(_late([i / 100 for i in range(100)])) == pytest.approx(0.94)
    assert classify_lifetimes(_late([0.25] * 30)).late_ratio_p95 == 0.25


@pytest.mark.parametrize(
    ("target_s", "ratio", "interval_s"),
    [
        (None, 0.5, 3.0),  # no target: as configured
        (3.0, 0.0, 3.0),  # not learned yet
        (3.0, 0.5, 6.0),  # found half an interval late at p95: twice the target
        (3.0, 1.0, 3.0),
        (3.0, 0.7, 4.5),  # 4.29 s, rounded to a sixth of poll_s
        (3.0, 0.01, 60.0),  # callbacks find nearly all at once: as far as max_poll_s
        (3.0, 4.0, 1.5),  # found late whatever the interval (a slow upstream): not under half of it
        (1.0, 4.0, 0.5),  # a tight target: half the target at least
    ],
)
def test_a_latency_target_sets_the_interval_from_how_late_finishes_are_found(
    target_s: float | None, ratio: float, interval_s: float
) -> None:
    policy = Policy(poll_s=3.0, max_poll_s=60.0)
    assert with_target(policy, target_s, ratio).poll_s == pytest.approx(interval_s)


def test_samples_keep_their_latency_and_interval_and_older_ones_still_read() -> None:
    sample = Sample(61.5, False, ((100, 200), None), latency_s=0.75, poll_s=3.0)
    assert parse_sample(sample_text(sample)) == sample
    assert parse_sample("61500|1|100:200,") == Sample(61.5, True, ((100, 200), None))  # stored before latencies
