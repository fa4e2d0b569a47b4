"""The client over Redis: the documented intake, record and events contract (DESIGN.md §2), no pickle.

Enqueue is one ``XADD`` to the intake stream (a worker registers the task moments later); a record is
read from the task's hash; ``wait`` and ``events`` follow the events stream with blocking ``XREAD``.
Cancel has no Redis contract: it needs the HTTP API or the CLI.
"""

from __future__ import annotations

import asyncio
import base64
import json
import zlib
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from acetrack.errors import InvalidInput, NotFound, Timeout, Unavailable, Unsupported
from acetrack.keys import RECORD_FIELD, RECORD_ZDICTS, RESPONSE_FIELD, Keys
from acetrack.records import Event, Record
from acetrack.rules import FIELDS, Intake

#: how long one blocking read of the events stream waits before ``wait`` re-reads the record
WAIT_BLOCK_MS = 1000
#: how often ``wait`` reads the record itself, whatever the events stream says
LOOK_AGAIN_S = 1.0
#: how long one blocking read of the events iterator waits before it reads again
EVENTS_BLOCK_MS = 5000
#: entries read per XREAD
READ_COUNT = 200
#: newest rejected intake entries looked through when a waited-for task does not show up
REJECTED_SCAN = 200


def _unpack(packed: str) -> bytes:
    """A packed field's JSON: base64 of zlib, with the dictionary zlib's header names, if any.

    Raises:
        Unsupported: a later acetrack packed it, with a dictionary this client does not know.
        Unavailable: it is cut short.
    """
    data = base64.b64decode(packed)
    zdict = b""
    if len(data) >= 6 and data[1] & 0x20:  # zlib's FDICT flag: the dictionary's Adler-32 follows
        dict_id = int.from_bytes(data[2:6], "big")
        if dict_id not in RECORD_ZDICTS:
            raise Unsupported(
                f"a record packed with a dictionary unknown here ({dict_id:#010x}): upgrade acetrack-client"
            )
        zdict = RECORD_ZDICTS[dict_id]
    unpacker = zlib.decompressobj(zdict=zdict)
    unpacked = unpacker.decompress(data) + unpacker.flush()
    if not unpacker.eof:
        raise Unavailable("a stored record is cut short: it was not written whole")
    return unpacked


def _text(value: Any) -> str:
    # a client built without decode_responses answers bytes
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    return [
        (_text(entry_id), {_text(k): _text(v) for k, v in fields.items()})
        for _, entries in reply or []
        for entry_id, fields in entries
    ]


@asynccontextmanager
async def _translated(what: str) -> AsyncIterator[None]:
    try:
        yield
    except RedisError as e:
        raise Unavailable(f"redis failed during {what}: {e}; check the Redis URL and that Redis is up") from e


class RedisTransport:
    """The five operations over one ``redis.asyncio.Redis``.

    Args:
        redis: a ready client (``decode_responses`` either way).
        keys: the key names under the workers' prefix.
        owned: close the client in ``aclose`` (it was made by ``from_url``).
    """

    def __init__(self, redis: aioredis.Redis, keys: Keys, *, owned: bool = False) -> None:
        self.redis, self.keys, self.owned = redis, keys, owned
        # a blocking read longer than the connection's socket_timeout would fail as a timeout
        socket_timeout_s = redis.connection_pool.connection_kwargs.get("socket_timeout")
        self.max_block_ms = max(1, int(socket_timeout_s * 500)) if socket_timeout_s else None

    async def _read_events(self, after: str, block_ms: int) -> list[tuple[str, dict[str, str]]]:
        """Events after ``after``, blocking up to ``block_ms`` for the first (less under a short socket_timeout)."""
        block_ms = min(block_ms, self.max_block_ms) if self.max_block_ms else block_ms
        async with _translated("reading events"):
            reply = await self.redis.xread({self.keys.events: after}, count=READ_COUNT, block=block_ms)
        return _entries(reply)

    async def enqueue(self, intake: Intake) -> Record | None:
        """XADD the entry; returns None (a worker registers it moments later)."""
        fields: dict[Any, Any] = intake.stream_fields()
        async with _translated(f"enqueue of {intake.service}/{intake.id}"):
            await self.redis.xadd(self.keys.intake, fields)
        return None

    async def get(self, service: str, task_id: str) -> Record | None:
        """The stored record with its raw upstream answer put back, or None."""
        async with _translated(f"get of {service}/{task_id}"):
            raw, packed = await self.redis.hmget(self.keys.task(service, task_id), [RECORD_FIELD, RESPONSE_FIELD])  # type: ignore[misc]
        if not raw:
            return None
        text = _text(raw)
        data = json.loads(text if text.startswith("{") else _unpack(text))
        if packed:
            data["response"] = json.loads(_unpack(_text(packed)))
        return Record.from_dict(data)

    async def wait(self, service: str, task_id: str, timeout_s: float) -> Record:
        """The terminal record, following the events stream; see ``Client.wait``."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self._wait(service, task_id)
        except TimeoutError:
            record = await self.get(service, task_id)
            if record is None:
                raise NotFound(
                    f"task {service}/{task_id} is not tracked after {timeout_s:g}s: never enqueued, "
                    "or no worker is taking entries from the intake stream"
                ) from None
            raise Timeout(
                f"task {service}/{task_id} did not finish within {timeout_s:g}s (still {record.state})"
            ) from None

    async def _wait(self, service: str, task_id: str) -> Record:
        loop = asyncio.get_running_loop()
        async with _translated("reading events"):
            after = await self._last_event_id()
        record = await self.get(service, task_id)
        look_again = loop.time() + LOOK_AGAIN_S
        while record is None or not record.terminal:
            entries = await self._read_events(after, WAIT_BLOCK_MS)
            after = entries[-1][0] if entries else after
            # only a task's end carries its record; the stored one adds the raw upstream answer
            if any(f.get("service") == service and f.get("id") == task_id and f.get("record") for _, f in entries):
                record = await self.get(service, task_id)
            elif loop.time() >= look_again:
                # look at the record now and then: an enqueue still in the intake, an event trimmed away
                look_again = loop.time() + LOOK_AGAIN_S
                record = await self.get(service, task_id)
                if record is None:
                    await self._raise_if_rejected(service, task_id)
        return record

    async def _last_event_id(self) -> str:
        newest = await self.redis.xrevrange(self.keys.events, count=1)
        return _text(newest[0][0]) if newest else "0-0"

    async def _raise_if_rejected(self, service: str, task_id: str) -> None:
        async with _translated("reading rejected intake entries"):
            reply = await self.redis.xrevrange(self.keys.rejected, count=REJECTED_SCAN)
        for _, raw in reply:
            fields = {_text(k): _text(v) for k, v in raw.items()}
            if fields.get("service") == service and fields.get("id") == task_id:
                reason = fields.get("reason", "rejected")
                field = reason.split(" ", 1)[0]
                raise InvalidInput(field if field in FIELDS else "intake", f"the workers rejected it: {reason}")

    async def cancel(self, service: str, task_id: str) -> Record:
        """Not part of the Redis contract."""
        raise Unsupported(
            f"cancel of {service}/{task_id} needs the HTTP API (Client.from_http) or the CLI "
            f"(acetrack cancel {service} {task_id}): Redis has no cancel contract"
        )

    async def events(
        self, after: str | None, services: Collection[str], ids: Collection[str], types: Collection[str]
    ) -> AsyncIterator[Event]:
        """Events after the stream id ``after`` (None: from now on), filtered; never ends by itself."""
        async with _translated("reading events"):
            cursor = after if after is not None else await self._last_event_id()
        while True:
            for entry_id, fields in await self._read_events(cursor, EVENTS_BLOCK_MS):
                cursor = entry_id
                if _wanted(fields, services, ids, types):
                    yield Event.from_fields(entry_id, fields)

    async def aclose(self) -> None:
        """Close the client if this transport made it."""
        if self.owned:
            await self.redis.aclose()


def _wanted(fields: Mapping[str, str], services: Collection[str], ids: Collection[str], types: Collection[str]) -> bool:
    return (
        (not services or fields.get("service") in services)
        and (not ids or fields.get("id") in ids)
        and (not types or fields.get("type") in types)
    )
