"""Server-sent events, read line by line: just enough of the format for acetrack's ``GET /events``."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    """One SSE event: its ``id``, ``event`` name and ``data`` (lines joined with newlines)."""

    id: str | None
    event: str
    data: str


async def messages(lines: AsyncIterable[bytes]) -> AsyncIterator[Message]:
    """The events in a stream of raw lines; comments (``: ping``) and ``retry:`` are skipped."""
    entry_id: str | None = None
    event, data = "message", list[str]()
    async for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield Message(entry_id, event, "\n".join(data))
            entry_id, event, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            entry_id = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)
