"""Soak: does a long-running worker (and Redis) stay flat in memory once tasks retire?

``make soak`` (not in CI): ``python -m bench.soak --tasks 100000 --minutes 10``. One ``acetrack worker``
subprocess on a throwaway ``redis-server`` and the Tasks API simulator (auto-created ids: the simulator
picks each id's script and its 2-8 s lifetime from the id). Tasks are enqueued with plain ``XADD
acetrack:intake`` evenly over ``--minutes``; every ``--sample-s`` the worker's RSS (``VmRSS`` of
``/proc/<pid>/status``) and Redis ``used_memory`` are sampled, with the pending count, key count and
events-stream length. After the enqueue phase it keeps sampling for ``--drain-s`` while the last tasks
finish and their records expire (``ACETRACK_RETENTION_S``, ``--retention-s``).

Verdict, printed with the table and written to ``bench/results/soak.json`` (``--out``):

- steady state: over the enqueue phase after warm-up (retention + longest lifetime + first poll), the median
  of the last third of the samples against the median of the first third; within ``--flat-pct``
  (default 10 %) counts as flat (too few samples: "too short");
- retired: after the drain, ``used_memory`` against the baseline before the first task (what is left once
  every record has expired) and the worker's RSS against its value at the end of the enqueue phase.

``--scale`` multiplies task lifetimes and every poll setting (first poll, interval, max interval, coalesce,
lease); at 1 the simulator is ``python -m worker sim`` in a subprocess, otherwise (the CLI has no lifetime
knob) it runs in this process. A short run that proves the harness: ``python -m bench.soak --tasks 5000
--minutes 1 --retention-s 20 --sample-s 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.procs import free_port
from worker.models import TERMINAL_STATES, TaskState
from worker.store import Store

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "acetrack"
#: the store's key names (the store module owns them; nothing is sent through this unconnected client)
KEYS = Store(aioredis.Redis(), PREFIX)
#: the simulator's lifetimes of auto-created tasks at scale 1 (worker.sim's default ``auto_run_s``)
AUTO_RUN_S = (2.0, 8.0)
ENQUEUE_TICK_S = 0.1
#: a worker prunes index entries of retired tasks this often (worker.scheduler.PRUNE_EVERY_S): the drain
#: phase lasts at least one such pass beyond the retention
PRUNE_EVERY_S = 60.0


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"soak: {proc.args} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"soak: nothing listens on port {port}")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Procs:
    """Child processes, each stopped by its own pid at exit (SIGTERM, then SIGKILL)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.folder / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def worker_env(args: argparse.Namespace, redis_url: str, sim_url: str) -> dict[str, str]:
    s = args.scale
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACETRACK_")}
    env.update(
        {
            "ACETRACK_REDIS_URL": redis_url,
            "ACETRACK_API_BASE_URL": sim_url,
            "ACETRACK_API_TOKEN": "soak",
            "ACETRACK_FIRST_POLL_S": f"{3.0 * s:g}",
            "ACETRACK_POLL_S": f"{3.0 * s:g}",
            "ACETRACK_MAX_POLL_S": f"{60.0 * s:g}",
            "ACETRACK_COALESCE_S": f"{1.0 * s:g}",
            "ACETRACK_LEASE_S": f"{max(2.0, 30.0 * s):g}",
            "ACETRACK_NOT_FOUND_GRACE_S": f"{max(5.0, 60.0 * s):g}",
            "ACETRACK_RATE_LIMIT_RPS": f"{args.rate_limit_rps:g}",
            "ACETRACK_RETENTION_S": f"{args.retention_s:g}",
            "ACETRACK_EVENTS_MAXLEN": str(args.events_maxlen),
            "ACETRACK_LOG_LEVEL": "WARNING",
        }
    )
    return env


async def start_sim(args: argparse.Namespace, procs: Procs) -> tuple[str, asyncio.Task[None] | None]:
    """The simulator: the CLI in a subprocess at scale 1, else in this process with scaled lifetimes."""
    port = free_port()
    sim_rps = args.rate_limit_rps * 1.25  # above the worker's own budget: the soak is about memory, not 429s
    if args.scale == 1.0:
        cmd = [sys.executable, "-m", "worker", "sim", "--port", str(port), "--rate-limit-rps", f"{sim_rps:g}"]
        wait_port(port, procs.start("sim", cmd))
        return f"http://127.0.0.1:{port}", None
    from worker.sim import run_sim

    run_s = (AUTO_RUN_S[0] * args.scale, AUTO_RUN_S[1] * args.scale)
    task = asyncio.create_task(run_sim("127.0.0.1", port, rate_limit_rps=sim_rps, auto_run_s=run_s))
    for _ in range(200):
        await asyncio.sleep(0.05)
        with suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return f"http://127.0.0.1:{port}", task
    raise SystemExit("soak: the in-process simulator did not start")


async def enqueue(client: aioredis.Redis, n: int, seconds: float, counter: list[int]) -> None:
    """XADD n tasks evenly over ``seconds``, in one pipeline per tick."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while sent < n:
        due = min(n, int(n * (loop.time() - start) / seconds) + 1)
        if due > sent:
            async with client.pipeline(transaction=False) as pipe:
                for i in range(sent, due):
                    pipe.xadd(KEYS.intake_key, {"service": "suno", "id": f"soak-{i:07d}"})
                await pipe.execute()
            sent = due
            counter[0] = sent
        await asyncio.sleep(ENQUEUE_TICK_S)


async def sample(client: aioredis.Redis, worker_pid: int, t0: float, phase: str, enqueued: int) -> dict[str, Any]:
    mem = await client.info("memory")
    async with client.pipeline(transaction=False) as pipe:
        pipe.zcard(KEYS.index_key("suno", TaskState.PENDING))
        pipe.xlen(KEYS.intake_key)
        pipe.dbsize()
        pipe.exists(KEYS.events_key)
        pending, intake, keys, has_events = await pipe.execute()
    events = await client.xlen(KEYS.events_key) if has_events else 0
    return {
        "t_s": round(time.monotonic() - t0, 1),
        "phase": phase,
        "enqueued": enqueued,
        "pending": int(pending) + int(intake),
        "worker_rss_mb": rss_mb(worker_pid),
        "redis_used_mb": round(int(mem["used_memory"]) / 2**20, 2),
        "keys": int(keys),
        "events": int(events),
    }


async def key_breakdown(client: aioredis.Redis) -> dict[str, float]:
    """Keys left at the end by kind (the first two parts of the name), the biggest sets' sizes, and the
    memory of the events stream (capped by ``ACETRACK_EVENTS_MAXLEN``, not expired by the retention)."""
    kinds: Counter[str] = Counter()
    async for key in client.scan_iter(count=1000):
        kinds[":".join(key.split(":")[:2])] += 1
    events_bytes = int(await client.memory_usage(KEYS.events_key, samples=0) or 0)
    sizes: dict[str, float] = {"events stream MB": round(events_bytes / 2**20, 2)}
    terminal = [KEYS.index_key(scope, state) for scope in ("suno", None) for state in TERMINAL_STATES]
    names = (*terminal, KEYS.lifetimes_key("suno"))
    for key in names:
        name = key.removeprefix(PREFIX + ":")
        kind = await client.type(key)
        sizes[f"size {name}"] = int(await (client.zcard(key) if kind == "zset" else client.llen(key)))
    return {**dict(kinds.most_common(12)), **sizes}


def third_medians(values: Sequence[float]) -> tuple[float, float] | None:
    if len(values) < 6:
        return None
    third = len(values) // 3
    return statistics.median(values[:third]), statistics.median(values[-third:])


def verdict(samples: list[dict[str, Any]], args: argparse.Namespace, warmup_s: float) -> dict[str, Any]:
    enqueue_end_s = args.minutes * 60
    steady = [s for s in samples if s["phase"] == "enqueue" and warmup_s <= s["t_s"] <= enqueue_end_s]
    out: dict[str, Any] = {"warmup_s": warmup_s, "steady_samples": len(steady)}
    for metric in ("worker_rss_mb", "redis_used_mb"):
        medians = third_medians([s[metric] for s in steady if s[metric] is not None])
        if medians is None:
            out[f"{metric} steady"] = "too short"
            continue
        first, last = medians
        growth = (last - first) / first * 100 if first else 0.0
        flat = "flat" if abs(growth) <= args.flat_pct else "GROWING" if growth > 0 else "shrinking"
        out[f"{metric} steady"] = f"{flat}: {first:.1f} -> {last:.1f} MB ({growth:+.1f}%)"
    baseline, end = samples[0], samples[-1]
    at_enqueue_end = [s for s in samples if s["phase"] == "enqueue"][-1]
    peak = max(s["redis_used_mb"] for s in samples)
    out["redis retired"] = (
        f"{end['redis_used_mb']:.1f} MB after the drain, baseline {baseline['redis_used_mb']:.1f} MB, "
        f"peak {peak:.1f} MB; {end['keys']} keys left, {end['pending']} tasks pending"
    )
    out["worker retired"] = (
        f"RSS {end['worker_rss_mb']:.1f} MB after the drain vs {at_enqueue_end['worker_rss_mb']:.1f} MB at the "
        f"end of the enqueue phase (start {baseline['worker_rss_mb']:.1f} MB)"
    )
    return out


def print_table(samples: list[dict[str, Any]]) -> None:
    cols = ("t_s", "phase", "enqueued", "pending", "worker_rss_mb", "redis_used_mb", "keys", "events")
    print("  ".join(f"{c:>13}" for c in cols))
    for s in samples:
        print("  ".join(f"{s[c]:>13.1f}" if isinstance(s[c], float) else f"{s[c]!s:>13}" for c in cols))


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="acetrack-soak-"))
    print(f"soak: logs in {folder}", flush=True)
    procs = Procs(folder)
    sim_task: asyncio.Task[None] | None = None
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("soak: redis-server is not on PATH (apt-get install redis-server)")
    try:
        redis_port = free_port()
        redis_cmd = [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        wait_port(redis_port, procs.start("redis", redis_cmd))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        sim_url, sim_task = await start_sim(args, procs)
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            worker = procs.start(
                "worker", [sys.executable, "-m", "worker", "worker"], worker_env(args, redis_url, sim_url)
            )
            return await run_phases(args, client, worker)
        finally:
            await client.aclose()
    finally:
        if sim_task is not None:
            sim_task.cancel()
            with suppress(asyncio.CancelledError):
                await sim_task
        procs.close()


async def run_phases(
    args: argparse.Namespace, client: aioredis.Redis, worker: subprocess.Popen[bytes]
) -> dict[str, Any]:
    await asyncio.sleep(2.0)  # the worker has started (imports, arq start-up)
    if worker.poll() is not None:
        raise SystemExit(f"soak: the worker exited with {worker.returncode}; see its log")
    t0 = time.monotonic()
    counter = [0]
    samples = [await sample(client, worker.pid, t0, "baseline", 0)]
    enqueuer = asyncio.create_task(enqueue(client, args.tasks, args.minutes * 60, counter))
    phase_end = {"enqueue": args.minutes * 60, "drain": args.minutes * 60 + args.drain_s}
    next_at = args.sample_s
    for phase, end_s in phase_end.items():
        while next_at <= end_s + 1e-6:
            await asyncio.sleep(max(0.0, t0 + next_at - time.monotonic()))
            if worker.poll() is not None:
                raise SystemExit(f"soak: the worker exited with {worker.returncode} at {next_at:.0f}s")
            samples.append(await sample(client, worker.pid, t0, phase, counter[0]))
            print(f"soak: {samples[-1]}", flush=True)
            next_at += args.sample_s
        if phase == "enqueue":
            await enqueuer
    # records of tasks finished after this expire as fast as new ones come (index entries of retired tasks go
    # once per PRUNE_EVERY_S: a small sawtooth on top)
    warmup_s = args.retention_s + AUTO_RUN_S[1] * args.scale + 3.0 * args.scale
    return {
        "params": vars(args),
        "samples": samples,
        "verdict": verdict(samples, args, warmup_s),
        "keys_left": await key_breakdown(client),
        "counters": await client.hgetall(KEYS.counters_key),
    }


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the enqueue phase")
    parser.add_argument("--scale", type=float, default=1.0, help="time scale of task lifetimes and poll settings")
    parser.add_argument("--retention-s", type=float, default=60.0, help="ACETRACK_RETENTION_S")
    parser.add_argument("--events-maxlen", type=int, default=5000, help="ACETRACK_EVENTS_MAXLEN")
    parser.add_argument(
        "--rate-limit-rps", type=float, default=200.0, help="the worker's budget; the sim allows 25%% more"
    )
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--drain-s", type=float, help="sampling after the enqueue phase (default: retention + 90 s)")
    parser.add_argument("--flat-pct", type=float, default=10.0, help="growth within this counts as flat")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = parser.parse_args(argv)
    if args.drain_s is None:
        args.drain_s = args.retention_s + AUTO_RUN_S[1] * args.scale + PRUNE_EVERY_S + 30.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    result = asyncio.run(soak(args))
    result["duration_s"] = round(time.monotonic() - started, 1)
    print()
    print_table(result["samples"])
    print()
    for key, value in {**result["verdict"], **result["keys_left"]}.items():
        print(f"{key}: {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out} ({result['duration_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
