"""What the producer client's tests share: a running acetrack (a real redis-server, a worker polling
the simulator, the HTTP API on a loopback port) as the ``stack`` fixture, and ``via`` (Redis, HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from support import Backend, fast_settings

from acetrack import Client, SyncClient
from worker import jobs, sim
from worker.control import Control
from worker.http import Api, create_app

REPO = Path(__file__).resolve().parents[1]
CLIENT_DIR = REPO / "client"
HTTP_TOKEN = "client-test-token"
MakeSim = Callable[..., Awaitable[tuple[str, sim.SimState]]]


@dataclass
class Stack:
    """A running acetrack: Redis, a worker polling the simulator, and the HTTP API."""

    redis_url: str
    http_url: str
    sim: sim.SimState
    backend: Backend

    def client(self, via: str) -> Client:
        if via == "redis":
            return Client.from_redis(self.redis_url)
        return Client.from_http(self.http_url, token=HTTP_TOKEN)

    def sync_client(self, via: str) -> SyncClient:
        if via == "redis":
            return SyncClient.from_redis(self.redis_url)
        return SyncClient.from_http(self.http_url, token=HTTP_TOKEN)

    def add(self, task_id: str, script: str = "succeed", run_s: float = 0.6) -> None:
        self.sim.add_task("suno", task_id, script=script, run_s=run_s, clip_gap_s=0.2)


@pytest.fixture(name="stack")
async def stack_fixture(real_backend: Backend, real_redis_url: str | None, make_sim: MakeSim) -> AsyncIterator[Stack]:
    assert real_redis_url is not None  # real_backend skipped otherwise
    url, state = await make_sim(auto=False)
    settings = fast_settings(url, hooks=[])
    kwargs = jobs.worker_settings(settings, redis_pool=real_backend.make_arq_pool(), store_redis=real_backend.redis)
    store = real_backend.store()
    api = Api(
        store=store,
        control=Control(store),
        tokens=frozenset(settings.tokens()),
        first_poll_s=settings.first_poll_s,
        http_token=HTTP_TOKEN,
        sse_heartbeat_s=1.0,
    )
    async with TestServer(create_app(api), host="127.0.0.1") as server, jobs.running_worker(kwargs):
        yield Stack(real_redis_url, str(server.make_url("")).rstrip("/"), state, real_backend)


@pytest.fixture(name="via", params=["redis", "http"])
def via_fixture(request: pytest.FixtureRequest) -> str:
    """Each test using this runs over Redis and over HTTP."""
    param: str = request.param
    return param
