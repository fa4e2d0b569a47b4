"""What every part of the store shares: the client, the key names, the scripts, the limits, and
the one place redis-py's errors become acetrack's ``StoreError``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import OutOfMemoryError, RedisError

from worker.errors import StoreError
from worker.store.keys import Keys, queue_of
from worker.store.scripts import SCRIPTS, load_script


@asynccontextmanager
async def translate_errors(what: str) -> AsyncIterator[None]:
    """Turn redis-py errors into ``StoreError`` naming the operation."""
    try:
        yield
    except OutOfMemoryError as e:  # the URL is right: Redis is full (callers name that, ``connect.is_full``)
        raise StoreError(f"redis refused {what}: {e}") from e
    except RedisError as e:
        raise StoreError(f"redis failed during {what}: {e}; check ACETRACK_REDIS_URL and that Redis is up") from e


class StoreBase(Keys):
    """The state every part of ``Store`` works on.

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
        super().__init__(prefix)
        self.redis = redis
        self.retention_ms = int(retention_s * 1000)
        self.events_maxlen = events_maxlen
        self.scripts: dict[str, AsyncScript] = {n: redis.register_script(load_script(n)) for n in SCRIPTS}

    async def queues(self) -> list[tuple[str, str]]:
        """Every (service, token) pair that has ever had a task."""
        members: set[str] = await self.redis.smembers(self.queues_key)  # type: ignore[misc]
        return sorted(queue_of(m) for m in members)

    async def services(self) -> list[str]:
        """Every service that has had a task."""
        members: set[str] = await self.redis.smembers(self.services_key)  # type: ignore[misc]
        return sorted(members)
