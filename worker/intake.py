"""The intake rules of DESIGN.md §2, shared by the Redis stream, the CLI and the Python API. Pure."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from worker.errors import InvalidInput
from worker.models import DEFAULT_TOKEN as DEFAULT_TOKEN  # re-exported: the intake contract's names
from worker.models import EnqueueRequest as EnqueueRequest

SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
FIELDS = frozenset({"service", "id", "callback_url", "deadline_s", "token", "meta", "reopen"})
MAX_URL_CHARS = 2048
MAX_META_BYTES = 4096
MAX_DEADLINE_S = 604_800.0


def check_service(service: Any, allowed: Collection[str] = ()) -> str:
    """Return ``service`` if valid, else raise ``InvalidInput`` saying what a good one looks like."""
    if not isinstance(service, str) or not SERVICE_RE.fullmatch(service):
        raise InvalidInput("service", f"service {service!r} must match {SERVICE_RE.pattern} (e.g. 'suno')")
    if allowed and service not in allowed:
        raise InvalidInput("service", f"service {service!r} is not in ACETRACK_SERVICES {sorted(allowed)!r}")
    return service


def check_id(task_id: Any) -> str:
    """Return ``task_id`` if valid: 1-128 chars of ``[A-Za-z0-9._:-]``."""
    if not isinstance(task_id, str) or not ID_RE.fullmatch(task_id):
        shown = task_id if not isinstance(task_id, str) or len(task_id) <= 40 else task_id[:40] + "..."
        raise InvalidInput("id", f"id {shown!r} must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return task_id


def check_callback_url(url: Any) -> str | None:
    """An http(s) URL of at most 2048 characters, or None. Network screening happens elsewhere."""
    if url is None or url == "":
        return None
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        raise InvalidInput("callback_url", f"callback_url must be a string of at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        host = None
    if host is None or parts.scheme not in ("http", "https"):
        raise InvalidInput("callback_url", f"callback_url {url[:80]!r} must be an http:// or https:// URL with a host")
    return url


def check_deadline(value: Any) -> float | None:
    """A number of seconds from 1 to 604800, or None."""
    if value is None or value == "":
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not (1.0 <= number <= MAX_DEADLINE_S):
        # a float as typed (0, not 0.0: the CLI reads --deadline-s as a float)
        shown = (str(int(value)) if value.is_integer() else repr(value)) if isinstance(value, float) else repr(value)
        raise InvalidInput("deadline_s", f"deadline_s {shown} must be a number from 1 to {MAX_DEADLINE_S:.0f}")
    return number


def check_meta(value: Any) -> dict[str, Any] | None:
    """A JSON object (given as a dict or as JSON text) of at most 4096 bytes, or None."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise InvalidInput("meta", f"meta is not valid JSON ({e.msg}); send a JSON object") from e
    if not isinstance(value, dict):
        raise InvalidInput("meta", 'meta must be a JSON object like {"song": "intro"}')
    try:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())
    except ValueError as e:
        raise InvalidInput("meta", "meta must be plain JSON (no NaN or Infinity)") from e
    if size > MAX_META_BYTES:
        raise InvalidInput("meta", f"meta is {size} bytes; keep it under {MAX_META_BYTES} bytes")
    if _has_huge_int(value):
        # JSON readers (acetrack's included) read one as a rounded float: it would not come back as sent
        raise InvalidInput("meta", "meta holds an integer beyond 64 bits; send it as a string")
    return value


def _has_huge_int(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return not -(2**63) <= value < 2**64
    if isinstance(value, dict):
        return any(map(_has_huge_int, value.values()))
    if isinstance(value, list | tuple):
        return any(map(_has_huge_int, value))
    return False


def check_token(name: Any, known: Collection[str] | None) -> str:
    """The name of a configured API token; ``known=None`` skips the membership check (producers)."""
    if name is None or name == "":
        return DEFAULT_TOKEN
    if not isinstance(name, str) or (known is not None and name not in known):
        raise InvalidInput(
            "token", f"token {name!r} is not a configured token name; configure it in ACETRACK_API_TOKENS"
        )
    return name


def check_reopen(value: Any) -> bool:
    """``1``/``0`` (stream), or a boolean (JSON)."""
    if value in (None, "", "0", 0, False):
        return False
    if value in ("1", 1, True):
        return True
    raise InvalidInput("reopen", f"reopen {value!r} must be 1 or 0")


def build_request(
    fields: Mapping[str, Any], *, services: Collection[str] = (), tokens: Collection[str] | None = None
) -> EnqueueRequest:
    """Validate one request's fields (from the stream, the CLI, HTTP or Python) in full.

    Raises:
        InvalidInput: naming the first field that breaks a rule.
    """
    unknown = sorted(set(fields) - FIELDS)
    if unknown:
        raise InvalidInput(unknown[0], f"unknown field(s) {unknown!r}; allowed fields are {sorted(FIELDS)!r}")
    for required in ("service", "id"):
        if fields.get(required) in (None, ""):
            raise InvalidInput(required, f"{required} is required")
    return EnqueueRequest(
        service=check_service(fields["service"], services),
        id=check_id(fields["id"]),
        callback_url=check_callback_url(fields.get("callback_url")),
        deadline_s=check_deadline(fields.get("deadline_s")),
        token=check_token(fields.get("token"), tokens),
        meta=check_meta(fields.get("meta")),
        reopen=check_reopen(fields.get("reopen")),
    )
