"""Before a process starts: refuse a configuration that cannot work, and say what it will do.

``check_worker`` and ``check_api`` raise ``ConfigError`` with one line that names the setting,
what is wrong and what to do; the CLI prints it and exits 2 before connecting to anything, so a
worker never runs alive and silent with settings that can never poll or deliver.
``describe_worker`` is the one start-up line: what this worker will do, with no secret in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from config import Settings
from worker import hooks as hooks_mod
from worker.connect import check_url, describe
from worker.errors import ConfigError

logger = logging.getLogger(__name__)

#: settings the start-up line names on their own (the rest appear when they differ from the default)
_NAMED = frozenset({"redis_url", "api_base_url", "api_token", "api_tokens", "services", "hooks", "webhook_urls"})
_SECRET = frozenset({"api_token", "api_tokens", "webhook_secret", "http_token", "callback_key"})


@dataclass(frozen=True)
class WorkerPlan:
    """What a worker checked before it starts: its tokens and its resolved hooks."""

    #: None only where the caller hands the worker its connections (tests, the demo)
    redis_url: str | None
    tokens: dict[str, str]
    hooks: dict[str, hooks_mod.Hook]
    webhook_secret: str | None


def _require_redis_url(settings: Settings) -> str:
    if settings.redis_url is None:
        raise ConfigError("ACETRACK_REDIS_URL is not set: set it to your Redis, e.g. redis://localhost:6379/0")
    check_url(settings.redis_url)
    return settings.redis_url


def _webhook_secret(settings: Settings) -> str | None:
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    return secret or None


def check_worker(settings: Settings, *, needs_redis_url: bool = True) -> WorkerPlan:
    """Everything a worker needs, checked; raises ``ConfigError`` naming the first setting at fault."""
    redis_url = _require_redis_url(settings) if needs_redis_url else settings.redis_url
    tokens = settings.tokens()
    if not tokens:
        raise ConfigError(
            "no API token: set ACETRACK_API_TOKEN (or ACETRACK_API_TOKENS, a JSON object of names to tokens); "
            "a worker cannot poll without one"
        )
    secret = _webhook_secret(settings)
    if settings.webhook_urls and secret is None:
        raise ConfigError(
            "ACETRACK_WEBHOOK_URLS is set but ACETRACK_WEBHOOK_SECRET is not: set a whsec_... secret "
            "(webhooks are always signed), or unset ACETRACK_WEBHOOK_URLS"
        )
    return WorkerPlan(redis_url, tokens, hooks_mod.resolve_hooks(settings.hooks), secret)


def check_api(settings: Settings) -> str:
    """What ``acetrack serve`` needs; returns the Redis URL."""
    return _require_redis_url(settings)


def _changed(settings: Settings) -> list[str]:
    """``NAME=value`` for each setting that differs from its default (secrets as ``***``)."""
    out = []
    for name, field in type(settings).model_fields.items():
        value: Any = getattr(settings, name)
        if name in _NAMED or value == field.get_default(call_default_factory=True):
            continue
        shown = "***" if name in _SECRET else ",".join(map(str, value)) if isinstance(value, list) else value
        out.append(f"{name.upper()}={shown}")
    return out


def describe_worker(settings: Settings, plan: WorkerPlan) -> str:
    """The start-up line: Redis (no password), the API, services, token names, hooks, webhook hosts,
    the rate budget and every setting changed from its default."""
    webhook_hosts = sorted({urlsplit(url).hostname or url for url in settings.webhook_urls})
    parts = [
        f"redis={describe(plan.redis_url) if plan.redis_url else 'given'}",
        f"api={settings.api_base_url}",
        f"services={','.join(settings.services) or 'any'}",
        f"tokens={','.join(sorted(plan.tokens))}",
        f"hooks={','.join(settings.hooks) or 'none'}",
        f"webhooks={','.join(webhook_hosts) or 'none'}",
        f"budget={settings.rate_limit_rps:g} req/s per token",
    ]
    changed = _changed(settings)
    line = "worker starting: " + " ".join(parts)
    # the settings changed from their defaults, set apart: the budget's own words run into them otherwise
    return line + ("; changed from the defaults: " + " ".join(changed) if changed else "")
