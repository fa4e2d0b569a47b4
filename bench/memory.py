"""Redis memory per finished task, by key family: ``python -m bench.memory [--tasks N] [--events-maxlen N]``.

Runs a throwaway Redis server, ``acetrack sim`` and one ``acetrack worker`` (from the current
directory, so a ``git worktree`` of an earlier commit measures that commit), tracks ``--tasks`` Suno
tasks to their end, then sums ``MEMORY USAGE`` of every key under the prefix by family (``task``,
``events``, ``idx``...) and divides by the tasks; also INFO's ``used_memory`` after less before, which
adds what ``MEMORY USAGE`` leaves out (the allocator's rounding, the keyspace's tables): the figure
``bench.run`` reports. ``--events-maxlen 100`` caps the events stream, as
the default cap does in a steady flow, so what is left is what a retained record costs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import time

import redis.asyncio as aioredis

from worker.embedded import embedded_server, free_port
from worker.models import TaskState
from worker.tracker import Tracker

#: how long the tasks may take to finish before the measure is given up
FINISH_TIMEOUT_S = 300.0


async def _until_finished(tracker: Tracker, ids: list[str]) -> None:
    give_up = time.monotonic() + FINISH_TIMEOUT_S
    while time.monotonic() < give_up:
        records = await tracker.store.get_many(("suno", i) for i in ids)
        if all(r is not None and r.state is not TaskState.PENDING for r in records):
            return
        await asyncio.sleep(1.0)
    raise SystemExit(f"bench.memory: the tasks did not finish within {FINISH_TIMEOUT_S:.0f} s")


async def _families(r: aioredis.Redis, prefix: str) -> collections.Counter[str]:
    sizes: collections.Counter[str] = collections.Counter()
    async for key in r.scan_iter(f"{prefix}:*", count=1000):
        sizes[key.split(":")[1]] += await r.memory_usage(key, samples=0) or 0
    return sizes


async def measure(url: str, tasks: int, events_maxlen: int) -> None:
    r = aioredis.Redis.from_url(url, decode_responses=True)
    sim_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACETRACK_")}
    env.update(
        ACETRACK_REDIS_URL=url,
        ACETRACK_API_TOKEN="bench",
        ACETRACK_API_BASE_URL=f"http://127.0.0.1:{sim_port}",
        ACETRACK_FIRST_POLL_S="0.5",
        ACETRACK_POLL_S="0.5",
        ACETRACK_EVENTS_MAXLEN=str(events_maxlen),
    )
    quiet = subprocess.DEVNULL
    sim = subprocess.Popen([sys.executable, "-m", "worker", "sim", "--port", str(sim_port)], env=env, stderr=quiet)
    worker = subprocess.Popen([sys.executable, "-m", "worker", "worker"], env=env, stderr=quiet)
    try:
        tracker = Tracker.over(r)
        used_before = (await r.info("memory"))["used_memory"]
        ids = [f"mem{i:06d}-succeed" for i in range(tasks)]
        for task_id in ids:
            await tracker.enqueue("suno", task_id)
        await _until_finished(tracker, ids)
        sizes, events = await _families(r, tracker.store.prefix), await r.xlen(tracker.store.events_key)
        used_delta = (await r.info("memory"))["used_memory"] - used_before
    finally:
        for proc in (worker, sim):
            proc.terminate()
            proc.wait(timeout=15)
        await r.aclose()
    print(f"{tasks} tasks, {events} events kept ({events / tasks:.2f} a task); bytes per task by key family:")
    for family, size in sizes.most_common():
        print(f"  {family:12s} {size / tasks:8.0f}")
    print(f"  {'all':12s} {sum(sizes.values()) / tasks:8.0f}")
    # the keyspace's own tables, expiry entries and allocator rounding are in used_memory, not in
    # MEMORY USAGE: the benchmark's figure (bench.run) is this one
    print(f"  {'used_memory':12s} {used_delta / tasks:8.0f}  (INFO's used_memory after, less before)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks to track to their end (default 1000)")
    parser.add_argument("--events-maxlen", type=int, default=100_000, help="ACETRACK_EVENTS_MAXLEN (default 100000)")
    args = parser.parse_args()
    with embedded_server("any") as url:
        asyncio.run(measure(url, args.tasks, args.events_maxlen))


if __name__ == "__main__":
    main()
