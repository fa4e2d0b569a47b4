"""The upstream's wire format: a Tasks API record as sent, parsed tolerantly (``UpstreamTask.from_wire``).

Every other module reads the upstream's answers through these classes. It does no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from worker.errors import UpstreamUnavailable

#: top-level fields of a task record that name the upstream account and API, not the task (the
#: same on every task of a token and service): a finished record keeps the rest of the answer
ACCOUNT_FIELDS = frozenset({"api_id", "application_id", "credential_id", "user_id"})


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def error_of(value: Any) -> dict[str, str | None] | None:
    """Normalise an upstream ``error`` (an object or a plain string) to ``{code, message}``."""
    if isinstance(value, dict):
        code, message = value.get("code"), value.get("message")
        return {"code": str(code) if code is not None else None, "message": str(message) if message else None}
    if isinstance(value, str) and value:
        return {"code": None, "message": value}
    return None


#: the text fields of an upstream item, as ``UpstreamItem.from_wire`` unpacks them
_ITEM_TEXT_FIELDS = ("id", "title", "audio_url", "video_url", "image_url", "file_url", "url", "text", "lyric")


@dataclass(slots=True)
class UpstreamItem:
    """One element of ``response.data``, as sent (before any state is inferred)."""

    id: str | None
    title: str | None
    word: str | None
    audio_url: str | None
    video_url: str | None
    image_url: str | None
    other_urls: tuple[str, ...]
    text: str | None
    duration_s: float | None
    progress: Any
    error: str | None

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> UpstreamItem:
        """Read one item; tolerant of missing keys and string numbers."""
        get = raw.get  # this runs for every item of every poll that changed: no call per field
        item_id, title, audio, video, image, file_url, url, text, lyric = [
            v if isinstance(v, str) and v else None for v in map(get, _ITEM_TEXT_FIELDS)
        ]
        word = get("state")
        if not isinstance(word, str):
            word = get("status")
        err_raw = get("error")
        err = error_of(err_raw) if err_raw is not None else None
        if err is None and (message := get("error_message")) is not None:
            err = error_of(message)
        duration = get("duration")
        return cls(
            item_id,
            title,
            word.strip().lower() if isinstance(word, str) else None,
            audio,
            video,
            image,
            tuple(u for u in (file_url, url) if u) if file_url or url else (),
            text or lyric,
            _as_float(duration) if duration is not None else None,
            get("progress"),
            err["message"] or err["code"] if err else None,
        )


@dataclass(slots=True)
class UpstreamTask:
    """One task record from the Tasks API. There is no top-level state on the wire.

    ``entries`` are the raw items; ``items`` parses them on first use (a poll whose answer repeats
    the last one never needs them).
    """

    id: str
    finished_at: float | None
    success: bool | None
    error: dict[str, str | None] | None
    entries: list[dict[str, Any]] = field(repr=False)
    raw: dict[str, Any] = field(repr=False)
    _items: tuple[UpstreamItem, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def items(self) -> tuple[UpstreamItem, ...]:
        """The parsed items of ``response.data``."""
        if self._items is None:
            self._items = tuple(UpstreamItem.from_wire(e) for e in self.entries)
        return self._items

    @property
    def kept(self) -> dict[str, Any]:
        """The answer as a finished record keeps it: all of it but ``ACCOUNT_FIELDS``."""
        return {k: v for k, v in self.raw.items() if k not in ACCOUNT_FIELDS}

    @classmethod
    def from_wire(cls, raw: Any) -> UpstreamTask | None:
        """Parse a record; ``{}`` (unknown id) gives None.

        Raises:
            UpstreamUnavailable: the record is not an object or has no id; a broken answer is
                treated like an outage (retry later), never as a verdict on the task.
        """
        if not isinstance(raw, dict):
            raise UpstreamUnavailable(f"task record is {type(raw).__name__}, expected an object")
        if not raw:
            return None
        response_raw = raw.get("response")
        response: dict[str, Any] = response_raw if isinstance(response_raw, dict) else {}
        task_id = _as_str(raw.get("id")) or _as_str(response.get("task_id"))
        if task_id is None:
            raise UpstreamUnavailable("task record has no id or response.task_id")
        data = response.get("data")
        entries = [data] if isinstance(data, dict) else data if isinstance(data, list) else []
        success = response.get("success")
        # this runs for every id of every poll: no call for a field that is absent
        finished_at, error, raw_error = raw.get("finished_at"), response.get("error"), raw.get("error")
        return cls(
            task_id,
            _as_float(finished_at) if finished_at is not None else None,
            success if isinstance(success, bool) else None,
            (error_of(error) if error is not None else None)
            or (error_of(raw_error) if raw_error is not None else None),
            [e for e in entries if isinstance(e, dict)],
            raw,
        )
