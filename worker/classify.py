"""Completion rules and polling maths (DESIGN.md §1, §3). Pure: no I/O, no asyncio.

``decide`` takes what the upstream said about one task, the stored record and ``now_ms``, and
returns a ``Decision``: the new record, the events to emit and when to poll next.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from worker import codec
from worker.cadence import (
    STAGE_CLIP_DONE,
    STAGE_QUEUED,
    STAGE_RUNNING,
    STAGE_STREAMING,
    Policy,
    Rng,
    schedule_ms,
)
from worker.models import (
    ACTIVE_CLIP_STATES,
    Clip,
    ClipState,
    EventType,
    Reason,
    Record,
    TaskState,
)
from worker.models import (
    Mark as Mark,
)
from worker.models import (
    Sample as Sample,
)
from worker.wire import UpstreamItem, UpstreamTask

SUCCESS_WORDS = frozenset({"succeeded", "succeed", "success", "completed", "complete", "done", "finished"})
FAILURE_WORDS = frozenset({"error", "failed", "failure", "cancelled", "canceled", "rejected"})
PENDING_WORDS = frozenset({"pending", "queued", "queue", "submitted", ""})
RUNNING_WORDS = frozenset({"running", "processing", "streaming"})
#: hosts that serve a streaming preview while a clip is still being generated
PREVIEW_HOSTS = frozenset({"audiopipe.suno.ai"})
#: answers in a row without the id (besides the grace period) before it is "not found"
MIN_MISSES = 5

STREAMING_WORDS = frozenset({"streaming"})

#: every field of an upstream item that ``UpstreamItem.from_wire`` reads (see ``fingerprint``)
ITEM_FIELDS = (
    "id",
    "title",
    "state",
    "status",
    "audio_url",
    "video_url",
    "image_url",
    "file_url",
    "url",
    "text",
    "lyric",
    "duration",
    "progress",
    "error",
    "error_message",
)


@dataclass
class Decision:
    """What one poll of one task leads to."""

    record: Record
    events: list[EventType] = field(default_factory=list)
    next_poll_ms: int | None = None
    missing_since_ms: int | None = None

    @property
    def terminal(self) -> bool:
        """True when this decision finishes the task."""
        return self.record.terminal


def _is_http_url(url: str | None) -> bool:
    # nearly every URL starts just so and has a plain host; each clip's URLs are new, so a cache
    # alone would not spare their parse. The rest (upper case, leading spaces, brackets, non-ASCII)
    # are parsed as ``urlsplit`` reads them.
    if url is None:
        return False
    if url.startswith(("https://", "http://")) and url.isascii() and "[" not in url and "]" not in url:
        return True
    return _parsed_http_scheme(url)


@functools.lru_cache(maxsize=8192)
def _parsed_http_scheme(url: str) -> bool:
    try:
        return urlsplit(url).scheme in ("http", "https")
    except ValueError:  # a malformed host ('http://[::1/x'): no artifact, and no reason to fail the batch
        return False


def is_preview_url(url: str | None) -> bool:
    """True for a streaming-preview URL, which never means the clip is done."""
    # a URL names a preview host only if the host's name is in it (``urlsplit`` drops tabs and line
    # breaks anywhere first): most URLs (each clip's are new, so no cache helps) need no parse
    if not url:
        return False
    lowered = url.lower()
    dropped = "\t" in url or "\r" in url or "\n" in url
    if not dropped and not any(host in lowered for host in PREVIEW_HOSTS):
        return False
    return _names_preview_host(url)


@functools.lru_cache(maxsize=8192)
def _names_preview_host(url: str) -> bool:
    try:
        return _is_http_url(url) and (urlsplit(url).hostname or "").lower() in PREVIEW_HOSTS
    except ValueError:  # a malformed host names no preview host
        return False


def _final_urls(item: UpstreamItem) -> list[str]:
    urls = [item.audio_url, item.video_url, *item.other_urls]
    # image_url alone marks an image task's artifact, but a cover image never finishes a song
    if item.audio_url is None and item.video_url is None:
        urls.append(item.image_url)
    return [u for u in urls if u and _is_http_url(u) and not is_preview_url(u)]


def has_final_artifact(item: UpstreamItem) -> bool:
    """True when the item carries a finished http(s) artifact (not a preview)."""
    return bool(_final_urls(item))


def item_state(item: UpstreamItem) -> ClipState:
    """Normalise an item's state word, or infer it from its URLs when it has none."""
    word = item.word
    if word in SUCCESS_WORDS:
        return ClipState.SUCCEEDED
    if word in FAILURE_WORDS:
        return ClipState.FAILED
    if word in RUNNING_WORDS:
        return ClipState.RUNNING
    if word == "":
        # DESIGN.md §1 lists "" among the in-progress words: trust it over any URL
        return ClipState.RUNNING if item.audio_url or item.video_url else ClipState.PENDING
    if word in PENDING_WORDS:
        return ClipState.PENDING
    if has_final_artifact(item):
        return ClipState.SUCCEEDED
    if any(is_preview_url(u) for u in (item.audio_url, item.video_url)):
        return ClipState.RUNNING
    return ClipState.PENDING


def normalise_progress(value: Any) -> int | None:
    """``"45%"``, ``45`` and ``0.45`` all give 45; anything unreadable gives None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip().rstrip("%").strip()
        try:
            number = float(text)
        except ValueError:
            return None
    elif isinstance(value, int | float):
        number = float(value)
        if isinstance(value, float) and 0.0 <= number <= 1.0:
            number *= 100
    else:
        return None
    return None if not math.isfinite(number) else max(0, min(100, round(number)))


def to_clip(item: UpstreamItem) -> Clip:
    """The stored form of one item."""
    state = item_state(item)
    audio = item.audio_url if state is ClipState.SUCCEEDED or not is_preview_url(item.audio_url) else None
    video = item.video_url if not is_preview_url(item.video_url) else None
    error = item.error if state is ClipState.FAILED else None
    # positional: a clip is built for every item of every poll that changed
    return Clip(item.id, item.title, state, audio, video, item.image_url, item.duration_s, error)


def _item_done(item: UpstreamItem, state: ClipState) -> bool:
    # lyrics-style items finish with text and a success word, no URL
    return has_final_artifact(item) or (state is ClipState.SUCCEEDED and item.text is not None)


def is_terminal(task: UpstreamTask) -> bool:
    """DESIGN.md §1: nothing active, and finished_at, or all items done, or an explicit failure."""
    states = [item_state(i) for i in task.items]
    if any(s in ACTIVE_CLIP_STATES for s in states):
        return False
    if task.finished_at is not None:
        return True
    if task.items and all(_item_done(i, s) for i, s in zip(task.items, states, strict=True)):
        return True
    return task.success is False and task.error is not None


def task_progress(clips: Sequence[Clip], items: Sequence[UpstreamItem]) -> int | None:
    """Mean of the items' reported progress (done items count 100); None when nothing reports."""
    reported = [normalise_progress(i.progress) for i in items]
    if not any(p is not None for p in reported):
        return None
    values = [100 if c.state is ClipState.SUCCEEDED else (p or 0) for c, p in zip(clips, reported, strict=True)]
    return round(sum(values) / len(values))


def _clip_error(clips: Sequence[Clip]) -> dict[str, str | None] | None:
    messages = [c.error for c in clips if c.state is ClipState.FAILED and c.error]
    return {"code": "clip_failed", "message": "; ".join(messages)} if messages else None


def _finish(record: Record, task: UpstreamTask, now_ms: int) -> Record:
    succeeded = any(c.state is ClipState.SUCCEEDED for c in record.clips)
    final = record.evolve(finished_at_ms=now_ms, upstream_finished_at=task.finished_at, response=task.kept)
    if succeeded:
        final.state = TaskState.SUCCEEDED
        final.partial = any(c.state is not ClipState.SUCCEEDED for c in record.clips)
        final.progress = 100
        return final
    final.state, final.reason, final.partial = TaskState.FAILED, Reason.UPSTREAM_ERROR, False
    final.error = task.error or _clip_error(record.clips) or {"code": "no_output", "message": "no item succeeded"}
    return final


def fail(record: Record, reason: Reason, now_ms: int, error: dict[str, str | None] | None = None) -> Record:
    """A copy of ``record`` failed for ``reason`` (clips kept as last seen)."""
    return record.evolve(
        state=TaskState.FAILED,
        reason=reason,
        partial=any(c.state is ClipState.SUCCEEDED for c in record.clips),
        error=error,
        finished_at_ms=now_ms,
        updated_at_ms=now_ms,
    )


def newly_succeeded(before: Sequence[Clip], after: Sequence[Clip]) -> list[Clip]:
    """Clips succeeded in ``after`` that had not succeeded in ``before``."""
    done_before = {c.id for c in before if c.state is ClipState.SUCCEEDED}
    return [c for c in after if c.state is ClipState.SUCCEEDED and c.id not in done_before]


def observe(task: UpstreamTask, record: Record, now_ms: int) -> Decision:
    """Apply one upstream observation to a pending record (no scheduling yet)."""
    clips = [to_clip(i) for i in task.items]
    updated = record.evolve(
        clips=clips,
        progress=task_progress(clips, task.items),
        attempts=record.attempts + 1,
        updated_at_ms=now_ms,
    )
    events = [EventType.CLIP_SUCCEEDED] * len(newly_succeeded(record.clips, clips))
    if is_terminal(task):
        updated = _finish(updated, task, now_ms)
        terminal_event = EventType.TASK_SUCCEEDED if updated.state is TaskState.SUCCEEDED else EventType.TASK_FAILED
        return Decision(updated, [*events, terminal_event])
    if updated.progress is not None and updated.progress != record.progress:
        events.append(EventType.TASK_PROGRESS)
    return Decision(updated, events)


def decide(
    task: UpstreamTask | None,
    record: Record,
    now_ms: int,
    *,
    deadline_at_ms: int,
    missing_since_ms: int | None,
    policy: Policy,
    usual_lifetime_s: float,
    rng: Rng = random.random,
    seen: bool = False,
    misses: int = 0,
    earliest_lifetime_s: float = 0.0,
    stage: int = STAGE_QUEUED,
    backlog_ms: int = 0,
) -> Decision:
    """Everything one poll of one task leads to, including the deadline and not-found rules.

    ``seen``: the upstream has answered for this id before; then a miss never means not found.
    ``misses``: answers in a row that left the id out before this one.
    ``stage``: how far the upstream says the task is (``observed_stage``).
    ``backlog_ms``: how far the queue's claims run behind (``schedule_ms``).
    """
    if task is None:
        decision = _missing(record, now_ms, missing_since_ms, policy, seen, misses)
    else:
        decision = observe(task, record, now_ms)
    if not decision.terminal and now_ms >= deadline_at_ms:
        failed = fail(decision.record, Reason.DEADLINE, now_ms, {"code": "deadline", "message": "deadline passed"})
        return Decision(failed, [*decision.events, EventType.TASK_FAILED])
    if not decision.terminal:
        # an id the upstream has never answered for is looked for often enough for the not-found
        # rule (MIN_MISSES answers over the grace), and no more: it may never exist
        unknown = task is None and not seen
        decision.next_poll_ms = schedule_ms(
            now_ms,
            record.enqueued_at_ms,
            deadline_at_ms,
            policy,
            usual_s=usual_lifetime_s,
            earliest_s=earliest_lifetime_s,
            stage=stage,
            rng=rng,
            min_delay_s=policy.not_found_grace_s / MIN_MISSES if unknown else 0.0,
            backlog_ms=backlog_ms,
        )
    return decision


def fingerprint(task: UpstreamTask) -> str:
    """A digest of everything in an upstream answer that ``observe`` reads.

    Two answers with one fingerprint make the same record, events and verdict: a poll whose answer
    matches the last one's can only be rescheduled (64 bits: a collision is not a practical risk).
    """
    # the raw fields ``UpstreamItem.from_wire`` reads: the items need not be parsed. This runs for
    # every id of every poll, hence ``map`` (a C loop) and orjson (under half of ``repr``'s time)
    answer = (task.finished_at, task.success, task.error, [tuple(map(e.get, ITEM_FIELDS)) for e in task.entries])
    return hashlib.blake2b(codec.dumps(answer), digest_size=8).hexdigest()


def _missing(
    record: Record, now_ms: int, missing_since_ms: int | None, policy: Policy, seen: bool, misses: int
) -> Decision:
    since_ms = now_ms if missing_since_ms is None else missing_since_ms
    counted = record.evolve(attempts=record.attempts + 1, updated_at_ms=now_ms)
    # an id the upstream has answered for exists: leaving it out of one answer is a glitch
    # and one answer glitch, or a grace spent mostly in outages, is not enough either
    if not seen and misses + 1 >= MIN_MISSES and now_ms - since_ms >= policy.not_found_grace_s * 1000:
        error: dict[str, str | None] = {"code": "not_found", "message": f"task {record.id!r} unknown upstream"}
        return Decision(fail(counted, Reason.NOT_FOUND, now_ms, error), [EventType.TASK_FAILED])
    return Decision(counted, missing_since_ms=since_ms)


def item_stage(item: UpstreamItem) -> int:
    """How far one item is (``STAGE_*``)."""
    state = item_state(item)
    if state in (ClipState.SUCCEEDED, ClipState.FAILED):
        return STAGE_CLIP_DONE
    if state is ClipState.PENDING:
        return STAGE_QUEUED
    if item.word in STREAMING_WORDS:
        return STAGE_STREAMING
    return STAGE_RUNNING


def observed_stage(task: UpstreamTask | None) -> int:
    """The furthest stage any item of ``task`` shows (``STAGE_QUEUED`` when none, or unknown)."""
    if task is None or not task.items:
        return STAGE_QUEUED
    return max(item_stage(i) for i in task.items)
