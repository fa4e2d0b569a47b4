"""What a poll writes: one script call per task (``ScriptCall``), run together in one step."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from worker.models import TERMINAL_STATES, OutEvent, Record, Sample, TaskState
from worker.store.base import StoreBase
from worker.store.codecs import CALLBACK_WINDOW, LIFETIME_SAMPLES, events_json, finished_json, record_json, sample_text
from worker.store.scripts import ScriptCall


class WriteOps(StoreBase):
    """Observations of pending tasks and terminal records, with their events and deliveries."""

    def update_call(
        self,
        record: Record,
        claim_id: str,
        now_ms: int,
        *,
        next_due_ms: int,
        sched: str,
        events: list[OutEvent],
    ) -> ScriptCall:
        """The script call that stores a pending observation and reschedules it (see ``update``).

        ``sched``: the scheduling fields after this poll (``next_sched``).
        """
        keys = [
            self.task_key(record.service, record.id),
            self.due_key(record.service, record.token),
            self.events_key,
            self.outbox_key,
        ]
        args: list[Any] = [
            claim_id,
            record_json(record),
            next_due_ms,
            sched,
            record.id,
            now_ms,
            self.events_maxlen,
            self.delivery_prefix(),
            self.retention_ms,
            events_json(events),
        ]
        return ScriptCall("update", keys, args)

    def touch_call(self, service: str, token: str, claim_id: str, rows: Iterable[tuple[str, int, str]]) -> ScriptCall:
        """One script call storing many observations that changed no record (see ``_touch.lua``).

        ``rows``: (task id, next due ms, scheduling fields after this poll).
        """
        keys = [self.due_key(service, token)]
        args: list[Any] = [claim_id]
        for task_id, due_ms, sched in rows:
            keys.append(self.task_key(service, task_id))
            args += (task_id, due_ms, sched)
        return ScriptCall("touch", keys, args)

    def finish_call(self, record: Record, now_ms: int, events: list[OutEvent], *, sample: Sample | None) -> ScriptCall:
        """The script call that writes a terminal record once (see ``finish``)."""
        if record.state not in TERMINAL_STATES:
            raise ValueError(f"finish() needs a terminal record, got state {record.state.value!r}")
        keys = [
            self.task_key(record.service, record.id),
            self.due_key(record.service, record.token),
            self.events_key,
            self.outbox_key,
            self.index_key(record.service, TaskState.PENDING),
            self.index_key(record.service, record.state),
            self.lifetimes_key(record.service),
            self.index_key(None, record.state),
            self.callbacks_key(record.service),
        ]
        args: list[Any] = [
            finished_json(record),
            record.state.value,
            record.id,
            now_ms,
            self.retention_ms,
            self.events_maxlen,
            self.delivery_prefix(),
            events_json(events),
            "" if sample is None else sample_text(sample),
            record.service,
            LIFETIME_SAMPLES,
            CALLBACK_WINDOW,
        ]
        return ScriptCall("finish", keys, args)

    async def update(self, record: Record, claim_id: str, now_ms: int, **kwargs: Any) -> bool:
        """Store a pending observation and reschedule it; False if the claim was lost or it finished."""
        return (await self.run_calls([self.update_call(record, claim_id, now_ms, **kwargs)]))[0]

    async def finish(self, record: Record, now_ms: int, events: list[OutEvent], *, sample: Sample | None) -> bool:
        """Write a terminal record with its events and deliveries once; False if already finished."""
        return (await self.run_calls([self.finish_call(record, now_ms, events, sample=sample)]))[0]

    async def run_calls(
        self, calls: Sequence[ScriptCall], *, clear_backoff: tuple[str, str] | None = None
    ) -> list[bool]:
        """Run many script calls in one step (``write.lua``: one EVALSHA, not one command per call);
        True where it wrote (for ``touch``: where it wrote any). ``clear_backoff``: a (service, token)
        whose request went through, its past failures forgotten in the same step.

        A call that fails in Redis (a bug, or Redis out of memory) raises here; the calls before it
        stay written and the ones after it are not run. Their ids keep their claims until the lease
        ends and are polled again then, as after a worker that died mid-write.
        """
        if not calls and clear_backoff is None:
            return []  # nothing to write: no round trip
        if len(calls) == 1 and clear_backoff is None:
            call = calls[0]
            return [bool(await self.scripts[call.script](keys=call.keys, args=call.args))]
        keys: list[str] = []
        args: list[Any] = []
        for call in calls:
            keys += call.keys
            args += (call.script, len(call.keys), len(call.args), *call.args)
        if clear_backoff is not None:
            keys.append(self.backoff_key(*clear_backoff))
            args += ("forget", 1, 0)
        # a server that lost the script (a restart, SCRIPT FLUSH) refuses it before running any of
        # it: redis-py then loads it and sends it again, so each call still runs once
        results = await self.scripts["write"](keys=keys, args=args)
        return [bool(r) for r in results[: len(calls)]]
