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

This module runs the whole benchmark: the simulator, each phase in turn (``bench.phase``), the hot path
(``bench.hotpath``), and the result, rendered by ``bench.report``. The command line is ``bench.options``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench import callbacks as bench_callbacks
from bench import options, procs, report
from bench.metrics import capacity, contender_metrics
from bench.phase import run_phase
from bench.targets import targets
from bench.timescale import DOCUMENTED_RPS, SDK_MAX_WAIT_S, SDK_POLL_INTERVAL_S, acetrack_settings
from bench.workload import Workload, generate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``bench.options``), described by this module's first paragraph."""
    return options.parse_args(argv, description=(__doc__ or "").split("\n\n")[0])


def parse_phases(spec: str) -> list[list[str]]:
    """``a,b|c``: contenders a and b run together, then c (same workload, same simulator, fresh clock)."""
    phases = [[n.strip() for n in part.split(",") if n.strip()] for part in spec.split("|")]
    return [p for p in phases if p]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    scale = args.scale
    workload = generate(args.tasks, args.seed, args.arrival_s, args.shape)
    phases = parse_phases(args.contenders)
    tmp = Path(tempfile.mkdtemp(prefix="acetrack-bench-"))
    fan = bench_callbacks.FanOut() if args.callback_loss is not None else None
    if fan is not None:
        await fan.start()
    sim = _start_simulator(args, phases, tmp, fan)
    started = time.time()
    try:
        sim_url = f"http://127.0.0.1:{procs.read_line(sim, 'PORT ')}"
        done = [await run_phase(args, names, workload, scale, sim, sim_url, tmp, fan) for names in phases]
        async with aiohttp.ClientSession() as session, session.get(f"{sim_url}/_bench/log") as resp:
            rows = await resp.json()
    finally:
        procs.stop(sim)
        if fan is not None:
            await fan.close()
        if not args.keep_tmp:
            for path in sorted(tmp.iterdir()):
                path.unlink()
            tmp.rmdir()
    metrics = _metrics(args, done, workload, rows)
    hot = await asyncio.to_thread(hotpath_runs, args, metrics, scale)
    return _result(args, workload, started, done, metrics, hot)


def _start_simulator(
    args: argparse.Namespace, phases: list[list[str]], tmp: Path, fan: bench_callbacks.FanOut | None
) -> subprocess.Popen[bytes]:
    """``bench.simserver`` at the scaled documented rate limit (lifted for ``sdk-unlimited``), its log in ``tmp``."""
    scale = args.scale
    sim_args = ["--rps", repr(DOCUMENTED_RPS / scale), "--burst", str(int(DOCUMENTED_RPS))]
    sim_args += ["--latency-s", repr(args.latency_s * scale)]
    if fan is not None:
        sim_args += bench_callbacks.sim_args(args.callback_loss, args.callback_delay_s, scale, fan.url)
    if any("sdk-unlimited" in names for names in phases):
        sim_args += ["--unlimited", "sdk-unlimited"]
    sim_log = open(tmp / "sim.log", "wb")
    return procs.start_python("bench.simserver", sim_args, env=dict(os.environ), log=sim_log)


def _metrics(
    args: argparse.Namespace, done: list[dict[str, Any]], workload: Workload, rows: list[list[Any]]
) -> list[dict[str, Any]]:
    """Every contender's figures, phase by phase; takes each phase's runs and arrival times out of ``done``."""
    metrics = []
    for number, phase in enumerate(done, start=1):
        # this phase's requests only: a warm-up's (``--warmup``) came before it began
        mine = [r for r in rows if phase["t0"] - 1.0 <= r[0] <= phase["end"] + 1.0]
        for contender in phase.pop("runs"):
            m = contender_metrics(contender, workload, phase["created"], mine, args.scale, phase["end"])
            m["phase"] = number
            m["capacity"] = capacity(m, args.tasks)
            metrics.append(m)
        del phase["created"]
    return metrics


def _result(
    args: argparse.Namespace,
    workload: Workload,
    started: float,
    done: list[dict[str, Any]],
    metrics: list[dict[str, Any]],
    hot: list[dict[str, Any]],
) -> dict[str, Any]:
    """The result file's content (JSON), in its usual key order."""
    scale = args.scale
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
            "sim_latency_s_unscaled": args.latency_s,
            "callbacks": None
            if args.callback_loss is None
            else {"loss": args.callback_loss, "delay_s_unscaled": list(args.callback_delay_s)},
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
        "targets": targets(metrics, args.tasks, hot),
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
    ] + _option_notes(args)


def _option_notes(args: argparse.Namespace) -> list[str]:
    notes = ["Workers ran under cProfile (--profile): their CPU figures are inflated by it."] if args.profile else []
    if args.warmup:
        notes.append(
            f"Warm-up (--warmup {args.warmup}): before each phase, every acetrack contender tracked {args.warmup} "
            "other tasks of the same lifetimes, all at once, to their end: it had learned them when the measured "
            "workload came, as a running deployment would have. Not measured: their requests come before the phase, "
            "their finished records are in the memory baseline."
        )
    return notes


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
    result["targets"] = targets(result["contenders"], result["workload"]["tasks"], result.get("hotpath", []))
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
