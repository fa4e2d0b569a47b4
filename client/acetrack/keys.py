"""The Redis names of acetrack's public contract (DESIGN.md §2), under one key prefix.

Only these are read or written by the client: the intake stream (enqueue), the rejected stream
(why an enqueue did not take), the events stream (waits and the events iterator) and a task's hash
(its record). ``tests/test_client_contract.py`` checks them against the worker's own names.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "acetrack"
#: the task hash's field holding the record: its JSON (nulls left out) while pending; once
#: finished, that JSON with the raw upstream answer, packed (base64 of zlib), so not starting with '{'
RECORD_FIELD = "record"
#: the task hash's field of a record finished by an earlier acetrack, which packed only the raw
#: upstream answer (base64 of zlib of its JSON) and kept the rest as JSON in ``record``
RESPONSE_FIELD = "response"


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (``ACETRACK_KEY_PREFIX`` of the workers)."""

    prefix: str = DEFAULT_PREFIX

    @property
    def intake(self) -> str:
        """The stream producers XADD tasks to."""
        return f"{self.prefix}:intake"

    @property
    def rejected(self) -> str:
        """The stream a bad intake entry is moved to, with its ``reason``."""
        return f"{self.prefix}:intake:rejected"

    @property
    def events(self) -> str:
        """The events stream."""
        return f"{self.prefix}:events"

    def task(self, service: str, task_id: str) -> str:
        """The hash holding one task's record."""
        return f"{self.prefix}:task:{service}:{task_id}"
