"""Build the events (and their hook deliveries) that a decision leads to. Pure.

Event fields follow DESIGN.md §2; the hook delivery body carries the event as hooks see it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from worker import codec
from worker.classify import newly_succeeded
from worker.delivery import WEBHOOK_PREFIX
from worker.models import EventType, OutEvent, Record

NewId = Callable[[], str]


def _random_hex() -> str:
    # 128 random bits, as a uuid4 carries, without building a UUID object (several per poll)
    return os.urandom(16).hex()


def new_event_id() -> str:
    """A unique event id; it is also the ``webhook-id`` of every delivery made for the event."""
    return "evt_" + _random_hex()


#: the event types that carry the whole record (``record``); the others carry what changed
RECORD_EVENTS = frozenset({EventType.TASK_SUCCEEDED, EventType.TASK_FAILED})


def event_fields(event_type: EventType, record: Record, now_ms: int, event_id: str, record_json: str) -> dict[str, str]:
    """The flat string fields of one events-stream entry (``""`` stands for null).

    ``record_json``: the terminal record as JSON, without the raw upstream answer (``response``,
    on the stored record): one encoding serves all the events of a decision. Only terminal events
    carry it; ``task.progress`` and ``clip.succeeded`` carry what changed (``progress``, ``clip``)
    and the task's ``meta``. Every entry has the same fields in the same order: Redis then stores
    their names once per stream node, not once per entry.
    """
    terminal = event_type in RECORD_EVENTS
    return {
        "event_id": event_id,
        "type": event_type.value,
        "service": record.service,
        "id": record.id,
        "state": record.state.value,
        "reason": record.reason.value if record.reason else "",
        "progress": "" if record.progress is None else str(record.progress),
        "at_ms": str(now_ms),
        "record": record_json if terminal else "",
        "clip": "",
        "meta": "" if terminal or record.meta is None else codec.dumps(record.meta).decode(),
    }


def event_from_fields(fields: Mapping[str, str]) -> dict[str, Any]:
    """An events-stream entry as hooks receive it: nulls restored, ``record``, ``clip`` and ``meta``
    parsed (None where the event does not carry them)."""
    event: dict[str, Any] = {k: (v if v != "" else None) for k, v in fields.items()}
    event["at_ms"] = int(fields["at_ms"])
    event["progress"] = int(fields["progress"]) if fields.get("progress") else None
    for name in ("record", "clip", "meta"):
        event[name] = codec.loads(fields[name]) if fields.get(name) else None
    return event


def event_data(event: Mapping[str, Any]) -> dict[str, Any]:
    """What a webhook's ``data`` holds: the record of a terminal event, else what changed."""
    if event.get("record") is not None:
        data: dict[str, Any] = event["record"]
        return data
    keys = ("service", "id", "state", "progress", "clip", "meta")
    return {k: event.get(k) for k in keys if k in ("service", "id", "state") or event.get(k) is not None}


def _deliveries(
    fields: dict[str, str], destinations: Sequence[str], now_ms: int, new_id: NewId, first_seq: int
) -> list[tuple[str, str]]:
    event = event_from_fields(fields)
    out = []
    for seq, destination in enumerate(destinations, start=first_seq):
        # time and sequence first: deliveries due at the same moment leave the outbox in event order
        delivery_id = f"dlv_{now_ms:011x}_{seq:03d}_{new_id()}"
        body = {
            "delivery_id": delivery_id,
            "event_id": fields["event_id"],
            "destination": destination,
            "status": "pending",
            "created_at_ms": now_ms,
            "attempts": [],
            "event": event,
        }
        out.append((delivery_id, codec.dumps(body).decode()))
    return out


def build_events(
    events: Sequence[EventType],
    before: Record,
    after: Record,
    now_ms: int,
    destinations: Mapping[str, Sequence[str]],
    new_id: NewId = _random_hex,
    callback_events: Collection[str] = (),
) -> list[OutEvent]:
    """One ``OutEvent`` per event type in order; clip events name their clip in a ``clip`` field.

    Args:
        events: the decision's event types.
        before: the record as stored before this poll (to find newly succeeded clips).
        after: the record after it.
        now_ms: when acetrack observed it.
        destinations: hook destination names by event type value.
        new_id: id source (injectable for tests).
        callback_events: event types sent to the task's own ``callback_url`` (``ACETRACK_WEBHOOK_EVENTS``).
    """
    fresh = iter(newly_succeeded(before.clips, after.clips))
    out: list[OutEvent] = []
    seq = 0
    # the task's end carries its record, without the raw upstream answer (the stored record keeps it)
    ends = any(e in RECORD_EVENTS for e in events)
    record_json = codec.dumps({**after.to_dict(), "response": None}).decode() if ends else ""
    for event_type in events:
        fields = event_fields(event_type, after, now_ms, "evt_" + new_id(), record_json)
        if event_type is EventType.CLIP_SUCCEEDED:
            clip = next(fresh, None)
            fields["clip"] = codec.dumps(clip.to_dict() if clip else None).decode()
        dests = list(destinations.get(event_type.value, ()))
        if after.callback_url and event_type.value in callback_events:
            dests.append(WEBHOOK_PREFIX + after.callback_url)
        out.append(OutEvent(fields, _deliveries(fields, dests, now_ms, new_id, seq)))
        seq += len(dests)
    return out
