"""What operators and readers ask: the events stream, workers' heartbeats, counts, listings and
searches, the backlog; and pruning what outlived the retention."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker import codec
from worker.models import TERMINAL_STATES, Record, TaskState
from worker.store.base import translate_errors
from worker.store.codecs import record_text
from worker.store.keys import queue_member
from worker.store.tasks import TaskOps

#: where a listing stopped: (state, score, member) of its last row
Cursor = tuple[str, int, str]
#: index rows a search reads per round trip (and records per pipeline)
SEARCH_CHUNK = 500
#: index rows a search examines per request at most: a search of a huge index answers in bounded
#: time (and never holds Redis long) and hands back a cursor to go on from
SEARCH_SCAN_MAX = 10_000


@dataclass
class SearchPage:
    """One page of a search: the matching records, where to go on from, and how far it looked."""

    records: list[Record]
    #: where the next page starts (None: the index was searched to its end)
    next_cursor: Cursor | None
    #: index rows examined for this page
    scanned: int
    #: the scan bound stopped this page before ``limit`` matches or the end of the index
    bounded: bool


def record_matches(raw: str, needle: str) -> bool:
    """Whether a stored record's id or its meta as compact JSON contains ``needle`` (casefolded)."""
    data = codec.loads(record_text(raw))
    if needle in str(data.get("id", "")).casefold():
        return True
    meta = data.get("meta")
    return meta is not None and needle in codec.dumps(meta).decode().casefold()


def _states_from(state: TaskState | None, after: Cursor | None) -> list[TaskState]:
    # with no state a listing runs pending, succeeded, failed: a cursor resumes in its own state
    states = [state] if state else list(TaskState)
    if after is not None:
        states = states[[s.value for s in states].index(after[0]) :]  # ValueError: not this listing's
    return states


def _within(after: Cursor | None, state: TaskState) -> tuple[int, str] | None:
    return (after[1], after[2]) if after and after[0] == state.value else None


def _pair(service: str | None, member: str) -> tuple[str, str]:
    # the all-services indexes hold "service:id" (a service name has no ':')
    if service is not None:
        return service, member
    owner, _, task_id = member.partition(":")
    return owner, task_id


class QueryOps(TaskOps):
    """Reads across tasks, and upkeep."""

    # -- events --------------------------------------------------------------------------------
    async def last_event_id(self) -> str:
        """The id of the newest event, or ``0-0``: read after it to see only what comes next."""
        newest = await self.redis.xrevrange(self.events_key, count=1)
        return str(newest[0][0]) if newest else "0-0"

    async def read_events(self, after_id: str, block_ms: int, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        """Events after ``after_id``, blocking up to ``block_ms`` for the first."""
        reply = await self.redis.xread({self.events_key: after_id}, count=count, block=block_ms)
        return [(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]

    # -- upkeep -----------------------------------------------------------------------------------
    async def heartbeat(self, worker_id: str, info: Mapping[str, Any], ttl_ms: int) -> None:
        """Record that a worker is alive (the key expires if it stops beating)."""
        await self.redis.set(self.worker_key(worker_id), json.dumps(info), px=ttl_ms)

    async def forget_worker(self, worker_id: str) -> None:
        """Take a stopped worker's heartbeat down."""
        await self.redis.delete(self.worker_key(worker_id))

    async def workers(self) -> list[dict[str, Any]]:
        """Heartbeats of live workers."""
        keys = [k async for k in self.redis.scan_iter(match=self.worker_key("*"), count=100)]
        values = await self.redis.mget(keys) if keys else []
        return [json.loads(v) for v in values if v]

    async def prune(self, now_ms: int) -> int:
        """Drop index entries, rejects and dead letters older than the retention."""
        cutoff = now_ms - self.retention_ms
        removed = 0
        services: set[str] = await self.redis.smembers(self.services_key)  # type: ignore[misc]
        for scope in (*services, None):
            for state in TERMINAL_STATES:
                removed += int(await self.redis.zremrangebyscore(self.index_key(scope, state), "-inf", cutoff))
        removed += int(await self.redis.zremrangebyscore(self.dead_key, "-inf", cutoff))
        await self.redis.xtrim(self.rejected_key, minid=f"{max(cutoff, 0)}-0", approximate=True)
        return removed

    async def count_by_state(self, service: str | None) -> dict[str, int]:
        """How many tasks of ``service`` (None: all) are in each state (within retention)."""
        # pending tasks are indexed per service only (one sorted-set entry less per pending task)
        pending_keys = [self.index_key(s, TaskState.PENDING) for s in ([service] if service else await self.services())]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in pending_keys:
                pipe.zcard(key)
            for state in TERMINAL_STATES:
                pipe.zcard(self.index_key(service, state))
            counts = [int(n) for n in await pipe.execute()]
        pending = sum(counts[: len(pending_keys)])
        terminal = dict(zip((s.value for s in TERMINAL_STATES), counts[len(pending_keys) :], strict=True))
        return {TaskState.PENDING.value: pending, **terminal}

    async def list_page(
        self, service: str | None, state: TaskState | None, limit: int, after: Cursor | None = None
    ) -> tuple[list[Record], Cursor | None]:
        """One page of records and the cursor of the next page (None at the end).

        Oldest first within a state; with no state, pending then succeeded then failed. ``after``
        is (state, score, member) of the previous page's last row: rows with an equal score sort
        by member in Redis, so the next page is exact even when scores tie.
        """
        rows: list[tuple[TaskState, str, int]] = []
        for each in _states_from(state, after):
            found = await self._state_rows(service, each, limit + 1 - len(rows), _within(after, each))
            rows += [(each, member, score) for member, score in found]
            if len(rows) > limit:
                break
        page = rows[:limit]
        records = await self.get_many(_pair(service, m) for _, m, _ in page)
        last = page[-1] if page else None
        next_cursor = (last[0].value, last[2], last[1]) if last and len(rows) > limit else None
        return [r for r in records if r is not None], next_cursor

    async def search_page(
        self,
        service: str | None,
        state: TaskState | None,
        text: str,
        limit: int,
        after: Cursor | None = None,
        *,
        scan_max: int = SEARCH_SCAN_MAX,
        chunk: int = SEARCH_CHUNK,
    ) -> SearchPage:
        """Tasks whose id or meta JSON contains ``text`` (case-insensitive), in listing order.

        Reads the index ``chunk`` rows at a time (and their ``record`` fields only, one pipeline a
        chunk) until ``limit`` matches, the end of the index, or ``scan_max`` rows examined. The
        cursor resumes after the last match, or after the last row examined when the bound stopped
        the scan; a page may then hold fewer than ``limit`` tasks, or none, and still have a cursor.
        """
        needle, scanned, position = text.casefold(), 0, after
        members: list[str] = []
        for each in _states_from(state, after):
            while True:
                want = min(chunk, scan_max - scanned)
                if want <= 0:
                    return await self._search_answer(service, members, position, scanned, bounded=True)
                rows = await self._state_rows(service, each, want, _within(position, each))
                raws = await self._raw_records([_pair(service, m) for m, _ in rows])
                for (member, score), raw in zip(rows, raws, strict=True):
                    scanned, position = scanned + 1, (each.value, score, member)
                    if raw and record_matches(raw, needle):
                        members.append(member)
                        if len(members) == limit:
                            return await self._search_answer(service, members, position, scanned, bounded=False)
                if len(rows) < want:
                    break
        return await self._search_answer(service, members, None, scanned, bounded=False)

    async def _raw_records(self, pairs: Sequence[tuple[str, str]]) -> list[str | None]:
        # the record field only: a pending task's sched stays in Redis
        async with translate_errors("search"), self.redis.pipeline(transaction=False) as pipe:
            for owner, task_id in pairs:
                pipe.hget(self.task_key(owner, task_id), "record")
            return list(await pipe.execute())

    async def _search_answer(
        self, service: str | None, members: list[str], after: Cursor | None, scanned: int, *, bounded: bool
    ) -> SearchPage:
        records = await self.get_many(_pair(service, m) for m in members) if members else []
        return SearchPage([r for r in records if r is not None], after, scanned, bounded)

    async def _state_rows(
        self, service: str | None, state: TaskState, count: int, after: tuple[int, str] | None
    ) -> list[tuple[str, int]]:
        if service is not None or state is not TaskState.PENDING:
            return await self._index_rows(self.index_key(service, state), count, after)
        # all services' pending tasks: merge the per-service indexes by (score, "service:id")
        merged: list[tuple[str, int]] = []
        for each in await self.services():
            merged += await self._index_rows(self.index_key(each, state), count, after, prefix=f"{each}:")
        return sorted(merged, key=lambda row: (row[1], row[0]))[:count]

    async def _index_rows(
        self, key: str, count: int, after: tuple[int, str] | None, prefix: str = ""
    ) -> list[tuple[str, int]]:
        rows: list[tuple[str, int]] = []
        start: float | str = after[0] if after else "-inf"
        offset = 0
        while len(rows) < count:
            chunk = await self.redis.zrangebyscore(key, start, "+inf", start=offset, num=count, withscores=True)
            if not chunk:
                break
            offset += len(chunk)
            rows += [(prefix + m, int(sc)) for m, sc in chunk if not after or (int(sc), prefix + m) > after]
        return rows[:count]

    async def backlog(self, now_ms: int) -> dict[str, int]:
        """Ids due now and not yet claimed, by ``service:token`` queue."""
        queues = await self.queues()
        async with self.redis.pipeline(transaction=False) as pipe:
            for service, token in queues:
                pipe.zcount(self.due_key(service, token), "-inf", now_ms)
            counts = await pipe.execute()
        return {queue_member(service, token): int(n) for (service, token), n in zip(queues, counts, strict=True)}

    async def oldest_pending_ms(self, service: str | None) -> int | None:
        """Enqueue time of the oldest pending task of ``service`` (None: of all)."""
        oldest = None
        for each in [service] if service else await self.services():
            first = await self.redis.zrange(self.index_key(each, TaskState.PENDING), 0, 0, withscores=True)
            if first and (oldest is None or int(first[0][1]) < oldest):
                oldest = int(first[0][1])
        return oldest
