"""What each event carries: the record on a task's end, what changed on the others (pure)."""

from __future__ import annotations

from worker import codec
from worker.events import build_events, event_data, event_from_fields
from worker.models import Clip, ClipState, EventType, Record, TaskState

NOW_MS = 1_767_119_900_000


def clip(n: int, state: ClipState) -> Clip:
    url = f"https://cdn.example.test/{n}.mp3" if state is ClipState.SUCCEEDED else None
    return Clip(id=f"c{n}", title="Song", state=state, audio_url=url)


BEFORE = Record("suno", "t1", enqueued_at_ms=1, meta={"user": "u7"}, clips=[clip(0, ClipState.RUNNING)] * 2)
RAW = {"id": "t1", "response": {"data": [{"lyric": "la " * 400}]}}


def test_a_clip_event_carries_the_clip_and_meta_and_no_record() -> None:
    after = BEFORE.evolve(clips=[clip(0, ClipState.SUCCEEDED), clip(1, ClipState.RUNNING)], progress=50)
    (event,) = build_events([EventType.CLIP_SUCCEEDED], BEFORE, after, NOW_MS, {})
    hooked = event_from_fields(event.fields)
    assert hooked["record"] is None and hooked["clip"]["audio_url"] == "https://cdn.example.test/0.mp3"
    assert hooked["meta"] == {"user": "u7"} and hooked["progress"] == 50
    assert event_data(hooked) == {
        "service": "suno",
        "id": "t1",
        "state": "pending",
        "progress": 50,
        "clip": hooked["clip"],
        "meta": {"user": "u7"},
    }


def test_a_task_end_carries_its_record_without_the_raw_answer() -> None:
    after = BEFORE.evolve(
        state=TaskState.SUCCEEDED, clips=[clip(0, ClipState.SUCCEEDED), clip(1, ClipState.SUCCEEDED)], response=RAW
    )
    clip_event, end = build_events([EventType.CLIP_SUCCEEDED, EventType.TASK_SUCCEEDED], BEFORE, after, NOW_MS, {})
    hooked = event_from_fields(end.fields)
    assert hooked["record"] == {**after.to_dict(), "response": None}
    assert hooked["meta"] is None  # it is in the record
    assert event_data(hooked) == hooked["record"]
    # every entry has the same fields in the same order: the stream stores their names once per node
    assert list(clip_event.fields) == list(end.fields)
    assert len(codec.dumps(end.fields)) < len(codec.dumps(RAW))  # the lyrics stay out of the stream


def test_a_progress_event_of_a_task_without_meta_says_only_what_changed() -> None:
    plain = BEFORE.evolve(meta=None)
    (event,) = build_events([EventType.TASK_PROGRESS], plain, plain.evolve(progress=30), NOW_MS, {})
    data = event_data(event_from_fields(event.fields))
    assert data == {"service": "suno", "id": "t1", "state": "pending", "progress": 30}
