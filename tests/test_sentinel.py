"""Redis Sentinel failover: the primary is SIGKILLed mid-run, Sentinel promotes the replica, acetrack follows.

A primary and a replica (``--replicaof``) ``redis-server`` and three Sentinels (``sentinel monitor mymaster
127.0.0.1 <port> 2``, ``down-after-milliseconds 1000``, ``failover-timeout 5000``, ``parallel-syncs 1``), all
on free loopback ports with their files in ``tmp_path``. Two ``python -m worker worker`` subprocesses and a
``Tracker.from_url`` use ``redis+sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/mymaster/0``; the simulator
of the Tasks API runs in this test's event loop. 100 tasks are enqueued, the primary is killed while most of
them are still pending, and every task must still end in the state its script implies, with exactly one
terminal event each in the new primary's events stream.

What a failover can lose. Replication is asynchronous: the primary acknowledges a write before the replica
has it, so whatever the replica had not received when the primary died is gone after the promotion. For
acetrack that window (typically well under a second of writes) can hold:

- tasks enqueued in the last moments (their records and due entries): lost, the caller got an ack. Enqueueing
  again is safe (it keeps the first record), so a caller that cannot tolerate this re-enqueues after a
  failover, or waits for replication (``WAIT 1 <ms>``) before it trusts an enqueue;
- a terminal write (record, event and outbox entry are one atomic unit, so they are lost together): the task
  is still pending on the new primary and is polled and finished again; the webhook sent for the lost write
  is sent again with a *different* ``webhook-id`` (a new event), so a receiver cannot de-duplicate it;
- progress updates, claims (the id is simply due again) and outbox state (a delivered webhook can be sent
  again, same ``webhook-id``).

This test enqueues every task well before the kill and waits until the replica's offset has caught up with
the primary's (``INFO replication``), so it can assert that nothing was lost.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from servers import RedisServer, redis_server_binary, sentinel
from test_e2e import check_outcome

from worker import sim
from worker.connect import SENTINEL_CLIENT_NAME
from worker.errors import StoreError
from worker.models import Record
from worker.store import Store
from worker.tracker import Tracker

pytestmark = pytest.mark.redis_server_only

MakeSim = Callable[..., Awaitable[tuple[str, sim.SimState]]]
ROOT = Path(__file__).resolve().parents[1]
MASTER = "mymaster"
N_TASKS = 100
SCRIPTS = ("succeed", "succeed", "partial", "error", "legacy")


class Cluster:
    """The Redis processes of one test (a primary, its replica, three Sentinels), every one killed at exit."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.primary = RedisServer(folder / "primary", {"save": ""}, name="primary")
        replica_of = ("--replicaof", "127.0.0.1", str(self.primary.port))
        self.replica = RedisServer(folder / "replica", {"save": ""}, name="replica", args=replica_of)
        timing = {"down_after_milliseconds": "1000", "failover_timeout": "5000", "parallel_syncs": "1"}
        self.sentinels = [sentinel(folder, f"sentinel{n}", MASTER, self.primary.port, **timing) for n in range(3)]

    @property
    def primary_port(self) -> int:
        return self.primary.port

    @property
    def replica_port(self) -> int:
        return self.replica.port

    @property
    def sentinel_ports(self) -> list[int]:
        return [s.port for s in self.sentinels]

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{nodes}/{MASTER}/0"

    def start_servers(self) -> None:
        self.primary.start("the Sentinel test")
        self.replica.start("the Sentinel test")

    def start_sentinels(self) -> None:
        for server in self.sentinels:
            server.start("the Sentinel test")

    def kill_primary(self) -> None:
        self.primary.stop(signal.SIGKILL)

    def close(self) -> None:
        for server in (self.primary, self.replica, *self.sentinels):
            server.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {s.log.name}\n{s.log_tail()}" for s in (self.primary, self.replica, *self.sentinels))


@contextmanager
def cluster(folder: Path) -> Iterator[Cluster]:
    redis_server_binary("the Sentinel test")
    c = Cluster(folder)
    try:
        yield c
    finally:
        c.close()


@contextmanager
def workers(env: dict[str, str], folder: Path, n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(n):
            with (folder / f"worker{i}.log").open("wb") as out:
                procs.append(
                    subprocess.Popen([sys.executable, "-m", "worker", "worker"], env=env, cwd=ROOT, stderr=out)
                )
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def worker_env(redis_url: str, sim_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACETRACK_")}
    env.update(
        {
            "ACETRACK_REDIS_URL": redis_url,
            "ACETRACK_API_BASE_URL": sim_url,
            "ACETRACK_API_TOKEN": "t",
            "ACETRACK_POLL_S": "0.5",
            "ACETRACK_FIRST_POLL_S": "0.2",
            "ACETRACK_LEASE_S": "2",
        }
    )
    return env


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, interval_s: float = 0.1) -> bool:
    """True once ``check`` is; Redis being unreachable meanwhile (a failover) counts as not yet."""
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        try:
            if await check():
                return True
        except (RedisError, StoreError, OSError):
            pass
        await asyncio.sleep(interval_s)
    return False


async def info(port: int, section: str) -> dict[str, object]:
    client = aioredis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    try:
        return await client.info(section)
    finally:
        await client.aclose()


async def sentinels_ready(ports: list[int]) -> bool:
    """Every Sentinel knows the replica and the two other Sentinels (else a failover cannot be agreed)."""
    for port in ports:
        client = aioredis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        try:
            state = await client.sentinel_master(MASTER)
        finally:
            await client.aclose()
        if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
            return False
    return True


async def master_port(ports: list[int]) -> int:
    client = aioredis.Redis(host="127.0.0.1", port=ports[0], decode_responses=True)
    try:
        _, port = await client.sentinel_get_master_addr_by_name(MASTER)
    finally:
        await client.aclose()
    return int(port)


async def enqueue(tracker: Tracker, state: sim.SimState) -> dict[str, str]:
    rng, scripts = random.Random(7), {}
    for i in range(N_TASKS):
        script = rng.choice(SCRIPTS)
        task_id = f"{script}-{i}"
        state.add_task("suno", task_id, script=script, run_s=rng.uniform(3.0, 12.0), clip_gap_s=0.5)
        await tracker.enqueue("suno", task_id)
        scripts[task_id] = script
    return scripts


async def terminal_records(tracker: Tracker, ids: list[str]) -> list[Record]:
    records = await tracker.store.get_many(("suno", i) for i in ids)
    return [r for r in records if r is not None and r.terminal]


@pytest.mark.timeout(120)
async def test_workers_follow_a_sentinel_failover_and_every_task_finishes(make_sim: MakeSim, tmp_path: Path) -> None:
    sim_url, state = await make_sim(auto=False, latency_s=0.05)
    with cluster(tmp_path) as redis_cluster:
        redis_cluster.start_servers()
        link_up = await eventually(
            lambda: _is(info(redis_cluster.replica_port, "replication"), "master_link_status", "up"), 15
        )
        assert link_up, redis_cluster.logs()
        redis_cluster.start_sentinels()
        assert await eventually(lambda: sentinels_ready(redis_cluster.sentinel_ports), 30), redis_cluster.logs()
        tracker = Tracker.from_url(redis_cluster.url, first_poll_s=0.2)
        try:
            await run_failover(redis_cluster, tracker, state, worker_env(redis_cluster.url, sim_url), tmp_path)
        finally:
            await tracker.close()
            await close_sentinel_clients(tracker)  # Tracker.close() leaves them open


def sentinel_clients(tracker: Tracker) -> list[aioredis.Redis]:
    """The clients that ``create_redis``'s ``Sentinel`` keeps, one per Sentinel address."""
    clients: list[aioredis.Redis] = tracker.store.redis.connection_pool.sentinel_manager.sentinels
    return clients


async def close_sentinel_clients(tracker: Tracker) -> None:
    for client in sentinel_clients(tracker):
        await client.aclose()


async def named_connections(ports: list[int]) -> list[int]:
    """acetrack's connections to each Sentinel, as the Sentinel lists its clients."""
    counts = []
    for port in ports:
        async with aioredis.Redis(port=port, decode_responses=True) as admin:
            counts.append(sum(1 for c in await admin.client_list() if c["name"] == SENTINEL_CLIENT_NAME))
    return counts


async def test_tracker_close_closes_its_sentinel_connections(tmp_path: Path) -> None:
    with cluster(tmp_path) as redis_cluster:
        redis_cluster.start_servers()
        redis_cluster.start_sentinels()
        tracker = Tracker.from_url(redis_cluster.url)
        try:
            assert await tracker.get("suno", "nothing") is None  # asks a Sentinel for the primary
            assert sum(await named_connections(redis_cluster.sentinel_ports)) >= 1
            await tracker.close()
            closed = await eventually(lambda: _equals(named_connections(redis_cluster.sentinel_ports), [0, 0, 0]), 10)
            assert closed, await named_connections(redis_cluster.sentinel_ports)
        finally:
            await close_sentinel_clients(tracker)


async def run_failover(
    redis_cluster: Cluster, tracker: Tracker, state: sim.SimState, env: dict[str, str], folder: Path
) -> None:
    started = time.monotonic()
    with workers(env, folder, 2) as procs:
        assert await eventually(lambda: _n_workers(tracker.store, 2), 30), _tails(folder)
        scripts = await enqueue(tracker, state)
        ids = list(scripts)
        # nothing enqueued may sit in the replication window: wait until the replica has it all
        target = int((await info(redis_cluster.primary_port, "replication"))["master_repl_offset"])
        caught_up = await eventually(lambda: _replica_at(redis_cluster.replica_port, target), 10, 0.02)
        assert caught_up, redis_cluster.logs()
        await asyncio.sleep(2.0)  # polls are under way, a few tasks have finished
        done_before = len(await terminal_records(tracker, ids))
        killed_at, killed_at_ms = time.monotonic(), int(time.time() * 1000)
        redis_cluster.kill_primary()
        promoted = await eventually(
            lambda: _equals(master_port(redis_cluster.sentinel_ports), redis_cluster.replica_port), 30
        )
        promoted_after_s = time.monotonic() - killed_at
        assert promoted, redis_cluster.logs()
        finished = await eventually(lambda: _all_terminal(tracker, ids), 60, 0.2)
        finished_after_s = time.monotonic() - killed_at
        records = await terminal_records(tracker, ids)
        # both workers beat on the new primary since the kill (a heartbeat comes every 5 s)
        beating = await eventually(lambda: _n_workers(tracker.store, 2, since_ms=killed_at_ms), 12)
        alive = [p.poll() is None for p in procs]
        events = await tracker.store.redis.xrange(tracker.store.events_key)
    print(
        f"\nsentinel: {done_before}/{N_TASKS} terminal at the kill; replica promoted {promoted_after_s:.1f}s "
        f"after it; all terminal {finished_after_s:.1f}s after it; {time.monotonic() - started:.1f}s in all"
    )
    assert alive == [True, True], _tails(folder)
    assert done_before < N_TASKS // 2  # the kill really was mid-run
    assert finished, (len(records), _tails(folder))
    for record in records:
        check_outcome(record, scripts[record.id])
    terminal = [f["id"] for _, f in events if f["type"] in ("task.succeeded", "task.failed")]
    assert sorted(terminal) == sorted(ids)  # none lost, none written twice
    assert beating, _tails(folder)


async def _is(info_call: Awaitable[dict[str, object]], key: str, value: str) -> bool:
    return (await info_call).get(key) == value


async def _equals(call: Awaitable[object], value: object) -> bool:
    return await call == value


async def _replica_at(port: int, offset: int) -> bool:
    return int((await info(port, "replication"))["slave_repl_offset"]) >= offset


async def _n_workers(store: Store, n: int, since_ms: int = 0) -> bool:
    return sum(1 for beat in await store.workers() if int(beat["at_ms"]) > since_ms) >= n


async def _all_terminal(tracker: Tracker, ids: list[str]) -> bool:
    return len(await terminal_records(tracker, ids)) == len(ids)


def _tails(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(folder.glob("worker*.log")))


@pytest.mark.timeout(90)
async def test_polling_resumes_at_its_cadence_right_after_a_failover(make_sim: MakeSim, tmp_path: Path) -> None:
    """One worker, many small batches in flight (the simulator answers after 0.8 s) when the primary dies:
    those jobs end during the outage. Once the replica is promoted, requests must flow at the poll cadence
    again (no gap of more than 2.5 s between two requests while tasks are pending)."""
    sim_url, state = await make_sim(auto=False, latency_s=0.8)
    with cluster(tmp_path) as redis_cluster:
        redis_cluster.start_servers()
        assert await eventually(
            lambda: _is(info(redis_cluster.replica_port, "replication"), "master_link_status", "up"), 15
        )
        redis_cluster.start_sentinels()
        assert await eventually(lambda: sentinels_ready(redis_cluster.sentinel_ports), 30), redis_cluster.logs()
        tracker = Tracker.from_url(redis_cluster.url, first_poll_s=0.2)
        env = worker_env(redis_cluster.url, sim_url) | {"ACETRACK_BATCH_SIZE": "3", "ACETRACK_COALESCE_S": "0"}
        loop = asyncio.get_running_loop()
        try:
            with workers(env, tmp_path, 1):
                assert await eventually(lambda: _n_workers(tracker.store, 1), 30), _tails(tmp_path)
                for i in range(60):
                    state.add_task("suno", f"slow-{i}", run_s=25.0, clip_gap_s=0.0)
                    await tracker.enqueue("suno", f"slow-{i}")
                await asyncio.sleep(3.0)  # batches are in flight in the slow simulator
                redis_cluster.kill_primary()
                promoted = await eventually(
                    lambda: _equals(master_port(redis_cluster.sentinel_ports), redis_cluster.replica_port), 30
                )
                assert promoted, redis_cluster.logs()
                promoted_at = loop.time()
                await asyncio.sleep(14.0)
        finally:
            await tracker.close()
            await close_sentinel_clients(tracker)
    after = sorted(e.at_s for e in state.log if e.at_s > promoted_at + 1.0)
    gaps = [b - a for a, b in zip(after, after[1:], strict=False)]
    print(f"\nrequests in the 13 s after promotion: {len(after)}; longest gap {max(gaps, default=0):.1f}s")
    assert after and max(gaps) < 2.5, [round(g, 1) for g in gaps if g > 1.0]
