"""One reader of the events stream per API process, shared by every ``GET /tasks/{service}/{id}?wait_s=N``.

A waiter registers a future for its task; the follower runs one blocking ``XREAD`` loop for all of
them and resolves a future when its task's terminal event passes. It runs only while someone waits,
so an idle API sends Redis nothing, and a hundred waiters cost what one does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from aiohttp import web

from worker import codec
from worker.httpcore import API
from worker.models import Record, TaskState
from worker.store import Store

logger = logging.getLogger(__name__)

#: how long one XREAD blocks: also how late the follower stops after its last waiter left
FOLLOW_BLOCK_MS = 1000
#: entries taken per XREAD: a burst of events is read in a few round trips, not one per event
FOLLOW_COUNT = 500
#: pause after a failed read (Redis down), so a broken connection is not retried in a hot loop
RETRY_PAUSE_S = 0.5

Key = tuple[str, str]


class ShuttingDown(Exception):
    """The API is stopping: waiters answer with the record as it is now."""


class EventFollower:
    """Follow ``{p}:events`` for the waiters of this process.

    Args:
        store: the Redis store.
        block_ms: how long one ``XREAD`` blocks.
    """

    def __init__(self, store: Store, block_ms: int = FOLLOW_BLOCK_MS) -> None:
        self.store = store
        self.block_ms = block_ms
        #: XREADs sent (the tests count them; so can an operator, in ``repr``)
        self.reads = 0
        #: reader loops started: one per stretch of time with at least one waiter
        self.starts = 0
        self._waiters: dict[Key, set[asyncio.Future[Record]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_id = "0-0"
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"EventFollower(waiting={self.waiting}, reads={self.reads}, starts={self.starts})"

    @property
    def waiting(self) -> int:
        """Waiters registered now."""
        return sum(len(f) for f in self._waiters.values())

    @asynccontextmanager
    async def watch(self, service: str, task_id: str) -> AsyncIterator[asyncio.Future[Record]]:
        """A future that gets the task's terminal record from the stream. Read the stored record
        *inside* this block: the follower is already reading from before that read, so a terminal
        write that the read misses still reaches the future."""
        future: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        key = (service, task_id)
        self._waiters.setdefault(key, set()).add(future)
        try:
            await self._ensure_running()
            yield future
        finally:
            futures = self._waiters.get(key, set())
            futures.discard(future)
            if not futures:
                self._waiters.pop(key, None)
            future.cancel()

    async def close(self) -> None:
        """Stop the reader and answer every waiter now (the API is stopping)."""
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(ShuttingDown())
        self._waiters.clear()
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def _ensure_running(self) -> None:
        async with self._lock:
            if self._task is None or self._task.done():
                # from now on: a waiter reads the stored record after this, so nothing is missed
                self._last_id = await self.store.last_event_id()
                self.starts += 1
                self._task = asyncio.create_task(self._run(), name="acetrack-event-follower")

    async def _run(self) -> None:
        # the loop ends on its own once nobody waits: no XREAD while the API has no waiter
        while self._waiters:
            try:
                self.reads += 1
                entries = await self.store.read_events(self._last_id, self.block_ms, count=FOLLOW_COUNT)
            except Exception:
                logger.exception("events follower: read failed; trying again in %.1f s", RETRY_PAUSE_S)
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            for entry_id, fields in entries:
                self._last_id = entry_id
                self._dispatch(fields)

    def _dispatch(self, fields: dict[str, str]) -> None:
        futures = self._waiters.get((fields.get("service", ""), fields.get("id", "")))
        # only a task's end carries its record: a clip.succeeded written in the same step as the
        # task's end already has the terminal state, but no record
        if not futures or fields.get("state") == TaskState.PENDING.value or not fields.get("record"):
            return
        record = Record.from_dict(codec.loads(fields["record"]))
        for future in futures:
            if not future.done():
                future.set_result(record)


FOLLOWER: web.AppKey[EventFollower] = web.AppKey("follower", EventFollower)


async def _follow_events(app: web.Application) -> AsyncIterator[None]:
    app[FOLLOWER] = follower = EventFollower(app[API].store)
    yield
    await follower.close()


async def _answer_waiters(app: web.Application) -> None:
    # on_shutdown runs before aiohttp waits for running handlers: a waiter must not hold a stop for 60 s
    await app[FOLLOWER].close()


def setup(app: web.Application) -> None:
    """One follower per application (so per API process); its waiters are answered as the app stops."""
    app.cleanup_ctx.append(_follow_events)
    app.on_shutdown.append(_answer_waiters)


async def get_or_wait(
    follower: EventFollower, store: Store, service: str, task_id: str, wait_s: float
) -> Record | None:
    """The task's record once it is terminal, or after ``wait_s`` as it is then; None if not tracked."""
    async with follower.watch(service, task_id) as terminal:
        record = await store.get(service, task_id)
        if record is None or record.terminal:
            return record
        try:
            async with asyncio.timeout(wait_s):
                return await terminal
        except (TimeoutError, ShuttingDown):
            # the record as it is now: progress and attempts moved on while we waited
            return await store.get(service, task_id) or record
