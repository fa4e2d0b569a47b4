"""``python -m bench.run``: acetrack against the official SDK's ``wait()`` loop, one workload, one simulator.

Contenders, all in the same run, tracking the same task ids on the same simulator at the same time,
each with its own bearer token (the simulator's rate limit is per token, like the real API's):

- ``acetrack-1w`` / ``acetrack-2w``: the real arq worker as 1 or 2 subprocesses
  (``python -m worker worker``) on their own throwaway ``redis-server``; tasks are enqueued with
  ``Tracker.enqueue`` as they arrive, verdicts and their times are read from ``acetrack:events``.
- ``sdk``: the official ``acedatacloud`` SDK, one ``AsyncTaskHandle.wait()`` per task at its default
  interval, in its own process (``bench.sdk_client``), against the documented 60 req/s limit.
- ``sdk-unlimited``: the same loop on a random sample of the tasks (``--sdk-sample``) with the rate
  limit lifted for its token: what the loop costs per task when nothing pushes back.

Time is scaled by ``--scale``: task lifetimes, arrivals, every acetrack time setting (first poll, poll,
max poll, coalesce, lease, deadline, not-found grace), the SDK's poll interval, ``max_wait`` and retry
back-off are multiplied by it; request rates (acetrack's budget, the simulator's limit) are divided by
it. Every figure is reported in unscaled seconds. Results go to ``bench/results/<stem>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import pstats
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from acedatacloud._runtime.tasks import AsyncTaskHandle

from bench import procs, report
from bench.workload import SERVICE, TaskSpec, Verdict, Workload, generate
from config import Settings
from worker.classify import usual_lifetime_s
from worker.models import TERMINAL_STATES, TaskState
from worker.store import Store
from worker.tracker import Tracker

RESULTS = Path(__file__).resolve().parent / "results"
#: the documented polling limit of the Tasks API, per token (DESIGN.md §1)
DOCUMENTED_RPS = 60.0
SAMPLE_EVERY_S = 0.5
#: Redis memory per pending task is measured only if no more than this share had finished at the peak
MAX_FINISHED_SHARE = 0.05
ACETRACK_TIME_SETTINGS = (
    "first_poll_s",
    "poll_s",
    "max_poll_s",
    "coalesce_s",
    "lease_s",
    "deadline_s",
    "not_found_grace_s",
)
_WAIT = inspect.signature(AsyncTaskHandle.wait).parameters
SDK_POLL_INTERVAL_S: float = _WAIT["poll_interval"].default
SDK_MAX_WAIT_S: float = _WAIT["max_wait"].default


def acetrack_settings(scale: float, overrides: dict[str, float] | None = None) -> dict[str, float]:
    """acetrack's defaults (read from ``config.Settings``) or ``overrides`` (unscaled), time settings times
    ``scale``, rate over it."""
    fields = Settings.model_fields
    given = overrides or {}
    values = {name: given.get(name, float(fields[name].default)) * scale for name in ACETRACK_TIME_SETTINGS}
    values["deadline_s"] = max(1.0, values["deadline_s"])
    values["rate_limit_rps"] = float(fields["rate_limit_rps"].default) / scale
    return values


class AcetrackSide:
    """One acetrack contender: its redis-server, its worker processes, its view of Redis."""

    def __init__(
        self,
        name: str,
        workers: int,
        scale: float,
        sim_url: str,
        tmp: Path,
        args: argparse.Namespace,
        src: Path = procs.ROOT,
    ):
        self.name, self.workers, self.scale, self.token = name, workers, scale, name
        #: the acetrack checkout its workers run (another one: a same-run baseline, ``--baseline-src``)
        self.src = src
        self.redis = procs.RedisServer()
        self.client = aioredis.Redis.from_url(self.redis.url, decode_responses=True)
        self.store = Store(self.client)
        values = acetrack_settings(scale, args.acetrack_set)
        self.settings = values
        self.tracker = Tracker(self.store, deadline_s=values["deadline_s"], first_poll_s=values["first_poll_s"])
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ACETRACK_")}
        self.env.update({f"ACETRACK_{k.upper()}": repr(v) for k, v in values.items()})
        self.env.update(
            {
                "ACETRACK_REDIS_URL": self.redis.url,
                "ACETRACK_API_BASE_URL": sim_url,
                "ACETRACK_API_TOKEN": self.token,
                "ACETRACK_EVENTS_MAXLEN": str(max(100_000, 10 * args.tasks)),
                "ACETRACK_LOG_LEVEL": "WARNING",
            }
        )
        self.tmp, self.profile = tmp, args.profile
        self.procs: list[subprocess.Popen[bytes]] = []
        self.enqueued: dict[str, float] = {}
        self.mem_baseline = 0
        self.dataset_baseline = 0
        self.samples: list[tuple[float, int, int, int]] = []  # (at, used_memory, pending, finished)
        self.learned: list[tuple[float, float]] = []  # (at, usual lifetime in unscaled s)
        self.key_bytes: dict[str, Any] = {}
        self.families: dict[str, Any] = {}
        self.pending = -1

    def start_workers(self) -> None:
        for i in range(self.workers):
            log = open(self.tmp / f"{self.name}-worker{i}.log", "wb")
            args = ["-m", "worker", "worker"]
            if self.profile:
                args = ["-m", "bench.profile_worker", str(self.tmp / f"{self.name}-worker{i}.prof")]
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, *args],
                    cwd=self.src,
                    env={**self.env, "PYTHONPATH": str(self.src)},
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(await self.store.workers()) < self.workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise SystemExit(f"bench: {self.name} workers did not start; see {self.tmp}/{self.name}-worker*.log")
            await asyncio.sleep(0.1)

    def cpu(self) -> float:
        return sum(self.cpu_each())

    def cpu_each(self) -> list[float]:
        return [procs.cpu_seconds(p.pid) or 0.0 for p in self.procs]

    async def used_memory(self) -> int:
        return int((await self.client.info("memory"))["used_memory"])

    async def sample(self, now: float) -> None:
        pending_key = self.store.index_key(SERVICE, TaskState.PENDING)
        used, pending = await self.used_memory(), int(await self.client.zcard(pending_key))
        finished = sum([int(await self.client.zcard(self.store.index_key(SERVICE, s))) for s in TERMINAL_STATES])
        self.pending = pending
        self.samples.append((now, used, pending, finished))
        usual = usual_lifetime_s(await self.store.lifetimes_s(SERVICE))
        self.learned.append((now, usual / self.scale))

    async def sample_keys(self, limit: int = 200) -> None:
        """Bytes per pending task from MEMORY USAGE: its hash plus its share of the sorted sets it is in."""
        pending_key = self.store.index_key(SERVICE, TaskState.PENDING)
        ids = await self.client.zrandmember(pending_key, limit) or []
        if len(ids) < min(limit, 20):
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.memory_usage(self.store.task_key(SERVICE, i), samples=0)
            hashes = [h or 0 for h in await pipe.execute()]
        zsets = {
            "due": self.store.due_key(SERVICE, "default"),
            "idx_pending": pending_key,
        }
        per_member = {}
        for label, key in zsets.items():
            size, count = await self.client.memory_usage(key, samples=0) or 0, await self.client.zcard(key)
            per_member[label] = round(size / count, 1) if count else 0.0
        task_hash = sum(hashes) / len(hashes)
        sample = {
            "task_hash_bytes": round(task_hash, 1),
            "task_hash_bytes_max": max(hashes),
            "zset_bytes_per_member": per_member,
            "key_bytes_per_task": round(task_hash + sum(per_member.values())),
            "sampled_pending": len(ids),
        }
        if sample["key_bytes_per_task"] >= self.key_bytes.get("key_bytes_per_task", 0):
            self.key_bytes = sample

    async def breakdown(self) -> None:
        """Where Redis memory goes, by key family (MEMORY USAGE of every key), and INFO's dataset figure."""
        families: dict[str, list[int]] = {}
        keys = [k async for k in self.client.scan_iter(count=1000)]
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.memory_usage(key, samples=0)
            sizes = await pipe.execute()
        for key, size in zip(keys, sizes, strict=True):
            parts = key.split(":")
            family = ":".join(parts[:3] if parts[1] == "arq" else parts[:2])
            entry = families.setdefault(family, [0, 0])
            entry[0] += 1
            entry[1] += size or 0
        info = await self.client.info("memory")
        self.families = {
            "families_at_end_of_arrivals": {k: {"keys": v[0], "bytes": v[1]} for k, v in sorted(families.items())},
            "dataset_bytes_at_end_of_arrivals": int(info["used_memory_dataset"]),
            "pending_at_end_of_arrivals": self.pending,
        }

    def memory(self) -> dict[str, Any]:
        if not self.samples:
            return {}
        at, used, pending, finished = max(self.samples, key=lambda s: s[2])
        delta = round((used - self.mem_baseline) / pending) if pending else None
        out: dict[str, Any] = {
            "baseline_used_memory": self.mem_baseline,
            "used_memory_at_peak_pending": used,
            "peak_pending": pending,
            "finished_at_peak_pending": finished,
            # finished records (and their events) would count against pending tasks: only a burst measures it
            "bytes_per_pending_task": delta if finished <= MAX_FINISHED_SHARE * pending else None,
            "delta_at_peak_pending_per_pending_task": delta,
            "dataset_baseline_bytes": self.dataset_baseline,
            **self.key_bytes,
            **self.families,
        }
        return out

    async def verdicts(self) -> tuple[dict[str, Verdict], dict[str, int]]:
        """Terminal verdicts from the events stream (first terminal event per task), and event counts."""
        verdicts: dict[str, Verdict] = {}
        counts: dict[str, int] = {}
        terminal_per_task: dict[str, int] = {}
        start = "-"
        while True:
            entries = await self.client.xrange(self.store.events_key, min=start, count=5000)
            if not entries:
                break
            for _entry_id, fields in entries:
                counts[fields["type"]] = counts.get(fields["type"], 0) + 1
                if fields["type"] not in ("task.succeeded", "task.failed"):
                    continue
                terminal_per_task[fields["id"]] = terminal_per_task.get(fields["id"], 0) + 1
                if fields["id"] in verdicts:
                    continue
                record = json.loads(fields["record"])
                verdicts[fields["id"]] = Verdict(
                    record["state"], int(fields["at_ms"]) / 1000, partial=record["partial"], reason=record["reason"]
                )
            start = "(" + entries[-1][0]
        counts["duplicate_terminal_events"] = sum(n - 1 for n in terminal_per_task.values())
        return verdicts, counts

    def stop_workers(self) -> None:
        for p in self.procs:
            p.send_signal(15)
        for p in self.procs:
            procs.stop(p)

    def profiles(self, top: int = 25) -> list[str]:
        out = []
        for i in range(self.workers):
            path = self.tmp / f"{self.name}-worker{i}.prof"
            if not path.exists():
                continue
            text = StringIO()
            stats = pstats.Stats(str(path), stream=text)
            stats.sort_stats("tottime").print_stats(top)
            stats.sort_stats("cumulative").print_stats(top)
            out.append(text.getvalue())
        return out

    async def close(self) -> None:
        for p in self.procs:
            procs.stop(p)
        await self.client.aclose()
        self.redis.stop()


class SdkSide:
    """One SDK contender: a ``bench.sdk_client`` process and the task ids it waits for."""

    def __init__(self, name: str, ids: list[str], specs: dict[str, TaskSpec], scale: float, sim_url: str, tmp: Path):
        self.name, self.token, self.ids, self.scale = name, name, ids, scale
        self.plan_path, self.out_path = tmp / f"{name}-plan.json", tmp / f"{name}-out.json"
        plan = {
            "base_url": sim_url,
            "token": self.token,
            "poll_interval": SDK_POLL_INTERVAL_S * scale,
            "max_wait": SDK_MAX_WAIT_S * scale,
            "scale": scale,
            "tasks": [[i, specs[i].arrive_s * scale + 0.02] for i in ids],
        }
        self.plan_path.write_text(json.dumps(plan))
        self.log = open(tmp / f"{name}.log", "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACEDATACLOUD_")}
        self.proc = procs.start_python(
            "bench.sdk_client", [str(self.plan_path), str(self.out_path)], env=env, log=self.log
        )
        self.exited, self.cpu_s = False, None

    def ready(self) -> None:
        procs.read_line(self.proc, "READY")

    def go(self, t0: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{t0}\n".encode())
        self.proc.stdin.flush()

    def poll(self) -> bool:
        if not self.exited:
            self.exited, self.cpu_s = procs.reap(self.proc.pid)
        return self.exited

    async def finish(self) -> tuple[dict[str, float], dict[str, Verdict]]:
        if not self.poll():
            self.proc.send_signal(15)
            while not self.poll():
                await asyncio.sleep(0.1)
        rows = json.loads(self.out_path.read_text()) if self.out_path.exists() else []
        started = {r["id"]: r["started"] for r in rows if r["started"] is not None}
        verdicts = {r["id"]: Verdict(r["state"], r["at"], note=r["note"]) for r in rows}
        return started, verdicts


async def feed(
    workload: Workload, scale: float, t0: float, sim_url: str, acetracks: list[AcetrackSide], created: dict[str, float]
) -> None:
    """Create each task in the simulator at its arrival time and enqueue it with every acetrack contender."""
    tasks = sorted(workload.tasks, key=lambda t: t.arrive_s)
    i = 0
    async with aiohttp.ClientSession() as session:
        while i < len(tasks):
            await asyncio.sleep(max(0.0, t0 + tasks[i].arrive_s * scale - time.time()))
            now = time.time()
            batch = []
            while i < len(tasks) and t0 + tasks[i].arrive_s * scale <= now + 0.005:
                batch.append(tasks[i])
                i += 1
            specs = [
                {"id": t.id, "script": t.script, "run_s": t.run_s * scale, "clip_gap_s": t.clip_gap_s * scale}
                for t in batch
            ]
            async with session.post(f"{sim_url}/_bench/tasks", json=specs) as resp:
                resp.raise_for_status()
                stamps = (await resp.json())["created_at"]
            created.update({t.id: c for t, c in zip(batch, stamps, strict=True)})
            await asyncio.gather(*(_enqueue(side, batch) for side in acetracks))


async def _enqueue(side: AcetrackSide, batch: list[TaskSpec]) -> None:
    for t in batch:
        await side.tracker.enqueue(SERVICE, t.id)
        side.enqueued[t.id] = time.time()


async def monitor(
    workload: Workload,
    scale: float,
    t0: float,
    acetracks: list[AcetrackSide],
    sdks: list[SdkSide],
    feeder: asyncio.Task[None],
    tail_s: float,
) -> list[list[float]]:
    """Sample memory, pending counts and load until every contender is done (or the horizon passes)."""
    known = [t.arrive_s + t.finish_s for t in workload.tasks if t.finish_s is not None]
    sdk_stop_at = t0 + (max(known) + 30.0) * scale  # a wait() on an unknown id runs to max_wait: stop it here
    horizon = t0 + (max(known) + tail_s) * scale
    keys_sampled = False
    loads = []
    while True:
        now = time.time()
        for side in acetracks:
            await side.sample(now)
        loads.append(procs.loadavg())
        if feeder.done() and not keys_sampled:
            feeder.result()  # raise here if feeding failed
            for side in acetracks:
                await side.breakdown()
            keys_sampled = True
        for side in acetracks:  # per-task key bytes while most tasks are still pending (zsets never shrink)
            peak = max((p for _, _, p, _ in side.samples), default=0)
            if feeder.done() and len(loads) % 10 == 0 and side.pending >= peak / 2:
                await side.sample_keys()
        acetrack_done = feeder.done() and all(side.pending == 0 for side in acetracks)
        sdk_done = all(side.poll() or now >= sdk_stop_at for side in sdks)
        if (acetrack_done and sdk_done) or now >= horizon:
            return loads
        await asyncio.sleep(SAMPLE_EVERY_S)


def sdk_sample(workload: Workload, size: int, seed: int) -> list[str]:
    ids = [t.id for t in workload.tasks]
    if size >= len(ids):
        return ids
    chosen = set(random.Random(f"sdk-sample:{seed}").sample(ids, size))
    return [i for i in ids if i in chosen]


def parse_phases(spec: str) -> list[list[str]]:
    """``a,b|c``: contenders a and b run together, then c (same workload, same simulator, fresh clock)."""
    phases = [[n.strip() for n in part.split(",") if n.strip()] for part in spec.split("|")]
    return [p for p in phases if p]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    scale = args.scale
    workload = generate(args.tasks, args.seed, args.arrival_s)
    phases = parse_phases(args.contenders)
    tmp = Path(tempfile.mkdtemp(prefix="acetrack-bench-"))
    sim_args = ["--rps", repr(DOCUMENTED_RPS / scale), "--burst", str(int(DOCUMENTED_RPS))]
    if any("sdk-unlimited" in names for names in phases):
        sim_args += ["--unlimited", "sdk-unlimited"]
    sim_log = open(tmp / "sim.log", "wb")
    sim = procs.start_python("bench.simserver", sim_args, env=dict(os.environ), log=sim_log)
    started = time.time()
    try:
        sim_url = f"http://127.0.0.1:{procs.read_line(sim, 'PORT ')}"
        done = [await _phase(args, names, workload, scale, sim, sim_url, tmp) for names in phases]
        async with aiohttp.ClientSession() as session, session.get(f"{sim_url}/_bench/log") as resp:
            rows = await resp.json()
    finally:
        procs.stop(sim)
        if not args.keep_tmp:
            for path in sorted(tmp.iterdir()):
                path.unlink()
            tmp.rmdir()
    metrics = []
    for number, phase in enumerate(done, start=1):
        for contender in phase.pop("runs"):
            m = report.contender_metrics(contender, workload, phase["created"], rows, scale, phase["end"])
            m["phase"] = number
            m["capacity"] = report.capacity(m, args.tasks)
            metrics.append(m)
        del phase["created"]
    hot = await asyncio.to_thread(hotpath_runs, args, metrics, scale)
    return {
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "bench.run", *sys.argv[1:]]),
        "scale": scale,
        "workload": workload.summary(),
        "settings": {
            "acetrack_scaled": acetrack_settings(scale, args.acetrack_set),
            "sdk_poll_interval_s": SDK_POLL_INTERVAL_S,
            "sdk_max_wait_s": SDK_MAX_WAIT_S,
            "sim_rate_limit_rps_unscaled": DOCUMENTED_RPS,
            "sdk_sample": args.sdk_sample,
        },
        "machine": procs.machine(),
        "phases": done,
        "load": {
            "start": done[0]["load"]["start"],
            "end": done[-1]["load"]["end"],
            "mean_1min": round(sum(p["load"]["mean_1min"] for p in done) / len(done), 2),
        },
        "wall_s": round(time.time() - started, 1),
        "contenders": metrics,
        "hotpath": hot,
        "targets": report.targets(metrics, args.tasks, hot),
        "notes": notes(args, scale),
    }


def hotpath_runs(args: argparse.Namespace, metrics: list[dict[str, Any]], scale: float) -> list[dict[str, Any]]:
    """``bench.hotpath`` in its own process: the poll path's CPU per observation back to back (warm),
    then with the first acetrack contender's mean real time between requests (as sparse as this run)."""
    first = next((m for m in metrics if m["kind"] == "acetrack" and m["mean_rps"]), None)
    if not args.hotpath_s or first is None:
        return []
    gaps = [0.0, round(scale / first["mean_rps"], 3)]
    out = []
    for gap_s in gaps:
        cmd = ["--seconds", str(args.hotpath_s), "--gap-s", str(gap_s)]
        with tempfile.TemporaryFile() as log:
            proc = procs.start_python("bench.hotpath", cmd, env=dict(os.environ), log=log)
            stdout, _ = proc.communicate(timeout=args.hotpath_s + 300)
            if proc.returncode:
                log.seek(0)
                raise SystemExit(f"bench: bench.hotpath failed:\n{log.read().decode()[-2000:]}")
        out.append({**json.loads(stdout.decode().splitlines()[-1]), "spacing_of": first["name"] if gap_s else None})
    return out


async def _phase(
    args: argparse.Namespace,
    names: list[str],
    workload: Workload,
    scale: float,
    sim: subprocess.Popen[bytes],
    sim_url: str,
    tmp: Path,
) -> dict[str, Any]:
    acetracks: list[AcetrackSide] = []
    sdks: list[SdkSide] = []
    try:
        await _start_contenders(args, names, workload, scale, sim_url, tmp, acetracks, sdks)
        phase = await _measure(args, workload, scale, sim, sim_url, acetracks, sdks)
        phase["contenders"] = names
        return phase
    finally:
        for sdk_side in sdks:
            procs.stop(sdk_side.proc)
        for side in acetracks:
            await side.close()


async def _start_contenders(
    args: argparse.Namespace,
    names: list[str],
    workload: Workload,
    scale: float,
    sim_url: str,
    tmp: Path,
    acetracks: list[AcetrackSide],
    sdks: list[SdkSide],
) -> None:
    specs = {t.id: t for t in workload.tasks}
    for name in names:
        if name.startswith("acetrack-"):
            workers = int(name.removeprefix("acetrack-").removesuffix("w"))
            acetracks.append(AcetrackSide(name, workers, scale, sim_url, tmp, args))
        elif name.startswith("baseline-"):
            if args.baseline_src is None:
                raise SystemExit(f"bench: contender {name!r} needs --baseline-src (a checkout of an earlier acetrack)")
            workers = int(name.removeprefix("baseline-").removesuffix("w"))
            acetracks.append(AcetrackSide(name, workers, scale, sim_url, tmp, args, src=args.baseline_src.resolve()))
        elif name not in ("sdk", "sdk-unlimited"):
            raise SystemExit(f"bench: unknown contender {name!r}")
    for side in acetracks:
        side.start_workers()
    for side in acetracks:
        await side.wait_ready()
    for name in names:
        if name == "sdk":
            sdks.append(SdkSide(name, [t.id for t in workload.tasks], specs, scale, sim_url, tmp))
        elif name == "sdk-unlimited":
            ids = sdk_sample(workload, args.sdk_sample, args.seed)
            sdks.append(SdkSide(name, ids, specs, scale, sim_url, tmp))


async def _measure(
    args: argparse.Namespace,
    workload: Workload,
    scale: float,
    sim: subprocess.Popen[bytes],
    sim_url: str,
    acetracks: list[AcetrackSide],
    sdks: list[SdkSide],
) -> dict[str, Any]:
    """One phase: idle CPU, then the workload's arrivals, then every contender's verdicts."""
    idle_start = [side.cpu() for side in acetracks]
    await asyncio.sleep(args.idle_s if acetracks else 0.0)
    idle_rates = [(side.cpu() - c) / args.idle_s for side, c in zip(acetracks, idle_start, strict=True)]
    for side in acetracks:
        side.mem_baseline = await side.used_memory()
        side.dataset_baseline = int((await side.client.info("memory"))["used_memory_dataset"])
    for sdk_side in sdks:
        sdk_side.ready()
    load_start = procs.loadavg()
    t0 = time.time() + 0.5
    for sdk_side in sdks:
        sdk_side.go(t0)
    cpu_start = [side.cpu_each() for side in acetracks]
    sim_cpu_start = procs.cpu_seconds(sim.pid) or 0.0
    created: dict[str, float] = {}
    feeder = asyncio.create_task(feed(workload, scale, t0, sim_url, acetracks, created))
    loads = await monitor(workload, scale, t0, acetracks, sdks, feeder, args.tail_s)
    end = time.time()
    cpu_end = [side.cpu_each() for side in acetracks]
    sim_cpu = (procs.cpu_seconds(sim.pid) or 0.0) - sim_cpu_start
    sdk_results = [await sdk_side.finish() for sdk_side in sdks]
    runs: list[report.ContenderRun] = []
    for side, c0, c1, idle in zip(acetracks, cpu_start, cpu_end, idle_rates, strict=True):
        by_worker = [b - a for a, b in zip(c0, c1, strict=True)]
        runs.append(await _acetrack_run(side, workload, by_worker, end - t0, idle))
    for side in acetracks:
        side.stop_workers()
    profiles: dict[str, list[str]] = {}
    if args.profile:
        profiles = {side.name: side.profiles() for side in acetracks}
    for sdk_side, (started, verdicts) in zip(sdks, sdk_results, strict=True):
        limited = "no rate limit (lifted for this token)" if sdk_side.name == "sdk-unlimited" else "60 req/s limit"
        runs.append(
            report.ContenderRun(
                sdk_side.name,
                "sdk",
                sdk_side.token,
                sdk_side.ids,
                started,
                verdicts,
                sdk_side.cpu_s,
                end - t0,
                label=f"official acedatacloud SDK, AsyncTaskHandle.wait() per task, poll_interval "
                f"{SDK_POLL_INTERVAL_S:g} s, max_wait {SDK_MAX_WAIT_S:g} s (unscaled), {len(sdk_side.ids)} tasks, "
                f"{limited}",
            )
        )
    return {
        "runs": runs,
        "created": created,
        "end": end,
        "started_at": datetime.fromtimestamp(t0, UTC).isoformat(timespec="seconds"),
        "wall_s": round(end - t0, 1),
        "sim_cpu_s": round(sim_cpu, 2),
        "load": {
            "start": load_start,
            "end": procs.loadavg(),
            "mean_1min": round(sum(x[0] for x in loads) / max(1, len(loads)), 2),
        },
        "profiles": profiles,
    }


def _revision(src: Path) -> str:
    done = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if done.returncode != 0:
        return ""
    # a run of work in progress says so: its figures are not the commit's
    changed = subprocess.run(
        ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=normal", "--", "worker", "config"],
        capture_output=True,
        text=True,
    )
    dirty = " with uncommitted changes to worker/ or config/" if changed.stdout.strip() else ""
    return f" at {done.stdout.strip()}{dirty}"


async def _acetrack_run(
    side: AcetrackSide, workload: Workload, cpu_by_worker_s: list[float], wall_s: float, idle: float
) -> report.ContenderRun:
    verdicts, event_counts = await side.verdicts()
    claims = sorted(int(w.get("claims", 0)) for w in await side.store.workers())
    redis_cpu = await side.client.info("cpu")
    commands = await side.client.info("commandstats")
    return report.ContenderRun(
        side.name,
        "acetrack",
        side.token,
        [t.id for t in workload.tasks],
        side.enqueued,
        verdicts,
        sum(cpu_by_worker_s),
        wall_s,
        label=f"acetrack{_revision(side.src)}, {side.workers} worker process(es), own redis-server; budget "
        f"{Settings.model_fields['rate_limit_rps'].default:g} req/s (unscaled)",
        workers=side.workers,
        idle_cpu_per_s=idle,
        memory=side.memory(),
        learned=side.learned,
        extra={
            "events": event_counts,
            # how the work split: each worker's CPU, and the batches each claimed (heartbeats, <= 5 s old)
            "worker_cpu_s": sorted(round(c, 2) for c in cpu_by_worker_s),
            "worker_claims": claims,
            "redis_cpu_s": round(float(redis_cpu["used_cpu_user"]) + float(redis_cpu["used_cpu_sys"]), 2),
            # every client's commands (the bench's enqueues and memory samples too): where round trips go
            "redis_calls": {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in commands.items()},
        },
    )


def notes(args: argparse.Namespace, scale: float) -> list[str]:
    return [
        "Contenders separated by '|' in --contenders run in later phases: same workload (re-created in the same "
        "simulator with a fresh clock), so one contender's load does not distort another's latency.",
        f"Time scale {scale}: lifetimes, arrivals, acetrack's time settings and the SDK's interval, max_wait and "
        "retry back-off are multiplied by it, rates divided by it; figures are converted back to unscaled seconds.",
        "Not scaled (hard-coded in acetrack, not settings): the longest idle sleeps (claims: 5 s while the wake "
        "channel is followed, also between looks at a queue ceded to another worker; intake 5 s; outbox 5 s; "
        "arq 5 s; each woken at once by its work), the "
        "usual-lifetime default before 5 tasks finished (DEFAULT_USUAL_LIFETIME_S = 300 s), the 429/5xx back-off "
        "(1-60 s), the GCRA burst window (1 s real); the simulator's Retry-After (>= 1 s real, whole seconds).",
        "sdk-unlimited tracks a random sample of the tasks; its per-task figures do not depend on how many loops run.",
        "A wait() on an unknown id polls until max_wait; it is stopped 30 s (unscaled) after the last known task "
        "finished and counted as no verdict ('still waiting'); its requests until then are counted.",
        "acetrack verdict time: the terminal event's at_ms (when the worker observed it). SDK verdict time: when "
        "wait() returned, in the client process. Upstream finish: the simulator's created_at + the task's script.",
        "CPU: /proc/<pid>/stat utime+stime of the worker processes from the first arrival to the end, including "
        "their idle loops (the idle rate was measured for idle_s before the run); observations: task ids in the "
        "contender's successful upstream requests.",
        "Redis memory per pending task: used_memory at the peak pending count minus before the first enqueue "
        "(events and arq job keys included), over that count; measured only where at most 5 % as many tasks had "
        "finished by then (a burst), since finished records are excluded by definition. Also MEMORY USAGE of a "
        "pending task's hash plus its share of the sorted sets (key_bytes_per_task).",
        "Capacity for acetrack is measured (peak concurrent tasks in a run that stayed inside the budget and met "
        "p95); for the SDK it is derived from its measured requests per tracked task-second.",
    ] + (["Workers ran under cProfile (--profile): their CPU figures are inflated by it."] if args.profile else [])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scale", type=float, default=0.5, help="time scale (1 = real time)")
    parser.add_argument(
        "--arrival-s",
        type=float,
        default=470.0,
        help="arrival window, unscaled seconds (470: about 170 of 1,000 tasks in flight; 30: a burst)",
    )
    parser.add_argument(
        "--contenders",
        default="acetrack-1w,acetrack-2w,sdk-unlimited|sdk",
        help="comma: run together; '|': then, in a later phase (default: the SDK's 429 storm runs alone)",
    )
    parser.add_argument(
        "--acetrack-set",
        type=_setting,
        action="append",
        default=[],
        help="NAME=SECONDS: an acetrack time setting instead of its default (unscaled), e.g. coalesce_s=3",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="a checkout of an earlier acetrack (git worktree): contenders baseline-Nw run its worker in the same "
        "run, for before/after figures that do not depend on how busy the machine is",
    )
    parser.add_argument("--sdk-sample", type=int, default=200, help="tasks tracked by sdk-unlimited")
    parser.add_argument("--tail-s", type=float, default=240.0, help="unscaled seconds after the last finish to wait")
    parser.add_argument("--idle-s", type=float, default=10.0, help="real seconds of idle-CPU measurement")
    parser.add_argument(
        "--hotpath-s", type=float, default=20.0, help="seconds of each bench.hotpath run after the phases (0: none)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stem", default=None, help="output file name stem (default bench-<tasks>, or smoke)")
    parser.add_argument("--profile", action="store_true", help="workers under cProfile (CPU time): hot spots")
    parser.add_argument("--render", type=Path, help="only re-render RESULT.json's targets, markdown and plot")
    parser.add_argument("--keep-tmp", action="store_true", help="keep worker/sim logs and profiles")
    parser.add_argument("--smoke", action="store_true", help="a ~1-minute sanity run; exit 1 only if the bench breaks")
    args = parser.parse_args(argv)
    args.acetrack_set = dict(args.acetrack_set)
    if args.smoke:
        defaults = parser.parse_args([])
        smoke = (("tasks", 200), ("scale", 0.1), ("sdk_sample", 50), ("tail_s", 150.0), ("arrival_s", 100.0))
        for key, value in (*smoke, ("hotpath_s", 3.0), ("idle_s", 2.0)):
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
    args.stem = args.stem or ("smoke" if args.smoke else f"bench-{args.tasks}")
    return args


def _setting(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if name not in ACETRACK_TIME_SETTINGS:
        raise argparse.ArgumentTypeError(f"{name!r} is not one of {', '.join(ACETRACK_TIME_SETTINGS)}")
    return name, float(value)


def sane(result: dict[str, Any]) -> list[str]:
    """Reasons the harness itself failed (not targets): used by --smoke for its exit status."""
    problems = []
    for m in result["contenders"]:
        if m["kind"] == "acetrack" and m["outcomes"].get("no_verdict", 0):
            problems.append(f"{m['name']}: {m['outcomes']['no_verdict']} tasks without a verdict")
        if m["requests"] == 0 or m["tasks"] - m["outcomes"].get("no_verdict", 0) == 0:
            problems.append(f"{m['name']}: no requests or no verdicts at all")
    return problems


def render(path: Path) -> None:
    """Recompute the targets of a result file and rewrite its markdown and plot (no new measurement)."""
    result = json.loads(path.read_text())
    result["targets"] = report.targets(result["contenders"], result["workload"]["tasks"], result.get("hotpath", []))
    report.write(result, path.parent, path.stem)
    print(report.markdown(result))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        render(args.render)
        return 0
    result = asyncio.run(run(args))
    paths = report.write(result, args.out, args.stem)
    print(report.markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths))
    problems = sane(result)
    for problem in problems:
        print(f"bench: {problem}", file=sys.stderr)
    return 1 if args.smoke and problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
