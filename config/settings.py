"""``Settings``: every ``ACETRACK_*`` variable of DESIGN.md §6, typed and validated.

Built only at the edge (the CLI, the worker factory); everything below gets plain values.
Lists in the environment are comma-separated.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from standardwebhooks import Webhook

SECRETS_DIR = "/run/secrets"
DEFAULT_API_BASE_URL = "https://api.acedata.cloud"
SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
EVENT_TYPES = frozenset({"task.succeeded", "task.failed", "task.progress", "clip.succeeded"})

CommaList = Annotated[list[str], NoDecode]


def parse_redis_url(url: str) -> str:
    """Check a Redis URL's scheme, host, database and ports; return it unchanged. Messages show the
    URL without its password.

    ``RedisDsn`` rejects Sentinel URLs, so this small parser stands in for it.
    """
    parts, shown = urlsplit(url), _without_password(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(f"redis url {shown!r} must start with one of {', '.join(s + '://' for s in REDIS_SCHEMES)}")
    if parts.scheme != "unix" and not parts.netloc:
        raise ValueError(f"redis url {shown!r} has no host; write e.g. redis://localhost:6379/0")
    path = [p for p in parts.path.split("/") if p]
    if parts.scheme == "redis+sentinel" and not path:
        raise ValueError(f"sentinel url {shown!r} needs a service name: redis+sentinel://host:26379/mymaster")
    # the database: redis://host/DB, redis+sentinel://hosts/SERVICE/DB (a unix socket's is ?db=)
    db = (path[1:2] if parts.scheme == "redis+sentinel" else path[:1]) or [""]
    if parts.scheme != "unix" and db[0] and not db[0].isdigit():
        raise ValueError(f"redis url {shown!r}: the database {db[0]!r} must be a number, e.g. redis://localhost:6379/0")
    _check_ports(shown, parts.netloc)
    return url


def _check_ports(shown: str, netloc: str) -> None:
    # a Sentinel URL lists host:port pairs, comma-separated; urlsplit's .port reads only one
    for address in netloc.rpartition("@")[2].split(","):
        after_host = address.rpartition("]")[2] if address.startswith("[") else address  # [::1]:6379
        port = after_host.partition(":")[2]
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"url {shown!r}: port {port!r} must be a number from 1 to 65535")


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    return url.replace(f":{parts.password}@", ":***@", 1) if parts.password else url


def check_http_url(name: str, url: str) -> str:
    """Check that ``url`` is an http(s) URL with a host; ``name`` is the setting, for the message."""
    parts, shown = urlsplit(url), _without_password(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} {shown!r} must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8090")
    _check_ports(shown, parts.netloc)
    return url


#: the shortest webhook secret taken, in bytes: Standard Webhooks advise 24 to 64
MIN_SECRET_BYTES = 24


def check_webhook_secret(secret: str) -> None:
    """Refuse a secret that is not ``whsec_`` and the base64 of at least ``MIN_SECRET_BYTES``. The
    signing library takes more (the prefix optional, base64 read loosely), but a receiver given the
    same text may read it another way, and then no signature checks out."""
    make_one = "python -c \"import base64, os; print('whsec_' + base64.b64encode(os.urandom(24)).decode())\""
    body = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(body, validate=True) if body != secret else b""
    except ValueError:
        key = b""
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(
            f"webhook secret must be whsec_ followed by the base64 of at least {MIN_SECRET_BYTES} random bytes, "
            f"as Standard Webhooks define it; make one with: {make_one}"
        )
    Webhook(secret)  # and the signing library reads it


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _secrets_dir() -> str | None:
    # pydantic-settings warns when secrets_dir is missing; pass it only where compose mounts it.
    return SECRETS_DIR if os.path.isdir(SECRETS_DIR) else None


class Settings(BaseSettings):
    """All of acetrack's settings; env prefix ``ACETRACK_``."""

    model_config = SettingsConfigDict(env_prefix="ACETRACK_", secrets_dir=_secrets_dir(), extra="ignore")

    redis_url: str | None = None
    api_base_url: str = DEFAULT_API_BASE_URL
    api_token: SecretStr | None = None
    api_timeout_s: float = Field(30.0, gt=0)
    api_tokens: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    services: CommaList = Field(default_factory=list)
    key_prefix: str = "acetrack"
    batch_size: int = Field(50, ge=1, le=500)
    first_poll_s: float = Field(3.0, ge=0)
    poll_s: float = Field(3.0, gt=0)
    max_poll_s: float = Field(60.0, gt=0)
    #: None: polls run every ``poll_s``; else the interval moves so p95 detection latency meets it
    target_p95_s: float | None = Field(None, gt=0)
    #: None: the poll grid's step (``poll_s`` / 2), the one value that fills batches with it
    coalesce_s: float | None = Field(None, ge=0)
    deadline_s: float = Field(1800.0, ge=1, le=604800)
    not_found_grace_s: float = Field(60.0, ge=0)
    rate_limit_rps: float = Field(50.0, gt=0)
    lease_s: float = Field(30.0, gt=0)
    #: how often an idle arq worker looks for jobs (arq's ``poll_delay``): bounds the wait from a
    #: batch being claimed, or a delivery falling due, to its job starting; each look is a Redis
    #: round trip, about 0.5 ms of CPU on a small VM (DESIGN.md §3 allows ~200 ms)
    job_poll_delay_s: float = Field(0.15, gt=0, le=5)
    retention_s: float = Field(7 * 24 * 3600.0, gt=0)
    events_maxlen: int = Field(100_000, ge=100)
    hooks: CommaList = Field(default_factory=list)
    hook_events: CommaList = Field(default_factory=lambda: ["task.succeeded", "task.failed"])
    webhook_urls: CommaList = Field(default_factory=list)
    webhook_secret: SecretStr | None = None
    webhook_schedule_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    webhook_allow_hosts: CommaList = Field(default_factory=list)
    webhook_events: CommaList = Field(default_factory=lambda: ["task.succeeded", "task.failed"])
    http_host: str = "0.0.0.0"
    http_port: int = Field(8080, ge=0, le=65535)
    http_token: SecretStr | None = None
    #: the key of the upstream's callbacks (``POST /callbacks/{service}?key=KEY``); unset: no callbacks
    callback_key: SecretStr | None = None
    #: a callback for a task acetrack does not track starts tracking it (else it is dropped)
    callback_enqueue: bool = False
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    worker_metrics_host: str = "0.0.0.0"
    log_level: str = "INFO"
    log_json: bool = False

    _csv = field_validator(
        "services",
        "hooks",
        "hook_events",
        "webhook_urls",
        "webhook_allow_hosts",
        "webhook_events",
        "webhook_schedule_s",
        mode="before",
    )(_split_csv)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        return None if value is None or value == "" else parse_redis_url(value)

    @field_validator("api_base_url")
    @classmethod
    def _check_api_base_url(cls, value: str) -> str:
        # empty, as compose and .env files leave an unset name: the default, as for the other URLs
        return check_http_url("api base url", value or DEFAULT_API_BASE_URL)

    @field_validator("webhook_urls")
    @classmethod
    def _check_webhook_urls(cls, value: list[str]) -> list[str]:
        return [check_http_url("webhook url", url) for url in value]

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            check_webhook_secret(value.get_secret_value())
        return value

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError('api_tokens must be a JSON object like {"name": "token"}') from e
        return value

    @field_validator("services")
    @classmethod
    def _check_services(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not SERVICE_RE.fullmatch(s)]
        if bad:
            raise ValueError(f"service names {bad!r} must match {SERVICE_RE.pattern}")
        return value

    @field_validator("hook_events", "webhook_events")
    @classmethod
    def _check_events(cls, value: list[str]) -> list[str]:
        bad = sorted(set(value) - EVENT_TYPES)
        if bad:
            raise ValueError(f"unknown event types {bad!r}; choose from {sorted(EVENT_TYPES)}")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"log level {value!r} must be one of DEBUG, INFO, WARNING, ERROR")
        return value.upper()

    @model_validator(mode="after")
    def _check_cadence(self) -> Settings:
        if self.max_poll_s < self.poll_s:
            raise ValueError(
                f"ACETRACK_MAX_POLL_S ({self.max_poll_s}) must be at least ACETRACK_POLL_S ({self.poll_s})"
            )
        return self

    def tokens(self) -> dict[str, str]:
        """Configured API tokens by name; ``default`` is ``api_token``."""
        named = {name: secret.get_secret_value() for name, secret in self.api_tokens.items()}
        if self.api_token is not None and self.api_token.get_secret_value():
            named["default"] = self.api_token.get_secret_value()
        return named


#: how alike the part after ``ACETRACK_`` must be to a setting's to be called a typo of it: 0.8
#: catches a letter missing, added or swapped (POL_S for POLL_S), not the names acetrack's compose
#: file and tests use (IMAGE, TEST_REDIS_URL: 0.78)
TYPO_LIKENESS = 0.8


def misspelt_settings(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(name, the setting it nearly is)`` for each ``ACETRACK_`` variable that is not a setting but
    is spelt nearly like one: pydantic-settings ignores unknown names, so a typo would go unseen."""
    settings = {name.upper(): f"ACETRACK_{name.upper()}" for name in Settings.model_fields}
    out = []
    for name in sorted(environ):
        rest = name.upper().removeprefix("ACETRACK_")
        if name.upper().startswith("ACETRACK_") and rest not in settings:  # names are read in any case
            close = difflib.get_close_matches(rest, settings, n=1, cutoff=TYPO_LIKENESS)
            out += [(name, settings[close[0]])] if close else []
    return out
