"""The outbox of hook and webhook deliveries: due tries, stored bodies, dead letters, disabled
URLs, and acetrack's own counters."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from worker.store.base import StoreBase


class OutboxOps(StoreBase):
    """Deliveries from their first try to delivered or dead."""

    async def take_outbox(
        self, now_ms: int, count: int, lease_ms: int = 30_000
    ) -> tuple[list[tuple[str, int]], int | None]:
        """Due deliveries as (id, due_ms), leased to this dispatcher for ``lease_ms``, and the soonest
        due time left in the outbox (None: it is empty)."""
        flat, next_due = await self.scripts["take_outbox"](keys=[self.outbox_key], args=[now_ms, lease_ms, count])
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
