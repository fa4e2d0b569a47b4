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
from typing import Any

from worker.delivery import PYTHON_PREFIX, WEBHOOK_PREFIX, Delivery, Try
from worker.errors import ConfigError
from worker.own_packages import shadowed_hook

logger = logging.getLogger(__name__)

Hook = Callable[[dict[str, Any]], Awaitable[None]]
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
    shadowed = shadowed_hook(module_name)
    if shadowed is not None:
        raise ConfigError(f"hook {name!r}: {shadowed}")
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


async def attempt(hooks: Mapping[str, Hook], delivery: Delivery, timeout_s: float | None = None) -> Try:
    """Call the hook ``delivery`` names once with its event; a call not done in ``timeout_s`` is a
    failed try, and so is a hook this worker does not have."""
    hook = hooks.get(delivery.destination)
    if hook is None:
        return Try(f"no hook {delivery.destination!r} is configured in this worker")
    try:
        await asyncio.wait_for(hook(delivery.event), timeout_s)
    except TimeoutError:
        logger.warning("hook %s timed out for event %s", delivery.destination, delivery.event_id)
        return Try(f"timed out after {timeout_s:g} s")
    except Exception as e:  # a user hook may raise anything; it must not stop the worker
        error = f"{type(e).__name__}: {e}"
        logger.warning("hook %s failed for event %s: %s", delivery.destination, delivery.event_id, error)
        return Try(error)
    return Try()


def schedule_s(retry_s: Sequence[float]) -> tuple[float, ...]:
    """A hook's retry delays as a delivery schedule: its first try at once, then ``retry_s``."""
    return (0.0, *retry_s)
