"""The Redis schema: every key, TTL and Lua script of acetrack lives here (DESIGN.md §2).

``Store(redis)`` takes a ready ``redis.asyncio.Redis`` built with ``decode_responses=True``.
Methods take ``now_ms`` from the caller; scripts never read Redis ``TIME``.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from worker import codec
from worker.classify import Mark, Sample, first_poll_ms
from worker.errors import StoreError
from worker.intake import EnqueueRequest
from worker.models import TERMINAL_STATES, OutEvent, Record, TaskState, compact

logger = logging.getLogger(__name__)

INTAKE_GROUP = "acetrack-workers"
#: how long an intake entry may sit unacknowledged with a dead consumer before another takes it
#: (workers pass their lease, ACETRACK_LEASE_S)
INTAKE_RECLAIM_MS = 30_000
#: finished poll-time samples kept per service for learning its usual lifetime
LIFETIME_SAMPLES = 200
#: stage marks kept parsed and formatted (a task's marks repeat over most of its polls): ~0.8 KB an
#: entry for both caches, ~13 MB at most; it covers the marks of 10,000 tasks in flight
MARKS_CACHE = 16_384
#: a service's back-off failure count is forgotten after an hour without failures
BACKOFF_MEMORY_MS = 3_600_000
#: requests are spaced 2% wider than the budget, so network jitter never bunches them over it
RATE_HEADROOM = 1.02
#: longest wait of one read of the wake channel before it PINGs: a connection that died without a
#: word is found out within twice this, and the subscription made again
WAKE_READ_S = 30.0
SCRIPTS = ("register", "claim", "spend", "load", "touch", "update", "finish", "write", "release", "take_outbox")
#: shared Lua preludes (``lua/_<name>.lua``) each script is prefixed with
PRELUDES: dict[str, tuple[str, ...]] = {
    "update": ("_events", "_update"),
    "finish": ("_events", "_finish"),
    "touch": ("_touch",),
    "write": ("_events", "_update", "_finish", "_touch"),
    "claim": ("_rows",),
    "load": ("_rows",),
    "register": ("_wake",),
    "release": ("_wake",),
}


#: where a listing stopped: (state, score, member) of its last row
Cursor = tuple[str, int, str]


class Claimed(NamedTuple):
    """A claimed batch: its claim id, the ids, and when the next claim of the queue can find any."""

    claim_id: str
    ids: list[str]
    #: 0: more ids are due now (the batch is full) and the rate budget allows another claim; else ms
    #: until both hold: the next id falls due and the budget allows it (-1: none left)
    next_ms: int = 0
    #: the still-pending ones among ``ids`` as read in the claim (None: not read)
    pending: dict[str, PendingTask] | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """A claim that took nothing: how long until one can, and why."""

    #: ms until a claim can take something (-1: no id is due at all)
    ms: int
    #: 'paused', 'backoff', 'rate' (refused), 'empty' (none pending), 'later' (no id is due yet) or
    #: 'taken' (none is due: another worker took the ids due when the claimer planned)
    why: str


@dataclass(frozen=True)
class ScriptCall:
    """One call of one of the store's scripts, ready to run alone or with others in one step (``run_calls``)."""

    script: str
    keys: list[str]
    args: list[Any]


@dataclass
class PendingTask:
    """A pending task as one poll needs it: the record plus the internal scheduling fields. Read
    once per id of every poll and never changed (not frozen: a frozen dataclass is built slower).

    The fields are stored together in the task hash's ``sched`` field (``sched_text``): one field,
    not nine, because each field of a hash that holds a long value costs Redis ~70 bytes. The record
    JSON is decoded only if a poll needs it (``record``).
    """

    raw: str
    deadline_at_ms: int
    missing_since_ms: int | None
    #: the upstream has answered for this id before (a later miss is not "not found")
    seen: bool = False
    #: answers in a row that left this id out
    misses: int = 0
    #: when it was last polled (None: never)
    polled_ms: int | None = None
    #: when each stage was first seen (``classify.advance_marks``)
    marks: tuple[Mark | None, ...] = ()
    #: polls made (None: as the record says)
    attempts: int | None = None
    #: when it was enqueued (None: as the record says, in hashes written before this field)
    enqueued_ms: int | None = None
    #: ``classify.fingerprint`` of the last upstream answer ('' before the first)
    answer: str = ""

    @functools.cached_property
    def record(self) -> Record:
        """The stored record, with the poll count and time of ``sched``."""
        return _with_poll_fields(self.raw, self.attempts, self.polled_ms)

    @property
    def enqueued_at_ms(self) -> int:
        """When it was enqueued."""
        return self.enqueued_ms if self.enqueued_ms is not None else self.record.enqueued_at_ms


def arq_queue_name(prefix: str) -> str:
    """The arq queue (a sorted set arq owns) of the workers of one key prefix: named here with the
    rest of acetrack's keys, so the ACL's key pattern covers it."""
    return f"{prefix}:arq:queue"


def sched_text(
    deadline_at_ms: int,
    *,
    seen: bool = False,
    missing_since_ms: int | None = None,
    misses: int = 0,
    attempts: int | None = None,
    polled_ms: int | None = None,
    marks: Sequence[Mark | None] = (),
    enqueued_ms: int | None = None,
    answer: str = "",
) -> str:
    """A pending task's scheduling fields as stored:
    ``deadline|seen|missing|misses|attempts|polled|marks|enqueued|answer`` (see ``PendingTask``)."""
    missing = "" if missing_since_ms is None else missing_since_ms
    count = "" if attempts is None else attempts
    polled = "" if polled_ms is None else polled_ms
    enqueued = "" if enqueued_ms is None else enqueued_ms
    marks_str = marks_text(marks)
    return f"{deadline_at_ms}|{int(seen)}|{missing}|{misses}|{count}|{polled}|{marks_str}|{enqueued}|{answer}"


def next_sched(
    task: PendingTask,
    attempts: int,
    now_ms: int,
    missing_since_ms: int | None,
    marks: Sequence[Mark | None],
    answer: str,
) -> str:
    """The scheduling fields after a poll of ``task`` (``answer``: the fingerprint of what the upstream
    said; the id was left out of the answer since ``missing_since_ms``, if not None)."""
    answered = missing_since_ms is None
    return sched_text(
        task.deadline_at_ms,
        seen=task.seen or answered,
        missing_since_ms=missing_since_ms,
        misses=0 if answered else task.misses + 1,
        attempts=attempts,
        polled_ms=now_ms,
        marks=marks,
        enqueued_ms=task.enqueued_at_ms,
        answer=answer,
    )


def _pending(raw: str, sched: str) -> PendingTask:
    deadline, seen, missing, misses, attempts, polled, marks, *rest = sched.split("|")
    enqueued, answer = (rest + ["", ""])[:2]  # hashes written before these fields have neither
    return PendingTask(
        raw,
        int(deadline),
        int(missing) if missing else None,
        seen == "1",
        int(misses or 0),
        int(polled) if polled else None,
        parse_marks(marks),
        int(attempts) if attempts else None,
        int(enqueued) if enqueued else None,
        answer,
    )


def _queue_member(service: str, token: str) -> str:
    """A (service, token) queue as named in the queues set and on the wake channel."""
    return f"{service}:{token}"


def _queue_of(member: str) -> tuple[str, str]:
    """Inverse of ``_queue_member`` (a service name has no ':')."""
    service, _, token = member.partition(":")
    return service, token


_PENDING = TaskState.PENDING.value  # read once: an enum's ``.value`` is a slow descriptor


def _pending_rows(ids: Sequence[str], rows: Sequence[Sequence[str | None]]) -> dict[str, PendingTask]:
    """The still-pending tasks among ``ids`` from their ``pending_row``s (``lua/_rows.lua``)."""
    out: dict[str, PendingTask] = {}
    for task_id, (raw, state, sched, *old) in zip(ids, rows, strict=True):
        sched = sched or _old_sched(*old)
        if raw and sched and state == _PENDING:
            out[task_id] = _pending(raw, sched)
    return out


def marks_text(marks: Sequence[Mark | None]) -> str:
    """Stage marks as stored: ``lo:hi`` per stage, comma separated, empty where not reached."""
    # a task's marks stay as they are over most of its polls: written (and read) from a cache
    return _marks_text(marks) if type(marks) is tuple else _format_marks(marks)


def _format_marks(marks: Sequence[Mark | None]) -> str:
    return ",".join(f"{m[0]}:{m[1]}" if m else "" for m in marks)


_marks_text = functools.lru_cache(maxsize=MARKS_CACHE)(_format_marks)


@functools.lru_cache(maxsize=MARKS_CACHE)
def parse_marks(text: str | None) -> tuple[Mark | None, ...]:
    """Inverse of ``marks_text``."""
    out: list[Mark | None] = []
    for part in (text or "").split(","):
        lo, _, hi = part.partition(":")
        out.append((int(lo), int(hi)) if hi else None)
    return tuple(out) if text else ()


def sample_text(sample: Sample) -> str:
    """A finished task's lifetime sample as stored in the service's list: ``ms|ok|marks``."""
    return f"{round(sample.lifetime_s * 1000)}|{int(sample.ok)}|{marks_text(sample.marks)}"


@functools.lru_cache(maxsize=2 * LIFETIME_SAMPLES)
def parse_sample(text: str) -> Sample:
    """Inverse of ``sample_text``; a bare number (written by 0.x versions) is a succeeded lifetime in ms.

    Cached: a service's samples are re-read every second or so, and mostly the same ones.
    """
    lifetime, _, rest = text.partition("|")
    ok, _, marks = rest.partition("|")
    return Sample(int(lifetime) / 1000, ok != "0", parse_marks(marks))


def _with_poll_fields(raw: str, attempts: int | None, polled_ms: int | None) -> Record:
    # while pending, the poll count and time live in ``sched`` so that a poll that changes nothing
    # does not rewrite the record
    record = Record.from_dict(codec.loads(raw))
    if attempts is not None:
        record.attempts = attempts
    if polled_ms is not None:
        record.updated_at_ms = polled_ms
    return record


def _old_sched(deadline: str | None, seen: str | None, missing: str | None, misses: str | None) -> str | None:
    # a pending task stored by 0.x, which kept these in fields of their own
    if not deadline:
        return None
    missing_ms = int(missing) if missing else None
    return sched_text(int(deadline), seen=bool(seen), missing_since_ms=missing_ms, misses=int(misses or 0))


def _record_of(raw: str, sched: str | None) -> Record:
    if not sched:
        return Record.from_dict(codec.loads(raw))
    task = _pending(raw, sched)
    return task.record


def _load_script(name: str) -> str:
    parts = (*PRELUDES.get(name, ()), name)
    return "\n".join(resources.files("worker").joinpath(f"lua/{part}.lua").read_text() for part in parts)


@asynccontextmanager
async def translate_errors(what: str) -> AsyncIterator[None]:
    """Turn redis-py errors into ``StoreError`` naming the operation."""
    try:
        yield
    except RedisError as e:
        raise StoreError(f"redis failed during {what}: {e}; check ACETRACK_REDIS_URL and that Redis is up") from e


def _record_json(record: Record) -> bytes:
    # stored compact and without nulls: a pending task costs Redis memory for as long as it runs
    return codec.dumps(compact(record))


def _events_json(events: Iterable[OutEvent]) -> bytes:
    return codec.dumps([e.to_payload() for e in events])


class Store:
    """Atomic reads and writes of acetrack's Redis schema.

    Args:
        redis: a ready client with ``decode_responses=True``.
        prefix: the key prefix (``ACETRACK_KEY_PREFIX``).
        retention_s: how long finished records, rejects and dead letters are kept.
        events_maxlen: approximate cap of the events stream.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str = "acetrack",
        *,
        retention_s: float = 604800.0,
        events_maxlen: int = 100_000,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.retention_ms = int(retention_s * 1000)
        self.events_maxlen = events_maxlen
        self._scripts: dict[str, AsyncScript] = {n: redis.register_script(_load_script(n)) for n in SCRIPTS}

    # -- key builders: the only place key names are formatted --------------------------------
    def task_key(self, service: str, task_id: str) -> str:
        return f"{self.prefix}:task:{service}:{task_id}"

    def task_prefix(self, service: str) -> str:
        return f"{self.prefix}:task:{service}:"

    def due_key(self, service: str, token: str) -> str:
        return f"{self.prefix}:due:{service}:{token}"

    def index_key(self, service: str | None, state: TaskState | str) -> str:
        """Tasks of one service (or of all: None) in one state, scored by enqueue (pending) or finish time."""
        scope = f"idx:{service}" if service else "idxall"
        return f"{self.prefix}:{scope}:{TaskState(state).value}"

    def backoff_key(self, service: str, token: str) -> str:
        return f"{self.prefix}:backoff:{service}:{token}"

    def claimer_key(self, service: str, token: str) -> str:
        """The worker that last claimed a batch of the queue, and when: '<worker id>|<ms>' (a lease)."""
        return f"{self.prefix}:claimer:{service}:{token}"

    def paused_key(self, token: str) -> str:
        return f"{self.prefix}:paused:{token}"

    def rate_key(self, token: str) -> str:
        return f"{self.prefix}:rate:{token}"

    def lifetimes_key(self, service: str) -> str:
        return f"{self.prefix}:lifetimes:{service}"

    def delivery_prefix(self) -> str:
        return f"{self.prefix}:delivery:"

    def worker_key(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def intake_key(self) -> str:
        return f"{self.prefix}:intake"

    @property
    def rejected_key(self) -> str:
        return f"{self.prefix}:intake:rejected"

    @property
    def events_key(self) -> str:
        return f"{self.prefix}:events"

    @property
    def outbox_key(self) -> str:
        return f"{self.prefix}:outbox"

    @property
    def dead_key(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def disabled_key(self) -> str:
        return f"{self.prefix}:webhooks:disabled"

    @property
    def counters_key(self) -> str:
        return f"{self.prefix}:counters"

    @property
    def queues_key(self) -> str:
        return f"{self.prefix}:queues"

    @property
    def services_key(self) -> str:
        return f"{self.prefix}:services"

    @property
    def wake_channel(self) -> str:
        """Pub/sub channel: '<service>:<token>|<due_ms>' of a registration or release no claim loop
        expects."""
        return f"{self.prefix}:wake"

    # -- registration ---------------------------------------------------------------------
    async def register(
        self, req: EnqueueRequest, now_ms: int, *, deadline_s: float, first_poll_s: float, intake_entry: str = ""
    ) -> tuple[bool, Record]:
        """Start tracking ``req`` unless it is tracked already; returns (created, stored record)."""
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
            *(self.index_key(scope, state) for scope in (req.service, None) for state in TaskState),
        ]
        args: list[Any] = [
            _record_json(record),
            sched_text(deadline_at_ms, enqueued_ms=now_ms),
            first_poll_ms(now_ms, first_poll_s),
            _queue_member(req.service, req.token),
            req.service,
            req.id,
            now_ms,
            int(req.reopen),
            INTAKE_GROUP,
            intake_entry,
            self.wake_channel,
        ]
        async with translate_errors(f"register of {req.service}/{req.id}"):
            created, stored, sched = await self._scripts["register"](keys=keys, args=args)
        # a duplicate of a pending task: its poll count and time are in sched
        return bool(created), _record_of(stored, sched)

    async def get(self, service: str, task_id: str) -> Record | None:
        """The stored record, or None if acetrack does not know the task."""
        async with translate_errors(f"get of {service}/{task_id}"):
            raw, sched = await self.redis.hmget(self.task_key(service, task_id), ["record", "sched"])  # type: ignore[misc]
        return _record_of(raw, sched) if raw else None

    async def get_many(self, pairs: Iterable[tuple[str, str]]) -> list[Record | None]:
        """Records for many (service, id) pairs, in order, in one round trip."""
        pairs = list(pairs)
        async with translate_errors("lookup"), self.redis.pipeline(transaction=False) as pipe:
            for service, task_id in pairs:
                pipe.hmget(self.task_key(service, task_id), ["record", "sched"])
            rows = await pipe.execute()
        return [_record_of(raw, sched) if raw else None for raw, sched in rows]

    # -- intake stream ---------------------------------------------------------------------
    async def ensure_intake_group(self) -> None:
        """Create the intake consumer group (and the stream) if missing."""
        try:
            await self.redis.xgroup_create(self.intake_key, INTAKE_GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def read_intake(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, dict[str, str]]]:
        """New intake entries for this consumer; blocks up to ``block_ms`` when there are none (at
        most half the connection's ``socket_timeout``, if one is set, so a quiet stream is no timeout)."""
        socket_timeout_s = self.redis.connection_pool.connection_kwargs.get("socket_timeout")
        if socket_timeout_s:
            block_ms = max(1, min(block_ms, int(socket_timeout_s * 500)))
        try:
            reply = await self.redis.xreadgroup(
                INTAKE_GROUP, consumer, {self.intake_key: ">"}, count=count, block=block_ms or None
            )
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            # Redis restarted without its data (or the stream was deleted): make the group again
            await self.ensure_intake_group()
            return []
        return [(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]

    async def reclaim_intake(
        self, consumer: str, count: int, min_idle_ms: int = INTAKE_RECLAIM_MS
    ) -> list[tuple[str, dict[str, str]]]:
        """Entries a dead consumer read but never acknowledged for ``min_idle_ms``, taken over by ``consumer``.

        Taking over an entry a slow but live consumer still holds is harmless: registering is idempotent.
        """
        try:
            reply = await self.redis.xautoclaim(
                self.intake_key, INTAKE_GROUP, consumer, min_idle_ms, start_id="0-0", count=count
            )
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self.ensure_intake_group()
            return []
        return [(entry_id, fields) for entry_id, fields in reply[1] if fields]

    async def reject_intake(self, entry_id: str, fields: Mapping[str, str], reason: str, now_ms: int) -> None:
        """Move a bad intake entry to the rejected stream with its reason, atomically."""
        async with self.redis.pipeline(transaction=True) as pipe:
            entry: dict[Any, Any] = {**fields, "reason": reason, "rejected_at_ms": str(now_ms)}
            pipe.xadd(self.rejected_key, entry)
            pipe.xtrim(self.rejected_key, minid=f"{max(0, now_ms - self.retention_ms)}-0", approximate=True)
            pipe.xack(self.intake_key, INTAKE_GROUP, entry_id)
            pipe.xdel(self.intake_key, entry_id)
            await pipe.execute()

    @asynccontextmanager
    async def wakes(self) -> AsyncIterator[AsyncIterator[tuple[str, str, int]]]:
        """Subscribe to the wake channel; yields its messages as (service, token, due_ms). A broken
        connection ends the iteration with the error (messages published meanwhile are lost)."""
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self.wake_channel)
            # subscribed only once Redis says so: a registration announced before would be missed
            while (reply := await pubsub.get_message(timeout=WAKE_READ_S)) is None or reply["type"] != "subscribe":
                if reply is None:
                    raise RedisConnectionError(f"no answer to SUBSCRIBE for {WAKE_READ_S:.0f}s")
            yield self._wake_messages(pubsub)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    @staticmethod
    async def _wake_messages(pubsub: PubSub) -> AsyncIterator[tuple[str, str, int]]:
        pinged = False
        while True:
            # a bounded wait, then a PING: a connection that died without a word is found out
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=WAKE_READ_S)
            if message is None:
                if pinged:
                    raise RedisConnectionError(f"no answer on the wake channel for {2 * WAKE_READ_S:.0f}s")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            if message["type"] != "message":
                continue  # the PING's answer
            member, _, due = str(message["data"]).rpartition("|")
            yield *_queue_of(member), int(due)

    # -- claims and polls -----------------------------------------------------------------------
    async def queues(self) -> list[tuple[str, str]]:
        """Every (service, token) pair that has ever had a task."""
        members: set[str] = await self.redis.smembers(self.queues_key)  # type: ignore[misc]
        return sorted(_queue_of(m) for m in members)

    async def claim(
        self,
        service: str,
        token: str,
        now_ms: int,
        *,
        batch: int,
        coalesce_ms: int,
        lease_ms: int,
        rate_rps: float,
        min_repoll_ms: int = 0,
        early_ms: int = 0,
        worker: str = "",
        planned_ms: int = 0,
    ) -> Claimed | Wait:
        """Claim a batch of due ids: returns the ``Claimed`` batch, or the ``Wait`` until one can be.

        Ids due within ``early_ms`` count as due now. Ids due within ``coalesce_ms`` top the batch
        up, except those polled less than ``min_repoll_ms`` ago. ``worker`` claims, told that an id
        falls due at ``planned_ms`` (0: a look): a ``Wait`` says 'taken' when another worker claimed
        the queue since then.
        """
        claim_id = uuid.uuid4().hex
        emission_ms = RATE_HEADROOM * 1000.0 / rate_rps
        keys = [
            self.due_key(service, token),
            self.backoff_key(service, token),
            self.paused_key(token),
            self.rate_key(token),
            self.claimer_key(service, token),
        ]
        args: list[Any] = [
            now_ms,
            coalesce_ms,
            lease_ms,
            batch,
            claim_id,
            emission_ms,
            0,  # no burst: requests are spaced evenly, so no 1 s window holds more than the budget
            self.task_prefix(service),
            min_repoll_ms,
            early_ms,
            worker,
            planned_ms,
        ]
        reply = await self._scripts["claim"](keys=keys, args=args)
        if int(reply[0]) == 0:
            return Wait(int(reply[1]), reply[2])
        ids: list[str] = reply[2]
        return Claimed(claim_id, ids, int(reply[1]), _pending_rows(ids, reply[3]))

    async def spend(self, token: str, now_ms: int, rate_rps: float) -> int:
        """Spend one extra request of the token's budget; 0 when spent, else ms to wait."""
        emission_ms = RATE_HEADROOM * 1000.0 / rate_rps
        args: list[Any] = [now_ms, emission_ms, 0]
        return int(await self._scripts["spend"](keys=[self.rate_key(token)], args=args))

    async def load_pending(self, service: str, ids: Iterable[str]) -> dict[str, PendingTask]:
        """The still-pending tasks among ``ids`` with their scheduling fields."""
        ids = list(ids)
        rows = await self._scripts["load"](args=[self.task_prefix(service), *ids]) if ids else []
        return _pending_rows(ids, rows)

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
            _record_json(record),
            next_due_ms,
            sched,
            record.id,
            now_ms,
            self.events_maxlen,
            self.delivery_prefix(),
            self.retention_ms,
            _events_json(events),
        ]
        return ScriptCall("update", keys, args)

    def touch_call(self, service: str, token: str, claim_id: str, rows: Iterable[tuple[str, int, str]]) -> ScriptCall:
        """One script call storing many observations that changed no record (see ``_touch.lua``).

        ``rows``: (task id, next due ms, scheduling fields after this poll).
        """
        args: list[Any] = [claim_id, self.task_prefix(service)]
        for row in rows:
            args += row
        return ScriptCall("touch", [self.due_key(service, token)], args)

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
            self.index_key(None, TaskState.PENDING),
            self.index_key(None, record.state),
        ]
        args: list[Any] = [
            _record_json(record),
            record.state.value,
            record.id,
            now_ms,
            self.retention_ms,
            self.events_maxlen,
            self.delivery_prefix(),
            _events_json(events),
            "" if sample is None else sample_text(sample),
            record.service,
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
            return [bool(await self._scripts[call.script](keys=call.keys, args=call.args))]
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
        results = await self._scripts["write"](keys=keys, args=args)
        return [bool(r) for r in results[: len(calls)]]

    async def release(self, service: str, token: str, claim_id: str, ids: Iterable[str], due_ms: int) -> int:
        """Give claimed ids back, due at ``due_ms``; returns how many were still held. Announced on
        the wake channel when they become the queue's soonest."""
        ids = list(ids)
        if not ids:
            return 0
        member = _queue_member(service, token)
        args: list[Any] = [claim_id, due_ms, self.task_prefix(service), self.wake_channel, member, *ids]
        return int(await self._scripts["release"](keys=[self.due_key(service, token)], args=args))

    async def back_off(self, service: str, token: str, until_ms: int) -> None:
        """Hold every poll of (service, token) until ``until_ms``."""
        key = self.backoff_key(service, token)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "until_ms", str(until_ms))
            pipe.hincrby(key, "failures", 1)
            pipe.pexpire(key, BACKOFF_MEMORY_MS)
            await pipe.execute()

    async def backoff_failures(self, service: str, token: str) -> int:
        """Consecutive failures behind the current back-off of (service, token)."""
        return int(await self.redis.hget(self.backoff_key(service, token), "failures") or 0)  # type: ignore[misc]

    async def pause_token(self, token: str, pause_ms: int, reason: str) -> None:
        """Stop every poll with ``token`` for ``pause_ms`` (a bad or used-up token)."""
        await self.redis.set(self.paused_key(token), reason, px=pause_ms)

    async def paused_tokens(self, tokens: Iterable[str]) -> dict[str, str]:
        """Which of ``tokens`` are paused, with the reason."""
        names = list(tokens)
        values = await self.redis.mget([self.paused_key(t) for t in names]) if names else []
        return {t: v for t, v in zip(names, values, strict=True) if v}

    async def lifetime_samples(self, service: str) -> list[Sample]:
        """Recently finished tasks of ``service`` (newest first), as the scheduler learns from them."""
        raw = await self.redis.lrange(self.lifetimes_key(service), 0, LIFETIME_SAMPLES - 1)  # type: ignore[misc]
        return [parse_sample(v) for v in raw]

    async def lifetimes_s(self, service: str) -> list[float]:
        """Recent lifetimes (enqueue to terminal) of succeeded tasks of ``service``, in seconds."""
        return [s.lifetime_s for s in await self.lifetime_samples(service) if s.ok]

    # -- outbox -----------------------------------------------------------------------------
    async def take_outbox(
        self, now_ms: int, count: int, lease_ms: int = 30_000
    ) -> tuple[list[tuple[str, int]], int | None]:
        """Due deliveries as (id, due_ms), leased to this dispatcher for ``lease_ms``, and the soonest
        due time left in the outbox (None: it is empty)."""
        flat, next_due = await self._scripts["take_outbox"](keys=[self.outbox_key], args=[now_ms, lease_ms, count])
        taken = [(str(flat[i]), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]
        return taken, int(float(next_due)) if next_due else None

    async def requeue_delivery(self, delivery_id: str, due_ms: int) -> None:
        """Put a delivery back in the outbox for its next try at ``due_ms``."""
        await self.redis.zadd(self.outbox_key, {delivery_id: due_ms})

    async def outbox_score(self, delivery_id: str) -> int | None:
        """When the delivery is next due in the outbox (its lease's end while a try is handed over);
        None when it is no longer there (delivered, dead, or dropped)."""
        score = await self.redis.zscore(self.outbox_key, delivery_id)
        return None if score is None else int(score)

    async def outbox_done(self, delivery_id: str) -> None:
        """The delivery's job is enqueued: drop it from the outbox."""
        await self.redis.zrem(self.outbox_key, delivery_id)

    async def load_delivery(self, delivery_id: str) -> dict[str, Any] | None:
        """A delivery's stored body."""
        raw = await self.redis.get(self.delivery_prefix() + delivery_id)
        return json.loads(raw) if raw else None

    async def save_delivery(self, delivery_id: str, body: Mapping[str, Any]) -> None:
        """Overwrite a delivery's body (its attempts and status), keeping the retention TTL."""
        await self.redis.set(self.delivery_prefix() + delivery_id, json.dumps(body), px=self.retention_ms)

    async def dead_letter(self, delivery_id: str, now_ms: int) -> None:
        """Record a delivery as dead after its last attempt."""
        await self.redis.zadd(self.dead_key, {delivery_id: now_ms})

    async def dead_letters(self) -> list[str]:
        """Dead-lettered delivery ids, oldest first."""
        return [str(i) for i in await self.redis.zrange(self.dead_key, 0, -1)]

    async def dead_since(self, since_ms: int) -> list[str]:
        """Delivery ids dead-lettered at or after ``since_ms``."""
        return [str(i) for i in await self.redis.zrangebyscore(self.dead_key, since_ms, "+inf")]

    async def deliveries(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Stored deliveries (any status), for operators; newest retention window only."""
        keys = [k async for k in self.redis.scan_iter(match=self.delivery_prefix() + "*", count=500)][:limit]
        values = await self.redis.mget(keys) if keys else []
        return sorted((json.loads(v) for v in values if v), key=lambda d: int(d["created_at_ms"]))

    async def replay(self, delivery_id: str, now_ms: int) -> bool:
        """Send a delivery again (same event and webhook-id); False if it is unknown or expired."""
        body = await self.load_delivery(delivery_id)
        if body is None:
            return False
        body["status"], body["tries"], body["reason"] = "pending", 0, None
        body["replays"] = body.get("replays", 0) + 1
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.delivery_prefix() + delivery_id, json.dumps(body), px=self.retention_ms)
            pipe.zrem(self.dead_key, delivery_id)
            pipe.zadd(self.outbox_key, {delivery_id: now_ms})
            await pipe.execute()
        return True

    async def disable_url(self, url: str, now_ms: int) -> None:
        """A URL answered 410 Gone: dead-letter later deliveries to it until it is enabled again."""
        await self.redis.hset(self.disabled_key, url, str(now_ms))  # type: ignore[misc]

    async def enable_url(self, url: str) -> bool:
        """Undo ``disable_url``; False if the URL was not disabled."""
        return bool(await self.redis.hdel(self.disabled_key, url))  # type: ignore[misc]

    async def is_disabled(self, url: str) -> bool:
        """True while ``url`` is disabled by a 410."""
        return bool(await self.redis.hexists(self.disabled_key, url))  # type: ignore[misc]

    async def count(self, name: str, by: int = 1) -> None:
        """Add to one of acetrack's own counters (e.g. duplicate deliveries)."""
        await self.redis.hincrby(self.counters_key, name, by)  # type: ignore[misc]

    async def counters(self) -> dict[str, int]:
        """acetrack's own counters."""
        raw: dict[str, str] = await self.redis.hgetall(self.counters_key)  # type: ignore[misc]
        return {k: int(v) for k, v in raw.items()}

    # -- events --------------------------------------------------------------------------------
    async def last_event_id(self) -> str:
        """The id of the newest event, or ``0-0``: read after it to see only what comes next."""
        newest = await self.redis.xrevrange(self.events_key, count=1)
        return str(newest[0][0]) if newest else "0-0"

    async def read_events(self, after_id: str, block_ms: int, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        """Events after ``after_id``, blocking up to ``block_ms`` for the first."""
        reply = await self.redis.xread({self.events_key: after_id}, count=count, block=block_ms)
        return [(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]

    # -- upkeep -----------------------------------------------------------------------------------
    async def heartbeat(self, worker_id: str, info: Mapping[str, Any], ttl_ms: int) -> None:
        """Record that a worker is alive (the key expires if it stops beating)."""
        await self.redis.set(self.worker_key(worker_id), json.dumps(info), px=ttl_ms)

    async def workers(self) -> list[dict[str, Any]]:
        """Heartbeats of live workers."""
        keys = [k async for k in self.redis.scan_iter(match=self.worker_key("*"), count=100)]
        values = await self.redis.mget(keys) if keys else []
        return [json.loads(v) for v in values if v]

    async def prune(self, now_ms: int) -> int:
        """Drop index entries, rejects and dead letters older than the retention."""
        cutoff = now_ms - self.retention_ms
        removed = 0
        services: set[str] = await self.redis.smembers(self.services_key)  # type: ignore[misc]
        for scope in (*services, None):
            for state in TERMINAL_STATES:
                removed += int(await self.redis.zremrangebyscore(self.index_key(scope, state), "-inf", cutoff))
        removed += int(await self.redis.zremrangebyscore(self.dead_key, "-inf", cutoff))
        await self.redis.xtrim(self.rejected_key, minid=f"{max(cutoff, 0)}-0", approximate=True)
        return removed

    async def count_by_state(self, service: str | None) -> dict[str, int]:
        """How many tasks of ``service`` (None: all) are in each state (within retention)."""
        # pending tasks are indexed per service only (one sorted-set entry less per pending task)
        pending_keys = [self.index_key(s, TaskState.PENDING) for s in ([service] if service else await self.services())]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in pending_keys:
                pipe.zcard(key)
            for state in TERMINAL_STATES:
                pipe.zcard(self.index_key(service, state))
            counts = [int(n) for n in await pipe.execute()]
        pending = sum(counts[: len(pending_keys)])
        terminal = dict(zip((s.value for s in TERMINAL_STATES), counts[len(pending_keys) :], strict=True))
        return {TaskState.PENDING.value: pending, **terminal}

    async def services(self) -> list[str]:
        """Every service that has had a task."""
        members: set[str] = await self.redis.smembers(self.services_key)  # type: ignore[misc]
        return sorted(members)

    async def list_page(
        self, service: str | None, state: TaskState | None, limit: int, after: Cursor | None = None
    ) -> tuple[list[Record], Cursor | None]:
        """One page of records and the cursor of the next page (None at the end).

        Oldest first within a state; with no state, pending then succeeded then failed. ``after``
        is (state, score, member) of the previous page's last row: rows with an equal score sort
        by member in Redis, so the next page is exact even when scores tie.
        """
        states = [state] if state else list(TaskState)
        if after is not None:
            states = states[[s.value for s in states].index(after[0]) :]  # ValueError: not this listing's
        rows: list[tuple[TaskState, str, int]] = []
        for each in states:
            within = (after[1], after[2]) if after and after[0] == each.value else None
            found = await self._state_rows(service, each, limit + 1 - len(rows), within)
            rows += [(each, member, score) for member, score in found]
            if len(rows) > limit:
                break
        page = rows[:limit]
        pairs = [tuple(m.split(":", 1)) if service is None else (service, m) for _, m, _ in page]
        records = await self.get_many((p[0], p[1]) for p in pairs)
        last = page[-1] if page else None
        next_cursor = (last[0].value, last[2], last[1]) if last and len(rows) > limit else None
        return [r for r in records if r is not None], next_cursor

    async def _state_rows(
        self, service: str | None, state: TaskState, count: int, after: tuple[int, str] | None
    ) -> list[tuple[str, int]]:
        if service is not None or state is not TaskState.PENDING:
            return await self._index_rows(self.index_key(service, state), count, after)
        # all services' pending tasks: merge the per-service indexes by (score, "service:id")
        merged: list[tuple[str, int]] = []
        for each in await self.services():
            merged += await self._index_rows(self.index_key(each, state), count, after, prefix=f"{each}:")
        return sorted(merged, key=lambda row: (row[1], row[0]))[:count]

    async def _index_rows(
        self, key: str, count: int, after: tuple[int, str] | None, prefix: str = ""
    ) -> list[tuple[str, int]]:
        rows: list[tuple[str, int]] = []
        start: float | str = after[0] if after else "-inf"
        offset = 0
        while len(rows) < count:
            chunk = await self.redis.zrangebyscore(key, start, "+inf", start=offset, num=count, withscores=True)
            if not chunk:
                break
            offset += len(chunk)
            rows += [(prefix + m, int(sc)) for m, sc in chunk if not after or (int(sc), prefix + m) > after]
        return rows[:count]

    async def backlog(self, now_ms: int) -> dict[str, int]:
        """Ids due now and not yet claimed, by ``service:token`` queue."""
        queues = await self.queues()
        async with self.redis.pipeline(transaction=False) as pipe:
            for service, token in queues:
                pipe.zcount(self.due_key(service, token), "-inf", now_ms)
            counts = await pipe.execute()
        return {_queue_member(service, token): int(n) for (service, token), n in zip(queues, counts, strict=True)}

    async def oldest_pending_ms(self, service: str | None) -> int | None:
        """Enqueue time of the oldest pending task of ``service`` (None: of all)."""
        oldest = None
        for each in [service] if service else await self.services():
            first = await self.redis.zrange(self.index_key(each, TaskState.PENDING), 0, 0, withscores=True)
            if first and (oldest is None or int(first[0][1]) < oldest):
                oldest = int(first[0][1])
        return oldest

    async def token_pauses(self) -> dict[str, tuple[str, int]]:
        """Every token paused in Redis (by any worker, running or not): (reason, ms left of the pause)."""
        keys = [k async for k in self.redis.scan_iter(match=self.paused_key("*"), count=100)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            replies = await pipe.execute()
        start = len(self.paused_key(""))
        rows = zip(keys, replies[::2], replies[1::2], strict=True)
        # a key that expired between the scan and the read has no reason and a negative ttl
        return {key[start:]: (reason, int(left_ms)) for key, reason, left_ms in rows if reason and left_ms > 0}

    async def resume_token(self, token: str, now_ms: int, slack_ms: int = 60_000) -> bool:
        """Lift ``token``'s pause: its ids due before the pause would have ended (give or take
        ``slack_ms``: the pause's TTL runs on Redis's clock, due times on the workers') fall due now,
        and the workers' claim loops are told (the wake channel). False when it was not paused."""
        left_ms = int(await self.redis.pttl(self.paused_key(token)))
        if left_ms <= 0:
            return False
        services = [service for service, each in await self.queues() if each == token]
        # a paused token's queues are not claimed, so these ids are not in any worker's hands
        until_ms = now_ms + left_ms + slack_ms
        held = [await self.redis.zrangebyscore(self.due_key(s, token), now_ms, until_ms) for s in services]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.paused_key(token))
            for service, ids in zip(services, held, strict=True):
                if ids:  # XX: an id that finished meanwhile is not put back
                    pipe.zadd(self.due_key(service, token), dict.fromkeys(ids, now_ms), xx=True)
                pipe.publish(self.wake_channel, f"{_queue_member(service, token)}|{now_ms}")
            replies = await pipe.execute()
        return bool(replies[0])
