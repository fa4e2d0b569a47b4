"""What the CLI tests share: the ``cli`` fixture (``python -m worker`` against a real Redis), and
helpers that write records as a worker would, and run the CLI on a terminal or through a pipe."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from support import Backend, require_real_redis

from worker import sim
from worker.classify import fail
from worker.clock import system_clock
from worker.connect import create_redis
from worker.intake import EnqueueRequest
from worker.models import Clip, ClipState, Reason, TaskState
from worker.store import Store
from worker.tracker import Tracker

REPO = Path(__file__).resolve().parents[1]
MakeSim = Callable[..., Awaitable[tuple[str, sim.SimState]]]


@dataclass
class Cli:
    """Runs ``python -m worker ...`` with a clean ``ACETRACK_*`` environment pointing at the test Redis."""

    env: dict[str, str]
    db: redis.Redis

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout_s: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args],
            env=self.env if env is None else env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def with_env(self, **changes: str | None) -> dict[str, str]:
        env = dict(self.env)
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def assert_not_tracked(self, *ids: str) -> None:
        """``status`` says each id is unknown (exit 1), and the database holds no key at all."""
        for task_id in ids:
            result = self.run("status", "suno", task_id)
            assert result.returncode == 1, (task_id, result.stdout, result.stderr)
        assert self.db.dbsize() == 0, sorted(self.db.keys("*"))


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(name="cli")
def cli_fixture(real_redis_url: str | None, request: pytest.FixtureRequest) -> Iterator[Cli]:
    url = require_real_redis(real_redis_url, request)
    db = redis.Redis.from_url(url, decode_responses=True)
    db.flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACETRACK_")}
    env["ACETRACK_REDIS_URL"] = url
    yield Cli(env, db)
    db.flushdb()
    db.close()


PAUSED_KEY = "acetrack:paused:{}"
WHSEC = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
RED, GREEN, YELLOW = "\x1b[31m", "\x1b[32m", "\x1b[33m"


@asynccontextmanager
async def store_at(url: str) -> AsyncIterator[Store]:
    """The store over the test server, as a worker would write it."""
    store = Store(create_redis(url))
    try:
        yield store
    finally:
        await store.redis.aclose()


async def finish(url: str, task_id: str, *, succeed: bool) -> None:
    """Track ``suno/task_id`` (or take it as tracked) and finish it: succeeded with an audio clip, or
    failed with an error."""
    async with store_at(url) as store:
        now_ms = system_clock()
        _, record = await store.register(
            EnqueueRequest("suno", task_id), now_ms, deadline_s=600, first_due_ms=now_ms + 3000
        )
        if succeed:
            clips = [Clip("c1", "Intro", ClipState.SUCCEEDED, audio_url=f"https://cdn.example/{task_id}.mp3")]
            done = record.evolve(state=TaskState.SUCCEEDED, progress=100, finished_at_ms=now_ms, clips=clips)
        else:
            done = fail(record, Reason.UPSTREAM_ERROR, now_ms, {"code": "content_policy", "message": "lyrics refused"})
        assert await store.finish(done, now_ms, [], sample=None)


def on_terminal(cli: Cli, *args: str, lines: int = 40) -> tuple[int, str]:
    """Run the CLI with stdout on a pseudo-terminal (``lines`` high); its exit code and what it wrote."""
    main_fd, term_fd = pty.openpty()
    env = cli.with_env(TERM="xterm-256color", LINES=str(lines), COLUMNS="120", NO_COLOR=None)
    proc = subprocess.Popen([sys.executable, "-m", "worker", *args], env=env, cwd=REPO, stdout=term_fd)
    os.close(term_fd)
    out = b""
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main_fd)
    return proc.wait(timeout=30), out.decode()


async def has_key(backend: Backend, pattern: str) -> bool:
    return bool(await backend.redis.keys(pattern))


async def returns(value: bool) -> bool:
    return value


def piped(cli: Cli, command: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m worker COMMAND`` through a real pipe (bash, pipefail: the CLI's own exit code counts)."""
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {sys.executable} -m worker {command}"],
        env=cli.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


async def succeeded(redis: Any, task_id: str) -> bool:
    record = await Tracker.over(redis).get("suno", task_id)
    return record is not None and record.state is TaskState.SUCCEEDED
