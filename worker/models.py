"""Pure data: states, reasons, events and the stored record.

This module owns the record's shape (``Record``); ``wire`` owns the upstream's. It does no I/O.
"""

from __future__ import annotations

import operator
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from typing import Any, TypeVar

RECORD_VERSION = 1


class TaskState(StrEnum):
    """A tracked task's state."""

    #: enqueued and still being polled
    PENDING = "pending"
    #: terminal, with at least one succeeded clip
    SUCCEEDED = "succeeded"
    #: terminal, with no succeeded clip (see ``Reason``)
    FAILED = "failed"


TERMINAL_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED})


class ClipState(StrEnum):
    """One output item's ("clip's") state, normalised from the upstream's many words."""

    #: nothing produced yet
    PENDING = "pending"
    #: in progress, perhaps with a streaming preview
    RUNNING = "running"
    #: has its final artifact
    SUCCEEDED = "succeeded"
    #: the upstream gave up on this item
    FAILED = "failed"


ACTIVE_CLIP_STATES = frozenset({ClipState.PENDING, ClipState.RUNNING})


class Reason(StrEnum):
    """Why a task failed."""

    #: terminal upstream with no succeeded item
    UPSTREAM_ERROR = "upstream_error"
    #: still not finished when its deadline passed
    DEADLINE = "deadline"
    #: unknown upstream for longer than the not-found grace
    NOT_FOUND = "not_found"
    #: cancelled by a user
    CANCELLED = "cancelled"
    #: the upstream rejected this id on its own (400)
    REJECTED = "rejected"
    #: the upstream has no such service (404 no_api)
    UNKNOWN_SERVICE = "unknown_service"


class EventType(StrEnum):
    """Types of entries in the events stream."""

    TASK_SUCCEEDED = "task.succeeded"
    TASK_FAILED = "task.failed"
    TASK_PROGRESS = "task.progress"
    CLIP_SUCCEEDED = "clip.succeeded"


@dataclass(slots=True)
class Clip:
    """One output item as acetrack stores it."""

    id: str | None
    title: str | None
    state: ClipState
    audio_url: str | None = None
    video_url: str | None = None
    image_url: str | None = None
    duration_s: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (written out by hand: ``asdict`` deep-copies, and this runs per poll)."""
        return {
            "id": self.id,
            "title": self.title,
            "state": self.state.value,
            "audio_url": self.audio_url,
            "video_url": self.video_url,
            "image_url": self.image_url,
            "duration_s": self.duration_s,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Clip:
        """Inverse of ``to_dict``; absent fields (compact storage drops nulls) are None."""
        # positional, one C-level ``get`` per field: every poll that changes a record decodes its clips
        values: list[Any] = [*map(data.get, _CLIP_FIELDS)]
        clip = cls(*values)
        clip.state = _enum_value(ClipState, _CLIP_STATES, data["state"])
        return clip


@dataclass
class Record:
    """The stored record of DESIGN.md §2. Every field is always present (None until it applies)."""

    service: str
    id: str
    state: TaskState = TaskState.PENDING
    reason: Reason | None = None
    partial: bool | None = None
    progress: int | None = None
    clips: list[Clip] = field(default_factory=list)
    error: dict[str, str | None] | None = None
    attempts: int = 0
    enqueued_at_ms: int = 0
    updated_at_ms: int = 0
    finished_at_ms: int | None = None
    upstream_finished_at: float | None = None
    callback_url: str | None = None
    token: str = "default"
    meta: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    v: int = RECORD_VERSION

    @property
    def terminal(self) -> bool:
        """True once the task succeeded or failed."""
        return self.state in TERMINAL_STATES

    def evolve(self, **changes: Any) -> Record:
        """A shallow copy with ``changes`` applied: ``dataclasses.replace`` without its per-call
        ``__init__`` (a third of the time), since this runs for every poll that changes a record."""
        unknown = changes.keys() - self.__dataclass_fields__.keys()
        if unknown:
            raise TypeError(f"Record has no field(s) {sorted(unknown)}")
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__, **changes)
        return copy

    def to_dict(self) -> dict[str, Any]:
        """The public JSON form, field order as documented."""
        return {
            "v": self.v,
            "service": self.service,
            "id": self.id,
            "state": self.state.value,
            "reason": self.reason.value if self.reason else None,
            "partial": self.partial,
            "progress": self.progress,
            "clips": [c.to_dict() for c in self.clips],
            "error": self.error,
            "attempts": self.attempts,
            "enqueued_at_ms": self.enqueued_at_ms,
            "updated_at_ms": self.updated_at_ms,
            "finished_at_ms": self.finished_at_ms,
            "upstream_finished_at": self.upstream_finished_at,
            "callback_url": self.callback_url,
            "token": self.token,
            "meta": self.meta,
            "response": self.response,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """Inverse of ``to_dict``; tolerant of fields added by later versions."""
        if not _REQUIRED_RECORD_FIELDS <= data.keys():
            raise TypeError(f"a record needs the field(s) {sorted(_REQUIRED_RECORD_FIELDS - data.keys())}")
        # the defaults, then what is stored (minus fields of later versions), set without
        # ``__init__``: every poll that changes a record decodes it
        values = {**_RECORD_DEFAULTS, **data}
        if len(values) != len(_RECORD_DEFAULTS):
            values = {k: values[k] for k in _RECORD_DEFAULTS}
        values["state"] = _enum_value(TaskState, _TASK_STATES, values["state"])
        values["reason"] = _enum_value(Reason, _REASONS, values["reason"]) if values["reason"] else None
        values["clips"] = [Clip.from_dict(c) for c in values["clips"] or ()]
        record = object.__new__(cls)
        record.__dict__ = values
        return record


@dataclass(frozen=True)
class OutEvent:
    """One event to append to the events stream, with the hook deliveries it triggers."""

    fields: dict[str, str]
    deliveries: list[tuple[str, str]]  # (delivery id, delivery body json)

    def to_payload(self) -> dict[str, Any]:
        """The JSON shape ``_events.lua`` reads (ordered field pairs)."""
        return {
            "fields": [[k, v] for k, v in self.fields.items()],
            "deliveries": [{"id": d_id, "body": body} for d_id, body in self.deliveries],
        }


_CLIP_FIELDS = tuple(Clip.__dataclass_fields__)
_clip_values = operator.attrgetter(*_CLIP_FIELDS)
#: each field's default (None where it has none, or a factory), in declaration order
_RECORD_DEFAULTS: dict[str, Any] = {f.name: None if f.default is MISSING else f.default for f in fields(Record)}
# ``from_dict`` gives ``clips`` its own new list; a field with any other factory would need the same
assert [f.name for f in fields(Record) if f.default_factory is not MISSING] == ["clips"]
_REQUIRED_RECORD_FIELDS = frozenset(
    f.name for f in fields(Record) if f.default is MISSING and f.default_factory is MISSING
)
_CLIP_STATES = {s.value: s for s in ClipState}
_TASK_STATES = {s.value: s for s in TaskState}
_REASONS = {r.value: r for r in Reason}
_E = TypeVar("_E", bound=StrEnum)


def _enum_value(enum: type[_E], members: dict[str, _E], value: Any) -> _E:
    # a dict lookup, not the enum's call (several times slower); the call still raises the
    # ValueError that names an unknown value
    member = members.get(value) if isinstance(value, str) else None
    return member if member is not None else enum(value)


def compact(record: Record) -> dict[str, Any]:
    """How ``record`` is stored: its fields without the null ones (its clips' too); enums are left to
    the JSON encoder. ``Record.from_dict`` restores them. ``meta``, ``error`` and ``response`` are
    kept untouched.
    """
    # read off the fields, not ``to_dict`` filtered: every poll that changes a record writes it
    out = {k: v for k, v in record.__dict__.items() if v is not None}
    out["clips"] = [
        {k: v for k, v in zip(_CLIP_FIELDS, _clip_values(clip), strict=True) if v is not None} for clip in record.clips
    ]
    return out


Mark = tuple[int, int]
"""A stage's first sighting: (age of the poll before, which had not seen it; age of the poll that did), ms."""


@dataclass(frozen=True)
class Sample:
    """One finished task of a service, as the scheduler learns from it.

    ``marks``: per stage, when it was first seen (see ``cadence.advance_marks``).
    ``ok``: it succeeded (only those tell the usual lifetime; failures tell how early one can end).
    ``latency_s`` over ``poll_s``: how late polls at that interval find a finish (``cadence.with_target``).
    """

    lifetime_s: float
    ok: bool = True
    marks: tuple[Mark | None, ...] = ()
    #: how late it was found: the upstream's ``finished_at`` to the terminal write (None: unknown)
    latency_s: float | None = None
    #: the poll interval in effect when it was found (``latency_s`` scales with it)
    poll_s: float | None = None


#: the token name of a task enqueued without one
DEFAULT_TOKEN = "default"


@dataclass(frozen=True)
class EnqueueRequest:
    """One validated request to track ``(service, id)``."""

    service: str
    id: str
    callback_url: str | None = None
    deadline_s: float | None = None
    token: str = DEFAULT_TOKEN
    meta: dict[str, Any] | None = None
    reopen: bool = False
