"""Tests of the upstream client (``worker.api``) over real HTTP on loopback (STYLE.md 15(c)).

Every request goes through a real ``aiohttp.ClientSession`` to the Tasks API simulator
(``make_sim``) or to a tiny aiohttp app defined here for answers the simulator never gives.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from worker import sim
from worker.api import UpstreamClient, is_retryable_status, parse_retry_after
from worker.errors import (
    ConfigError,
    UnknownService,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTooLarge,
    UpstreamUnavailable,
    is_retryable,
)
from worker.wire import UpstreamTask

MakeSim = Callable[..., Awaitable[tuple[str, sim.SimState]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[dict[str, Handler]], Awaitable[str]]

TOKEN = "tok-123"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Factory: serve a tiny app of POST routes (path -> handler) on loopback; returns its base URL."""
    async with AsyncExitStack() as stack:

        async def start(routes: dict[str, Handler]) -> str:
            app = web.Application()
            for path, handler in routes.items():
                app.router.add_post(path, handler)
            server = await stack.enter_async_context(TestServer(app, host="127.0.0.1"))
            return str(server.make_url("")).rstrip("/")

        yield start


def client(session: aiohttp.ClientSession, base_url: str, token: str = TOKEN) -> UpstreamClient:
    return UpstreamClient(session, base_url, {"default": token})


def answer(body: str, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text=body, status=status, content_type="application/json")

    return handler


def record(task_id: str, finished_at: float | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": task_id, "response": {"success": True, "task_id": task_id, "data": []}}
    if finished_at is not None:
        rec["finished_at"] = finished_at
    return rec


# --- retrieve ------------------------------------------------------------------------------------


async def test_retrieve_known_task(make_sim: MakeSim, session: aiohttp.ClientSession) -> None:
    url, state = await make_sim(auto=False)
    state.add_task("suno", "t-1", run_s=0.0, clip_gap_s=0.0)
    task = await client(session, url).retrieve("suno", "t-1")
    assert isinstance(task, UpstreamTask)
    assert task.id == "t-1"
    assert task.finished_at is not None
    assert len(task.items) == 2
    assert [(e.service, e.action, e.ids, e.status) for e in state.log] == [("suno", "retrieve", ["t-1"], 200)]


async def test_retrieve_unknown_id_is_none(make_sim: MakeSim, session: aiohttp.ClientSession) -> None:
    url, state = await make_sim(auto=False)
    assert await client(session, url).retrieve("suno", "nope") is None
    assert state.log[-1].status == 200


# --- retrieve_batch ------------------------------------------------------------------------------


async def test_batch_sends_limit_so_default_page_does_not_cut(
    make_sim: MakeSim, session: aiohttp.ClientSession
) -> None:
    url, state = await make_sim(auto=False)
    ids = [f"t-{i:02d}" for i in range(25)]
    for task_id in ids:
        state.add_task("suno", task_id)
    assert len(ids) > sim.DEFAULT_BATCH_LIMIT
    found = await client(session, url).retrieve_batch("suno", ids)
    assert sorted(found) == ids
    assert all(found[i].id == i for i in ids)
    assert len(state.log) == 1
    assert state.log[0].action == "retrieve_batch"
    assert state.log[0].ids == ids


async def test_batch_sends_limit_equal_to_len_ids(serve: Serve, session: aiohttp.ClientSession) -> None:
    seen: list[Any] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({"items": [], "count": 0})

    url = await serve({"/suno/tasks": handler})
    await client(session, url).retrieve_batch("suno", ["a", "b", "c"])
    assert seen == [{"action": "retrieve_batch", "ids": ["a", "b", "c"], "limit": 3}]


async def test_batch_unknown_ids_absent(make_sim: MakeSim, session: aiohttp.ClientSession) -> None:
    url, state = await make_sim(auto=False)
    state.add_task("suno", "known")
    state.add_task("suno", "never", script="unknown")
    found = await client(session, url).retrieve_batch("suno", ["known", "missing", "never"])
    assert list(found) == ["known"]


async def test_batch_duplicate_ids_collapse(make_sim: MakeSim, session: aiohttp.ClientSession) -> None:
    url, state = await make_sim(auto=False)
    state.add_task("suno", "a")
    state.add_task("suno", "b")
    found = await client(session, url).retrieve_batch("suno", ["a", "a", "b"])
    assert sorted(found) == ["a", "b"]
    assert state.log[0].ids == ["a", "a", "b"]


@pytest.mark.parametrize("finished_first", [True, False])
async def test_batch_duplicate_items_finished_copy_wins(
    serve: Serve, session: aiohttp.ClientSession, finished_first: bool
) -> None:
    copies = [record("a", finished_at=1_700_000_000.0), record("a")]
    if not finished_first:
        copies.reverse()

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"items": copies, "count": 2})

    url = await serve({"/suno/tasks": handler})
    found = await client(session, url).retrieve_batch("suno", ["a"])
    assert list(found) == ["a"]
    assert found["a"].finished_at == 1_700_000_000.0


async def test_batch_ignores_items_not_asked_for(serve: Serve, session: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"items": [record("stranger"), record("a"), record("other")], "count": 3})

    url = await serve({"/suno/tasks": handler})
    found = await client(session, url).retrieve_batch("suno", ["a", "b"])
    assert list(found) == ["a"]


async def test_batch_service_answering_total(make_sim: MakeSim, session: aiohttp.ClientSession) -> None:
    url, state = await make_sim(auto=False, services=frozenset({"suno", "luma"}), total_services=frozenset({"luma"}))
    state.add_task("luma", "l-1")
    state.add_task("luma", "l-2")
    found = await client(session, url).retrieve_batch("luma", ["l-1", "l-2"])
    assert sorted(found) == ["l-1", "l-2"]
    assert state.log[0].status == 200


# --- error mapping -------------------------------------------------------------------------------


async def test_401_is_auth_error(make_sim: MakeSim, session: aiohttp.ClientSession) -> None:
    url, state = await make_sim(tokens=frozenset({"good"}))
    with pytest.raises(UpstreamAuthError) as info:
        await client(session, url, token="bad").retrieve("suno", "t-1")
    assert info.value.status == 401
    assert info.value.code == "invalid_token"
    assert isinstance(info.value, UpstreamRejected)
    assert not is_retryable(info.value)
    assert state.log[0].status == 401


async def test_404_no_api_is_unknown_service(make_sim: MakeSim, session: aiohttp.ClientSession) -> None:
    url, _ = await make_sim()
    with pytest.raises(UnknownService) as info:
        await client(session, url).retrieve_batch("luma", ["x"])
    assert info.value.status == 404
    assert info.value.code == "no_api"
    assert not is_retryable(info.value)


async def test_404_without_no_api_is_plain_rejection(serve: Serve, session: aiohttp.ClientSession) -> None:
    url = await serve({"/suno/tasks": answer('{"success": false, "error": {"code": "nope", "message": "m"}}', 404)})
    with pytest.raises(UpstreamRejected) as info:
        await client(session, url).retrieve("suno", "x")
    assert type(info.value) is UpstreamRejected
    assert info.value.status == 404


async def test_413_is_too_large(make_sim: MakeSim, session: aiohttp.ClientSession) -> None:
    url, state = await make_sim(max_batch=5)
    with pytest.raises(UpstreamTooLarge) as info:
        await client(session, url).retrieve_batch("suno", [f"t-{i}" for i in range(6)])
    assert info.value.status == 413
    assert info.value.code == "payload_too_large"
    assert not is_retryable(info.value)
    assert state.log[0].status == 413


async def test_503_with_retry_after(make_sim: MakeSim, session: aiohttp.ClientSession) -> None:
    url, state = await make_sim()
    state.fail_next(1, 503, retry_after_s=7)
    api = client(session, url)
    with pytest.raises(UpstreamUnavailable) as info:
        await api.retrieve("suno", "t-1")
    assert info.value.status == 503
    assert info.value.retry_after_s == 7
    assert is_retryable(info.value)
    # the failure was one request; the next one goes through (the client itself never retried)
    assert len(state.log) == 1
    assert await api.retrieve("suno", "t-1") is not None
    assert api.requests == 2


async def test_503_without_retry_after(make_sim: MakeSim, session: aiohttp.ClientSession) -> None:
    url, state = await make_sim()
    state.fail_next(1, 500)
    with pytest.raises(UpstreamUnavailable) as info:
        await client(session, url).retrieve_batch("suno", ["t-1"])
    assert info.value.status == 500
    assert info.value.retry_after_s is None


async def test_429_from_rate_limiter(make_sim: MakeSim, session: aiohttp.ClientSession) -> None:
    url, state = await make_sim(rate_limit_rps=1, burst=1)
    api = client(session, url)
    assert await api.retrieve("suno", "t-1") is not None
    with pytest.raises(UpstreamUnavailable) as info:
        await api.retrieve("suno", "t-1")
    assert info.value.status == 429
    assert info.value.code == "too_many_requests"
    assert info.value.retry_after_s == 1.0
    assert is_retryable(info.value)
    assert [e.status for e in state.log] == [200, 429]


async def test_network_error_is_unavailable(session: aiohttp.ClientSession) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the socket is closed: nothing listens on the port any more
    with pytest.raises(UpstreamUnavailable) as info:
        await client(session, f"http://127.0.0.1:{port}").retrieve("suno", "t-1")
    assert info.value.status is None
    assert info.value.retry_after_s is None
    assert isinstance(info.value.__cause__, aiohttp.ClientError)
    assert is_retryable(info.value)


# --- broken upstream answers ---------------------------------------------------------------------


async def test_truncated_json_is_unavailable(serve: Serve, session: aiohttp.ClientSession) -> None:
    url = await serve({"/suno/tasks": answer('{"items": [')})
    with pytest.raises(UpstreamUnavailable) as info:
        await client(session, url).retrieve_batch("suno", ["a"])
    assert "unreadable JSON" in str(info.value)
    assert info.value.status == 200
    assert is_retryable(info.value)


async def test_batch_answer_without_items_is_unavailable(serve: Serve, session: aiohttp.ClientSession) -> None:
    url = await serve({"/suno/tasks": answer('{"foo": 1}')})
    with pytest.raises(UpstreamUnavailable) as info:
        await client(session, url).retrieve_batch("suno", ["a"])
    assert "'items'" in str(info.value)
    assert is_retryable(info.value)


async def test_error_body_with_200_is_rejected(serve: Serve, session: aiohttp.ClientSession) -> None:
    body = '{"success": false, "error": {"code": "token_mismatched", "message": "x"}}'
    url = await serve({"/suno/tasks": answer(body)})
    with pytest.raises(UpstreamRejected) as info:
        await client(session, url).retrieve("suno", "a")
    assert type(info.value) is UpstreamRejected
    assert info.value.code == "token_mismatched"
    assert "x" in str(info.value)
    assert not is_retryable(info.value)


async def test_unreadable_error_body_keeps_status(serve: Serve, session: aiohttp.ClientSession) -> None:
    url = await serve({"/suno/tasks": answer("<html>bad gateway</html>", 502)})
    with pytest.raises(UpstreamUnavailable) as info:
        await client(session, url).retrieve("suno", "a")
    assert info.value.status == 502


# --- configuration, headers, redirects -----------------------------------------------------------


async def test_unknown_token_name_is_config_error(make_sim: MakeSim, session: aiohttp.ClientSession) -> None:
    url, state = await make_sim()
    api = client(session, url)
    with pytest.raises(ConfigError) as info:
        await api.retrieve("suno", "t-1", token="backup")
    assert "'backup'" in str(info.value)
    assert "ACETRACK_API_TOKEN" in str(info.value)
    assert state.log == []
    assert api.requests == 0


async def test_sends_bearer_token(make_sim: MakeSim, session: aiohttp.ClientSession) -> None:
    url, state = await make_sim(tokens=frozenset({"s3cret"}))
    api = UpstreamClient(session, url, {"default": "nope", "alt": "s3cret"})
    assert await api.retrieve("suno", "t-1", token="alt") is not None
    with pytest.raises(UpstreamAuthError):
        await api.retrieve("suno", "t-1")
    assert [(e.token, e.status) for e in state.log] == [("s3cret", 200), ("nope", 401)]


async def test_request_headers(serve: Serve, session: aiohttp.ClientSession) -> None:
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({})

    url = await serve({"/suno/tasks": handler})
    await client(session, url + "/").retrieve("suno", "a")
    assert len(seen) == 1
    assert seen[0]["authorization"] == f"Bearer {TOKEN}"
    assert seen[0]["accept"] == "application/json"
    assert seen[0]["content-type"].startswith("application/json")


async def test_redirect_is_not_followed(serve: Serve, session: aiohttp.ClientSession) -> None:
    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append("redirect")
        raise web.HTTPTemporaryRedirect("/elsewhere/tasks")

    async def target(request: web.Request) -> web.Response:
        hits.append("target")
        return web.json_response({"items": [record("a")], "count": 1})

    url = await serve({"/suno/tasks": redirect, "/elsewhere/tasks": target})
    with pytest.raises(UpstreamError) as info:
        await client(session, url).retrieve_batch("suno", ["a"])
    assert info.value.status == 307
    assert hits == ["redirect"]


# --- pure helpers --------------------------------------------------------------------------------

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("-3", 0.0),
        ("1.5", 1.5),
        (formatdate(NOW + 30, usegmt=True), 30.0),
        (formatdate(NOW - 30, usegmt=True), 0.0),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (599, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (413, False),
    ],
)
def test_is_retryable_status(status: int, expected: bool) -> None:
    assert is_retryable_status(status) is expected
