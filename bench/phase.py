"""One phase of a run: start its contenders, feed the workload's arrivals, sample until every contender is done,
then collect what each did. Every phase re-creates the same workload in the same simulator, on a fresh clock."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench import callbacks as bench_callbacks
from bench import procs
from bench.acetrack_side import AcetrackSide
from bench.metrics import ContenderRun
from bench.sdk_side import SdkSide, sdk_sample
from bench.workload import SERVICE, TaskSpec, Workload, generate

SAMPLE_EVERY_S = 0.5


async def run_phase(
    args: argparse.Namespace,
    names: list[str],
    workload: Workload,
    scale: float,
    sim: subprocess.Popen[bytes],
    sim_url: str,
    tmp: Path,
    fan: bench_callbacks.FanOut | None,
) -> dict[str, Any]:
    """Run the contenders ``names`` together on ``workload``; their results and the phase's own figures."""
    acetracks: list[AcetrackSide] = []
    sdks: list[SdkSide] = []
    try:
        await start_contenders(args, names, workload, scale, sim_url, tmp, acetracks, sdks)
        if fan is not None:
            fan.targets = [url for side in acetracks if (url := side.callback_url)]
        phase = await _measure(args, workload, scale, sim, sim_url, acetracks, sdks, fan)
        phase["contenders"] = names
        if fan is not None:
            urls = {side.name: side.callback_url for side in acetracks}
            for run in phase["runs"]:
                if url := urls.get(run.name):
                    run.extra["callback_answer"] = fan.answer_stats(url)
        return phase
    finally:
        for sdk_side in sdks:
            procs.stop(sdk_side.proc)
        for side in acetracks:
            await side.close()


async def start_contenders(
    args: argparse.Namespace,
    names: list[str],
    workload: Workload,
    scale: float,
    sim_url: str,
    tmp: Path,
    acetracks: list[AcetrackSide],
    sdks: list[SdkSide],
) -> None:
    """Create the named contenders into ``acetracks`` and ``sdks``; acetrack's workers are up on return."""
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
    fan: bench_callbacks.FanOut | None,
) -> dict[str, Any]:
    """One phase: a warm-up (``--warmup``), idle CPU, then the workload's arrivals, then every
    contender's verdicts."""
    if args.warmup:
        await warm_up(args, scale, sim_url, acetracks)
    if fan is not None:
        fan.reset()
    idle_rates = await _idle(acetracks, args.idle_s)
    for sdk_side in sdks:
        sdk_side.ready()
    load_start = procs.loadavg()
    t0 = time.time() + 0.5
    for sdk_side in sdks:
        sdk_side.go(t0)
    cpu_start = [side.cpu_each() for side in acetracks]
    for side in acetracks:
        side.redis_cpu_start_s = await side.redis_cpu_s()
    sim_cpu_start = procs.cpu_seconds(sim.pid) or 0.0
    created: dict[str, float] = {}
    feeder = asyncio.create_task(feed(workload, scale, t0, sim_url, acetracks, created))
    loads = await monitor(workload, scale, t0, acetracks, sdks, feeder, args.tail_s)
    end = time.time()
    cpu_end = [side.cpu_each() for side in acetracks]
    sim_cpu = (procs.cpu_seconds(sim.pid) or 0.0) - sim_cpu_start
    cpu_by_worker = [[b - a for a, b in zip(c0, c1, strict=True)] for c0, c1 in zip(cpu_start, cpu_end, strict=True)]
    runs, profiles = await _collect(args.profile, workload, acetracks, sdks, cpu_by_worker, idle_rates, end - t0)
    return {
        "runs": runs,
        "created": created,
        "t0": t0,
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


async def warm_up(args: argparse.Namespace, scale: float, sim_url: str, acetracks: list[AcetrackSide]) -> None:
    """``--warmup N``: N tasks of the workload's lifetimes (other ids), all at once, tracked by every
    acetrack contender until each has finished them: the lifetimes a running deployment has learned
    before a burst comes. Their requests come before the phase starts and are not counted."""
    warm = generate(args.warmup, args.seed, 1.0, args.shape, kind="-warmup")
    await feed(warm, scale, time.time(), sim_url, acetracks, {})
    longest_s = max(t.run_s + t.clip_gap_s for t in warm.tasks)
    deadline = time.time() + (longest_s + 120.0) * scale  # + the not-found grace of the unknown ids
    while any(left := [await side.pending_count() for side in acetracks]):
        if time.time() > deadline:
            # their polls would fall inside the measured window and distort every figure
            raise SystemExit(f"bench: the warm-up did not finish in time ({left} pending); measure without it")
        await asyncio.sleep(1.0)
    for side in acetracks:
        side.enqueued.clear()  # the measured workload's arrivals only


async def _idle(acetracks: list[AcetrackSide], idle_s: float) -> list[float]:
    """Each acetrack contender's CPU per second while idle for ``idle_s``; then its Redis memory baselines."""
    idle_start = [side.cpu() for side in acetracks]
    await asyncio.sleep(idle_s if acetracks else 0.0)
    idle_rates = [(side.cpu() - c) / idle_s for side, c in zip(acetracks, idle_start, strict=True)]
    for side in acetracks:
        side.mem_baseline = await side.used_memory()
        side.dataset_baseline = int((await side.client.info("memory"))["used_memory_dataset"])
    return idle_rates


async def _collect(
    profile: bool,
    workload: Workload,
    acetracks: list[AcetrackSide],
    sdks: list[SdkSide],
    cpu_by_worker: list[list[float]],
    idle_rates: list[float],
    wall_s: float,
) -> tuple[list[ContenderRun], dict[str, list[str]]]:
    """Every contender's run (acetrack's first), and its workers' profiles; stops acetrack's workers."""
    sdk_results = [await sdk_side.finish() for sdk_side in sdks]
    runs: list[ContenderRun] = []
    for side, by_worker, idle in zip(acetracks, cpu_by_worker, idle_rates, strict=True):
        runs.append(await side.contender_run(workload, by_worker, wall_s, idle))
    for side in acetracks:
        side.stop_workers()
    profiles: dict[str, list[str]] = {}
    if profile:
        profiles = {side.name: side.profiles() for side in acetracks}
    for sdk_side, (started, verdicts) in zip(sdks, sdk_results, strict=True):
        runs.append(sdk_side.contender_run(started, verdicts, wall_s))
    return runs, profiles


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
