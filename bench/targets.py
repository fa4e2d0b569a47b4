"""The issue's targets, each ``met``, ``not met`` or ``not tested``, from a run's per-contender figures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

BUDGET_RPS = 50.0
P95_TARGET_S = 10.0
CAPACITY_TARGET = 10_000
CPU_TARGET_MS_PER_OBS = 0.1
MEMORY_TARGET_BYTES = 2048
FINISHED_TARGET_BYTES = 3072
REQUEST_RATIO_TARGET = 50.0
CALLBACK_ANSWER_MS = 50.0


def targets(metrics: list[dict[str, Any]], tasks: int, hotpath: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The issue's targets, each ``met``, ``not met`` or ``not tested`` (this run cannot show it)."""
    sdks = [m for m in metrics if m["kind"] == "sdk"]
    baseline = next((m for m in sdks if m["name"] == "sdk-unlimited"), sdks[0] if sdks else None)
    out = []
    for m in (m for m in metrics if m["kind"] == "acetrack"):
        out += _contender_targets(m, baseline, tasks)
    out += [_hotpath_target(h) for h in hotpath]
    return out


def _contender_targets(m: dict[str, Any], baseline: dict[str, Any] | None, tasks: int) -> list[dict[str, Any]]:
    """One acetrack contender's targets, in the report's order."""
    return [
        _requests_target(m, baseline, tasks),
        _capacity_target(m),
        _cpu_target(m),
        *_memory_targets(m),
        _target(m["name"], "zero wrong outcomes", m["wrong_total"] == 0, f"{m['wrong_total']} wrong"),
        *_callback_targets(m),
    ]


def _callback_targets(m: dict[str, Any]) -> list[dict[str, Any]]:
    """With the upstream's callbacks: each answered within ``CALLBACK_ANSWER_MS`` (issue 22)."""
    answers = m.get("callback_answer")
    if not answers or not answers.get("n"):
        return []
    detail = (
        f"{answers['n']} callbacks, p99 {answers['p99_ms']} ms, max {answers['max_ms']} ms, "
        f"{answers['over_target']} over; statuses {answers['statuses']}"
    )
    met = answers["over_target"] == 0 and set(answers["statuses"]) == {"202"}
    return [_target(m["name"], f"every callback answered 202 within {CALLBACK_ANSWER_MS:g} ms", met, detail)]


def _capacity_target(m: dict[str, Any]) -> dict[str, Any]:
    cap = m["capacity"]
    detail = (
        f"peak {cap['peak_concurrency']} concurrent, peak {m['peak_rps_1s']} req/s, "
        f"p95 {m['detection_latency_s']['p95']} s"
        + ("" if cap["held"] else " (budget or p95 not held)")
        + f"; this run's cadence would fill the budget at ~{cap['budget_bound_tasks_at_this_cadence']} tasks"
        + f" and one worker core at ~{cap.get('cpu_bound_tasks_per_core_at_this_cadence')} tasks"
    )
    tested = cap["peak_concurrency"] >= CAPACITY_TARGET or not cap["held"]
    return _target(
        m["name"],
        ">= 10,000 concurrent tasks in 50 req/s at p95 <= 10 s",
        (cap["held"] and cap["peak_concurrency"] >= CAPACITY_TARGET) if tested else None,
        detail,
    )


def _cpu_target(m: dict[str, Any]) -> dict[str, Any]:
    cpu = m.get("cpu_ms_per_observation")
    return _target(
        m["name"],
        "<= 0.1 ms worker CPU per status observed",
        cpu is not None and cpu <= CPU_TARGET_MS_PER_OBS,
        f"{cpu} ms/observation ({m.get('cpu_ms_per_observation_net_of_idle')} net of idle loops)",
    )


def _memory_targets(m: dict[str, Any]) -> list[dict[str, Any]]:
    """Redis memory per pending task, then per finished task retained."""
    mem = m["memory"].get("bytes_per_pending_task")
    pending = _target(
        m["name"],
        "<= 2 KB Redis memory per pending task",
        None if mem is None else mem <= MEMORY_TARGET_BYTES,
        f"{mem} B (used_memory delta at peak pending); keys alone {m['memory'].get('key_bytes_per_task')} B"
        if mem is not None
        else "not measured: finished records outnumber pending tasks in a steady flow; see the burst run",
    )
    done = m["memory"].get("bytes_per_finished_task")
    finished = _target(
        m["name"],
        "<= 3 KB Redis memory per finished task retained, its events included",
        None if done is None else done <= FINISHED_TARGET_BYTES,
        f"{done} B (used_memory delta once every task finished)" if done is not None else "not measured",
    )
    return [pending, finished]


def _hotpath_target(h: dict[str, Any]) -> dict[str, Any]:
    cpu = h["cpu_ms_per_observation"]
    how = f"as sparse as {h['spacing_of']} (a batch every {h['gap_s']} s)" if h["spacing_of"] else "back to back"
    detail = f"{cpu} ms/observation over {h['observations']} observations in {h['batches']} batches, {how}"
    who = "hot path, " + ("sparse" if h["spacing_of"] else "warm")
    return _target(who, "<= 0.1 ms worker CPU per status observed", cpu <= CPU_TARGET_MS_PER_OBS, detail)


def _requests_target(m: dict[str, Any], baseline: dict[str, Any] | None, tasks: int) -> dict[str, Any]:
    name = "requests/task <= 1/50 of SDK loop at <= its p95 (1k workload)"
    if not baseline or not baseline["requests_per_task"] or m["requests_per_task"] is None:
        return _target(m["name"], name, None, "no SDK contender in this run")
    ratio = baseline["requests_per_task"] / max(m["requests_per_task"], 1e-9)
    p95_a, p95_s = m["detection_latency_s"]["p95"], baseline["detection_latency_s"]["p95"]
    met = ratio >= REQUEST_RATIO_TARGET and p95_a is not None and p95_s is not None and p95_a <= p95_s
    detail = (
        f"{m['requests_per_task']} vs {baseline['name']} {baseline['requests_per_task']} req/task "
        f"(1/{ratio:.1f}); p95 {p95_a} s vs {p95_s} s (SDK p95 over its {baseline['detection_latency_s']['n']} "
        "correct verdicts)"
    )
    return _target(m["name"], name, met if tasks == 1000 else None, detail + ("" if tasks == 1000 else "; not 1k"))


def _target(who: str, target: str, met: bool | None, detail: str) -> dict[str, Any]:
    status = "not tested" if met is None else ("met" if met else "NOT met")
    return {"contender": who, "target": target, "met": met, "status": status, "detail": detail}
