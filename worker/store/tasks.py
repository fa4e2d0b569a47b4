"""Tasks in and out: registering one, reading records by id."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from worker.models import EnqueueRequest, Record, TaskState
from worker.store.base import StoreBase, translate_errors
from worker.store.codecs import record_json, record_of, sched_text
from worker.store.keys import INTAKE_GROUP, queue_member

#: the task hash's fields a whole record is read from (``response``: of a record finished before
#: finished records were packed whole, within the retention of an upgrade)
RECORD_FIELDS = ["record", "sched", "response"]


class TaskOps(StoreBase):
    """Registering tasks and reading their records."""

    async def register(
        self, req: EnqueueRequest, now_ms: int, *, deadline_s: float, first_due_ms: int, intake_entry: str = ""
    ) -> tuple[bool, Record]:
        """Start tracking ``req`` unless it is tracked already; returns (created, stored record).

        ``first_due_ms``: when its first poll falls due (the caller's policy decides).
        """
        record = Record(
            service=req.service,
            id=req.id,
            enqueued_at_ms=now_ms,
            updated_at_ms=now_ms,
            callback_url=req.callback_url,
            token=req.token,
            meta=req.meta,
        )
        deadline_at_ms = now_ms + int((req.deadline_s or deadline_s) * 1000)
        keys = [
            self.task_key(req.service, req.id),
            self.due_key(req.service, req.token),
            self.queues_key,
            self.services_key,
            self.intake_key,
            *(self.index_key(req.service, state) for state in TaskState),
            self.index_key(None, TaskState.SUCCEEDED),
            self.index_key(None, TaskState.FAILED),
        ]
        args: list[Any] = [
            record_json(record),
            sched_text(deadline_at_ms, enqueued_ms=now_ms),
            first_due_ms,
            queue_member(req.service, req.token),
            req.service,
            req.id,
            now_ms,
            int(req.reopen),
            INTAKE_GROUP,
            intake_entry,
            self.wake_channel,
        ]
        async with translate_errors(f"register of {req.service}/{req.id}"):
            created, stored, sched, response_z = await self.scripts["register"](keys=keys, args=args)
        # a duplicate of a pending task: its poll count and time are in sched
        return bool(created), record_of(stored, sched, response_z)

    async def get(self, service: str, task_id: str) -> Record | None:
        """The stored record, or None if acetrack does not know the task."""
        async with translate_errors(f"get of {service}/{task_id}"):
            raw, sched, response_z = await self.redis.hmget(self.task_key(service, task_id), RECORD_FIELDS)  # type: ignore[misc]
        return record_of(raw, sched, response_z) if raw else None

    async def get_many(self, pairs: Iterable[tuple[str, str]]) -> list[Record | None]:
        """Records for many (service, id) pairs, in order, in one round trip."""
        pairs = list(pairs)
        async with translate_errors("lookup"), self.redis.pipeline(transaction=False) as pipe:
            for service, task_id in pairs:
                pipe.hmget(self.task_key(service, task_id), RECORD_FIELDS)
            rows = await pipe.execute()
        return [record_of(raw, sched, response_z) if raw else None for raw, sched, response_z in rows]
