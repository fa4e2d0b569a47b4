"""The intake rules of DESIGN.md §2, checked before anything is sent. Pure, stdlib only.

The same rules the workers apply (``tests/test_client_contract.py`` compares the two on a table of
inputs). Two checks only the server can make: a service outside ``ACETRACK_SERVICES`` and a token
name it does not configure; over Redis such an entry lands in the rejected stream (``wait`` reports
it), over HTTP the answer is a 400 (``InvalidInput``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from acetrack.errors import InvalidInput

SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: the intake's fields; any other moves an entry to the rejected stream
FIELDS = frozenset({"service", "id", "callback_url", "deadline_s", "token", "meta", "reopen"})
MAX_URL_CHARS = 2048
MAX_META_BYTES = 4096
MAX_DEADLINE_S = 604_800.0


def check_service(service: Any) -> str:
    """``service`` if it is a valid name (``^[a-z0-9][a-z0-9-]{0,31}$``)."""
    if not isinstance(service, str) or not SERVICE_RE.fullmatch(service):
        raise InvalidInput("service", f"service {service!r} must match {SERVICE_RE.pattern} (e.g. 'suno')")
    return service


def check_id(task_id: Any) -> str:
    """``task_id`` if it is 1-128 characters of ``[A-Za-z0-9._:-]``."""
    if not isinstance(task_id, str) or not ID_RE.fullmatch(task_id):
        shown = task_id if not isinstance(task_id, str) or len(task_id) <= 40 else task_id[:40] + "..."
        raise InvalidInput("id", f"id {shown!r} must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return task_id


def check_callback_url(url: str | None) -> str | None:
    """An http(s) URL with a host, at most 2048 characters (the server also screens its address)."""
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


def check_deadline(value: float | None) -> float | None:
    """A number of seconds from 1 to 604800."""
    if value is None:
        return None
    number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    if not (1.0 <= number <= MAX_DEADLINE_S):
        raise InvalidInput("deadline_s", f"deadline_s {value!r} must be a number from 1 to {MAX_DEADLINE_S:.0f}")
    return number


def check_meta(value: Mapping[str, Any] | None) -> str | None:
    """``meta`` as compact JSON text: an object of at most 4096 bytes, integers within 64 bits."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidInput("meta", 'meta must be a JSON object like {"song": "intro"}')
    try:
        text = json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInput("meta", f"meta must be plain JSON (no NaN, Infinity or other objects): {e}") from e
    size = len(text.encode())
    if size > MAX_META_BYTES:
        raise InvalidInput("meta", f"meta is {size} bytes; keep it under {MAX_META_BYTES} bytes")
    if _has_huge_int(value):
        # acetrack reads one back as a rounded float: it would not come back as sent
        raise InvalidInput("meta", "meta holds an integer beyond 64 bits; send it as a string")
    return text


def _has_huge_int(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return not -(2**63) <= value < 2**64
    if isinstance(value, Mapping):
        return any(map(_has_huge_int, value.values()))
    if isinstance(value, list | tuple):
        return any(map(_has_huge_int, value))
    return False


def check_token(name: str | None) -> str | None:
    """The name of an API token the workers configure (not the secret); None means ``default``."""
    if name is None or name == "":
        return None
    if not isinstance(name, str):
        raise InvalidInput("token", f"token {name!r} must be the name of a configured token (ACETRACK_API_TOKENS)")
    return name


@dataclass(frozen=True)
class Intake:
    """One checked enqueue: what goes on the intake stream (``stream_fields``) or in ``POST /tasks`` (``body``)."""

    service: str
    id: str
    callback_url: str | None = None
    deadline_s: float | None = None
    token: str | None = None
    #: ``meta`` as compact JSON text
    meta_json: str | None = None
    reopen: bool = False

    def stream_fields(self) -> dict[str, str]:
        """The intake stream entry's flat string fields (optional ones left out when unset)."""
        optional = {
            "callback_url": self.callback_url,
            "deadline_s": None if self.deadline_s is None else _number_text(self.deadline_s),
            "token": self.token,
            "meta": self.meta_json,
            "reopen": "1" if self.reopen else None,
        }
        return {"service": self.service, "id": self.id, **{k: v for k, v in optional.items() if v is not None}}

    def body(self) -> dict[str, Any]:
        """The ``POST /tasks`` JSON object (native types: a number, an object, a boolean)."""
        optional: dict[str, Any] = {
            "callback_url": self.callback_url,
            "deadline_s": self.deadline_s,
            "token": self.token,
            "meta": json.loads(self.meta_json) if self.meta_json is not None else None,
            "reopen": True if self.reopen else None,
        }
        return {"service": self.service, "id": self.id, **{k: v for k, v in optional.items() if v is not None}}


def check_intake(
    service: str,
    task_id: str,
    *,
    meta: Mapping[str, Any] | None = None,
    deadline_s: float | None = None,
    token: str | None = None,
    callback_url: str | None = None,
    reopen: bool = False,
) -> Intake:
    """One enqueue with every rule checked.

    Raises:
        InvalidInput: naming the first field that breaks a rule.
    """
    if not isinstance(reopen, bool):
        raise InvalidInput("reopen", f"reopen {reopen!r} must be True or False")
    return Intake(
        service=check_service(service),
        id=check_id(task_id),
        callback_url=check_callback_url(callback_url),
        deadline_s=check_deadline(deadline_s),
        token=check_token(token),
        meta_json=check_meta(meta),
        reopen=reopen,
    )


def _number_text(value: float) -> str:
    # "600", not "600.0"; otherwise the shortest text that reads back as the same float
    return str(int(value)) if value == int(value) else repr(value)
