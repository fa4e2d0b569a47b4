"""What acetrack answers, as small frozen dataclasses: a task's ``Record`` with its ``Clip``s, and an ``Event``.

Parsed from the documented JSON (DESIGN.md §2); fields a later acetrack adds are ignored, and a
field left out (Redis stores a record without its nulls) is None.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: the task states; ``succeeded`` and ``failed`` are terminal
PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED})
#: every field of a record, as DESIGN.md §2 lists them
RECORD_FIELDS = (
    "v service id state reason partial progress clips error attempts enqueued_at_ms updated_at_ms "
    "finished_at_ms upstream_finished_at callback_url token meta response"
).split()
#: every field of a clip
CLIP_FIELDS = ("id", "title", "state", "audio_url", "video_url", "image_url", "duration_s", "error")
#: the events' types; a task's end (``task.succeeded``, ``task.failed``) carries its record
EVENT_TYPES = frozenset({"task.succeeded", "task.failed", "task.progress", "clip.succeeded"})
#: every field of an events-stream entry (an empty string stands for null)
EVENT_FIELDS = ("event_id", "type", "service", "id", "state", "reason", "progress", "at_ms", "record", "clip", "meta")


@dataclass(frozen=True)
class Clip:
    """One output item of a task (a song, a video, an image)."""

    id: str | None
    title: str | None
    state: str
    audio_url: str | None = None
    video_url: str | None = None
    image_url: str | None = None
    duration_s: float | None = None
    error: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Clip:
        """A clip from its JSON object; unknown fields are ignored."""
        values: dict[str, Any] = {name: data.get(name) for name in CLIP_FIELDS}
        return cls(**values)


@dataclass(frozen=True)
class Record:
    """A task's record: state, clips, progress, error and what it was enqueued with.

    ``response`` (the raw upstream answer) is there once the task is terminal, in what ``get`` and
    ``wait`` return; a record carried by an event has none.
    """

    service: str
    id: str
    state: str = PENDING
    reason: str | None = None
    partial: bool | None = None
    progress: int | None = None
    clips: tuple[Clip, ...] = ()
    error: dict[str, Any] | None = None
    attempts: int = 0
    enqueued_at_ms: int = 0
    updated_at_ms: int = 0
    finished_at_ms: int | None = None
    upstream_finished_at: float | None = None
    callback_url: str | None = None
    token: str = "default"
    meta: dict[str, Any] | None = None
    response: dict[str, Any] | None = field(default=None, repr=False)
    v: int = 1

    @property
    def terminal(self) -> bool:
        """True once the task succeeded or failed."""
        return self.state in TERMINAL_STATES

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """A record from its JSON object; unknown fields are ignored, absent ones take their defaults."""
        values: dict[str, Any] = {name: data[name] for name in RECORD_FIELDS if data.get(name) is not None}
        values["clips"] = tuple(Clip.from_dict(c) for c in data.get("clips") or ())
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | bytes) -> Record:
        """A record from JSON text."""
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class Event:
    """One entry of acetrack's events stream.

    ``record`` is set on ``task.succeeded`` and ``task.failed`` (without ``response``); ``clip`` on
    ``clip.succeeded``; ``meta`` (the task's) on the others.
    """

    #: the stream entry id: pass it as ``after`` to resume after this event
    entry_id: str
    event_id: str
    type: str
    service: str
    id: str
    state: str
    reason: str | None
    progress: int | None
    at_ms: int
    record: Record | None
    clip: Clip | None
    meta: dict[str, Any] | None

    @classmethod
    def from_fields(cls, entry_id: str, fields: Mapping[str, str]) -> Event:
        """An event from a stream entry's flat string fields (``""`` is null; JSON fields as text)."""
        parsed: dict[str, Any] = {k: (json.loads(fields[k]) if fields.get(k) else None) for k in ("record", "clip")}
        parsed["meta"] = json.loads(fields["meta"]) if fields.get("meta") else None
        parsed.update(
            {k: fields.get(k) or None for k in ("event_id", "type", "service", "id", "state", "reason", "progress")}
        )
        parsed["at_ms"] = fields.get("at_ms") or 0
        return cls.from_dict(entry_id, parsed)

    @classmethod
    def from_dict(cls, entry_id: str, data: Mapping[str, Any]) -> Event:
        """An event from its JSON object (as ``GET /events`` sends it in ``data:``)."""
        record, clip, progress = data.get("record"), data.get("clip"), data.get("progress")
        return cls(
            entry_id=entry_id,
            event_id=str(data.get("event_id") or ""),
            type=str(data.get("type") or ""),
            service=str(data.get("service") or ""),
            id=str(data.get("id") or ""),
            state=str(data.get("state") or ""),
            reason=data.get("reason") or None,
            progress=int(progress) if progress is not None else None,
            at_ms=int(data.get("at_ms") or 0),
            record=Record.from_dict(record) if isinstance(record, Mapping) else None,
            clip=Clip.from_dict(clip) if isinstance(clip, Mapping) else None,
            meta=data.get("meta") if isinstance(data.get("meta"), dict) else None,
        )
