"""Faults with real processes: graceful stop, Redis restarts (clean and killed), upstream chaos."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from servers import APPEND_ONLY, RedisServer, free_port
from support import Backend, fast_settings, require_real_redis
from test_e2e import check_outcome, wait_all_terminal

from worker import jobs, sim
from worker.store import Store
from worker.tracker import Tracker

MakeSim = Callable[..., Awaitable[tuple[str, sim.SimState]]]
ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def acetrack(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "worker", *args], env=env, cwd=ROOT, stderr=out, stdout=out)


def worker_env(redis_url: str, sim_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACETRACK_")}
    env.update(
        {
            "ACETRACK_REDIS_URL": redis_url,
            "ACETRACK_API_BASE_URL": sim_url,
            "ACETRACK_API_TOKEN": "t",
            "ACETRACK_POLL_S": "0.3",
            "ACETRACK_FIRST_POLL_S": "0.1",
            "ACETRACK_LEASE_S": "3",
        }
    )
    env.update(extra)
    return env


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        try:
            if await check():
                return True
        except (OSError, aioredis.ConnectionError):
            pass
        await asyncio.sleep(0.1)
    return False


@asynccontextmanager
async def client_for(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def test_sigterm_releases_claims_at_once(
    real_redis_url: str | None, request: pytest.FixtureRequest, make_sim: MakeSim, tmp_path: Path
) -> None:
    url = require_real_redis(real_redis_url, request)
    slow_url, slow = await make_sim(auto=False, latency_s=30.0)
    ids = [f"held-{i}" for i in range(10)]
    async with client_for(url) as client:
        await client.flushall()
        store, tracker = Store(client), Tracker.over(client, first_poll_s=0.0)
        for task_id in ids:
            slow.add_task("suno", task_id, run_s=0.1)
            await tracker.enqueue("suno", task_id)
        with processes() as procs:
            procs.append(acetrack(["worker"], worker_env(url, slow_url, ACETRACK_LEASE_S="60"), tmp_path / "w.log"))

            async def all_claimed() -> bool:
                return all([await client.hexists(store.task_key("suno", i), "claim") for i in ids])

            assert await eventually(all_claimed, 20), (tmp_path / "w.log").read_text()[-2000:]
            await asyncio.sleep(0.5)  # the poll request is in flight in the slow simulator
            stopped_at_ms = int(time.time() * 1000)
            procs[0].send_signal(signal.SIGTERM)
            procs[0].wait(timeout=15)
        due = dict(await client.zrange(store.due_key("suno", "default"), 0, -1, withscores=True))
        held = [await client.hexists(store.task_key("suno", i), "claim") for i in ids]
        await client.flushall()
    assert procs[0].returncode == 0
    assert not any(held)
    assert all(score <= stopped_at_ms + 5_000 for score in due.values()), due  # not the 60 s lease


async def _enqueue_mix(tracker: Tracker, state: sim.SimState, n: int, seed: int) -> dict[tuple[str, str], str]:
    rng, scripts = random.Random(seed), {}
    for i in range(n):
        script = rng.choice(["succeed", "succeed", "succeed", "partial", "error", "legacy"])
        task_id = f"{script}-{i}"
        state.add_task("suno", task_id, script=script, run_s=rng.uniform(0.5, 4.0), clip_gap_s=0.3)
        await tracker.enqueue("suno", task_id)
        scripts[("suno", task_id)] = script
    return scripts


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_redis_restart_loses_nothing_enqueued_before_it(
    how: signal.Signals, real_redis_url: str | None, request: pytest.FixtureRequest, make_sim: MakeSim, tmp_path: Path
) -> None:
    require_real_redis(real_redis_url, request)
    redis_proc = RedisServer(tmp_path, APPEND_ONLY)
    redis_proc.start("the Redis restart test")
    sim_url, state = await make_sim(auto=False)
    api_port = free_port()
    env = worker_env(redis_proc.url, sim_url, ACETRACK_HTTP_PORT=str(api_port), ACETRACK_HTTP_HOST="127.0.0.1")
    try:
        async with client_for(redis_proc.url) as client, aiohttp.ClientSession() as http:
            tracker = Tracker.over(client, first_poll_s=0.1)
            scripts = await _enqueue_mix(tracker, state, 60, seed=how.value)
            with processes() as procs:
                procs += [acetrack(["worker"], env, tmp_path / f"w{i}.log") for i in range(2)]
                procs.append(acetrack(["serve"], env, tmp_path / "api.log"))
                readyz = f"http://127.0.0.1:{api_port}/readyz"
                assert await eventually(lambda: _status_is(http, readyz, 200), 20)
                await asyncio.sleep(2.5)  # past the AOF's one-second fsync for everything enqueued
                redis_proc.stop(how)
                assert await eventually(lambda: _status_is(http, readyz, 503), 10)
                await asyncio.sleep(1.0)
                redis_proc.start("the Redis restart test")
                records = await wait_all_terminal(tracker, list(scripts), timeout_s=40)
                assert await eventually(lambda: _status_is(http, readyz, 200), 20)
                alive = [p.poll() is None for p in procs]
            events = await client.xrange(Store(client).events_key)
    finally:
        redis_proc.kill()
    assert alive == [True, True, True]  # workers and API rode it out, no crash loop
    assert len(records) == len(scripts) and all(r.terminal for r in records)
    for record in records:
        check_outcome(record, scripts[(record.service, record.id)])
    terminal = [f["id"] for _, f in events if f["type"] in ("task.succeeded", "task.failed")]
    assert sorted(terminal) == sorted(i for _, i in scripts)  # each written once


async def _status_is(http: aiohttp.ClientSession, url: str, status: int) -> bool:
    async with http.get(url) as resp:
        return resp.status == status


@pytest.mark.timeout(240)
async def test_upstream_chaos_ends_every_task_right_within_the_rate_budget(
    real_backend: Backend, make_sim: MakeSim
) -> None:
    rps = 20.0
    url, state = await make_sim(
        auto=False,
        rate_limit_rps=rps,
        error_rate=0.3,
        garble_rate=0.1,
        hang_rate=0.05,
        hang_s=2.0,
        drop_rate=0.1,
        dup_rate=0.1,
        extra_fields=True,
        seed=17,
    )
    settings = fast_settings(url, hooks=[], rate_limit_rps=rps, api_timeout_s=0.5, batch_size=10, not_found_grace_s=30)
    tracker = Tracker.over(real_backend.redis, first_poll_s=0.1)
    scripts = await _enqueue_mix(tracker, state, 80, seed=5)
    kwargs = jobs.worker_settings(settings, redis_pool=real_backend.make_arq_pool(), store_redis=real_backend.redis)
    async with jobs.running_worker(kwargs):
        records = await wait_all_terminal(tracker, list(scripts), timeout_s=150)
    assert len(records) == len(scripts) and all(r.terminal for r in records)
    for record in records:
        check_outcome(record, scripts[(record.service, record.id)])  # no network error failed a task
    sent = sorted(e.at_s for e in state.log)
    busiest = max(sum(1 for t in sent[i:] if t < start + 1.0) for i, start in enumerate(sent))
    assert busiest <= rps, busiest
    assert sum(1 for e in state.log if e.status != 200) > 3  # the chaos really happened
