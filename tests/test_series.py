"""The dashboard's chart numbers (``worker/series.py``): pure, table-driven, no event loop."""

from __future__ import annotations

import json

import pytest

from worker.series import MINUTE_MS, WINDOW_MINUTES, RequestSampler, detection_ms, finished_series, percentile

NOW_MS = 1_767_000_000_000 - 1_767_000_000_000 % MINUTE_MS + 30_000  # half a minute into a minute


def terminal(kind: str, at_ms: int, upstream_s: float | None, finished_ms: int | None) -> dict[str, str]:
    record = {"upstream_finished_at": upstream_s, "finished_at_ms": finished_ms}
    return {"type": kind, "at_ms": str(at_ms), "record": json.dumps(record)}


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 50, None), ([5.0], 95, 5.0), ([1.0, 2.0, 3.0, 4.0], 50, 2.0), ([float(n) for n in range(1, 101)], 95, 95.0)],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


@pytest.mark.parametrize(
    ("upstream_s", "finished_ms", "expected"),
    [(100.0, 101_500, 1500.0), (None, 101_500, None), (100.0, None, None), (102.0, 101_500, 0.0)],
)
def test_detection_latency_from_a_terminal_event(
    upstream_s: float | None, finished_ms: int | None, expected: float | None
) -> None:
    assert detection_ms(terminal("task.succeeded", NOW_MS, upstream_s, finished_ms)) == expected


def test_finished_series_buckets_the_last_hour_by_minute() -> None:
    now_s = NOW_MS / 1000
    entries = [
        terminal("task.succeeded", NOW_MS - 1000, now_s - 2, NOW_MS - 1000),  # 1 s latency
        terminal("task.failed", NOW_MS - 2000, None, NOW_MS - 2000),  # no upstream time: counted, no latency
        terminal("task.succeeded", NOW_MS - 5 * MINUTE_MS, now_s - 400, NOW_MS - 5 * MINUTE_MS),
        {"type": "task.progress", "at_ms": str(NOW_MS), "record": "{}"},  # not a finish
        terminal("task.succeeded", NOW_MS - 2 * 3600_000, None, None),  # older than the hour
    ]
    series = finished_series(entries, NOW_MS)
    assert len(series) == WINDOW_MINUTES and series[-1]["minute_ms"] == NOW_MS - 30_000
    last, five_ago = series[-1], series[-6]
    assert (last["succeeded"], last["failed"], last["p50_ms"], last["p95_ms"]) == (1, 1, 1000.0, 1000.0)
    assert five_ago["succeeded"] == 1 and five_ago["p95_ms"] == 100_000.0
    assert sum(m["succeeded"] + m["failed"] for m in series) == 3


def test_request_sampler_adds_claims_since_the_last_sample_per_worker() -> None:
    sampler = RequestSampler()
    sampler.sample([{"worker_id": "a", "claims": 100}], NOW_MS)  # a baseline, not 100 new requests
    sampler.sample([{"worker_id": "a", "claims": 130}, {"worker_id": "b", "claims": 7}], NOW_MS + 1000)
    sampler.sample([{"worker_id": "a", "claims": 5}, {"worker_id": "b", "claims": 10}], NOW_MS + MINUTE_MS)
    # a restarted (counter back at 5) starts a new baseline; b's 3 count
    assert sampler.series(NOW_MS + MINUTE_MS) == [
        {"minute_ms": NOW_MS - 30_000, "requests": 30},
        {"minute_ms": NOW_MS + 30_000, "requests": 3},
    ]
    assert sampler.series(NOW_MS + 2 * 3600_000) == []  # older than the hour
