"""``SyncClient``: the same API, blocking. It runs an async ``Client`` on a private event loop in a
daemon thread, so it works the same in scripts, in threads and inside frameworks that own no loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

from acetrack.client import DEFAULT_WAIT_S, Client
from acetrack.keys import DEFAULT_PREFIX
from acetrack.records import Event, Record

T = TypeVar("T")


class SyncClient:
    """Hand task ids to acetrack and read their outcome (blocking). See ``Client`` for each method.

    Build one with ``SyncClient.from_redis(url)`` or ``SyncClient.from_http(base_url, token)``; use it
    as a ``with`` block, or call ``close()``.

    Args:
        make: builds the async ``Client`` (called on the private loop).
    """

    def __init__(self, make: Callable[[], Client]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="acetrack-client", daemon=True)
        self._thread.start()
        try:
            self._client: Client = self._run(_build(make))
        except BaseException:
            self._stop()
            raise

    @classmethod
    def from_redis(cls, url: str, *, prefix: str = DEFAULT_PREFIX) -> SyncClient:
        """Talk to the workers' Redis under their key prefix."""
        return cls(lambda: Client.from_redis(url, prefix=prefix))

    @classmethod
    def from_http(cls, base_url: str, token: str | None = None) -> SyncClient:
        """Talk to ``acetrack serve`` at ``base_url``."""
        return cls(lambda: Client.from_http(base_url, token))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("this SyncClient is closed; make a new one")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt during a wait: stop the wait on the loop too
            raise

    def enqueue(
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
        """``Client.enqueue``, blocking."""
        return self._run(
            self._client.enqueue(
                service, id, meta=meta, deadline_s=deadline_s, token=token, callback_url=callback_url, reopen=reopen
            )
        )

    def get(self, service: str, id: str) -> Record | None:
        """``Client.get``, blocking."""
        return self._run(self._client.get(service, id))

    def wait(self, service: str, id: str, timeout_s: float = DEFAULT_WAIT_S) -> Record:
        """``Client.wait``, blocking."""
        return self._run(self._client.wait(service, id, timeout_s))

    def cancel(self, service: str, id: str) -> Record:
        """``Client.cancel``, blocking."""
        return self._run(self._client.cancel(service, id))

    def events(
        self,
        *,
        after: str | None = None,
        services: Collection[str] = (),
        ids: Collection[str] = (),
        types: Collection[str] = (),
    ) -> Iterator[Event]:
        """``Client.events`` as a blocking iterator; leaving the ``for`` loop closes the stream."""
        # checked here, at the call: a bad argument raises now, not on the first ``next``
        stream = self._client.events(after=after, services=services, ids=ids, types=types)
        return self._iterate(stream)

    def _iterate(self, stream: AsyncIterator[Event]) -> Iterator[Event]:
        try:
            while True:
                yield self._run(_next(stream))
        except StopAsyncIteration:
            return
        finally:
            if not self._loop.is_closed():
                self._run(_aclose(stream))

    def close(self) -> None:
        """Close the connections and stop the private loop."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.aclose())
        finally:
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


async def _build(make: Callable[[], Client]) -> Client:
    return make()


async def _next(stream: AsyncIterator[Event]) -> Event:
    return await anext(stream)


async def _aclose(stream: AsyncIterator[Event]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
