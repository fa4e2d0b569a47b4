"""What one try of a delivery leads to (``delivery.after_try``), table-tested: no I/O."""

from __future__ import annotations

import pytest

from worker.delivery import Delivery, Outcome, Try, after_try, next_delay_s

SCHEDULE_S = (0.0, 5.0, 300.0)


def fresh(tries: int = 0) -> Delivery:
    return Delivery(
        "dlv_1", "evt_1", "webhook:https://hooks.example.test/x", 1000, {"type": "task.succeeded"}, tries=tries
    )


@pytest.mark.parametrize(
    ("tries", "result", "status", "reason", "outcome"),
    [
        (0, Try(), "delivered", None, Outcome("delivered")),
        (0, Try("HTTP 500", 500), "retrying", None, Outcome("retry", 5.0)),
        (1, Try("HTTP 503", 503, retry_after_s=900.0), "retrying", None, Outcome("retry", 900.0)),
        (1, Try("HTTP 429", 429, retry_after_s=1.0), "retrying", None, Outcome("retry", 300.0)),  # the schedule wins
        (2, Try("HTTP 500", 500), "dead", "exhausted", Outcome("dead")),
        (0, Try("HTTP 410", 410), "dead", "gone", Outcome("dead", disable_url=True)),
        (0, Try("URL disabled", dead_reason="gone"), "dead", "gone", Outcome("dead")),
        (0, Try("a private address", dead_reason="refused"), "dead", "refused", Outcome("dead")),
    ],
)
def test_after_try(tries: int, result: Try, status: str, reason: str | None, outcome: Outcome) -> None:
    before = fresh(tries)
    after, got = after_try(before, result, 2000, SCHEDULE_S)
    assert (after.status, after.reason, got) == (status, reason, outcome)
    assert after.tries == tries + 1 and after.attempts[-1].at_ms == 2000
    assert after.attempts[-1].ok is (result.error is None) and after.attempts[-1].status == result.status
    assert before.tries == tries and not before.attempts  # the delivery given is left as it was


def test_jitter_spreads_a_retry_by_a_tenth_either_way() -> None:
    assert next_delay_s(1, SCHEDULE_S, None, -0.1) == pytest.approx(4.5)
    assert next_delay_s(1, SCHEDULE_S, None, 0.1) == pytest.approx(5.5)
    assert next_delay_s(3, SCHEDULE_S, None, 0.0) is None


def test_the_stored_json_round_trips_and_keeps_fields_of_a_later_version() -> None:
    stored = {**fresh().to_dict(), "priority": "high"}
    delivery = Delivery.from_dict(stored)
    after, _ = after_try(delivery, Try("HTTP 500", 500), 3000, SCHEDULE_S)
    assert Delivery.from_dict(stored).to_dict() == stored
    assert after.to_dict()["priority"] == "high" and after.to_dict()["attempts"] == [
        {"at_ms": 3000, "ok": False, "status": 500, "error": "HTTP 500"}
    ]
