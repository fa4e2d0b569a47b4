"""The dashboard's charts as numbers: per-minute buckets over the last hour. Pure (no I/O).

Inputs are events-stream entries (finished tasks, detection latency) and samples of the workers'
heartbeat counters (batch polls, one upstream request each); the API reads them, this folds them.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MINUTE_MS = 60_000
WINDOW_MINUTES = 60
TERMINAL_TYPES = frozenset({"task.succeeded", "task.failed"})


def minute_of(at_ms: int) -> int:
    """The start (epoch ms) of the minute ``at_ms`` falls in."""
    return at_ms - at_ms % MINUTE_MS


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0..100) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def detection_ms(fields: Mapping[str, str]) -> float | None:
    """Upstream ``finished_at`` to acetrack's terminal write, from one terminal event; None if unknown."""
    record = json.loads(fields.get("record") or "{}")
    upstream_s, finished_ms = record.get("upstream_finished_at"), record.get("finished_at_ms")
    if not isinstance(upstream_s, int | float) or not isinstance(finished_ms, int):
        return None
    return max(0.0, finished_ms - upstream_s * 1000)


def finished_series(entries: Iterable[Mapping[str, str]], now_ms: int) -> list[dict[str, Any]]:
    """Per minute of the last hour: tasks succeeded and failed, detection latency p50/p95 (ms)."""
    first = minute_of(now_ms) - (WINDOW_MINUTES - 1) * MINUTE_MS
    buckets: dict[int, dict[str, Any]] = {
        first + n * MINUTE_MS: {"succeeded": 0, "failed": 0, "latencies": []} for n in range(WINDOW_MINUTES)
    }
    for fields in entries:
        if fields.get("type") not in TERMINAL_TYPES:
            continue
        bucket = buckets.get(minute_of(int(fields["at_ms"])))
        if bucket is None:
            continue
        bucket["succeeded" if fields["type"] == "task.succeeded" else "failed"] += 1
        latency = detection_ms(fields)
        if latency is not None:
            bucket["latencies"].append(latency)
    return [
        {
            "minute_ms": minute,
            "succeeded": b["succeeded"],
            "failed": b["failed"],
            "p50_ms": percentile(b["latencies"], 50),
            "p95_ms": percentile(b["latencies"], 95),
        }
        for minute, b in sorted(buckets.items())
    ]


@dataclass
class RequestSampler:
    """Upstream requests per minute, from the workers' cumulative ``claims`` counters (one batch
    request per claim). Sampled when the dashboard asks, so an API nobody looks at reads nothing;
    a worker's first sample is its baseline, and a restarted worker (counter back to 0) starts a new one."""

    #: (minute_ms, requests) of the last hour
    minutes: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=WINDOW_MINUTES))
    last: dict[str, int] = field(default_factory=dict)

    def sample(self, workers: Iterable[Mapping[str, Any]], now_ms: int) -> None:
        """Add what each live worker claimed since the previous sample to this minute."""
        added = 0
        for worker in workers:
            worker_id, claims = str(worker.get("worker_id", "")), int(worker.get("claims", 0))
            before = self.last.get(worker_id)
            if before is not None and claims >= before:
                added += claims - before
            self.last[worker_id] = claims
        minute = minute_of(now_ms)
        if self.minutes and self.minutes[-1][0] == minute:
            self.minutes[-1] = (minute, self.minutes[-1][1] + added)
        else:
            self.minutes.append((minute, added))

    def series(self, now_ms: int) -> list[dict[str, int]]:
        """Per sampled minute of the last hour: ``minute_ms`` and ``requests``."""
        first = minute_of(now_ms) - (WINDOW_MINUTES - 1) * MINUTE_MS
        return [{"minute_ms": m, "requests": n} for m, n in self.minutes if m >= first]
