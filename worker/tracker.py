"""The Python API for producers: ``Tracker.from_url(url)``, ``enqueue``, ``get``, ``wait``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from typing import Any

import redis.asyncio as aioredis

from worker.cadence import first_poll_ms
from worker.clock import Clock, system_clock
from worker.connect import create_redis
from worker.intake import build_request
from worker.models import Record
from worker.store import Store
from worker.webhooks import screen

#: how long one blocking read of the events stream waits before ``wait`` looks again
WAIT_BLOCK_MS = 1000


class Tracker:
    """Hand task ids to acetrack and read their outcome.

    Args:
        store: the Redis store.
        deadline_s: default deadline for tasks enqueued here.
        first_poll_s: delay before a new task's first poll.
        services: allow-list of services (empty: any valid name).
        clock: epoch-ms clock.
        allow_hosts: callback hosts allowed despite resolving to private addresses
            (``ACETRACK_WEBHOOK_ALLOW_HOSTS``).
    """

    def __init__(
        self,
        store: Store,
        *,
        deadline_s: float = 1800.0,
        first_poll_s: float = 3.0,
        services: Collection[str] = (),
        clock: Clock = system_clock,
        allow_hosts: Collection[str] = (),
    ) -> None:
        self.store = store
        self.deadline_s = deadline_s
        self.first_poll_s = first_poll_s
        self.services = services
        self.clock = clock
        self.allow_hosts = allow_hosts

    @classmethod
    def from_url(cls, redis_url: str, *, prefix: str = "acetrack", **kwargs: Any) -> Tracker:
        """A tracker connected to ``redis_url`` (``redis://``, ``rediss://``, ``redis+sentinel://``)."""
        return cls(Store(create_redis(redis_url), prefix), **kwargs)

    @classmethod
    def over(cls, redis: aioredis.Redis, *, prefix: str = "acetrack", **kwargs: Any) -> Tracker:
        """A tracker over an existing ``decode_responses`` client."""
        return cls(Store(redis, prefix), **kwargs)

    async def enqueue(
        self,
        service: str,
        task_id: str,
        *,
        callback_url: str | None = None,
        deadline_s: float | None = None,
        token: str | None = None,
        meta: dict[str, Any] | None = None,
        reopen: bool = False,
    ) -> Record:
        """Start tracking ``(service, task_id)``; enqueueing it again returns the first record unchanged.

        Raises:
            InvalidInput: a field breaks an intake rule; the message names it.
        """
        fields = {
            "service": service,
            "id": task_id,
            "callback_url": callback_url,
            "deadline_s": deadline_s,
            "token": token,
            "meta": meta,
            "reopen": reopen,
        }
        req = build_request({k: v for k, v in fields.items() if v is not None}, services=self.services)
        if req.callback_url:
            await screen(req.callback_url, self.allow_hosts)
        now_ms = self.clock()
        _, record = await self.store.register(
            req, now_ms, deadline_s=self.deadline_s, first_due_ms=first_poll_ms(now_ms, self.first_poll_s)
        )
        return record

    @staticmethod
    def validate(service: str, task_id: str, services: Collection[str] = ()) -> None:
        """Check a service name and id against the intake rules without storing anything."""
        build_request({"service": service, "id": task_id}, services=services)

    async def get(self, service: str, task_id: str) -> Record | None:
        """The stored record, or None when acetrack does not know the task."""
        return await self.store.get(service, task_id)

    async def wait(self, service: str, task_id: str, timeout_s: float = 1800.0) -> Record:
        """Wait for the task to finish and return its terminal record, following the events stream.

        Raises:
            KeyError: acetrack does not track the task.
            TimeoutError: it did not finish within ``timeout_s``.
        """
        async with asyncio.timeout(timeout_s):
            after_id = await self.store.last_event_id()
            record = await self.store.get(service, task_id)
            if record is None:
                raise KeyError(f"task {service}/{task_id} is not tracked; enqueue it first")
            while not record.terminal:
                for entry_id, fields in await self.store.read_events(after_id, WAIT_BLOCK_MS):
                    after_id = entry_id
                    # only a task's end carries its record (``events.RECORD_EVENTS``)
                    if fields.get("service") == service and fields.get("id") == task_id and fields.get("record"):
                        record = Record.from_dict(json.loads(fields["record"]))
                        if record.terminal:
                            break
            return record

    async def close(self) -> None:
        """Close the Redis connection."""
        await self.store.redis.aclose()
        # a Sentinel-backed client also holds one client per Sentinel
        manager = getattr(self.store.redis.connection_pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", []):
            await sentinel.aclose()
