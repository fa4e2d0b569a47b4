"""The intake stream (producers' XADDs, read by every worker in one consumer group) and the wake
channel (registrations and releases no claim loop expects)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from worker.store.base import StoreBase
from worker.store.keys import INTAKE_GROUP, queue_of

#: how long an intake entry may sit unacknowledged with a dead consumer before another takes it
#: (workers pass their lease, ACETRACK_LEASE_S)
INTAKE_RECLAIM_MS = 30_000
#: longest wait of one read of the wake channel before it PINGs: a connection that died without a
#: word is found out within twice this, and the subscription made again
WAKE_READ_S = 30.0


class IntakeOps(StoreBase):
    """Reading, reclaiming and rejecting intake entries; following the wake channel."""

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
    async def wakes(self, read_s: float = WAKE_READ_S) -> AsyncIterator[AsyncIterator[tuple[str, str, int]]]:
        """Subscribe to the wake channel; yields its messages as (service, token, due_ms). A broken
        connection ends the iteration with the error (messages published meanwhile are lost).
        ``read_s``: the longest wait of one read before a PING."""
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self.wake_channel)
            # subscribed only once Redis says so: a registration announced before would be missed
            while (reply := await pubsub.get_message(timeout=read_s)) is None or reply["type"] != "subscribe":
                if reply is None:
                    raise RedisConnectionError(f"no answer to SUBSCRIBE for {read_s:.0f}s")
            yield self._wake_messages(pubsub, read_s)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    @staticmethod
    async def _wake_messages(pubsub: PubSub, read_s: float) -> AsyncIterator[tuple[str, str, int]]:
        pinged = False
        while True:
            # a bounded wait, then a PING: a connection that died without a word is found out
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=read_s)
            if message is None:
                if pinged:
                    raise RedisConnectionError(f"no answer on the wake channel for {2 * read_s:.0f}s")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            if message["type"] != "message":
                continue  # the PING's answer
            member, _, due = str(message["data"]).rpartition("|")
            yield *queue_of(member), int(due)
