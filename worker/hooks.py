"""Python hooks (DESIGN.md §4): resolve ``pkg.mod:fn`` names once, run one delivery at a time.

A hook is ``async def hook(event: dict) -> None``. Each (event, hook) pair is its own delivery, so
one failing hook is retried on its own and never holds up the others or any polling.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from worker.errors import ConfigError

logger = logging.getLogger(__name__)

Hook = Callable[[dict[str, Any]], Awaitable[None]]
PYTHON_PREFIX = "python:"
WEBHOOK_PREFIX = "webhook:"
#: seconds before each retry of a failing Python hook (its length + 1 is the number of tries)
HOOK_RETRY_S: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0)


def resolve_hook(name: str) -> Hook:
    """Import ``pkg.mod:fn`` and check it is an async function.

    Raises:
        ConfigError: naming the hook and what is wrong with it.
    """
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"hook {name!r} must be written as 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"hook {name!r}: cannot import {module_name!r} ({e}); is it installed?") from e
    except Exception as e:  # the module itself fails as it loads: say so, not a traceback
        raise ConfigError(f"hook {name!r}: importing {module_name!r} raised {type(e).__name__}: {e}") from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise ConfigError(f"hook {name!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ConfigError(f"hook {name!r} is a {type(fn).__name__}, not a function; point it at an 'async def'")
    if not inspect.iscoroutinefunction(fn):
        raise ConfigError(f"hook {name!r} must be an 'async def' function taking the event dict")
    try:
        inspect.signature(fn).bind({})
    except TypeError as e:
        raise ConfigError(f"hook {name!r} must take one argument, the event dict ({e})") from e
    hook: Hook = fn
    return hook


def resolve_hooks(names: Sequence[str]) -> dict[str, Hook]:
    """Resolve every name in ``ACETRACK_HOOKS`` at start-up, keyed by destination name.

    Raises:
        ConfigError: naming the setting, the hook and what is wrong with it.
    """
    try:
        return {PYTHON_PREFIX + name: resolve_hook(name) for name in names}
    except ConfigError as e:
        raise ConfigError(f"ACETRACK_HOOKS: {e}") from e


def destinations_by_event(
    hook_names: Sequence[str],
    hook_events: Sequence[str],
    webhook_urls: Sequence[str] = (),
    webhook_events: Sequence[str] = (),
) -> dict[str, list[str]]:
    """Which destinations get each event type (the outbox entries written with each event).

    Python hooks are named ``python:pkg.mod:fn`` and global webhooks ``webhook:URL``.
    """
    out: dict[str, list[str]] = {}
    for event in hook_events:
        out.setdefault(event, []).extend(PYTHON_PREFIX + name for name in hook_names)
    for event in webhook_events:
        out.setdefault(event, []).extend(WEBHOOK_PREFIX + url for url in webhook_urls)
    return out


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt came to."""

    status: Literal["delivered", "retry", "dead", "missing"]
    retry_in_s: float = 0.0
    #: a 410 Gone: later deliveries to this URL are dead-lettered at once
    disable_url: bool = False


def record_attempt(body: dict[str, Any], now_ms: int, error: str | None, status: int | None = None) -> None:
    """Append one attempt's result to a delivery body and count it (``tries`` restarts on replay)."""
    body["attempts"].append({"at_ms": now_ms, "ok": error is None, "status": status, "error": error})
    body["tries"] = body.get("tries", 0) + 1


async def attempt(
    hooks: Mapping[str, Hook],
    body: dict[str, Any],
    now_ms: int,
    retry_s: Sequence[float] = HOOK_RETRY_S,
    timeout_s: float | None = None,
) -> Outcome:
    """Call the hook named in ``body`` once (a call not done in ``timeout_s`` is a failed try);
    update ``body`` with the attempt and its new status."""
    hook = hooks.get(body["destination"])
    error: str | None = None
    if hook is None:
        error = f"no hook {body['destination']!r} is configured in this worker"
    else:
        try:
            await asyncio.wait_for(hook(body["event"]), timeout_s)
        except TimeoutError:
            error = f"timed out after {timeout_s:g} s"
            logger.warning("hook %s timed out for event %s", body["destination"], body["event_id"])
        except Exception as e:  # a user hook may raise anything; it must not stop the worker
            error = f"{type(e).__name__}: {e}"
            logger.warning("hook %s failed for event %s: %s", body["destination"], body["event_id"], error)
    record_attempt(body, now_ms, error)
    if error is None:
        body["status"] = "delivered"
        return Outcome("delivered")
    tries = body["tries"]
    if tries > len(retry_s):
        body["status"] = "dead"
        logger.error("hook %s gave up on event %s after %d tries", body["destination"], body["event_id"], tries)
        return Outcome("dead")
    body["status"] = "retrying"
    return Outcome("retry", retry_s[tries - 1])
