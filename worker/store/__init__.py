"""The Redis schema: every key, record format and Lua script of acetrack, and nothing else.

``Store(redis)`` takes a ready ``redis.asyncio.Redis`` built with ``decode_responses=True``.
Methods take ``now_ms`` from the caller; scripts never read Redis ``TIME``. The store decides no
policy: when a task is first due, how long it waits, what counts as finished are its callers'.

One module per part of the schema: ``keys`` (names), ``codecs`` (formats), ``scripts`` (Lua),
``tasks`` (register, read), ``claims`` (claims, rate budget, back-off, pauses), ``writes`` (a poll's
writes), ``intake_stream`` (intake and wake), ``outbox`` (deliveries), ``queries`` (listing, search,
events, upkeep).
"""

from __future__ import annotations

from worker.store.base import translate_errors
from worker.store.claims import Claimed, ClaimOps, Wait
from worker.store.codecs import (
    CALLBACK_WINDOW,
    LIFETIME_SAMPLES,
    SCHED_FIELDS,
    PendingTask,
    marks_text,
    next_sched,
    parse_marks,
    parse_sample,
    sample_text,
    sched_text,
)
from worker.store.intake_stream import IntakeOps
from worker.store.keys import INTAKE_GROUP, Keys, arq_queue_name
from worker.store.outbox import OutboxOps
from worker.store.queries import SEARCH_CHUNK, SEARCH_SCAN_MAX, Cursor, QueryOps, SearchPage
from worker.store.scripts import ScriptCall
from worker.store.writes import WriteOps

__all__ = [
    "INTAKE_GROUP",
    "CALLBACK_WINDOW",
    "LIFETIME_SAMPLES",
    "SCHED_FIELDS",
    "SEARCH_CHUNK",
    "SEARCH_SCAN_MAX",
    "Claimed",
    "Cursor",
    "Keys",
    "PendingTask",
    "ScriptCall",
    "SearchPage",
    "Store",
    "Wait",
    "arq_queue_name",
    "marks_text",
    "next_sched",
    "parse_marks",
    "parse_sample",
    "sample_text",
    "sched_text",
    "translate_errors",
]


class Store(QueryOps, ClaimOps, WriteOps, IntakeOps, OutboxOps):
    """Atomic reads and writes of acetrack's Redis schema (see the module's parts).

    Args:
        redis: a ready client with ``decode_responses=True``.
        prefix: the key prefix (``ACETRACK_KEY_PREFIX``).
        retention_s: how long finished records, rejects and dead letters are kept.
        events_maxlen: approximate cap of the events stream.
    """
