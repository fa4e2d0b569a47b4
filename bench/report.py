"""A run's outputs: the result JSON, its markdown (table, diagnostics, targets, notes) and its PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.targets import P95_TARGET_S


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    ms = result["contenders"]
    lines = _header(result) + _table(ms)
    lines += ["", "Contenders:", ""]
    lines += [f"- **{m['name']}**: {m['label']}" for m in ms]
    lines += ["", "## Diagnostics", ""]
    lines += _diagnostics(result)
    lines += ["", "## Targets", "", "| contender | target | status | detail |", "|---|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['contender']} | {t['target']} | {t['status']} | {t['detail']} |")
    lines += ["", "## Notes", ""]
    lines += [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def _header(result: dict[str, Any]) -> list[str]:
    """Title, when and where it ran, its phases, and how to read the times."""
    return [
        f"# acetrack benchmark: {result['workload']['tasks']} tasks, time scale {result['scale']}",
        "",
        f"Run {result['started_at']} · seed {result['workload']['seed']} · {result['machine']['cpus']} CPUs "
        f"({result['machine']['cpu_model']}) · load average at start {result['load']['start']}, "
        f"end {result['load']['end']}, mean 1-min {result['load']['mean_1min']} · wall {result['wall_s']} s",
        "",
        "Phases (contenders in one phase ran at the same time; phases ran one after the other, same workload, "
        "same simulator): "
        + "; ".join(
            f"{i}. {', '.join(p['contenders'])} (wall {p['wall_s']} s, "
            f"load {p['load']['start'][0]}→{p['load']['end'][0]})"
            for i, p in enumerate(result.get("phases", []), start=1)
        ),
        "",
        "All times are unscaled seconds (real Suno time). Detection latency: task finished upstream → "
        "terminal event in Redis (acetrack) or `wait()` returned (SDK), over correct verdicts only.",
        "",
    ]


def _table(ms: list[dict[str, Any]]) -> list[str]:
    """The table of every contender's figures, one row each."""
    lines = [
        "| contender | tasks | requests | req/task | 429s | ids/request | p50 | p95 | p99 | correct | "
        "wrong: early success | wrong: failed w/ good clip | wrong: other | no verdict | CPU ms/obs | "
        "Redis CPU ms/obs | Redis B/pending task | peak req/s | capacity @50 req/s |",
        "|" + "---|" * 19,
    ]
    for m in ms:
        lines.append("| " + " | ".join(_fmt(x) for x in _row(m)) + " |")
    return lines


def _row(m: dict[str, Any]) -> tuple[Any, ...]:
    lat, o = m["detection_latency_s"], m["outcomes"]
    return (
        m["name"],
        m["tasks"],
        m["requests"],
        m["requests_per_task"],
        m["http_429"],
        m["ids_per_request"],
        lat["p50"],
        lat["p95"],
        lat["p99"],
        o.get("correct", 0),
        o.get("wrong_early_success", 0),
        o.get("wrong_failed_good_clip", 0),
        o.get("wrong_other", 0),
        o.get("no_verdict", 0),
        m.get("cpu_ms_per_observation"),
        m.get("redis_cpu_ms_per_observation"),
        m["memory"].get("bytes_per_pending_task"),
        m["peak_rps_1s"],
        m["capacity"]["tasks"],
    )


def _diagnostics(result: dict[str, Any]) -> list[str]:
    true_p90 = result["workload"]["lifetime_s"]["p90"]
    lines = []
    for m in result["contenders"]:
        if m["kind"] != "acetrack":
            lines.append(
                f"- {m['name']}: {m['observations_per_task']} polls/task, {m['http_429']} × 429, CPU "
                f"{m.get('cpu_ms_per_observation')} ms per observation ({m.get('cpu_cores_busy')} cores busy), "
                f"no verdict: {m['no_verdict_reasons'] or 0}"
            )
            continue
        regime = m["latency_by_regime_s"]
        learned = [u for _, u in m["learned_usual_lifetime_s"]]
        first = next((u for u in learned if u != learned[0]), None) if learned else None
        mem = m["memory"]
        lines.append(
            f"- {m['name']}: {m['observations_per_task']} polls/task, {m['ids_per_request']} ids/request, "
            f"mean {m['mean_rps']} req/s. Learned 'usual lifetime' (p90 of finished tasks; true p90 of the workload "
            f"{true_p90} s): {learned[0] if learned else '-'} s until 5 finished, then {first} s, "
            f"{learned[-1] if learned else '-'} s at the end. Tasks finishing past it ('overdue', interval grows "
            f"×1.5 with full jitter): {regime['overdue']['n']}, latency p50/p95/p99 {regime['overdue']['p50']}/"
            f"{regime['overdue']['p95']}/{regime['overdue']['p99']} s; the others: {regime['young']['n']}, "
            f"{regime['young']['p50']}/{regime['young']['p95']}/{regime['young']['p99']} s. CPU "
            f"{m.get('cpu_ms_per_observation')} ms/observation, {m.get('cpu_ms_per_observation_net_of_idle')} net of "
            f"idle loops ({m.get('idle_cpu_s_per_s')} cores idle; by worker {m.get('worker_cpu_s', '-')} s, "
            f"claimed batches {m.get('worker_claims', '-')}). Redis per pending task: task hash "
            f"{mem.get('task_hash_bytes')} B (max {mem.get('task_hash_bytes_max')}), sorted-set entries "
            f"{mem.get('zset_bytes_per_member')} B. Redis CPU {m.get('redis_cpu_ms_per_observation')} ms/observation "
            f"(one Redis core: ~{m.get('single_redis_observations_per_s')} observations/s)."
            + _callback_answers(m)
            + _windows(m)
        )
    return lines


def _windows(m: dict[str, Any]) -> str:
    """The busiest windows of finish time (most finishes), with their p95 and request rate."""
    windows = m.get("by_finish_window") or []
    busiest = sorted(sorted(windows, key=lambda w: -w[1])[:6])
    if not busiest:
        return ""
    shown = ", ".join(f"{at}-{at + 10} s: {n} finishes, p95 {p95} s, {rps} req/s" for at, n, p95, rps in busiest)
    return f" Busiest 10 s windows of finish time (from the first arrival): {shown}."


def _callback_answers(m: dict[str, Any]) -> str:
    answers = m.get("callback_answer")
    if not answers or not answers.get("n"):
        return ""
    return (
        f" Callbacks answered: {answers['n']} (statuses {answers['statuses']}), p50/p99/max "
        f"{answers['p50_ms']}/{answers['p99_ms']}/{answers['max_ms']} ms, {answers['over_target']} over 50 ms."
    )


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf, bars) = plt.subplots(1, 2, figsize=(13, 5))
    for m in result["contenders"]:
        xs = m["latencies_s"]
        if xs:
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            cdf.step(xs, ys, where="post", label=f"{m['name']} (n={len(xs)}, p95 {m['detection_latency_s']['p95']} s)")
    cdf.axvline(P95_TARGET_S, color="grey", linestyle=":", linewidth=1)
    cdf.axhline(0.95, color="grey", linestyle=":", linewidth=1)
    cdf.set_xscale("symlog", linthresh=1.0)
    cdf.set_xlim(left=0)
    cdf.set_xlabel("detection latency, s (unscaled; correct verdicts only)")
    cdf.set_ylabel("fraction of tasks")
    cdf.set_title("Detection latency CDF")
    cdf.legend(fontsize=8, loc="lower right")
    names = [m["name"] for m in result["contenders"]]
    values = [m["requests_per_task"] or 0 for m in result["contenders"]]
    colors = ["tab:blue" if m["kind"] == "acetrack" else "tab:orange" for m in result["contenders"]]
    drawn = bars.bar(names, values, color=colors)
    bars.bar_label(drawn, labels=[f"{v:.3g}" for v in values])
    bars.set_yscale("log")
    bars.set_ylabel("upstream requests per task (log)")
    bars.set_title("Requests per task")
    fig.suptitle(f"acetrack vs SDK wait(): {result['workload']['tasks']} tasks, scale {result['scale']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}.png"]
    paths[0].write_text(json.dumps(result, indent=1) + "\n")
    paths[1].write_text(markdown(result))
    plot(result, paths[2])
    return paths
