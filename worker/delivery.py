"""One delivery of one event to one destination (a Python hook or a webhook), and what a try of it
leads to. Pure: the tries themselves are in ``hooks`` and ``webhooks``, their I/O in ``deliver``.

A delivery is stored as JSON (``store.outbox``); ``Delivery.from_dict`` and ``to_dict`` are that
format, and keep fields a later version adds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

#: destinations are named ``python:pkg.mod:fn`` (a hook) or ``webhook:URL``
PYTHON_PREFIX = "python:"
WEBHOOK_PREFIX = "webhook:"
#: a webhook's retry delays are spread ±10 % so retries of many deliveries do not come together
JITTER = 0.1
#: the longest ``Retry-After`` honoured
MAX_RETRY_AFTER_S = 86_400.0

Status = Literal["pending", "retrying", "delivered", "dead"]
OutcomeStatus = Literal["delivered", "retry", "dead", "missing"]


@dataclass(frozen=True)
class Attempt:
    """One try's result as recorded on the delivery."""

    at_ms: int
    ok: bool
    status: int | None = None
    error: str | None = None


@dataclass
class Delivery:
    """A stored delivery: the event it carries, where it goes, and every try so far."""

    delivery_id: str
    event_id: str
    destination: str
    created_at_ms: int
    event: dict[str, Any]
    status: Status = "pending"
    attempts: list[Attempt] = field(default_factory=list)
    #: tries since it was made or last replayed
    tries: int = 0
    #: why it is dead: 'exhausted', 'gone' (a 410, or its URL disabled), 'refused' (screening)
    reason: str | None = None
    replays: int = 0
    #: a try started then and has not recorded its end (its worker may have died mid-try)
    sending_since_ms: int | None = None
    #: fields of a later version, kept as they are
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_webhook(self) -> bool:
        """True for a webhook, False for a Python hook."""
        return self.destination.startswith(WEBHOOK_PREFIX)

    @property
    def url(self) -> str:
        """A webhook's URL."""
        return self.destination.removeprefix(WEBHOOK_PREFIX)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Delivery:
        """A delivery from its stored JSON."""
        known = {f.name for f in dataclasses.fields(cls)} - {"attempts", "extra"}
        values = {k: v for k, v in data.items() if k in known}
        attempts = [Attempt(**a) for a in data.get("attempts", ())]
        extra = {k: v for k, v in data.items() if k not in known and k != "attempts"}
        return cls(**values, attempts=attempts, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("attempts", "extra")}
        out["attempts"] = [dataclasses.asdict(a) for a in self.attempts]
        return {**self.extra, **out}


@dataclass(frozen=True)
class Try:
    """What one try came to, as the hook call or the HTTP request saw it."""

    #: None: delivered
    error: str | None = None
    #: the HTTP status answered (webhooks)
    status: int | None = None
    #: the answer's ``Retry-After``, in seconds
    retry_after_s: float | None = None
    #: dead at once without a retry, for this reason ('gone', 'refused')
    dead_reason: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What a try leads to for the outbox."""

    status: OutcomeStatus
    retry_in_s: float = 0.0
    #: a 410 Gone: later deliveries to this URL are dead-lettered at once
    disable_url: bool = False


def next_delay_s(tries: int, schedule_s: Sequence[float], retry_after_s: float | None, jitter: float) -> float | None:
    """Delay before the next try after ``tries`` failed ones (``schedule_s[i]``: the delay before
    try ``i + 1``, spread by ``jitter`` in [-1, 1]); None when the schedule is spent."""
    if tries >= len(schedule_s):
        return None
    delay_s = schedule_s[tries] * (1 + jitter)
    if retry_after_s is not None:
        delay_s = max(delay_s, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay_s


def after_try(
    delivery: Delivery, result: Try, now_ms: int, schedule_s: Sequence[float], jitter: float = 0.0
) -> tuple[Delivery, Outcome]:
    """The delivery after one try, and what the outbox does next: delivered, a retry after the
    schedule's next delay (or a longer ``Retry-After``), or dead (a 410, a refused URL, the schedule
    spent). ``jitter``: in [-1, 1], scaled by ``JITTER``."""
    attempt = Attempt(now_ms, result.error is None, result.status, result.error)
    tried = dataclasses.replace(delivery, attempts=[*delivery.attempts, attempt], tries=delivery.tries + 1)
    if result.error is None:
        return dataclasses.replace(tried, status="delivered"), Outcome("delivered")
    gone = result.status == 410 or result.dead_reason == "gone"
    if gone or result.dead_reason is not None:
        dead = dataclasses.replace(tried, status="dead", reason="gone" if gone else result.dead_reason)
        return dead, Outcome("dead", disable_url=result.status == 410)
    delay_s = next_delay_s(tried.tries, schedule_s, result.retry_after_s, jitter * JITTER)
    if delay_s is None:
        return dataclasses.replace(tried, status="dead", reason="exhausted"), Outcome("dead")
    return dataclasses.replace(tried, status="retrying"), Outcome("retry", delay_s)
