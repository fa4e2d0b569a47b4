"""A Redis that may evict acetrack's keys is named: in the worker's log, ``/readyz`` and ``acetrack check``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from servers import free_port, wait_port
from support import eventually, fast_settings, require_real_redis

from worker import jobs, sim
from worker.connect import create_redis
from worker.models import TaskState
from worker.process import Supervisor
from worker.redis_policy import eviction_problem, policy_problem
from worker.store import Keys, Store
from worker.tracker import Tracker

ROOT = Path(__file__).resolve().parents[1]
MakeSim = Callable[..., Awaitable[tuple[str, sim.SimState]]]


def test_only_noeviction_is_safe() -> None:
    assert policy_problem("noeviction") is None
    for policy in ("allkeys-lru", "volatile-lru", "allkeys-random", "volatile-ttl"):
        warning = policy_problem(policy)
        assert warning is not None and policy in warning and "set it to noeviction" in warning
    assert "could not check" in str(policy_problem(None, "CONFIG GET refused: NOPERM"))


@pytest.fixture
async def evicting(real_redis_url: str | None, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The real server with ``maxmemory-policy allkeys-lru`` for one test (then ``noeviction`` again)."""
    url = require_real_redis(real_redis_url, request)
    client = aioredis.Redis.from_url(url, decode_responses=True)
    await client.flushall()
    await client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        yield url
    finally:
        await client.config_set("maxmemory-policy", "noeviction")
        await client.flushall()
        await client.aclose()


def _serve(url: str) -> tuple[int, subprocess.Popen[bytes]]:
    """``acetrack serve`` on a free loopback port, once it listens."""
    port = free_port()
    env = _env(url, http_host="127.0.0.1", http_port=str(port))
    api = subprocess.Popen([sys.executable, "-m", "worker", "serve"], env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    wait_port(port, 20)
    return port, api


def _env(url: str, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACETRACK_")}
    env.update({"ACETRACK_REDIS_URL": url, **{f"ACETRACK_{k.upper()}": v for k, v in values.items()}})
    return env


async def test_the_policy_is_read_and_a_user_denied_config_gets_could_not_check(evicting: str) -> None:
    admin = aioredis.Redis.from_url(evicting, decode_responses=True)
    assert "maxmemory-policy is allkeys-lru" in str(await eviction_problem(admin))
    await admin.execute_command("ACL", "SETUSER", "limited", *"on >pw ~* &* +@all -@dangerous +info".split())
    host_port = evicting.removeprefix("redis://")
    limited = aioredis.Redis.from_url(f"redis://limited:pw@{host_port}", decode_responses=True)
    try:
        assert "could not check Redis's maxmemory-policy (CONFIG GET refused" in str(await eviction_problem(limited))
    finally:
        await admin.execute_command("ACL", "DELUSER", "limited")
        await limited.aclose()
        await admin.aclose()


async def test_a_worker_warns_at_start_and_readyz_and_check_name_it_without_failing(
    evicting: str, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker", "worker"],
            env=_env(evicting, api_token="t", api_base_url="http://127.0.0.1:9"),
            cwd=ROOT,
            stderr=out,
        )
        port, api = _serve(evicting)
        try:
            store = Store(aioredis.Redis.from_url(evicting, decode_responses=True))
            give_up = time.monotonic() + 20
            while not await store.workers() and time.monotonic() < give_up:
                await asyncio.sleep(0.2)
            beats = await store.workers()
            await store.redis.aclose()
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                status, body = resp.status, await resp.json()
            check = subprocess.run(
                [sys.executable, "-m", "worker", "check", "--json"], env=_env(evicting), capture_output=True, text=True
            )
        finally:
            for proc in (worker, api):
                proc.terminate()
                proc.wait(timeout=15)
    warned = [line for line in log.read_text().splitlines() if "maxmemory-policy is allkeys-lru" in line]
    assert len(warned) == 1 and "WARNING" in warned[0], log.read_text()
    assert beats and "allkeys-lru" in beats[0]["warnings"][0]
    assert status == 200 and body["ready"] is True and "allkeys-lru" in body["problems"][0], body
    verdict = json.loads(check.stdout)
    assert check.returncode == 0 and verdict["healthy"] is True and "allkeys-lru" in verdict["problems"][0], verdict


async def test_a_full_redis_loses_nothing_says_so_once_a_minute_and_work_resumes_when_memory_frees(
    real_redis_url: str | None, request: pytest.FixtureRequest, make_sim: MakeSim, tmp_path: Path
) -> None:
    url = require_real_redis(real_redis_url, request)
    admin = aioredis.Redis.from_url(url, decode_responses=True)
    await admin.flushall()
    sim_url, state = await make_sim(auto=False)
    tracker = Tracker.over(admin, first_poll_s=0.2)
    direct = [f"full-{i}" for i in range(5)]
    for task_id in [*direct, "intake-1", "intake-2"]:
        state.add_task("suno", task_id, script="succeed", run_s=4.0, clip_gap_s=0.2)
    for task_id in direct:
        await tracker.enqueue("suno", task_id)
    env = _env(url, api_token="t", api_base_url=sim_url, first_poll_s="0.2", poll_s="0.4", lease_s="3")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "worker", "worker"], env=env, cwd=ROOT, stderr=out)
        port, api = _serve(url)
        try:
            await eventually(lambda: _polled(tracker, direct), 15)
            async with admin.pipeline(transaction=True) as pipe:  # entries read as Redis is full: none lost
                pipe.config_set("maxmemory", 0)
                for task_id in ("intake-1", "intake-2"):
                    pipe.xadd(tracker.store.intake_key, {"service": "suno", "id": task_id})
                pipe.config_set("maxmemory", 1)
                await pipe.execute()
            await asyncio.sleep(6.0)  # the tasks finish upstream meanwhile; nothing can be written
            while_full = await tracker.store.get_many(("suno", i) for i in direct)
            async with aiohttp.ClientSession() as session:
                post = await session.post(f"http://127.0.0.1:{port}/tasks", json={"service": "suno", "id": "x"})
                answer = (post.status, await post.json())
            await admin.config_set("maxmemory", 0)
            everything = [*direct, "intake-1", "intake-2"]
            resumed = await eventually(lambda: _all_succeeded(tracker, everything), 40)
            records = [
                (i, r and r.state)
                for i, r in zip(everything, await tracker.store.get_many(("suno", i) for i in everything), strict=True)
            ]
            intake = await admin.xinfo_groups(tracker.store.intake_key)
        finally:
            await admin.config_set("maxmemory", 0)
            for proc in (worker, api):
                proc.terminate()
                proc.wait(timeout=15)
            await admin.flushall()
            await admin.aclose()  # also when an assertion failed: no connection left for a later test
    text = log.read_text()
    assert all(r is not None and r.state is TaskState.PENDING for r in while_full), while_full
    assert answer[0] == 503 and answer[1]["error"]["code"] == "redis_full", answer
    assert text.count("Redis is full") == 1, text  # one line a minute, not one per try
    assert "Traceback" not in text, text
    assert resumed, (records, intake, text[-3000:])


async def _polled(tracker: Tracker, ids: list[str]) -> bool:
    return all(r is not None and r.attempts > 0 for r in await tracker.store.get_many(("suno", i) for i in ids))


async def _all_succeeded(tracker: Tracker, ids: list[str]) -> bool:
    records = await tracker.store.get_many(("suno", i) for i in ids)
    return all(r is not None and r.state is TaskState.SUCCEEDED for r in records)


async def test_arqs_own_write_refused_by_a_full_redis_starts_a_fresh_arq_worker_once_writes_are_taken(
    real_redis_url: str | None, request: pytest.FixtureRequest, make_sim: MakeSim, caplog: pytest.LogCaptureFixture
) -> None:
    # arq writes its health key (hourly by default, here every iteration) and its cron jobs outside
    # any job: refused, its main loop ends (CI: the prune cron fell in a test's full window)
    url = require_real_redis(real_redis_url, request)
    admin = aioredis.Redis.from_url(url, decode_responses=True)
    await admin.flushall()
    sim_url, state = await make_sim(auto=False)
    state.add_task("suno", "late", script="succeed", run_s=1.0, clip_gap_s=0.1)
    settings = fast_settings(sim_url, redis_url=url, hooks=[])
    store_redis, stop = create_redis(url), asyncio.Event()
    kwargs = {**jobs.worker_settings(settings, store_redis=store_redis), "health_check_interval": 0.05}
    supervisor = Supervisor(kwargs, store_redis, url, stop, Keys(settings.key_prefix))
    running = asyncio.create_task(supervisor.run())
    try:
        await eventually(lambda: _started(supervisor), 15)
        first = supervisor.worker
        await admin.config_set("maxmemory", 1)
        await eventually(lambda: _said(caplog, "Redis is full"), 10)
        await admin.config_set("maxmemory", 0)
        await Tracker.over(admin).enqueue("suno", "late")  # work for the worker that runs now
        done = await eventually(lambda: _all_succeeded(Tracker.over(admin), ["late"]), 20)
        alive = not running.done()
    finally:
        await admin.config_set("maxmemory", 0)
        stop.set()
        await asyncio.gather(running, return_exceptions=True)
        await supervisor.close()
        await store_redis.aclose()
        await admin.flushall()
        await admin.aclose()
    assert alive and done, [r.getMessage() for r in caplog.records][-10:]
    assert supervisor.worker is not first  # a fresh arq worker, over the same pool and runtime


async def _started(supervisor: Supervisor) -> bool:
    worker = supervisor.worker
    return worker is not None and jobs.runtime_of_worker(worker).parts is not None


async def _said(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)
