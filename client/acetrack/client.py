"""``Client``: the async producer API, over Redis or over the HTTP API."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Collection, Mapping
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from acetrack.errors import InvalidInput
from acetrack.http_transport import HttpTransport
from acetrack.keys import DEFAULT_PREFIX, Keys
from acetrack.records import EVENT_TYPES, Event, Record
from acetrack.redis_transport import RedisTransport
from acetrack.rules import Intake, check_id, check_intake, check_service

#: an events-stream entry id (as the HTTP API accepts it)
STREAM_ID_RE = re.compile(r"[0-9]{1,15}-[0-9]{1,15}")
#: ``wait``'s default timeout: ``ACETRACK_DEADLINE_S``'s default
DEFAULT_WAIT_S = 1800.0


class Transport(Protocol):
    """What a ``Client`` needs from Redis or HTTP."""

    async def enqueue(self, intake: Intake) -> Record | None: ...
    async def get(self, service: str, task_id: str) -> Record | None: ...
    async def wait(self, service: str, task_id: str, timeout_s: float) -> Record: ...
    async def cancel(self, service: str, task_id: str) -> Record: ...
    def events(
        self, after: str | None, services: Collection[str], ids: Collection[str], types: Collection[str]
    ) -> AsyncIterator[Event]: ...
    async def aclose(self) -> None: ...


class Client:
    """Hand task ids to acetrack and read their outcome (async).

    Build one with ``Client.from_redis(url)`` or ``Client.from_http(base_url, token)``; use it as an
    ``async with`` block, or call ``aclose()``. Every input is checked against the intake rules first
    (``InvalidInput`` names the field).

    Args:
        transport: a ``RedisTransport`` or ``HttpTransport``.
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @classmethod
    def from_redis(cls, url: str, *, prefix: str = DEFAULT_PREFIX) -> Client:
        """Talk to the workers' Redis (``redis://``, ``rediss://``, ``unix://``) under their key prefix."""
        try:
            redis = aioredis.Redis.from_url(url, decode_responses=True)
        except ValueError as e:  # redis-py names the schemes it takes
            raise InvalidInput("url", f"redis url {url!r} is not usable: {e}") from e
        return cls(RedisTransport(redis, Keys(prefix), owned=True))

    @classmethod
    def over_redis(cls, redis: aioredis.Redis, *, prefix: str = DEFAULT_PREFIX) -> Client:
        """Over a ready client (e.g. a Sentinel's ``master_for``); ``aclose`` leaves it open."""
        return cls(RedisTransport(redis, Keys(prefix)))

    @classmethod
    def from_http(cls, base_url: str, token: str | None = None) -> Client:
        """Talk to ``acetrack serve`` at ``base_url``; ``token``: its ``ACETRACK_HTTP_TOKEN``, if set."""
        parts = urlsplit(base_url) if isinstance(base_url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidInput("base_url", f"base_url {base_url!r} must be an http:// or https:// URL with a host")
        return cls(HttpTransport(base_url, token))

    async def enqueue(
        self,
        service: str,
        id: str,
        *,
        meta: Mapping[str, Any] | None = None,
        deadline_s: float | None = None,
        token: str | None = None,
        callback_url: str | None = None,
        reopen: bool = False,
    ) -> Record | None:
        """Start tracking ``(service, id)``; enqueueing it again keeps the first record.

        Args:
            service: the upstream service (``suno``, ``producer``, ...).
            id: the upstream task id.
            meta: a JSON object (at most 4096 bytes) returned untouched in the record.
            deadline_s: fail the task if not finished after this many seconds (1 to 604800).
            token: the name of one of the workers' API tokens (default ``default``).
            callback_url: an http(s) URL that receives the signed webhooks of this task.
            reopen: re-open a finished task.

        Returns:
            Over HTTP the stored record; over Redis None (a worker registers it moments later).

        Raises:
            InvalidInput: a field breaks an intake rule; the message names it.
            Unavailable: Redis or the API cannot be reached.
        """
        intake = check_intake(
            service, id, meta=meta, deadline_s=deadline_s, token=token, callback_url=callback_url, reopen=reopen
        )
        return await self.transport.enqueue(intake)

    async def get(self, service: str, id: str) -> Record | None:
        """The task's record, or None when acetrack does not track it."""
        return await self.transport.get(check_service(service), check_id(id))

    async def wait(self, service: str, id: str, timeout_s: float = DEFAULT_WAIT_S) -> Record:
        """Wait until the task is terminal and return its record.

        Over Redis it follows the events stream (and waits through a task still in the intake);
        over HTTP it repeats ``?wait_s=`` long polls.

        Raises:
            Timeout: not finished within ``timeout_s``.
            NotFound: acetrack does not track it (over Redis: not within ``timeout_s``).
            InvalidInput: over Redis, the workers rejected its intake entry (the message says why).
        """
        return await self.transport.wait(check_service(service), check_id(id), timeout_s)

    async def cancel(self, service: str, id: str) -> Record:
        """Cancel a pending task (it fails with ``reason: cancelled``, hooks fire); returns its record.

        A task that had finished keeps its outcome, which is returned. HTTP only.

        Raises:
            Unsupported: over Redis (no cancel contract; use the HTTP API or ``acetrack cancel``).
            NotFound: acetrack does not track it.
        """
        return await self.transport.cancel(check_service(service), check_id(id))

    def events(
        self,
        *,
        after: str | None = None,
        services: Collection[str] = (),
        ids: Collection[str] = (),
        types: Collection[str] = (),
    ) -> AsyncIterator[Event]:
        """Follow the events stream (never ends by itself: break out of the loop).

        Args:
            after: a stream entry id (``Event.entry_id``) to resume after; ``"0-0"``: all the stream
                holds; None: only events from now on.
            services, ids, types: keep only these (empty: all); ``types`` among ``task.succeeded``,
                ``task.failed``, ``task.progress``, ``clip.succeeded``.

        Raises:
            InvalidInput: a service, id or type that cannot be (at once, not on the first read).
        """
        for name in _names(services, "services"):
            check_service(name)
        for task_id in _names(ids, "ids"):
            check_id(task_id)
        unknown = sorted(set(_names(types, "types")) - EVENT_TYPES)
        if unknown:
            raise InvalidInput("types", f"types must be among {sorted(EVENT_TYPES)}; got {unknown[0]!r}")
        if after is not None and not STREAM_ID_RE.fullmatch(after):
            raise InvalidInput("after", f"after {after!r} must be an events-stream id such as '0-0'")
        return self.transport.events(after, tuple(services), tuple(ids), tuple(types))

    async def aclose(self) -> None:
        """Close the connections this client made."""
        await self.transport.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _names(values: Collection[str], field: str) -> Collection[str]:
    # a lone string is a collection of characters: "suno" would filter on "s", "u", "n", "o"
    if isinstance(values, str):
        raise InvalidInput(field, f"{field} must be a list of names, not the string {values!r}")
    return values
