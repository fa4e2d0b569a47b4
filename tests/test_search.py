"""Searching tasks by id and meta (``Store.search_page``), on fakeredis and on a real redis-server
(``backend`` runs both). ``GET /tasks?q=`` over HTTP is in ``test_http.py``."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Backend
from worker.classify import fail
from worker.intake import EnqueueRequest
from worker.models import Reason, TaskState
from worker.store import Cursor, SearchPage, Store
from worker.store.queries import record_matches

NOW_MS = 1_767_000_000_000


async def register(store: Store, task_id: str, now_ms: int = NOW_MS, service: str = "suno", **kw: Any) -> None:
    req = EnqueueRequest(service=service, id=task_id, **kw)
    await store.register(req, now_ms, deadline_s=1800, first_due_ms=now_ms + 3000)


async def cancel(store: Store, task_id: str, now_ms: int, service: str = "suno") -> None:
    record = await store.get(service, task_id)
    assert record is not None
    assert await store.finish(fail(record, Reason.CANCELLED, now_ms, None), now_ms, [], sample=None)


async def search_all(
    store: Store, text: str, limit: int, service: str | None = None, state: TaskState | None = None, **bounds: int
) -> list[SearchPage]:
    """Every page of a search, following ``next_cursor`` to the end."""
    pages: list[SearchPage] = []
    after: Cursor | None = None
    while len(pages) < 1000:
        page = await store.search_page(service, state, text, limit, after, **bounds)
        pages.append(page)
        if page.next_cursor is None:
            return pages
        after = page.next_cursor
    raise AssertionError("next_cursor never ended")


def found(pages: list[SearchPage]) -> list[str]:
    return [f"{r.service}/{r.id}" for p in pages for r in p.records]


async def listed(store: Store) -> list[str]:
    """Every task in listing order (pending, succeeded, failed; oldest first)."""
    rows: list[str] = []
    after: Cursor | None = None
    while True:
        records, after = await store.list_page(None, None, 7, after)
        rows += [f"{r.service}/{r.id}" for r in records]
        if after is None:
            return rows


@pytest.mark.parametrize(
    ("raw", "needle", "expected"),
    [
        ('{"id":"Song-Alpha","meta":{"t":1}}', "song-alpha", True),
        ('{"id":"x1","meta":{"title":"Blue ALPHA"}}', "alpha", True),
        ('{"id":"x1","meta":{"title":"intro"}}', '"title":"intro"', True),  # meta as compact JSON
        ('{"id":"x1","meta":{"title":"Café ÉTÉ"}}', "café été", True),  # not \\u-escaped
        ('{"id":"x1","meta":{"title":"intro"}}', "outro", False),
        ('{"id":"x1","state":"pending"}', "pending", False),  # other record fields are not searched
        ('{"id":"x1"}', "{}", False),  # no meta: nothing to match
    ],
)
def test_record_matches_looks_at_the_id_and_the_meta_json_only(raw: str, needle: str, expected: bool) -> None:
    assert record_matches(raw, needle) is expected


async def test_search_matches_id_and_meta_case_insensitively_in_listing_order(backend: Backend) -> None:
    store = backend.store()
    await register(store, "Song-Alpha", meta={"title": "Intro"})
    await register(store, "b2", NOW_MS + 1, meta={"title": "Blue ALPHA mix"})
    await register(store, "c3", NOW_MS + 2, meta={"album": "Café ÉTÉ"})
    await register(store, "d4", NOW_MS + 3)
    await register(store, "alpha-p", NOW_MS + 4, service="producer", meta={"n": 1})
    await cancel(store, "Song-Alpha", NOW_MS + 10)  # now failed: listed after every pending task
    everything = await listed(store)
    assert everything == ["suno/b2", "suno/c3", "suno/d4", "producer/alpha-p", "suno/Song-Alpha"]
    for text in ("alpha", "ALPHA", "AlPhA"):
        [page] = await search_all(store, text, limit=10)
        assert found([page]) == ["suno/b2", "producer/alpha-p", "suno/Song-Alpha"]
        assert (page.scanned, page.bounded, page.next_cursor) == (5, False, None)
    assert found(await search_all(store, "café été", limit=10)) == ["suno/c3"]
    assert found(await search_all(store, '"title":"intro"', limit=10)) == ["suno/Song-Alpha"]
    assert found(await search_all(store, "alpha", limit=10, service="suno")) == ["suno/b2", "suno/Song-Alpha"]
    assert found(await search_all(store, "alpha", limit=10, state=TaskState.FAILED)) == ["suno/Song-Alpha"]
    pending = await search_all(store, "alpha", limit=10, service="producer", state=TaskState.PENDING)
    assert found(pending) == ["producer/alpha-p"]


async def test_search_pages_by_cursor_across_the_scan_bound_examining_each_task_once(backend: Backend) -> None:
    store = backend.store()
    hits = {0, 1, 2, 3, 20, 29}
    for n in range(30):
        service = "producer" if n % 5 == 0 else "suno"
        meta = {"label": f"needle-{n}"} if n in hits else {"label": f"hay-{n}"}
        await register(store, f"t{n:02}", NOW_MS + n // 3, service=service, meta=meta)  # scores tie in threes
    for n in (2, 9, 20, 27):
        await cancel(store, f"t{n:02}", NOW_MS + 100 + n, service="producer" if n % 5 == 0 else "suno")
    expected = [key for key in await listed(store) if int(key[-2:]) in hits]
    pages = await search_all(store, "NEEDLE", limit=3, scan_max=7, chunk=3)
    assert found(pages) == expected
    assert sum(p.scanned for p in pages) == 30  # resumed where each page stopped: none skipped, none twice
    assert all(p.scanned <= 7 for p in pages)
    assert any(p.bounded and not p.records for p in pages)  # 7 rows without a match: an empty page, and a cursor
    assert any(len(p.records) == 3 and not p.bounded for p in pages)  # stopped by limit
    assert pages[-1].next_cursor is None and not pages[-1].bounded


async def test_a_search_that_matches_nothing_scans_to_the_end_in_bounded_steps(backend: Backend) -> None:
    store = backend.store()
    for n in range(5):
        await register(store, f"t{n}", NOW_MS + n, meta={"label": "hay"})
    [page] = await search_all(store, "needle", limit=10)
    assert (page.records, page.next_cursor, page.scanned, page.bounded) == ([], None, 5, False)
    pages = await search_all(store, "needle", limit=10, scan_max=2)
    assert [(len(p.records), p.scanned, p.bounded) for p in pages] == [(0, 2, True), (0, 2, True), (0, 1, False)]
    assert await store.search_page("producer", None, "t1", 10) == SearchPage([], None, 0, False)  # no such tasks
