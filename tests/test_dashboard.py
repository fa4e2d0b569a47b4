"""The dashboard in a real headless Chromium (Debian's, driven by Playwright), over the real stack: a
real redis-server, an arq worker polling the simulator over loopback sockets, and the HTTP API served
on a loopback port. Tasks are posted over HTTP, never written into Redis behind the page's back.

Without ``/usr/bin/chromium`` these tests skip, and fail under ``CI=true`` (as the real-Redis tests do).
Every test also checks that the page logged no console error and threw nothing.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Page, async_playwright
from support import Backend, eventually, fast_settings

import probe_hooks
from worker import jobs, sim
from worker.clock import system_clock
from worker.control import Control
from worker.hooks import destinations_by_event
from worker.http import Api, create_app
from worker.store import Store

pytestmark = pytest.mark.realredis

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "dash-token"
HOOKS = ["probe_hooks:flaky", "probe_hooks:record"]
FAST_RETRY_S = (0.1, 0.1)
MakeSim = Callable[..., Awaitable[tuple[str, sim.SimState]]]


def require_chromium() -> None:
    """Skip without Debian's chromium; under ``CI=true`` that is a failure (``.ci/run`` installs it)."""
    if CHROMIUM.exists():
        return
    message = f"no {CHROMIUM} here (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}: CI must run the browser tests")
    pytest.skip(message)


@dataclass
class Live:
    """The running stack: API base URL, an HTTP session, the simulator's state and the store."""

    url: str
    session: aiohttp.ClientSession
    sim: sim.SimState
    store: Store
    headers: dict[str, str] = field(default_factory=dict)

    async def post(self, *ids: str) -> None:
        body = [{"service": "suno", "id": i, "meta": {"batch": "dash"}} for i in ids]
        async with self.session.post(f"{self.url}/tasks", json=body, headers=self.headers) as resp:
            assert resp.status == 202, await resp.text()

    async def record(self, task_id: str) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/tasks/suno/{task_id}", headers=self.headers) as resp:
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json()
            return body


MakeLive = Callable[..., Awaitable[Live]]


@pytest.fixture
async def make_live(real_backend: Backend, make_sim: MakeSim) -> AsyncIterator[MakeLive]:
    """Factory: the simulator, one worker (hooks ``flaky`` and ``record``) and the API; ``Api`` kwargs."""
    async with AsyncExitStack() as stack:

        async def make(**api_kwargs: Any) -> Live:
            url, state = await make_sim(auto=False)
            settings = fast_settings(url, hooks=HOOKS)
            kwargs = jobs.worker_settings(
                settings,
                redis_pool=real_backend.make_arq_pool(),
                store_redis=real_backend.redis,
                hook_retry_s=FAST_RETRY_S,
            )
            await stack.enter_async_context(jobs.running_worker(kwargs))
            store = real_backend.store()
            destinations = destinations_by_event(settings.hooks, settings.hook_events, [], [])
            api = Api(store=store, control=Control(store, destinations), **api_kwargs)
            server = await stack.enter_async_context(TestServer(create_app(api), host="127.0.0.1"))
            session = await stack.enter_async_context(aiohttp.ClientSession())
            headers = {"authorization": f"Bearer {api.http_token}"} if api.http_token else {}
            return Live(str(server.make_url("")).rstrip("/"), session, state, store, headers)

        yield make


@dataclass
class Browser:
    """One page in headless Chromium, and what it logged."""

    page: Page
    errors: list[str]
    requests: list[str]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A fresh Chromium page whose console errors, page errors and requests are kept."""
    require_chromium()
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = await chromium.new_page(viewport={"width": 1280, "height": 900})
        seen = Browser(page, [], [])
        page.on("console", lambda msg: seen.errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: seen.errors.append(str(exc)))
        page.on("request", lambda request: seen.requests.append(request.url))
        yield seen
        await chromium.close()


def row(page: Page, task_id: str) -> Any:
    return page.locator(f'#tasks tr[data-key="suno/{task_id}"]')


async def test_posted_tasks_appear_and_succeed_live_with_charts_and_a_screenshot(
    make_live: MakeLive, browser: Browser
) -> None:
    live, page = await make_live(), browser.page
    await page.goto(live.url + "/")
    await page.locator("#live.live").wait_for()
    await page.evaluate("window.notReloaded = true")  # gone if the page reloads
    ids = [f"song-{n}" for n in range(6)]
    for n, task_id in enumerate(ids):
        script = "error" if n == 5 else "succeed"
        live.sim.add_task("suno", task_id, script=script, run_s=0.8 + 0.3 * n, clip_gap_s=0.3)
    live.sim.add_task("suno", "song-slow", script="succeed", run_s=600)
    await live.post(*ids, "song-slow")
    for task_id in ids[:5]:
        await row(page, task_id).locator(".state-cell", has_text="succeeded").wait_for()
    await row(page, "song-5").locator(".state-cell", has_text="failed").wait_for()
    assert await row(page, "song-slow").locator(".state-cell").inner_text() == "pending"
    assert await page.evaluate("window.notReloaded") is True
    assert await row(page, "song-0").locator("audio").count() == 2  # one player per finished clip
    await page.wait_for_function("document.querySelectorAll('#chart-latency circle.pt').length > 0")
    assert await page.locator("#chart-finished rect.bar").count() > 0
    # a point above the zero line: the worker's heartbeat (every few seconds) reported its batch polls
    await page.wait_for_function(
        "[...document.querySelectorAll('#chart-requests circle.pt')].some((c) => +c.getAttribute('cy') < 116)"
    )
    assert await page.locator("#totals").inner_text() != ""
    await page.locator("#workers tbody tr").first.wait_for()
    await page.screenshot(path=str(ROOT / "docs" / "dashboard.png"), full_page=True)
    assert browser.errors == []


async def test_cancel_on_the_page_cancels_the_task(make_live: MakeLive, browser: Browser) -> None:
    live, page = await make_live(), browser.page
    live.sim.add_task("suno", "to-cancel", script="succeed", run_s=600)
    await live.post("to-cancel")
    await page.goto(live.url + "/")
    await row(page, "to-cancel").locator("button.cancel").click()
    await row(page, "to-cancel").locator(".state-cell", has_text="failed").wait_for()
    record = await live.record("to-cancel")
    assert record["state"] == "failed" and record["reason"] == "cancelled"
    assert browser.errors == []


async def test_the_search_box_finds_a_task_that_is_not_on_the_first_page(make_live: MakeLive, browser: Browser) -> None:
    live, page = await make_live(), browser.page
    fillers = [f"fill-{n:02}" for n in range(55)]
    for task_id in [*fillers, "zz-hidden"]:
        live.sim.add_task("suno", task_id, script="succeed", run_s=600)  # all pending for the whole test
    await live.post(*fillers)
    body = {"service": "suno", "id": "zz-hidden", "meta": {"label": "Blue-Needle"}}
    async with live.session.post(f"{live.url}/tasks", json=body, headers=live.headers) as resp:
        assert resp.status == 202, await resp.text()
    await page.goto(live.url + "/")
    await row(page, "fill-00").wait_for()
    assert await row(page, "zz-hidden").count() == 0  # the first page shows 50 of the 56, oldest first
    await page.locator("#filter-q").fill("blue-NEEDLE")  # in its meta, in another case
    await row(page, "zz-hidden").wait_for()
    assert await page.locator("#tasks tbody tr").count() == 1
    assert any("q=blue-NEEDLE" in url for url in browser.requests)  # the server searched, not the page
    await page.locator("#filter-q").fill("no-such-text")
    await page.locator("#search-note", has_text="no task matches").wait_for()
    assert await page.locator("#tasks tbody tr").count() == 0
    await page.locator("#filter-q").fill("")
    await row(page, "fill-00").wait_for()
    assert await row(page, "zz-hidden").count() == 0
    assert browser.errors == []


async def test_the_task_page_shows_events_and_deliveries(make_live: MakeLive, browser: Browser) -> None:
    live, page = await make_live(), browser.page
    probe_hooks.CALLS.clear()
    probe_hooks.FAILURES_LEFT.clear()
    live.sim.add_task("suno", "detail", script="succeed", run_s=0.5, clip_gap_s=0.2)
    await live.post("detail")
    await page.goto(live.url + "/")
    await row(page, "detail").locator(".state-cell", has_text="succeeded").wait_for()
    await row(page, "detail").locator("a.task").click()
    await page.locator("#task-events li", has_text="task.succeeded").wait_for()
    assert await page.locator("#task-detail td", has_text="python:probe_hooks:record").count() == 1
    assert browser.errors == []


async def test_replay_of_a_dead_letter_on_the_page_delivers_it(make_live: MakeLive, browser: Browser) -> None:
    live, page = await make_live(), browser.page
    probe_hooks.CALLS.clear()
    probe_hooks.FAILURES_LEFT.clear()
    probe_hooks.FAILURES_LEFT["hooked"] = 1000  # the flaky hook refuses every try until "fixed"
    live.sim.add_task("suno", "hooked", script="succeed", run_s=0.3, clip_gap_s=0.1)
    await live.post("hooked")

    async def dead() -> bool:
        return bool(await live.store.dead_letters())

    assert await eventually(dead, 30)
    [delivery_id] = await live.store.dead_letters()
    probe_hooks.FAILURES_LEFT["hooked"] = 0  # the receiver is fixed: the replay goes through
    await page.goto(live.url + "/")
    await page.locator(f'#dead tr[data-delivery="{delivery_id}"] button.replay').click()

    async def delivered() -> bool:
        body = await live.store.load_delivery(delivery_id)
        return body is not None and body["status"] == "delivered"

    assert await eventually(delivered, 30)
    flaky_calls = [c for c in probe_hooks.CALLS if c["id"] == "hooked" and c["type"] == "task.succeeded"]
    assert len(flaky_calls) == 2  # `record` once at the time, `flaky` once on the replay
    await page.locator(f'#dead tr[data-delivery="{delivery_id}"]').wait_for(state="detached")
    assert browser.errors == []


async def test_enable_on_the_page_enables_a_disabled_webhook_url(make_live: MakeLive, browser: Browser) -> None:
    live, page = await make_live(), browser.page
    gone = "https://gone.example.com/hook"
    await live.store.disable_url(gone, system_clock())  # as a worker does when the URL answers 410
    await page.goto(live.url + "/")
    await page.locator(f'#disabled tr[data-url="{gone}"] button.enable').click()
    await page.locator(f'#disabled tr[data-url="{gone}"]').wait_for(state="detached")
    assert not await live.store.is_disabled(gone)
    assert browser.errors == []


async def test_with_a_token_the_page_shows_only_the_prompt_until_it_is_given(
    make_live: MakeLive, browser: Browser
) -> None:
    live, page = await make_live(http_token=TOKEN), browser.page
    live.sim.add_task("suno", "secret-task", script="succeed", run_s=600)
    await live.post("secret-task")
    await page.goto(live.url + "/")
    await page.locator("#login").wait_for()
    assert await page.locator("#app").is_hidden()
    assert "secret-task" not in await page.content()
    # the page asked for nothing but its own files before it had the token
    assert all(u.startswith(live.url + "/static/") or u == live.url + "/" for u in browser.requests)
    await page.locator("#token-input").fill(TOKEN)
    await page.locator("#login button").click()
    await row(page, "secret-task").wait_for()
    await page.locator("#live.live").wait_for()  # /events took the token too
    assert await page.locator("#login").is_hidden()
    assert await page.evaluate("sessionStorage.getItem('acetrack-token')") == TOKEN
    assert browser.errors == []


async def test_docs_page_lists_every_operation_from_the_package(make_live: MakeLive, browser: Browser) -> None:
    live, page = await make_live(), browser.page
    await page.goto(live.url + "/docs")
    await page.locator("#docs h2", has_text="GET /events").wait_for()
    assert await page.locator("#docs section.op").count() >= 18
    assert all(u.startswith(live.url) for u in browser.requests)  # nothing from a CDN
    assert browser.errors == []
