"""The upstream's own callbacks as hints: ``POST /callbacks/{service}?key=KEY``.

Ace Data Cloud's generation APIs take a ``callback_url`` and call it when a task is done. acetrack
never trusts that body as the result: a callback only makes the task it names due now, and the next
batch confirms it with ``retrieve_batch``, batched with whatever else is due. The key
(``ACETRACK_CALLBACK_KEY``) is compared in constant time, and a missing or wrong one is answered 404
like a route that does not exist, so the route cannot be probed.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

#: where a callback body may name its task, in the order they are tried
ID_PLACES = "task_id, id, data.task_id, data[0].task_id"


def callback_task_id(body: Any) -> str | None:
    """The task id a callback body names (``ID_PLACES``), or None."""
    if not isinstance(body, Mapping):
        return None
    for value in (body.get("task_id"), body.get("id")):
        if isinstance(value, str) and value:
            return value
    data = body.get("data")
    if isinstance(data, Mapping):
        return callback_task_id({"task_id": data.get("task_id")})
    if isinstance(data, list):
        for item in data:
            if isinstance(item, Mapping) and isinstance(item.get("task_id"), str) and item["task_id"]:
                return str(item["task_id"])
    return None


def key_matches(given: str | None, expected: str | None) -> bool:
    """True when callbacks are on and ``given`` is their key (compared in constant time)."""
    if not expected or given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())
