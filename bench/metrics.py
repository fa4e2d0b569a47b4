"""Per-contender figures of one run: requests, outcomes, detection latency, CPU, capacity."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.targets import BUDGET_RPS, P95_TARGET_S
from bench.workload import TaskSpec, Verdict, Workload, percentile, score


@dataclass
class ContenderRun:
    """What one contender did in the run (times are epoch seconds, real)."""

    name: str
    kind: str  # "acetrack" or "sdk"
    token: str
    ids: list[str]
    started: dict[str, float]
    verdicts: dict[str, Verdict]
    cpu_s: float | None
    wall_s: float
    label: str = ""
    workers: int = 0
    idle_cpu_per_s: float | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    learned: list[tuple[float, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _stats(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    return {
        "n": len(ordered),
        "p50": round(percentile(ordered, 50), 2),
        "p95": round(percentile(ordered, 95), 2),
        "p99": round(percentile(ordered, 99), 2),
        "mean": round(sum(ordered) / len(ordered), 2),
        "max": round(ordered[-1], 2),
    }


def request_stats(rows: list[list[Any]], token: str, scale: float) -> dict[str, Any]:
    """Requests, 429s and observations of one token from the sim's log; rates in unscaled seconds."""
    mine = [r for r in rows if r[1] == token]
    statuses = Counter(int(r[3]) for r in mine)
    observations = sum(int(r[2]) for r in mine if int(r[3]) == 200)
    peak = 0
    mean_rps = 0.0
    if mine:
        first, last = mine[0][0], mine[-1][0]
        buckets = Counter(int((r[0] - first) / scale) for r in mine)  # one bucket per unscaled second
        peak = max(buckets.values())
        span_s = max(1.0, (last - first) / scale)
        mean_rps = len(mine) / span_s
    return {
        "requests": len(mine),
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "http_429": statuses.get(429, 0),
        "observations": observations,
        "peak_rps_1s": peak,
        "mean_rps": round(mean_rps, 2),
    }


def _peak_concurrency(run: ContenderRun, end_s: float) -> int:
    edges: list[tuple[float, int]] = []
    for task_id in run.ids:
        start = run.started.get(task_id)
        if start is None:
            continue
        verdict = run.verdicts.get(task_id)
        stop = verdict.at_s if verdict and verdict.at_s is not None else end_s
        edges += [(start, 1), (stop, -1)]
    level = peak = 0
    for _, step in sorted(edges):
        level += step
        peak = max(peak, level)
    return peak


def _task_seconds(run: ContenderRun, end_s: float) -> float:
    total = 0.0
    for task_id, start in run.started.items():
        verdict = run.verdicts.get(task_id)
        stop = verdict.at_s if verdict and verdict.at_s is not None else end_s
        total += max(0.0, stop - start)
    return total


def _usual_at(learned: list[tuple[float, float]], at_s: float) -> float | None:
    times = [t for t, _ in learned]
    i = bisect.bisect_right(times, at_s) - 1
    return learned[i][1] if i >= 0 else None


#: the width of the windows of finish time ``by_window`` groups latencies and requests in (unscaled)
WINDOW_S = 10.0


def by_window(
    finished: list[tuple[float, float]], request_times: list[float], origin: float, scale: float
) -> list[Any]:
    """Per ``WINDOW_S`` of unscaled time from ``origin`` (epoch s, real): the finishes found in it
    (by upstream finish time), their p95 detection latency, and the requests sent in it per second.
    Shows where a run's p95 comes from: a burst's busiest windows, when the budget runs short."""
    windows: dict[int, list[float]] = {}
    for at, latency in finished:
        windows.setdefault(int((at - origin) / scale // WINDOW_S), []).append(latency)
    sent = Counter(int((at - origin) / scale // WINDOW_S) for at in request_times)
    return [
        [int(w * WINDOW_S), len(lat), round(percentile(sorted(lat), 95), 2), round(sent[w] / WINDOW_S, 1)]
        for w, lat in sorted(windows.items())
    ]


def _scored(
    run: ContenderRun, specs: dict[str, TaskSpec], created: dict[str, float], scale: float
) -> tuple[Counter[str], list[float], dict[str, list[float]], Counter[str], list[tuple[float, float]]]:
    outcomes: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    latencies: list[float] = []
    finished: list[tuple[float, float]] = []  # (upstream finish, epoch s real; latency, unscaled s)
    regimes: dict[str, list[float]] = {"young": [], "overdue": []}
    for task_id in run.ids:
        spec = specs[task_id]
        verdict = run.verdicts.get(task_id, Verdict(None, None, note="never reported"))
        outcome, latency = score(spec, created[task_id], verdict, scale)
        outcomes[outcome] += 1
        if outcome == "no_verdict":
            notes[verdict.note or "none"] += 1
        if latency is None:
            continue
        latencies.append(latency)
        finish = spec.finish_s
        finished.append((created[task_id] + (finish or 0.0) * scale, latency))
        usual = _usual_at(run.learned, created[task_id] + (finish or 0.0) * scale)
        if run.kind == "acetrack" and usual is not None and finish is not None:
            regimes["overdue" if finish > usual else "young"].append(latency)
    return outcomes, latencies, regimes, notes, finished


def contender_metrics(
    run: ContenderRun, workload: Workload, created: dict[str, float], rows: list[list[Any]], scale: float, end_s: float
) -> dict[str, Any]:
    specs = {t.id: t for t in workload.tasks}
    outcomes, latencies, regimes, notes, finished = _scored(run, specs, created, scale)
    req = request_stats(rows, run.token, scale)
    n = len(run.ids)
    wrong = sum(v for k, v in outcomes.items() if k.startswith("wrong"))
    out: dict[str, Any] = {
        "name": run.name,
        "label": run.label,
        "kind": run.kind,
        "workers": run.workers,
        "tasks": n,
        **req,
        "requests_per_task": round(req["requests"] / n, 4) if n else None,
        "observations_per_task": round(req["observations"] / n, 2) if n else None,
        "ids_per_request": round(req["observations"] / max(1, req["status_counts"].get("200", 0)), 2),
        "outcomes": dict(outcomes),
        "wrong_total": wrong,
        "no_verdict_reasons": dict(notes),
        "detection_latency_s": _stats(latencies),
        "latencies_s": [round(x, 3) for x in sorted(latencies)],
        "peak_concurrency": _peak_concurrency(run, end_s),
        "task_seconds_unscaled": round(_task_seconds(run, end_s) / scale, 1),
        "wall_s_unscaled": round(run.wall_s / scale, 1),
        "cpu_s": None if run.cpu_s is None else round(run.cpu_s, 2),
        "cpu_cores_busy": None if run.cpu_s is None else round(run.cpu_s / max(1e-9, run.wall_s), 2),
        "memory": run.memory,
        **run.extra,
    }
    if run.cpu_s is not None and req["observations"]:
        out["cpu_ms_per_observation"] = round(run.cpu_s / req["observations"] * 1000, 4)
        out["cpu_s_per_1000_observations"] = out["cpu_ms_per_observation"]
        if run.idle_cpu_per_s is not None:
            busy = max(0.0, run.cpu_s - run.idle_cpu_per_s * run.wall_s)
            out["idle_cpu_s_per_s"] = round(run.idle_cpu_per_s, 4)
            out["cpu_ms_per_observation_net_of_idle"] = round(busy / req["observations"] * 1000, 4)
    redis_cpu_s = run.extra.get("redis_cpu_s")
    if redis_cpu_s is not None and req["observations"]:
        # the single-Redis ceiling: one Redis core at this cost per observation
        out["redis_cpu_ms_per_observation"] = round(redis_cpu_s / req["observations"] * 1000, 4)
        out["single_redis_observations_per_s"] = int(req["observations"] / max(1e-9, redis_cpu_s))
    if run.kind == "acetrack":
        out["latency_by_regime_s"] = {k: _stats(v) for k, v in regimes.items()}
        sent = [r[0] for r in rows if r[1] == run.token]
        # [window start s, finishes, p95 s, req/s], from the first arrival
        out["by_finish_window"] = by_window(finished, sent, min(created.values(), default=0.0), scale)
        step = max(1, len(run.learned) // 60)
        out["learned_usual_lifetime_s"] = [(round(t, 2), round(u, 1)) for t, u in run.learned[::step]]
    return out


def capacity(m: dict[str, Any], scale_tasks: int) -> dict[str, Any]:
    """Most concurrent tasks held inside the 50 req/s budget at p95 <= 10 s (unscaled)."""
    p95 = m["detection_latency_s"]["p95"]
    ok_latency = p95 is not None and p95 <= P95_TARGET_S
    if m["kind"] == "sdk":
        # one wait() loop costs the same whatever else runs: requests per tracked task-second, unscaled
        rate = m["requests"] / max(1e-9, m["task_seconds_unscaled"])
        return {
            "method": "derived: budget / measured requests per tracked task-second (a wait() loop is independent)",
            "requests_per_task_second": round(rate, 4),
            "tasks": int(BUDGET_RPS / rate) if ok_latency and rate > 0 else 0,
        }
    held = m["peak_rps_1s"] <= BUDGET_RPS * 1.05 and ok_latency  # 5 %: one-second buckets vs a GCRA burst
    # what this run's cadence implies (not measured): polls per tracked task-second, ids per request, CPU
    polls_per_task_s = m["observations"] / max(1e-9, m["task_seconds_unscaled"])
    out: dict[str, Any] = {
        "method": "measured: peak concurrent tasks of this run, if it stayed in budget and met p95",
        "peak_concurrency": m["peak_concurrency"],
        "tasks": m["peak_concurrency"] if held else 0,
        "held": held,
        "workload_tasks": scale_tasks,
        "polls_per_task_second": round(polls_per_task_s, 4),
        "budget_bound_tasks_at_this_cadence": int(BUDGET_RPS * m["ids_per_request"] / max(1e-9, polls_per_task_s)),
    }
    cpu_ms = m.get("cpu_ms_per_observation")
    if cpu_ms:
        out["cpu_bound_tasks_per_core_at_this_cadence"] = int(1000 / (cpu_ms * polls_per_task_s))
    return out
