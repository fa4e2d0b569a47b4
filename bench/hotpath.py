"""``python -m bench.hotpath``: the worker's CPU per observation on its hot path, warm and back to back.

The full benchmark measures a worker process from outside, so its figure also carries the job
queue, the loops and what each wake-up from idle costs (on a small VM, a Redis round trip after a
pause costs about three times one made back to back). This measures the poll path alone: in one
process, on uvloop, it claims batches of a real ``redis-server`` and polls them with
``Poller.poll_batch`` against the simulator (its own process, rate limit off), exactly as a poll
job does, for ``--seconds``, and divides this process's CPU by the ids observed. Tasks live
10-60 s and finish during the run, so the batches mix unchanged answers, progress and verdicts;
the sparser the batches, the more of each batch's answers have changed since the task's last poll
(a changed answer costs several times an unchanged one). Prints one JSON line; ``--profile OUT``
writes a cProfile (CPU time) too.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import random
import resource
import tempfile
import time
from typing import Any

import aiohttp
import uvloop

from bench import procs
from worker.api import UpstreamClient
from worker.cadence import Policy
from worker.clock import system_clock
from worker.connect import create_redis
from worker.intake import EnqueueRequest
from worker.polling import Poller
from worker.store import Store, Wait

BATCH = 50


async def _start_sim(log: Any) -> tuple[Any, str]:
    sim = procs.start_python("bench.simserver", ["--rps", "0"], env={}, log=log)
    port = await asyncio.to_thread(procs.read_line, sim, "PORT ")
    return sim, f"http://127.0.0.1:{port}"


async def _seed(session: aiohttp.ClientSession, base: str, store: Store, tasks: int, seed: int) -> None:
    rng = random.Random(seed)
    specs = [
        {"id": f"hot-{i:06d}", "script": "succeed", "run_s": rng.uniform(10, 60), "clip_gap_s": rng.uniform(1, 8)}
        for i in range(tasks)
    ]
    async with session.post(f"{base}/_bench/tasks", json=specs) as resp:
        resp.raise_for_status()
    now_ms = system_clock()
    for spec in specs:
        await store.register(EnqueueRequest("suno", str(spec["id"])), now_ms, deadline_s=3600, first_due_ms=now_ms)


async def _batch(store: Store, poller: Poller) -> int:
    """Claim the longest-waiting pending ids (as if an hour on, so all are due) and poll them once,
    as a poll job does; returns the ids observed (0: none left pending)."""
    later_ms = system_clock() + 3_600_000
    got = await store.claim("suno", "default", later_ms, batch=BATCH, coalesce_ms=0, lease_ms=1, rate_rps=1e9)
    if isinstance(got, Wait):
        return 0
    await poller.poll_batch("suno", "default", got.claim_id, got.ids, got.pending)
    return len(got.ids)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    redis_server = procs.RedisServer()
    with tempfile.TemporaryFile() as log:  # the simulator's stderr, kept only while it runs
        sim, base = await _start_sim(log)
        redis = create_redis(redis_server.url)
        try:
            async with aiohttp.ClientSession() as session:
                store = Store(redis)
                await _seed(session, base, store, args.tasks, args.seed)
                api = UpstreamClient(session, base, {"default": "bench"})
                poller = Poller(store, api, system_clock, Policy(poll_s=1.0, max_poll_s=5.0), 1e9)
                for _ in range(args.tasks // BATCH):  # warm-up: first answers, caches, connections
                    await _batch(store, poller)
                profile = cProfile.Profile(time.process_time) if args.profile else None
                usage0, wall0, observed, batches = resource.getrusage(resource.RUSAGE_SELF), time.monotonic(), 0, 0
                if profile:
                    profile.enable()
                while time.monotonic() - wall0 < args.seconds and (got := await _batch(store, poller)):
                    observed += got
                    batches += 1
                    if args.gap_s:
                        await asyncio.sleep(args.gap_s)
                if profile:
                    profile.disable()
                    profile.dump_stats(args.profile)
                usage1 = resource.getrusage(resource.RUSAGE_SELF)
                user_s, sys_s = usage1.ru_utime - usage0.ru_utime, usage1.ru_stime - usage0.ru_stime
                cpu_s = user_s + sys_s
        finally:
            await redis.aclose()
            procs.stop(sim)
            redis_server.stop()
    return {
        "tasks": args.tasks,
        "batches": batches,
        "observations": observed,
        "cpu_s": round(cpu_s, 3),
        "cpu_ms_per_observation": round(cpu_s * 1000 / max(observed, 1), 4),
        # the kernel's share (system calls, wake-ups) apart from Python's own work
        "user_ms_per_observation": round(user_s * 1000 / max(observed, 1), 4),
        "sys_ms_per_observation": round(sys_s * 1000 / max(observed, 1), 4),
        "requests": api.requests,
        "gap_s": args.gap_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0, help="measure this long (tasks live 10-60 s)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--gap-s", type=float, default=0.0, help="idle between batches (a sparse workload)")
    parser.add_argument("--profile", help="write a cProfile (CPU time) of the measured part here")
    print(json.dumps(uvloop.run(measure(parser.parse_args(argv)))))


if __name__ == "__main__":
    main()
