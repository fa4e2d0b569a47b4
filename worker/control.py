"""Operator actions on one task (cancel, reopen), shared by the HTTP API and the CLI."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from worker.cadence import first_poll_ms
from worker.classify import fail
from worker.clock import Clock, system_clock
from worker.errors import InvalidInput
from worker.events import build_events
from worker.intake import EnqueueRequest
from worker.models import EventType, Reason, Record, TaskState
from worker.store import Cursor, Store

#: a worker heartbeat older than this means the worker is dead or stuck (it beats every 5 s)
HEARTBEAT_STALE_MS = 20_000

CancelResult = tuple[Literal["cancelled", "not_found", "already_finished"], Record | None]


@dataclass
class Control:
    """Cancel and reopen tasks, emitting the same events and hook deliveries a worker would.

    Args:
        store: the Redis store.
        destinations: hook destinations by event type (``hooks.destinations_by_event``).
        callback_events: event types sent to a task's own ``callback_url``.
        deadline_s: default deadline for a reopened task.
        first_poll_s: delay before a reopened task's first poll.
        clock: epoch-ms clock.
    """

    store: Store
    destinations: Mapping[str, Sequence[str]] = field(default_factory=dict)
    callback_events: Collection[str] = ()
    deadline_s: float = 1800.0
    first_poll_s: float = 3.0
    clock: Clock = system_clock

    async def cancel(self, service: str, task_id: str, *, silent: bool = False) -> CancelResult:
        """Stop polling a pending task and fail it with ``reason: cancelled`` (hooks fire unless ``silent``)."""
        record = await self.store.get(service, task_id)
        if record is None:
            return "not_found", None
        if record.terminal:
            return "already_finished", record
        now_ms = self.clock()
        failed = fail(record, Reason.CANCELLED, now_ms, {"code": "cancelled", "message": "cancelled by a user"})
        destinations = {} if silent else self.destinations
        callbacks = () if silent else self.callback_events
        events = build_events([EventType.TASK_FAILED], record, failed, now_ms, destinations, callback_events=callbacks)
        # the finish script refuses if a worker finished the task meanwhile: that outcome stands
        if not await self.store.finish(failed, now_ms, events, sample=None):
            return "already_finished", await self.store.get(service, task_id)
        return "cancelled", failed

    async def reopen(
        self, service: str, task_id: str
    ) -> tuple[Literal["reopened", "not_found", "pending"], Record | None]:
        """Restart a finished task with its token, callback and meta; a pending one is left alone."""
        record = await self.store.get(service, task_id)
        if record is None:
            return "not_found", None
        if not record.terminal:
            return "pending", record
        req = EnqueueRequest(
            service, task_id, callback_url=record.callback_url, token=record.token, meta=record.meta, reopen=True
        )
        now_ms = self.clock()
        _, stored = await self.store.register(
            req, now_ms, deadline_s=self.deadline_s, first_due_ms=first_poll_ms(now_ms, self.first_poll_s)
        )
        return "reopened", stored


async def collect_stats(store: Store, now_ms: int) -> dict[str, Any]:
    """Counts by service and state, backlog, oldest pending age, live workers, counters."""
    services: dict[str, Any] = {}
    for service in await store.services():
        counts: dict[str, Any] = await store.count_by_state(service)
        oldest = await store.oldest_pending_ms(service)
        counts["oldest_pending_age_s"] = None if oldest is None else round((now_ms - oldest) / 1000, 1)
        services[service] = counts
    workers = await live_workers(store, now_ms)
    return {
        "services": services,
        "totals": await store.count_by_state(None),
        "backlog": await store.backlog(now_ms),
        "workers": workers,
        "paused_tokens": await paused_tokens(store, workers),
        "counters": await store.counters(),
    }


async def paused_tokens(store: Store, workers: Sequence[Mapping[str, Any]]) -> list[str]:
    """Tokens paused by the heartbeats' account or in Redis: a pause outlives the worker that made it
    (a restarted worker's heartbeat does not know it, and its tasks wait all the same)."""
    in_redis = await store.token_pauses()
    return sorted({t for w in workers for t in w.get("paused_tokens", [])} | in_redis.keys())


async def live_workers(store: Store, now_ms: int) -> list[dict[str, Any]]:
    """Heartbeats of workers that beat recently (a stuck worker's key may not have expired yet)."""
    return [w for w in await store.workers() if now_ms - int(w.get("at_ms", 0)) < HEARTBEAT_STALE_MS]


def encode_cursor(cursor: Cursor) -> str:
    """A ``Store.list_page`` cursor as text, as ``GET /tasks`` writes its ``next_cursor``."""
    return base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode()


def decode_cursor(text: str, state: TaskState | None) -> Cursor:
    """Inverse of ``encode_cursor``; accepts ``GET /tasks``'s cursors too.

    Raises:
        InvalidInput: on field ``cursor``, when it is not one acetrack wrote or belongs to another state.
    """
    try:
        cursor_state, score, member = json.loads(base64.urlsafe_b64decode(text.encode()))
        cursor = (TaskState(cursor_state).value, int(score), str(member))
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error) as e:
        raise InvalidInput("cursor", "cursor is not one acetrack printed; start again without it") from e
    if state is not None and cursor[0] != state.value:
        raise InvalidInput("cursor", f"cursor belongs to a listing of {cursor[0]} tasks, not {state.value}")
    return cursor
