"""The HTTP API of DESIGN.md §5 over real sockets, on fakeredis and on a real redis-server.

Every test serves ``create_app`` with ``TestServer`` on 127.0.0.1 and talks to it with ``TestClient``;
the ``backend`` fixture runs each test on both Redis flavours. A ``FakeClock`` drives every stored
time except in the race test, where the real arq worker and the simulator run on the wall clock.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.exceptions import ResponseError
from support import Backend, fast_settings

from config import Settings
from worker import jobs, sim
from worker.clock import Clock, FakeClock, system_clock
from worker.control import Control
from worker.http import Api, api_from_settings, create_app
from worker.http_serve import open_to_the_network
from worker.models import Reason, Record, TaskState
from worker.store import Store

NOW_MS = 1_767_000_000_000
TOKEN = "s3cret"
HOOK = "python:probe_hooks:record"
#: the record of DESIGN.md §2: every field is always present
RECORD_FIELDS = frozenset(
    "v service id state reason partial progress clips error attempts enqueued_at_ms updated_at_ms finished_at_ms "
    "upstream_finished_at callback_url token meta response".split()
)
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})
SKIP = object()

MakeSim = Callable[..., Awaitable[tuple[str, sim.SimState]]]


@dataclass
class Harness:
    """A served app, its store and clock, and helpers that speak JSON to it."""

    client: TestClient[web.Request, web.Application]
    store: Store
    clock: FakeClock
    redis: aioredis.Redis

    async def raw(self, method: str, path: str, **kwargs: Any) -> tuple[int, str, str]:
        """(status, content type, text) of one request."""
        async with self.client.request(method, path, **kwargs) as resp:
            return resp.status, resp.content_type, await resp.text()

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """(status, parsed JSON body) of one request; every answer of this API is JSON."""
        status, content_type, text = await self.raw(method, path, **kwargs)
        assert content_type == "application/json", (method, path, status, content_type, text[:300])
        return status, json.loads(text)

    async def post_tasks(self, *items: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Enqueue good items (as one list) and return their stored records."""
        status, body = await self.call("POST", "/tasks", json=list(items))
        assert status == 202, body
        records: list[dict[str, Any]] = body["tasks"]
        return records

    async def events(self) -> list[dict[str, str]]:
        """Every entry of the events stream, oldest first."""
        return [fields for _, fields in await self.redis.xrange(self.store.events_key)]


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness(backend: Backend) -> AsyncIterator[MakeHarness]:
    """Factory: serve the app over ``backend``; keyword arguments go to ``Api`` (and some to ``Control``)."""
    async with AsyncExitStack() as stack:

        async def make(
            *,
            api: Api | None = None,
            clock: Clock | None = None,
            destinations: Mapping[str, Sequence[str]] | None = None,
            callback_events: Iterable[str] = (),
            first_poll_s: float = 3.0,
            **api_kwargs: Any,
        ) -> Harness:
            clock = clock or FakeClock(NOW_MS)
            if api is None:
                store = backend.store()
                control = Control(
                    store, destinations or {}, frozenset(callback_events), first_poll_s=first_poll_s, clock=clock
                )
                api = Api(store=store, control=control, clock=clock, first_poll_s=first_poll_s, **api_kwargs)
            client = TestClient(TestServer(create_app(api), host="127.0.0.1"))
            await stack.enter_async_context(client)
            return Harness(client, api.store, clock, backend.redis)  # type: ignore[arg-type]

        yield make


@pytest.fixture
async def h(make_harness: MakeHarness) -> Harness:
    """The app with default dependencies and a fake clock at ``NOW_MS``."""
    return await make_harness()


def assert_error(status: int, body: Any, expected: int, code: str, field: object = SKIP) -> None:
    """``{"error": {"code", "message", "field"?}}`` with the expected status, code and field."""
    assert status == expected, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    if field is None:
        assert "field" not in error, error
    elif field is not SKIP:
        assert error.get("field") == field, error


def task(task_id: str, service: str = "suno", **extra: Any) -> dict[str, Any]:
    """One POST /tasks item."""
    return {"service": service, "id": task_id, **extra}


async def nothing_stored(h: Harness) -> bool:
    """True while the database is empty (no task, index, due set or stream)."""
    return int(await h.redis.dbsize()) == 0


# -- POST /tasks --------------------------------------------------------------------------------


async def test_post_one_object_answers_202_with_the_stored_record(h: Harness) -> None:
    status, body = await h.call("POST", "/tasks", json=task("t1", meta={"song": "intro"}, deadline_s=600))
    assert status == 202 and body["duplicates"] == []
    [record] = body["tasks"]
    assert set(record) == RECORD_FIELDS
    assert (record["service"], record["id"], record["state"]) == ("suno", "t1", "pending")
    assert record["meta"] == {"song": "intro"} and record["token"] == "default"
    assert record["enqueued_at_ms"] == NOW_MS and record["response"] is None
    stored = await h.store.get("suno", "t1")
    assert stored is not None and stored.to_dict() == record
    pending = await h.store.load_pending("suno", ["t1"])
    assert pending["t1"].deadline_at_ms == NOW_MS + 600_000


async def test_post_a_list_reports_duplicates_and_keeps_the_first_record(h: Harness) -> None:
    [first] = await h.post_tasks(task("t1", meta={"n": 1}))
    h.clock.advance(5)
    items = [task("t1", meta={"n": 2}), task("t2"), task("t2", meta={"n": 3}), task("t1", service="producer")]
    status, body = await h.call("POST", "/tasks", json=items)
    assert status == 202
    assert [(r["service"], r["id"]) for r in body["tasks"]] == [(i["service"], i["id"]) for i in items]
    assert body["tasks"][0] == first  # the duplicate's record is the first one, meta untouched
    assert body["tasks"][2] == body["tasks"][1] and body["tasks"][2]["meta"] is None
    assert body["duplicates"] == [{"service": "suno", "id": "t1"}, {"service": "suno", "id": "t2"}]
    stored = await h.store.get("suno", "t1")
    assert stored is not None and stored.meta == {"n": 1} and stored.enqueued_at_ms == NOW_MS


@pytest.mark.parametrize(
    ("extra", "deadline_ms"),
    [
        ({"deadline_s": 10}, 10_000),
        ({"deadline_s": 10.5}, 10_500),
        ({"deadline_s": None, "meta": None, "reopen": None, "callback_url": None, "token": None}, 1_800_000),
        ({"meta": {"nested": {"list": [1, 2.5, None, True]}}}, 1_800_000),
        ({"reopen": False}, 1_800_000),
        ({"reopen": True}, 1_800_000),
        ({"token": "default"}, 1_800_000),
    ],
)
async def test_post_takes_native_json_types(h: Harness, extra: dict[str, Any], deadline_ms: int) -> None:
    [record] = await h.post_tasks(task("native", **extra))
    assert record["state"] == "pending" and record["meta"] == extra.get("meta")
    pending = await h.store.load_pending("suno", ["native"])
    assert pending["native"].deadline_at_ms == NOW_MS + deadline_ms


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"deadline_s": "10"}, "deadline_s"),
        ({"deadline_s": True}, "deadline_s"),
        ({"deadline_s": [10]}, "deadline_s"),
        ({"meta": "x"}, "meta"),
        ({"meta": '{"song": "intro"}'}, "meta"),
        ({"meta": ["a"]}, "meta"),
        ({"reopen": 1}, "reopen"),
        ({"reopen": "1"}, "reopen"),
        ({"reopen": "true"}, "reopen"),
        ({"id": 5}, "id"),
        ({"id": ["t"]}, "id"),
        ({"service": 5}, "service"),
        ({"callback_url": 5}, "callback_url"),
        ({"token": 7}, "token"),
    ],
)
async def test_post_refuses_wrong_json_types_naming_the_field(h: Harness, extra: dict[str, Any], field: str) -> None:
    status, body = await h.call("POST", "/tasks", json=[task("ok-0"), {**task("typed"), **extra}])
    assert_error(status, body, 400, "invalid", f"tasks[1].{field}")
    # in JSON's words, not Python's ("of type int", "dict")
    words = {"deadline_s": "a number", "meta": "a JSON object", "reopen": "true or false"}.get(field, "a string")
    assert body["error"]["message"] == f"tasks[1].{field} must be {words}", body
    assert await nothing_stored(h)


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"service": "suno"}, "tasks[0].id"),
        ({"id": "t1"}, "tasks[0].service"),
        ({"service": "suno", "id": ""}, "tasks[0].id"),
        ({"service": "", "id": "t1"}, "tasks[0].service"),
        ({"service": None, "id": "t1"}, "tasks[0].service"),
        (task("t1", service="Suno"), "tasks[0].service"),
        (task("t1", service="-suno"), "tasks[0].service"),
        (task("t1", service="su_no"), "tasks[0].service"),
        (task("t1", service="s" * 33), "tasks[0].service"),
        (task("t1", service="suno/x"), "tasks[0].service"),
        (task("a b"), "tasks[0].id"),
        (task("a/b"), "tasks[0].id"),
        (task("../x"), "tasks[0].id"),
        (task("x" * 129), "tasks[0].id"),
        (task("caf\u00e9"), "tasks[0].id"),
        (task("t1", colour="red"), "tasks[0].colour"),
        (task("t1", deadline_s=0), "tasks[0].deadline_s"),
        (task("t1", deadline_s=604_801), "tasks[0].deadline_s"),
        (task("t1", meta={"k": "v" * 5000}), "tasks[0].meta"),
        (task("t1", callback_url="ftp://example.com/x"), "tasks[0].callback_url"),
        (task("t1", callback_url="http://" + "h" * 2050), "tasks[0].callback_url"),
        ("suno/t1", "tasks[0]"),
        (None, "tasks[0]"),
        (["suno", "t1"], "tasks[0]"),
    ],
)
async def test_post_refuses_bad_items_naming_the_field(h: Harness, item: Any, field: str) -> None:
    status, body = await h.call("POST", "/tasks", json=[item])
    assert_error(status, body, 400, "invalid", field)
    assert await nothing_stored(h)


async def test_post_refuses_a_service_outside_the_allow_list(make_harness: MakeHarness) -> None:
    h = await make_harness(services=("suno",))
    status, body = await h.call("POST", "/tasks", json=task("p1", service="producer"))
    assert_error(status, body, 400, "invalid", "tasks[0].service")
    assert "ACETRACK_SERVICES" in body["error"]["message"]
    assert (await h.post_tasks(task("s1")))[0]["id"] == "s1"


async def test_one_bad_item_among_good_ones_stores_nothing(h: Harness) -> None:
    good = [task(f"good-{n}", meta={"n": n}) for n in range(5)]
    items = [*good[:3], task("bad one"), *good[3:]]
    status, body = await h.call("POST", "/tasks", json=items)
    assert_error(status, body, 400, "invalid", "tasks[3].id")
    assert await nothing_stored(h)
    assert await h.store.get_many(("suno", i["id"]) for i in good) == [None] * 5
    status, body = await h.call("POST", "/tasks", json=good)
    assert status == 202 and len(body["tasks"]) == 5 and body["duplicates"] == []


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"service": "suno", "id": "t1",}', b"\xff\xfe\x00"])
async def test_post_malformed_json_is_invalid_json(h: Harness, raw: bytes) -> None:
    status, body = await h.call("POST", "/tasks", data=raw, headers={"content-type": "application/json"})
    assert_error(status, body, 400, "invalid_json")
    assert await nothing_stored(h)


async def test_post_an_empty_list_is_refused(h: Harness) -> None:
    status, body = await h.call("POST", "/tasks", json=[])
    assert_error(status, body, 400, "invalid")
    assert await nothing_stored(h)


async def test_post_more_than_1000_items_is_413_and_stores_nothing(h: Harness) -> None:
    status, body = await h.call("POST", "/tasks", json=[task(f"t{n}") for n in range(1001)])
    assert_error(status, body, 413, "too_many")
    assert await nothing_stored(h)


async def test_post_1000_items_is_accepted(h: Harness) -> None:
    records = await h.post_tasks(*(task(f"t{n}") for n in range(1000)))
    assert len(records) == 1000 and {r["id"] for r in records} == {f"t{n}" for n in range(1000)}
    assert (await h.store.count_by_state("suno"))["pending"] == 1000


@pytest.mark.parametrize("size", [1024 * 1024 + 1, 10_000_000])
async def test_post_a_body_over_1_mib_is_413_json(h: Harness, size: int) -> None:
    # a well-formed list of small good items, just too big in bytes
    item = json.dumps(task("x" * 100, meta={"pad": "p" * 3000}))
    count = size // (len(item) + 1) + 1
    raw = ("[" + ",".join([item] * count) + "]").encode()
    assert len(raw) > size
    status, body = await h.call("POST", "/tasks", data=io.BytesIO(raw), headers={"content-type": "application/json"})
    assert_error(status, body, 413, "too_large")
    assert await nothing_stored(h)


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/x", "http://127.0.0.1:8080/hook", "http://169.254.169.254/latest", "http://[::1]/x"]
)
async def test_post_refuses_a_private_callback_url_and_stores_nothing(h: Harness, url: str) -> None:
    status, body = await h.call("POST", "/tasks", json=task("t1", callback_url=url))
    assert_error(status, body, 400, "invalid", "tasks[0].callback_url")
    status, body = await h.call("POST", "/tasks", json=[task("t0"), task("t1", callback_url=url)])
    assert_error(status, body, 400, "invalid", "tasks[1].callback_url")
    assert await nothing_stored(h)


async def test_post_allows_a_private_callback_host_named_in_allow_hosts(make_harness: MakeHarness) -> None:
    h = await make_harness(allow_hosts=("10.0.0.1",))
    [record] = await h.post_tasks(task("t1", callback_url="http://10.0.0.1/x"))
    assert record["callback_url"] == "http://10.0.0.1/x"


async def test_post_a_deeply_nested_body_answers_a_json_400(h: Harness) -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    status, body = await h.call("POST", "/tasks", data=raw, headers={"content-type": "application/json"})
    assert status == 400 and "error" in body
    assert await nothing_stored(h)


async def test_post_refuses_a_token_name_that_is_not_configured(backend: Backend, make_harness: MakeHarness) -> None:
    settings = fast_settings("http://127.0.0.1:9", api_tokens={"other": "tok-2"})
    h = await make_harness(api=api_from_settings(settings, backend.redis))
    [record] = await h.post_tasks(task("named", token="other"))
    assert record["token"] == "other"
    status, body = await h.call("POST", "/tasks", json=task("t1", token="nope"))
    assert_error(status, body, 400, "invalid", "tasks[0].token")


# -- GET /tasks/{service}/{id} and POST /tasks/lookup --------------------------------------------


async def test_get_task_answers_every_record_field(h: Harness) -> None:
    [posted] = await h.post_tasks(task("t1", meta={"a": 1}, deadline_s=60))
    status, record = await h.call("GET", "/tasks/suno/t1")
    assert status == 200 and record == posted and set(record) == RECORD_FIELDS
    expected_nulls = {"reason", "partial", "progress", "error", "finished_at_ms", "upstream_finished_at"}
    assert {k for k, v in record.items() if v is None} == expected_nulls | {"callback_url", "response"}
    assert record["v"] == 1 and record["clips"] == [] and record["attempts"] == 0


async def test_get_unknown_task_is_404_and_a_bad_path_is_400(h: Harness) -> None:
    status, body = await h.call("GET", "/tasks/suno/never")
    assert_error(status, body, 404, "not_found", None)
    status, body = await h.call("GET", "/tasks/Suno!/t1")
    assert_error(status, body, 400, "invalid", "service")
    status, body = await h.call("GET", "/tasks/suno/a%20b")
    assert_error(status, body, 400, "invalid", "id")
    status, body = await h.call("GET", "/tasks/suno/a/b")  # a slash never reaches the handler
    assert status in (404, 405) and "error" in body


async def test_lookup_answers_found_records_and_missing_pairs(h: Harness) -> None:
    posted = await h.post_tasks(task("t1"), task("t2", service="producer"))
    pairs = [task("t1"), task("nope"), task("t2", service="producer"), task("t2")]
    status, body = await h.call("POST", "/tasks/lookup", json={"tasks": pairs})
    assert status == 200
    assert body["tasks"] == posted
    assert body["missing"] == [task("nope"), task("t2")]
    status, body = await h.call("POST", "/tasks/lookup", json={"tasks": []})
    assert status == 200 and body == {"tasks": [], "missing": []}
    status, body = await h.call("POST", "/tasks/lookup", json={"tasks": [task(f"m{n}") for n in range(1000)]})
    assert status == 200 and body["tasks"] == [] and len(body["missing"]) == 1000


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tasks": [task("ok"), task("a b")]}, "tasks[1].id"),
        ({"tasks": [task("ok", service="Bad!")]}, "tasks[0].service"),
        ({"tasks": [{"service": "suno"}]}, "tasks[0].id"),
        ({"tasks": ["suno/ok"]}, "tasks[0]"),
        ({"tasks": [task(f"t{n}") for n in range(1001)]}, "tasks"),
        ({"tasks": task("ok")}, "tasks"),
        ([task("ok")], "tasks"),
        ({}, "tasks"),
    ],
)
async def test_lookup_refuses_bad_bodies_naming_the_field(h: Harness, body: Any, field: str) -> None:
    status, answer = await h.call("POST", "/tasks/lookup", json=body)
    assert_error(status, answer, 400, "invalid", field)


async def test_lookup_malformed_json_is_invalid_json(h: Harness) -> None:
    status, body = await h.call("POST", "/tasks/lookup", data=b"{tasks", headers={"content-type": "application/json"})
    assert_error(status, body, 400, "invalid_json")


# -- GET /tasks ----------------------------------------------------------------------------------


async def all_pages(h: Harness, **query: str) -> list[list[dict[str, Any]]]:
    """Follow ``next_cursor`` from the first page to the last."""
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while len(pages) < 100:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        status, body = await h.call("GET", "/tasks", params=params)
        assert status == 200, body
        pages.append(body["tasks"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert isinstance(cursor, str) and body["tasks"], body
    raise AssertionError("next_cursor never ended")


async def enqueue_in_batches(h: Harness) -> list[tuple[int, str, str]]:
    """Three POSTs: 5, then 15 tied in one millisecond (two services), then 5; returns (ms, service, id)."""
    batches = [
        [task(f"early-{n}") for n in range(5)],
        [task(f"tie-{n}", service="producer" if n % 3 == 0 else "suno") for n in range(15)],
        [task(f"late-{n}") for n in range(5)],
    ]
    rows = []
    for batch in batches:
        await h.post_tasks(*batch)
        rows += [(h.clock.now_ms, i["service"], i["id"]) for i in batch]
        h.clock.advance(0.001)
    return rows


async def test_list_pages_through_tied_scores_oldest_first(h: Harness) -> None:
    rows = await enqueue_in_batches(h)
    pages = await all_pages(h, limit="10")
    assert [len(p) for p in pages] == [10, 10, 5]
    got = [(r["enqueued_at_ms"], r["service"], r["id"]) for p in pages for r in p]
    assert len(set(got)) == 25  # no duplicates, none missing
    assert got == sorted(rows, key=lambda r: (r[0], f"{r[1]}:{r[2]}"))
    suno = [r for r in rows if r[1] == "suno"]
    pages = await all_pages(h, service="suno", limit="4")
    assert [len(p) for p in pages] == [4, 4, 4, 4, 4]  # 20 rows: the last full page ends the listing
    assert [(r["enqueued_at_ms"], r["service"], r["id"]) for p in pages for r in p] == sorted(suno)
    producer = sorted(i for _, service, i in rows if service == "producer")  # tied: ordered by id
    assert [r["id"] for p in await all_pages(h, service="producer") for r in p] == producer


async def test_list_filters_by_state_and_service(h: Harness) -> None:
    await h.post_tasks(*(task(f"s{n}") for n in range(6)), *(task(f"p{n}", service="producer") for n in range(3)))
    for service, task_id in (("suno", "s4"), ("suno", "s1"), ("producer", "p2")):
        h.clock.advance(1)
        status, _ = await h.call("DELETE", f"/tasks/{service}/{task_id}")
        assert status == 200

    async def ids(**query: str) -> list[str]:
        return [f"{r['service']}/{r['id']}" for p in await all_pages(h, limit="2", **query) for r in p]

    assert await ids(state="failed") == ["suno/s4", "suno/s1", "producer/p2"]  # in the order they finished
    assert await ids(state="failed", service="suno") == ["suno/s4", "suno/s1"]
    assert await ids(state="pending", service="suno") == ["suno/s0", "suno/s2", "suno/s3", "suno/s5"]
    assert await ids(state="pending", service="producer") == ["producer/p0", "producer/p1"]
    assert await ids(state="succeeded") == []
    assert len(await ids()) == 9
    assert all(r["state"] == "failed" for p in await all_pages(h, state="failed") for r in p)


async def test_list_q_finds_tasks_by_id_and_meta_past_the_first_page(h: Harness) -> None:
    await h.post_tasks(*(task(f"hay-{n:03}", meta={"label": "straw"}) for n in range(150)))
    h.clock.advance(1)
    await h.post_tasks(task("late-one", meta={"label": "The NEEDLE"}), task("Needle-2", service="producer"))
    status, first = await h.call("GET", "/tasks", params={"limit": "100"})
    assert status == 200 and "late-one" not in [r["id"] for r in first["tasks"]]  # not on the first page
    status, body = await h.call("GET", "/tasks", params={"q": "needle", "limit": "100"})
    assert status == 200, body
    assert [(r["service"], r["id"]) for r in body["tasks"]] == [("producer", "Needle-2"), ("suno", "late-one")]
    assert body["tasks"][1]["meta"] == {"label": "The NEEDLE"} and set(body["tasks"][1]) == RECORD_FIELDS
    assert (body["next_cursor"], body["scanned"], body["scan_bound"]) == (None, 152, False)
    pages = await all_pages(h, q="HAY-1", limit="7", service="suno", state="pending")
    assert [r["id"] for p in pages for r in p] == [f"hay-{n:03}" for n in range(100, 150)]
    assert set(first) == {"tasks", "next_cursor"}  # a listing without q answers as before


async def test_list_q_that_matches_nothing_is_an_empty_page(h: Harness) -> None:
    await h.post_tasks(task("t1", meta={"a": 1}), task("t2"))
    status, body = await h.call("GET", "/tasks", params={"q": "zzz"})
    assert status == 200 and body == {"tasks": [], "next_cursor": None, "scanned": 2, "scan_bound": False}


@pytest.mark.parametrize("q", ["", "x" * 201, "é" * 201])
async def test_list_refuses_a_q_that_is_empty_or_too_long(h: Harness, q: str) -> None:
    await h.post_tasks(task("t1"))
    status, body = await h.call("GET", "/tasks", params={"q": q})
    assert_error(status, body, 400, "invalid", "q")


def cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"state": "done"}, "state"),
        ({"state": "PENDING"}, "state"),
        ({"limit": "0"}, "limit"),
        ({"limit": "5000"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "2.5"}, "limit"),
        ({"cursor": "garbage"}, "cursor"),
        ({"cursor": "!!!!"}, "cursor"),
        ({"cursor": cursor_of({"a": 1})}, "cursor"),
        ({"cursor": cursor_of([1, "x", 3])}, "cursor"),
        ({"cursor": cursor_of(["x", "suno:t1"])}, "cursor"),
        ({"cursor": cursor_of(None)}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b"\xff\xfe").decode()}, "cursor"),
        ({"service": "Bad!"}, "service"),
    ],
)
async def test_list_refuses_bad_parameters_naming_the_field(h: Harness, query: dict[str, str], field: str) -> None:
    await h.post_tasks(task("t1"))
    status, body = await h.call("GET", "/tasks", params=query)
    assert_error(status, body, 400, "invalid", field)


async def test_list_refuses_a_cursor_with_an_infinite_score(h: Harness) -> None:
    cursor = base64.urlsafe_b64encode(b'[1e400, "suno:t1"]').decode()
    status, content_type, text = await h.raw("GET", "/tasks", params={"cursor": cursor})
    assert (status, content_type) == (400, "application/json"), text[:200]
    assert json.loads(text)["error"]["field"] == "cursor"


# -- DELETE /tasks/{service}/{id} and POST .../reopen -------------------------------------------


async def test_cancel_answers_the_cancelled_record_with_its_event_and_delivery(make_harness: MakeHarness) -> None:
    h = await make_harness(destinations={"task.failed": [HOOK]})
    await h.post_tasks(task("t1", meta={"a": 1}))
    h.clock.advance(2)
    status, record = await h.call("DELETE", "/tasks/suno/t1")
    assert status == 200 and set(record) == RECORD_FIELDS
    assert (record["state"], record["reason"], record["meta"]) == ("failed", "cancelled", {"a": 1})
    assert record["error"]["code"] == "cancelled" and record["finished_at_ms"] == NOW_MS + 2000
    assert (await h.call("GET", "/tasks/suno/t1"))[1] == record
    [event] = await h.events()
    assert (event["type"], event["service"], event["id"]) == ("task.failed", "suno", "t1")
    assert (event["state"], event["reason"]) == ("failed", "cancelled")
    assert json.loads(event["record"]) == record
    [(delivery_id, _)] = await h.redis.zrange(h.store.outbox_key, 0, -1, withscores=True)
    delivery = await h.store.load_delivery(delivery_id)
    assert delivery is not None and delivery["event_id"] == event["event_id"] and delivery["destination"] == HOOK


async def test_cancel_twice_is_409_and_unknown_is_404(h: Harness) -> None:
    await h.post_tasks(task("t1"))
    assert (await h.call("DELETE", "/tasks/suno/t1"))[0] == 200
    status, body = await h.call("DELETE", "/tasks/suno/t1")
    assert_error(status, body, 409, "already_finished", None)
    assert len(await h.events()) == 1  # the refused cancel wrote nothing
    status, body = await h.call("DELETE", "/tasks/suno/never")
    assert_error(status, body, 404, "not_found", None)
    status, body = await h.call("DELETE", "/tasks/SUNO/t1")
    assert_error(status, body, 400, "invalid", "service")


@pytest.mark.parametrize("silent", ["1", "true"])
async def test_silent_cancel_writes_the_event_but_no_delivery(make_harness: MakeHarness, silent: str) -> None:
    h = await make_harness(
        destinations={"task.failed": [HOOK]}, callback_events=("task.failed",), allow_hosts=("10.0.0.1",)
    )
    await h.post_tasks(
        task("loud", callback_url="http://10.0.0.1/cb"), task("quiet", callback_url="http://10.0.0.1/cb")
    )
    assert (await h.call("DELETE", "/tasks/suno/loud"))[0] == 200
    assert await h.redis.zcard(h.store.outbox_key) == 2  # the global hook and the task's callback
    await h.redis.delete(h.store.outbox_key)
    status, record = await h.call("DELETE", "/tasks/suno/quiet", params={"silent": silent})
    assert status == 200 and record["reason"] == "cancelled"
    events = await h.events()
    assert [(e["type"], e["id"]) for e in events] == [("task.failed", "loud"), ("task.failed", "quiet")]
    assert json.loads(events[1]["record"]) == record
    assert await h.redis.zcard(h.store.outbox_key) == 0


async def test_reopen_restarts_a_cancelled_task(h: Harness) -> None:
    await h.post_tasks(task("t1", meta={"keep": True}))
    await h.call("DELETE", "/tasks/suno/t1")
    h.clock.advance(10)
    status, record = await h.call("POST", "/tasks/suno/t1/reopen")
    assert status == 200 and set(record) == RECORD_FIELDS
    assert (record["state"], record["reason"], record["finished_at_ms"]) == ("pending", None, None)
    assert record["meta"] == {"keep": True} and record["enqueued_at_ms"] == NOW_MS + 10_000
    assert (await h.call("GET", "/tasks/suno/t1"))[1] == record
    assert await h.redis.zscore(h.store.due_key("suno", "default"), "t1") is not None
    assert [r["id"] for p in await all_pages(h, state="pending") for r in p] == ["t1"]
    assert await all_pages(h, state="failed") == [[]]
    status, body = await h.call("DELETE", "/tasks/suno/t1")  # pending again: cancellable again
    assert status == 200 and body["reason"] == "cancelled"


async def test_reopen_a_pending_task_is_409_and_unknown_is_404(h: Harness) -> None:
    [posted] = await h.post_tasks(task("t1"))
    status, body = await h.call("POST", "/tasks/suno/t1/reopen")
    assert_error(status, body, 409, "not_finished", None)
    assert (await h.call("GET", "/tasks/suno/t1"))[1] == posted
    status, body = await h.call("POST", "/tasks/suno/never/reopen")
    assert_error(status, body, 404, "not_found", None)
    status, body = await h.call("POST", "/tasks/suno/a%20b/reopen")
    assert_error(status, body, 400, "invalid", "id")


async def test_post_with_reopen_true_restarts_only_a_finished_task(h: Harness) -> None:
    await h.post_tasks(task("done"), task("busy"))
    await h.call("DELETE", "/tasks/suno/done")
    h.clock.advance(1)
    status, body = await h.call("POST", "/tasks", json=[task("done", reopen=True), task("busy", reopen=True)])
    assert status == 202
    assert [r["state"] for r in body["tasks"]] == ["pending", "pending"]
    assert body["tasks"][0]["enqueued_at_ms"] == NOW_MS + 1000 and body["tasks"][1]["enqueued_at_ms"] == NOW_MS
    assert body["duplicates"] == [{"service": "suno", "id": "busy"}]


# -- hooks ----------------------------------------------------------------------------------------


def dead_delivery(delivery_id: str) -> dict[str, Any]:
    return {
        "delivery_id": delivery_id,
        "event_id": "evt_dead",
        "destination": "webhook:https://hooks.example.com/x",
        "status": "dead",
        "reason": "retries exhausted",
        "tries": 8,
        "created_at_ms": NOW_MS - 1000,
        "attempts": [{"at_ms": NOW_MS - 500, "status": 500, "error": "HTTP 500"}],
        "event": {"type": "task.succeeded", "record": {"service": "suno", "id": "t0"}},
    }


async def test_hooks_list_dead_letters_and_replay(make_harness: MakeHarness) -> None:
    h = await make_harness(destinations={"task.failed": [HOOK]})
    await h.post_tasks(task("t1"))
    await h.call("DELETE", "/tasks/suno/t1")
    await h.store.save_delivery("dlv_dead", dead_delivery("dlv_dead"))
    await h.store.dead_letter("dlv_dead", NOW_MS - 400)
    status, body = await h.call("GET", "/hooks")
    assert status == 200
    assert [d["delivery_id"] for d in body["deliveries"]][0] == "dlv_dead"  # oldest first
    assert {d["status"] for d in body["deliveries"]} == {"dead", "pending"} and len(body["deliveries"]) == 2
    status, body = await h.call("GET", "/hooks", params={"dead": "1"})
    assert status == 200 and body["deliveries"] == [dead_delivery("dlv_dead")]
    h.clock.advance(3)
    status, body = await h.call("POST", "/hooks/dlv_dead/replay")
    assert status == 202 and body == {"delivery_id": "dlv_dead", "status": "pending"}
    assert await h.redis.zscore(h.store.outbox_key, "dlv_dead") == NOW_MS + 3000
    assert await h.redis.zscore(h.store.dead_key, "dlv_dead") is None
    replayed = await h.store.load_delivery("dlv_dead")
    assert replayed is not None and (replayed["status"], replayed["replays"]) == ("pending", 1)
    assert replayed["event_id"] == "evt_dead"  # same webhook-id
    assert (await h.call("GET", "/hooks", params={"dead": "1"}))[1] == {"deliveries": []}
    status, body = await h.call("POST", "/hooks/dlv_never/replay")
    assert_error(status, body, 404, "not_found", None)


# -- stats, health, metrics, OpenAPI ---------------------------------------------------------------


async def test_stats_shape(h: Harness) -> None:
    await h.post_tasks(task("s1"), task("s2"), task("p1", service="producer"))
    await h.call("DELETE", "/tasks/suno/s2")
    h.clock.advance(5)
    status, stats = await h.call("GET", "/stats")
    assert status == 200
    assert set(stats) == {"services", "totals", "backlog", "workers", "paused_tokens", "counters"}
    assert stats["services"] == {
        "suno": {"pending": 1, "succeeded": 0, "failed": 1, "oldest_pending_age_s": 5.0},
        "producer": {"pending": 1, "succeeded": 0, "failed": 0, "oldest_pending_age_s": 5.0},
    }
    assert stats["totals"] == {"pending": 2, "succeeded": 0, "failed": 1}
    assert stats["backlog"] == {"suno:default": 1, "producer:default": 1}  # due 3 s after enqueue
    assert (stats["workers"], stats["paused_tokens"], stats["counters"]) == ([], [], {})


async def policy_warnings(h: Harness) -> list[str]:
    """What ``/readyz`` adds for the server's eviction policy: nothing on a real server's default
    (noeviction), the could-not-check warning on fakeredis, which has no CONFIG."""
    try:
        await h.redis.config_get("maxmemory-policy")
    except ResponseError:
        return ["could not check"]
    return []


async def test_healthz_and_readyz_follow_worker_heartbeats(h: Harness) -> None:
    assert await h.call("GET", "/healthz") == (200, {"ok": True})
    status, body = await h.call("GET", "/readyz")
    assert status == 503 and body["ready"] is False and body["problems"]
    await h.store.heartbeat("w1", {"worker_id": "w1", "at_ms": h.clock(), "paused_tokens": []}, ttl_ms=60_000)
    status, body = await h.call("GET", "/readyz")
    assert (status, body["ready"]) == (200, True)
    assert [p[: len("could not check")] for p in body["problems"]] == await policy_warnings(h)
    await h.store.heartbeat("w2", {"worker_id": "w2", "at_ms": h.clock(), "paused_tokens": ["default"]}, ttl_ms=60_000)
    status, body = await h.call("GET", "/readyz")
    assert status == 503 and body["ready"] is False and any("default" in p for p in body["problems"])
    stats = (await h.call("GET", "/stats"))[1]
    assert stats["paused_tokens"] == ["default"] and len(stats["workers"]) == 2
    h.clock.advance(21)  # heartbeats older than 20 s are a dead or stuck worker, whatever their key's TTL
    status, body = await h.call("GET", "/readyz")
    assert status == 503 and body["problems"][0] == "no live worker heartbeat"


async def test_metrics_count_tasks(h: Harness) -> None:
    await h.post_tasks(task("m1"), task("m2"))
    status, content_type, text = await h.raw("GET", "/metrics")
    assert status == 200 and content_type == "text/plain"
    assert 'acetrack_tasks{service="suno",state="pending"} 2.0' in text


async def test_openapi_documents_every_route(h: Harness) -> None:
    status, doc = await h.call("GET", "/openapi.json")
    assert status == 200 and str(doc["openapi"]).startswith("3.")
    documented = {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in HTTP_METHODS}
    app = h.client.app
    assert app is not None
    served = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource and r.method != "HEAD"}
    # 13 of the API, /events, /stats/series, /hooks/disabled, /hooks/enable, the dashboard's /, /docs,
    # /static/{name}, and the upstream's /callbacks/{service}
    assert len(served) == 21
    assert served <= documented, served - documented
    assert documented <= served, documented - served  # nothing documented that is not served


# -- auth --------------------------------------------------------------------------------------------


async def test_unknown_route_and_method_answer_json(h: Harness) -> None:
    status, body = await h.call("GET", "/nope")
    assert_error(status, body, 404, "not_found")
    status, body = await h.call("PUT", "/tasks")
    assert_error(status, body, 405, "method_not_allowed")


def guarded_routes() -> list[tuple[str, str, dict[str, Any], int]]:
    """(method, path, request kwargs, status with the right token) for every guarded route, in a working order."""
    return [
        ("POST", "/tasks", {"json": [task("a1"), task("a2")]}, 202),
        ("GET", "/tasks/suno/a1", {}, 200),
        ("POST", "/tasks/lookup", {"json": {"tasks": [task("a1")]}}, 200),
        ("GET", "/tasks", {"params": {"limit": "1"}}, 200),
        ("DELETE", "/tasks/suno/a1", {}, 200),
        ("POST", "/tasks/suno/a1/reopen", {}, 200),
        ("GET", "/hooks", {"params": {"dead": "1"}}, 200),
        ("POST", "/hooks/dlv_dead/replay", {}, 202),
        ("GET", "/stats", {}, 200),
        ("GET", "/stats/series", {}, 200),
        ("GET", "/hooks/disabled", {}, 200),
        ("POST", "/hooks/enable", {"json": {"url": "https://gone.example.com/hook"}}, 404),
        ("GET", "/metrics", {}, 200),
        ("GET", "/openapi.json", {}, 200),
        ("GET", "/nope", {}, 404),
    ]


async def test_every_route_but_health_needs_the_bearer_token(make_harness: MakeHarness) -> None:
    h = await make_harness(http_token=TOKEN)
    await h.store.save_delivery("dlv_dead", dead_delivery("dlv_dead"))
    await h.store.dead_letter("dlv_dead", NOW_MS)
    texts = []
    wrong = [{}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}, {"authorization": f"Bearer {TOKEN}x"}]
    wrong += [{"authorization": f"Basic {TOKEN}"}, {"authorization": "Bearer "}, {"x-token": TOKEN}]
    for method, path, kwargs, ok_status in guarded_routes():
        for headers in wrong:
            status, content_type, text = await h.raw(method, path, headers=headers, **kwargs)
            assert status == 401 and content_type == "application/json", (method, path, headers, status)
            assert_error(status, json.loads(text), 401, "unauthorized")
            texts.append(text)
        status, _, text = await h.raw(method, path, headers={"authorization": f"Bearer {TOKEN}"}, **kwargs)
        assert status == ok_status, (method, path, text[:300])
        texts.append(text)
    for path in ("/healthz", "/readyz"):
        status, _, text = await h.raw("GET", path)
        assert status in (200, 503), (path, status)  # open: never 401
        texts.append(text)
    assert not any(TOKEN in t for t in texts)


async def test_unauthorised_requests_change_nothing(make_harness: MakeHarness) -> None:
    h = await make_harness(http_token=TOKEN)
    status, _ = await h.call("POST", "/tasks", json=task("t1"))
    assert status == 401 and await nothing_stored(h)
    good = {"authorization": f"Bearer {TOKEN}"}
    assert (await h.call("POST", "/tasks", json=task("t1"), headers=good))[0] == 202
    assert (await h.call("DELETE", "/tasks/suno/t1", headers={"authorization": "Bearer no"}))[0] == 401
    record = await h.store.get("suno", "t1")
    assert record is not None and record.state is TaskState.PENDING and await h.events() == []
    await h.store.heartbeat("w1", {"worker_id": "w1", "at_ms": h.clock(), "paused_tokens": []}, ttl_ms=60_000)
    assert (await h.call("GET", "/readyz"))[:1] == (200,)


# -- cancel and reopen racing a real worker ------------------------------------------------------


async def wait_terminal(store: Store, ids: Sequence[str], timeout_s: float) -> dict[str, Record]:
    """The records of ``ids`` once all are terminal (or whatever they are at the timeout)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while True:
        records = await store.get_many(("suno", i) for i in ids)
        if all(r is not None and r.terminal for r in records) or loop.time() > give_up:
            return {r.id: r for r in records if r is not None}
        await asyncio.sleep(0.05)


async def cancel_after(h: Harness, task_id: str, delay_s: float) -> tuple[str, tuple[int, Any]]:
    await asyncio.sleep(delay_s)
    return task_id, await h.call("DELETE", f"/tasks/suno/{task_id}")


def terminal_events(events: Iterable[Mapping[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Terminal events by task id, in stream order: (type, reason)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for e in events:
        if e["type"] in ("task.succeeded", "task.failed"):
            out.setdefault(e["id"], []).append((e["type"], e["reason"]))
    return out


def check_race_outcome(answers: Mapping[str, tuple[int, Any]], final: Mapping[str, Record], ids: Sequence[str]) -> None:
    for task_id, (status, body) in answers.items():
        assert status in (200, 409), (task_id, status, body)
        if status == 200:
            assert (body["state"], body["reason"]) == ("failed", "cancelled")
            assert final[task_id].to_dict() == body  # the cancel's write is the one that stands
        else:
            assert_error(status, body, 409, "already_finished")
    assert sorted(final) == sorted(ids)
    for task_id, record in final.items():
        if answers.get(task_id, (0, None))[0] == 200:
            assert (record.state, record.reason) == (TaskState.FAILED, Reason.CANCELLED)
        else:  # never cancelled, or the worker finished it first
            assert record.state is TaskState.SUCCEEDED, (task_id, record.state, record.reason)


@pytest.mark.parametrize("backend", ["real"], indirect=True)  # an arq worker needs a real server
async def test_cancels_racing_a_running_worker_end_each_task_exactly_once(
    backend: Backend, make_harness: MakeHarness, make_sim: MakeSim
) -> None:
    url, sim_state = await make_sim(auto=False)
    h = await make_harness(clock=system_clock, first_poll_s=0.2)
    rng = random.Random(20)
    ids = [f"race-{n:02d}" for n in range(30)]
    for task_id in ids:
        sim_state.add_task("suno", task_id, script="succeed", run_s=rng.uniform(0.8, 1.2), clip_gap_s=0.2)
    await h.post_tasks(*(task(i) for i in ids))
    victims = rng.sample(ids, 15)
    delays = {v: rng.uniform(0.0, 0.7) if n % 2 else rng.uniform(1.0, 3.0) for n, v in enumerate(victims)}
    settings = fast_settings(url, hooks=[])
    kwargs = jobs.worker_settings(settings, redis_pool=backend.make_arq_pool(), store_redis=backend.redis)
    async with jobs.running_worker(kwargs):
        answers = dict(await asyncio.gather(*(cancel_after(h, v, delays[v]) for v in victims)))
        final = await wait_terminal(h.store, ids, timeout_s=15)
        check_race_outcome(answers, final, ids)
        cancelled = sorted(i for i, (status, _) in answers.items() if status == 200)
        assert cancelled and len(cancelled) < len(victims), answers  # both sides of the race happened
        once = {i: [("task.failed", "cancelled") if i in cancelled else ("task.succeeded", "")] for i in ids}
        assert terminal_events(await h.events()) == once  # exactly one terminal event per task
        reopened = cancelled[:3]
        for task_id in reopened:
            status, body = await h.call("POST", f"/tasks/suno/{task_id}/reopen")
            assert status == 200 and body["state"] == "pending"
        again = await wait_terminal(h.store, reopened, timeout_s=10)
    assert all(again[i].state is TaskState.SUCCEEDED for i in reopened), again
    after = terminal_events(await h.events())
    for task_id in reopened:
        assert after[task_id] == [("task.failed", "cancelled"), ("task.succeeded", "")]


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [
        ("0.0.0.0", None, True),
        ("0.0.0.0", "s3cret", False),
        ("127.0.0.1", None, False),
        ("127.0.0.2", None, False),
        ("::1", None, False),
        ("localhost", None, False),
        ("10.0.0.5", "", True),
        ("api.internal", None, True),
    ],
)
def test_serve_warns_when_the_api_is_open_to_the_network(host: str, token: str | None, warned: bool) -> None:
    assert open_to_the_network(Settings(http_host=host, http_token=token)) is warned
