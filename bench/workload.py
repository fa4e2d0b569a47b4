"""The benchmark's workload: N Suno tasks, their lifecycles, and the ground truth to score verdicts against.

Everything here is in *unscaled* seconds (real Suno time); ``run`` multiplies by the time scale when it
creates the tasks in the simulator. Nothing in acetrack sees this module: it learns lifetimes at run time.

Shapes (``SHAPES``), so the scheduler is not tuned to one:

- ``lognormal``: the first clip finishes after a log-normal time whose median and spread are drawn
  from the seed, with a seed-dependent share of slow tasks (a second, slower mode, as when the
  upstream queues). Most tasks land in 40-150 s. 5 % fail (``error``: the whole task fails, often
  early), 5 % are ``partial`` (the second clip fails), 2 % of ids are unknown upstream.
- ``wide``: first clips spread evenly (in log time) over 40-150 s; 10 % fail, most of them early,
  5 % partial, 5 % unknown ids.
- ``bimodal``: half the tasks short (median 45 s), half long (median 130 s), as when two models or
  queue states share one service; the shares of ``lognormal``.

The second clip finishes a gamma-distributed gap later in every shape.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

SERVICE = "suno"
#: hard bounds on a first clip's time, seconds (the log-normal's far tails are cut here)
MIN_RUN_S, MAX_RUN_S = 30.0, 180.0
MIN_GAP_S, MAX_GAP_S = 0.5, 40.0


@dataclass(frozen=True)
class Params:
    """The distribution's parameters; drawn from the seed, so each seed is a different service."""

    median_run_s: float
    sigma: float
    slow_share: float
    slow_factor: float
    mean_gap_s: float

    @classmethod
    def from_seed(cls, seed: int) -> Params:
        rng = random.Random(f"params:{seed}")
        return cls(
            median_run_s=rng.uniform(55.0, 85.0),
            sigma=rng.uniform(0.18, 0.32),
            slow_share=rng.uniform(0.03, 0.10),
            slow_factor=rng.uniform(1.3, 1.7),
            mean_gap_s=rng.uniform(4.0, 12.0),
        )


@dataclass(frozen=True)
class Shape:
    """A workload shape: the shares of each script, and how first-clip times are drawn."""

    name: str
    error_share: float
    partial_share: float
    unknown_share: float
    #: failures happen after this share (uniform in its range) of the run time they would have had
    error_at: tuple[float, float]


SHAPES = {
    "lognormal": Shape("lognormal", 0.05, 0.05, 0.02, (0.2, 1.0)),
    "wide": Shape("wide", 0.10, 0.05, 0.05, (0.1, 0.5)),
    "bimodal": Shape("bimodal", 0.05, 0.05, 0.02, (0.2, 1.0)),
}


@dataclass(frozen=True)
class TaskSpec:
    """One task of the workload (unscaled seconds).

    Attributes:
        id: the upstream task id.
        script: the simulator's lifecycle: ``succeed``, ``partial``, ``error`` or ``unknown``.
        arrive_s: when it is submitted, from the start of the run.
        run_s: when its first clip is final (``error``: when the task fails), from submission.
        clip_gap_s: how much later the second clip is final (``partial``: fails).
    """

    id: str
    script: str
    arrive_s: float
    run_s: float
    clip_gap_s: float

    @property
    def finish_s(self) -> float | None:
        """When the task is finished upstream, from submission; None for an unknown id."""
        if self.script == "unknown":
            return None
        if self.script == "error":
            return self.run_s
        return self.run_s + self.clip_gap_s

    @property
    def expected_state(self) -> str:
        """The correct verdict: ``succeeded`` or ``failed``."""
        return "succeeded" if self.script in ("succeed", "partial") else "failed"

    @property
    def has_good_clip(self) -> bool:
        """Whether a clip of this task ever succeeds."""
        return self.script in ("succeed", "partial")


@dataclass(frozen=True)
class Workload:
    seed: int
    params: Params
    arrival_s: float
    tasks: list[TaskSpec]
    shape: str = "lognormal"

    def summary(self) -> dict[str, Any]:
        """Counts and lifetime percentiles (unscaled seconds), for the result file."""
        finishes = sorted(t.finish_s for t in self.tasks if t.finish_s is not None and t.script != "error")
        counts: dict[str, int] = {}
        for t in self.tasks:
            counts[t.script] = counts.get(t.script, 0) + 1
        return {
            "seed": self.seed,
            "shape": self.shape,
            "tasks": len(self.tasks),
            "arrival_window_s": self.arrival_s,
            "scripts": counts,
            "params": asdict(self.params),
            "lifetime_s": {f"p{q}": round(percentile(finishes, q), 1) for q in (1, 5, 50, 90, 95, 99)}
            | {"min": round(finishes[0], 1), "max": round(finishes[-1], 1)},
        }


def _run_time(rng: random.Random, p: Params, shape: str) -> float:
    if shape == "wide":
        return math.exp(rng.uniform(math.log(40.0), math.log(150.0)))
    if shape == "bimodal":
        median_s = 45.0 if rng.random() < 0.5 else 130.0
        return min(MAX_RUN_S, max(MIN_RUN_S, median_s * math.exp(rng.gauss(0.0, 0.15))))
    run = p.median_run_s * math.exp(rng.gauss(0.0, p.sigma))
    if rng.random() < p.slow_share:
        run *= p.slow_factor
    return min(MAX_RUN_S, max(MIN_RUN_S, run))


def generate(n: int, seed: int, arrival_s: float, shape: str = "lognormal", kind: str = "") -> Workload:
    """N tasks arriving uniformly at random (a Poisson process given N) over ``arrival_s`` seconds.
    ``kind``: other tasks of the same lifetimes (the seed's), with their own ids and draws (a warm-up)."""
    params, form = Params.from_seed(seed), SHAPES[shape]
    rng = random.Random(f"tasks{kind}:{seed}")
    shares = (form.error_share, form.partial_share, form.unknown_share)
    n_error, n_partial, n_unknown = (max(1, round(n * share)) for share in shares)
    scripts = ["error"] * n_error + ["partial"] * n_partial + ["unknown"] * n_unknown
    scripts += ["succeed"] * (n - len(scripts))
    rng.shuffle(scripts)
    arrivals = sorted(rng.uniform(0.0, arrival_s) for _ in range(n))
    tasks = []
    for i, (script, arrive) in enumerate(zip(scripts, arrivals, strict=True)):
        run = _run_time(rng, params, shape)
        if script == "error":
            run = max(5.0, run * rng.uniform(*form.error_at))  # failures often come early
        gap = min(MAX_GAP_S, max(MIN_GAP_S, rng.gammavariate(2.0, params.mean_gap_s / 2.0)))
        tasks.append(TaskSpec(f"bench{kind}-{seed}-{i:05d}-{rng.getrandbits(32):08x}", script, arrive, run, gap))
    return Workload(seed, params, arrival_s, tasks, shape)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of sorted ``values``; NaN when empty."""
    if not values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[min(len(values), rank) - 1]


@dataclass(frozen=True)
class Verdict:
    """What a contender reported for one task.

    Attributes:
        state: ``succeeded``, ``failed``, or None (no verdict: still waiting, or the wait raised).
        at_s: when it reported it (epoch seconds).
        partial: acetrack's ``partial`` flag (None when the contender has no such notion).
        reason: acetrack's failure reason, if any.
        note: why there is no verdict (the exception's name, ``still waiting``).
    """

    state: str | None
    at_s: float | None
    partial: bool | None = None
    reason: str | None = None
    note: str = ""


def score(spec: TaskSpec, created_at_s: float, verdict: Verdict, scale: float) -> tuple[str, float | None]:
    """Judge one verdict against the ground truth.

    Returns (outcome, detection latency in unscaled seconds or None). Outcomes: ``correct``;
    ``wrong_early_success`` (reported succeeded while a clip was still running); ``wrong_failed_good_clip``
    (reported failed although a clip succeeded); ``wrong_other`` (any other wrong verdict);
    ``no_verdict``.
    """
    if verdict.state is None or verdict.at_s is None:
        return "no_verdict", None
    finish = spec.finish_s
    expected_reason = {"error": "upstream_error", "unknown": "not_found"}.get(spec.script)
    reason_wrong = verdict.reason is not None and verdict.reason != expected_reason
    if finish is None:  # unknown upstream: failing it (not found) is right; there is no finish time
        return ("correct" if verdict.state == "failed" and not reason_wrong else "wrong_other"), None
    finished_at = created_at_s + finish * scale
    if verdict.state == "succeeded" and spec.has_good_clip and verdict.at_s < finished_at:
        return "wrong_early_success", None
    if verdict.state == "failed" and spec.has_good_clip:
        return "wrong_failed_good_clip", None
    if verdict.state != spec.expected_state or (verdict.state == "failed" and reason_wrong):
        return "wrong_other", None
    if verdict.partial is not None and verdict.partial != (spec.script == "partial"):
        return "wrong_other", None
    return "correct", max(0.0, verdict.at_s - finished_at) / scale
