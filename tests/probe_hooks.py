"""Hooks that tests name in ACETRACK_HOOKS: they record every call."""

from __future__ import annotations

from typing import Any

CALLS: list[dict[str, Any]] = []
FAILURES_LEFT: dict[str, int] = {}


async def record(event: dict[str, Any]) -> None:
    """Record the event."""
    CALLS.append(event)


async def flaky(event: dict[str, Any]) -> None:
    """Fail the first ``FAILURES_LEFT[id]`` calls for a task, then record."""
    left = FAILURES_LEFT.get(event["id"], 0)
    if left > 0:
        FAILURES_LEFT[event["id"]] = left - 1
        raise RuntimeError(f"flaky hook refuses {event['id']} ({left} left)")
    CALLS.append(event)


def not_async(event: dict[str, Any]) -> None:
    """A hook that is wrongly synchronous (resolving it must fail)."""
