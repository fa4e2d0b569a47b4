"""Completion rules and polling maths (DESIGN.md §1, §3). Pure: no I/O, no asyncio.

``decide`` takes what the upstream said about one task, the stored record and ``now_ms``, and
returns a ``Decision``: the new record, the events to emit and when to poll next.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from worker import codec
from worker.models import (
    ACTIVE_CLIP_STATES,
    Clip,
    ClipState,
    EventType,
    Reason,
    Record,
    TaskState,
    UpstreamItem,
    UpstreamTask,
)

SUCCESS_WORDS = frozenset({"succeeded", "succeed", "success", "completed", "complete", "done", "finished"})
FAILURE_WORDS = frozenset({"error", "failed", "failure", "cancelled", "canceled", "rejected"})
PENDING_WORDS = frozenset({"pending", "queued", "queue", "submitted", ""})
RUNNING_WORDS = frozenset({"running", "processing", "streaming"})
#: hosts that serve a streaming preview while a clip is still being generated
PREVIEW_HOSTS = frozenset({"audiopipe.suno.ai"})
#: until enough tasks of a service have finished, assume this lifetime before slowing down
DEFAULT_USUAL_LIFETIME_S = 300.0
MIN_LIFETIME_SAMPLES = 5
#: finished tasks needed before polls skip the ages nothing finishes at
MIN_SKIP_SAMPLES = 20
#: growth starts this many times the p90 lifetime
LATE_FACTOR = 1.5
GROWTH = 1.5
#: answers in a row without the id (besides the grace period) before it is "not found"
MIN_MISSES = 5

#: what an observation shows of a task's way to the end: nothing started, running, streaming a
#: preview, a clip done. The age a stage was first seen at predicts the lifetime (learned per service).
STAGE_QUEUED, STAGE_RUNNING, STAGE_STREAMING, STAGE_CLIP_DONE = range(4)
STAGES = (STAGE_QUEUED, STAGE_RUNNING, STAGE_STREAMING, STAGE_CLIP_DONE)
STREAMING_WORDS = frozenset({"streaming"})

Rng = Callable[[], float]
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


@dataclass(frozen=True)
class Policy:
    """The cadence settings, in seconds (DESIGN.md §3)."""

    poll_s: float = 3.0
    max_poll_s: float = 60.0
    not_found_grace_s: float = 60.0


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
    final = record.evolve(finished_at_ms=now_ms, upstream_finished_at=task.finished_at, response=task.raw)
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
) -> Decision:
    """Everything one poll of one task leads to, including the deadline and not-found rules.

    ``seen``: the upstream has answered for this id before; then a miss never means not found.
    ``misses``: answers in a row that left the id out before this one.
    ``stage``: how far the upstream says the task is (``observed_stage``).
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
        )
    return decision


def schedule_ms(
    now_ms: int,
    enqueued_ms: int,
    deadline_at_ms: int,
    policy: Policy,
    *,
    usual_s: float,
    earliest_s: float,
    stage: int,
    rng: Rng = random.random,
    min_delay_s: float = 0.0,
) -> int:
    """When to poll a still-pending task next (epoch ms): ``next_poll_delay_s`` (at least
    ``min_delay_s``), sped up for a task with a clip done, moved back onto the grid, never past the
    deadline."""
    age_s = (now_ms - enqueued_ms) / 1000
    delay_s = max(next_poll_delay_s(age_s, usual_s, policy, rng, earliest_s=earliest_s), min_delay_s)
    if stage == STAGE_CLIP_DONE and age_s < usual_s:
        # part of the output is done: the rest usually follows within seconds
        delay_s = min(delay_s, policy.poll_s / FINISHING_SPEEDUP)
    grid_ms = int(policy.poll_s * 1000 / FINISHING_SPEEDUP)
    # at least half a grid step on: a poll that ran late is not repeated at once
    next_ms = on_grid_ms(now_ms + int(delay_s * 1000), grid_ms, now_ms + grid_ms // 2)
    return min(next_ms, deadline_at_ms)


def fingerprint(task: UpstreamTask) -> str:
    """A digest of everything in an upstream answer that ``observe`` reads.

    Two answers with one fingerprint make the same record, events and verdict: a poll whose answer
    matches the last one's can only be rescheduled (64 bits: a collision is not a practical risk).
    """
    # the raw fields ``UpstreamItem.from_wire`` reads: the items need not be parsed. This runs for
    # every id of every poll, hence ``map`` (a C loop) and orjson (under half of ``repr``'s time)
    answer = (task.finished_at, task.success, task.error, [tuple(map(e.get, ITEM_FIELDS)) for e in task.entries])
    return hashlib.blake2b(codec.dumps(answer), digest_size=8).hexdigest()


def reached_stage(marks: Sequence[Mark | None]) -> int:
    """The furthest stage marked (``advance_marks``): the stage of the last answer."""
    for stage in range(len(marks) - 1, STAGE_QUEUED, -1):  # from the furthest: most tasks are past queued
        if marks[stage] is not None:
            return stage
    return STAGE_QUEUED


def first_poll_ms(enqueued_ms: int, first_poll_s: float) -> int:
    """When a new task is first polled: ``first_poll_s`` on, moved back onto a grid of half that."""
    first_ms = int(first_poll_s * 1000)
    return on_grid_ms(enqueued_ms + first_ms, first_ms // FINISHING_SPEEDUP, enqueued_ms)


def on_grid_ms(due_ms: int, grid_ms: int, after_ms: int) -> int:
    """``due_ms`` moved back to a multiple of ``grid_ms`` (epoch-aligned), yet later than ``after_ms``.

    Every worker snaps to the same grid, so a service's polls fall due together and fill batches
    instead of trickling out one id at a time. Moving back, not on, keeps every interval at most
    as long as asked (``schedule_ms`` adds up to half a step for a poll that ran late). The grid
    is half the poll interval: tasks polled every interval keep to one of two alternating phases,
    and tasks polled twice as often share both, so each grid point carries about half the regular
    polls plus the fast ones.
    """
    if grid_ms <= 0:
        return due_ms
    snapped = due_ms - due_ms % grid_ms
    return snapped if snapped > after_ms else snapped + grid_ms


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


def next_poll_delay_s(
    age_s: float, usual_lifetime_s: float, policy: Policy, rng: Rng = random.random, *, earliest_s: float = 0.0
) -> float:
    """Every ``poll_s`` while young; past the usual lifetime, ×1.5 per poll_s overdue, full jitter, capped.

    Before ``earliest_s`` (an age few tasks of the service finish before) there is nothing to find:
    the next poll waits until then. The jitter spreads late tasks over ``[poll_s, cap]`` so slow
    ones don't poll in lockstep.
    """
    if age_s + policy.poll_s < earliest_s:
        return min(earliest_s - age_s, policy.max_poll_s)
    overdue_s = age_s - usual_lifetime_s
    if overdue_s <= 0:
        return policy.poll_s
    steps = overdue_s / policy.poll_s
    cap_s = min(policy.max_poll_s, policy.poll_s * math.pow(GROWTH, min(steps, 64.0)))
    jitter: float = rng()
    return policy.poll_s + jitter * (cap_s - policy.poll_s)


#: a task with part of its output done is polled this many times as often (until the usual lifetime)
FINISHING_SPEEDUP = 2
#: lowest share of finished tasks a learned "earliest" may leave behind (they are found late)
EARLY_QUANTILE = 0.01
#: a stage's lifetime ratio: the share of tasks that finished faster than it predicts
STAGE_QUANTILE = 0.02


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


Mark = tuple[int, int]
"""A stage's first sighting: (age of the poll before, which had not seen it; age of the poll that did), ms."""


def advance_marks(marks: Sequence[Mark | None], stage: int, before_ms: int, now_ms: int) -> tuple[Mark | None, ...]:
    """Note what this poll showed of the task's stage (``marks[s]`` is stage ``s``'s).

    ``before_ms`` and ``now_ms`` are the task's ages at the previous poll and at this one. A stage
    past queued is marked once, when first seen: ``(before_ms, now_ms)``, it began in between.
    Queued is marked ``(now_ms, now_ms)`` at every poll that still shows it. Learning divides
    lifetimes by the later age and predicting multiplies by the earlier one: both err towards
    polling early, however far apart the polls were.
    """
    out = list(marks) + [None] * (len(STAGES) - len(marks))
    if stage == STAGE_QUEUED:
        out[STAGE_QUEUED] = (now_ms, now_ms)
    for s in STAGES[1:]:
        if s <= stage and out[s] is None:
            out[s] = (before_ms, now_ms)
    return tuple(out)


@dataclass(frozen=True)
class Sample:
    """One finished task of a service, as the scheduler learns from it.

    ``marks``: per stage, when it was first seen (see ``advance_marks``).
    ``ok``: it succeeded (only those tell the usual lifetime; failures tell how early one can end).
    """

    lifetime_s: float
    ok: bool = True
    marks: tuple[Mark | None, ...] = ()


@dataclass(frozen=True)
class Lifetimes:
    """What recently finished tasks of one service say about when a poll may find one finished."""

    #: before this age almost no task ends (the 1st percentile): polls wait for it
    earliest_s: float = 0.0
    #: past this age, intervals grow
    usual_s: float = DEFAULT_USUAL_LIFETIME_S
    #: per stage: lifetime / age before the stage, a low quantile (0: not learned yet)
    stage_ratios: tuple[float, ...] = ()
    #: per stage: the oldest age a learned task was marked at (ms); a ratio is not stretched past it
    stage_ages_ms: tuple[int, ...] = ()

    def earliest_for(self, marks: Sequence[Mark | None]) -> float:
        """The age (s) before which a task that reached the stages in ``marks`` likely runs on.

        A task marked later than any learned one (stuck in a queue, say) is outside what was
        learned: its ratio does not apply, only the age rule.
        """
        earliest = self.earliest_s
        for ratio, oldest_ms, mark in zip(self.stage_ratios, self.stage_ages_ms, marks, strict=False):
            if ratio > 0 and mark is not None and mark[0] <= oldest_ms:
                earliest = max(earliest, ratio * mark[0] / 1000)
        return earliest


def _low(values: Sequence[float], quantile: float) -> float:
    ordered = sorted(values)
    return ordered[int(len(ordered) * quantile)]


def lifetimes_from(samples: Sequence[Sample | float]) -> Lifetimes:
    """Learn a service's ``Lifetimes`` from recently finished tasks (plain floats: succeeded lifetimes, s).

    The first samples come from the shortest tasks (they finish first), so the numbers start low
    and rise: polling starts early, and growth waits until half as long again past the p90.
    Nothing is skipped until ``MIN_SKIP_SAMPLES`` tasks tell it, and then only ages and stages that
    all but ``EARLY_QUANTILE`` / ``STAGE_QUANTILE`` of them outlived.
    """
    found = [s if isinstance(s, Sample) else Sample(float(s)) for s in samples]
    usual_s = usual_lifetime_s([s.lifetime_s for s in found if s.ok])
    if len(found) < MIN_SKIP_SAMPLES:
        return Lifetimes(0.0, usual_s)
    ratios, oldest = [], []
    for index in range(len(STAGES)):
        marked = [(s.lifetime_s, m) for s in found if len(s.marks) > index and (m := s.marks[index]) and m[0]]
        enough = len(marked) >= MIN_SKIP_SAMPLES
        ratios.append(_low([life_s * 1000 / m[1] for life_s, m in marked], STAGE_QUANTILE) if enough else 0.0)
        oldest.append(max((m[1] for _, m in marked), default=0))
    earliest_s = _low([s.lifetime_s for s in found], EARLY_QUANTILE)
    return Lifetimes(earliest_s, usual_s * LATE_FACTOR, tuple(ratios), tuple(oldest))


def usual_lifetime_s(samples_s: Sequence[float], default_s: float = DEFAULT_USUAL_LIFETIME_S) -> float:
    """The 90th percentile of recent lifetimes of one service; ``default_s`` until there are enough."""
    if len(samples_s) < MIN_LIFETIME_SAMPLES:
        return default_s
    ordered = sorted(samples_s)
    return float(ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)])


def backoff_s(
    failures: int, base_s: float, cap_s: float, retry_after_s: float | None, rng: Rng = random.random
) -> float:
    """Service-wide back-off after a 429/5xx: the server's Retry-After if given, else exponential with jitter."""
    if retry_after_s is not None:
        return min(max(retry_after_s, 0.0), cap_s * 10)
    ceiling = min(cap_s, base_s * math.pow(2.0, min(failures, 32)))
    return ceiling / 2 + rng() * ceiling / 2
