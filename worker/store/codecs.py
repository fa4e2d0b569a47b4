"""How acetrack's records, scheduling fields and lifetime samples are stored: one codec per format.

A pending task's scheduling fields are one '|'-joined string (``SCHED_FIELDS``), read by Lua too:
the claim script is told the position of the one field it reads (``SCHED_POLLED``).
"""

from __future__ import annotations

import base64
import functools
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from worker import codec
from worker.errors import StoreError
from worker.models import Mark, OutEvent, Record, Sample, TaskState, compact

#: finishes a service's callback counts stand for (``keys.callbacks_key``; halved past twice this)
CALLBACK_WINDOW = 50
#: finished poll-time samples kept per service for learning its usual lifetime
LIFETIME_SAMPLES = 200
#: stage marks kept parsed and formatted (a task's marks repeat over most of its polls): ~0.8 KB an
#: entry for both caches, ~13 MB at most; it covers the marks of 10,000 tasks in flight
MARKS_CACHE = 16_384
#: zlib level of a finished record: 6 is within a few % of 9's size at half the CPU
RECORD_LEVEL = 6
#: zlib's preset dictionary for finished records (``finished_json``): the strings most records share
#: (field names, the upstream answer's skeleton, its CDN prefixes), so that each packed record holds
#: only what is its own (~30 % smaller). Never edit it: records packed with it are kept for days.
#: A better one goes beside it in ``RECORD_ZDICTS`` (a test pins its checksum). The client keeps a
#: copy (a test compares them).
RECORD_ZDICT = (
    # the upstream's answer (worker/wire.py), rarer strings first: zlib finds the later ones closer
    b'{"created_at":,"request":{"action":"generate","model":"","custom":false,"instrumental":false,'
    b'"style":"","title":"","callback_url":"https://"},"trace_id":"","type":"audios","response":'
    b'{"success":true,"task_id":"","data":[{"id":"","title":"","image_url":"https://cdn2.suno.ai/image_'
    b'.jpeg","lyric":"[Verse]\\n[Chorus]\\n[Bridge]\\n[Verse 2]\\n","audio_url":"https://cdn1.suno.ai/.mp3",'
    b'"video_url":"https://cdn1.suno.ai/.mp4","image_id":"","topic":null,"seed":"","sound":"",'
    b'"created_at":"T:.Z","model":"chirp-v","prompt":"","style":"","progress":"100%","state":"succeeded",'
    b'"duration":}]},"duration":,"finished_at":}'
    # a record (worker/models.py), as finished_json writes it
    b'{"service":"suno","id":"","state":"succeeded","reason":"upstream_error","partial":false,"progress":100,'
    b'"clips":[{"id":"","title":"","state":"succeeded","audio_url":"https://cdn1.suno.ai/.mp3",'
    b'"video_url":"https://cdn1.suno.ai/.mp4","image_url":"https://cdn2.suno.ai/image_.jpeg","duration_s":'
    b'}],"error":{"code":"","message":""},"attempts":,"enqueued_at_ms":,"updated_at_ms":,"finished_at_ms":,'
    b'"upstream_finished_at":,"token":"default","response":{"id":"'
)
#: every dictionary a packed record may name, by its Adler-32: zlib's header carries the one it was
#: packed with (records packed before there was one name none)
RECORD_ZDICTS = {zlib.adler32(RECORD_ZDICT): RECORD_ZDICT}
#: the fields of a pending task's ``sched`` string, in order (``sched_text``, ``PendingTask``)
SCHED_FIELDS = ("deadline", "seen", "missing", "misses", "attempts", "polled", "marks", "enqueued", "answer")
#: 1-based position of ``polled`` in ``sched``: the claim script reads it (``claim.lua``)
SCHED_POLLED = SCHED_FIELDS.index("polled") + 1


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
    #: when each stage was first seen (``cadence.advance_marks``)
    marks: tuple[Mark | None, ...] = ()
    #: polls made (None: as the record says)
    attempts: int | None = None
    #: when it was enqueued (None: as the record says)
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
    """A pending task's scheduling fields as stored: ``SCHED_FIELDS`` joined by '|' (see ``PendingTask``)."""
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


def pending_task(raw: str, sched: str) -> PendingTask:
    deadline, seen, missing, misses, attempts, polled, marks, enqueued, answer = sched.split("|")
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


_PENDING = TaskState.PENDING.value  # read once: an enum's ``.value`` is a slow descriptor


def pending_rows(ids: Sequence[str], rows: Sequence[Sequence[str | None]]) -> dict[str, PendingTask]:
    """The still-pending tasks among ``ids`` from their ``pending_row``s (``lua/_rows.lua``)."""
    out: dict[str, PendingTask] = {}
    for task_id, (raw, state, sched) in zip(ids, rows, strict=True):
        if raw and sched and state == _PENDING:
            out[task_id] = pending_task(raw, sched)
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
    """A finished task's sample as stored in the service's list: ``ms|ok|marks|latency_ms|poll_ms``
    (the last two empty when the upstream gave no finish time)."""
    head = f"{round(sample.lifetime_s * 1000)}|{int(sample.ok)}|{marks_text(sample.marks)}"
    if sample.latency_s is None or sample.poll_s is None:
        return head
    return f"{head}|{round(sample.latency_s * 1000)}|{round(sample.poll_s * 1000)}"


@functools.lru_cache(maxsize=2 * LIFETIME_SAMPLES)
def parse_sample(text: str) -> Sample:
    """Inverse of ``sample_text`` (a sample stored before latencies were has three fields).

    Cached: a service's samples are re-read every second or so, and mostly the same ones.
    """
    lifetime, ok, marks, *found = text.split("|")
    latency_s, poll_s = (int(found[0]) / 1000, int(found[1]) / 1000) if len(found) == 2 else (None, None)
    return Sample(int(lifetime) / 1000, ok != "0", parse_marks(marks), latency_s, poll_s)


def _with_poll_fields(raw: str, attempts: int | None, polled_ms: int | None) -> Record:
    # while pending, the poll count and time live in ``sched`` so that a poll that changes nothing
    # does not rewrite the record
    record = Record.from_dict(codec.loads(raw))
    if attempts is not None:
        record.attempts = attempts
    if polled_ms is not None:
        record.updated_at_ms = polled_ms
    return record


def record_of(raw: str, sched: str | None, response_z: str | None = None) -> Record:
    """A stored record from its hash's ``record``, ``sched`` and (records finished before records
    were packed whole) ``response`` fields."""
    if not sched:
        record = Record.from_dict(codec.loads(record_text(raw)))
        if response_z:
            record.response = codec.loads(_unpack(response_z))
        return record
    task = pending_task(raw, sched)
    return task.record


def record_text(raw: str) -> str | bytes:
    """A stored ``record`` field as JSON: a finished record is packed (``finished_json``), a
    pending one is JSON already (it starts with '{'; base64 never does)."""
    return raw if raw.startswith("{") else _unpack(raw)


def _unpack(packed: str) -> bytes:
    data = base64.b64decode(packed)
    unpacker = zlib.decompressobj(zdict=_dictionary_of(data))
    unpacked = unpacker.decompress(data) + unpacker.flush()
    if not unpacker.eof:
        raise StoreError("a stored record is cut short: it was not written whole")
    return unpacked


def _dictionary_of(data: bytes) -> bytes:
    # zlib's header (RFC 1950): FDICT, bit 5 of its second byte, says a dictionary's Adler-32 follows
    if len(data) < 6 or not data[1] & 0x20:
        return b""
    dict_id = int.from_bytes(data[2:6], "big")
    if dict_id not in RECORD_ZDICTS:
        raise StoreError(
            f"a stored record was packed with a dictionary this acetrack does not know "
            f"({dict_id:#010x}): a later acetrack wrote it; upgrade this one"
        )
    return RECORD_ZDICTS[dict_id]


def record_json(record: Record) -> bytes:
    # stored compact and without nulls: a pending task costs Redis memory for as long as it runs
    return codec.dumps(compact(record))


def finished_json(record: Record) -> str:
    """A terminal record as stored: its whole JSON, the upstream's answer included, compressed
    (base64 of zlib, with ``RECORD_ZDICT``). It is read only when asked for, and the answer (lyrics,
    prompts) repeats the clips' ids and URLs, so together they pack to about 25 % of the two apart."""
    packer = zlib.compressobj(RECORD_LEVEL, zdict=RECORD_ZDICT)
    return base64.b64encode(packer.compress(record_json(record)) + packer.flush()).decode()


def events_json(events: Iterable[OutEvent]) -> bytes:
    return codec.dumps([e.to_payload() for e in events])
