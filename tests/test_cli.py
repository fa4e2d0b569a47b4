"""The ``acetrack`` CLI as a user runs it (subprocesses against a real redis-server), and the Python API's input rules.

Exit codes (DESIGN.md §5): 0 success, 1 a lookup found a problem (task not found), 2 bad usage or input,
with one line on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from conftest import RECORD_FIELDS, Backend, require_real_redis
from worker.errors import InvalidInput
from worker.tracker import Tracker

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Cli:
    """Runs ``python -m worker ...`` with a clean ``ACETRACK_*`` environment pointing at the test Redis."""

    env: dict[str, str]
    db: redis.Redis

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args],
            env=self.env if env is None else env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
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


@pytest.fixture
def cli(real_redis_url: str | None, request: pytest.FixtureRequest) -> Iterator[Cli]:
    url = require_real_redis(real_redis_url, request)
    db = redis.Redis.from_url(url, decode_responses=True)
    db.flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACETRACK_")}
    env["ACETRACK_REDIS_URL"] = url
    yield Cli(env, db)
    db.flushdb()
    db.close()


def test_enqueue_prints_one_line_per_id_and_status_shows_the_full_record(cli: Cli) -> None:
    result = cli.run("enqueue", "suno", "good-1", "good-2", "--meta", '{"a":1}')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    assert "good-1" in lines[0] and "good-2" in lines[1]

    status = cli.run("status", "suno", "good-1", "--json")
    assert status.returncode == 0, status.stderr
    record = json.loads(status.stdout)
    assert set(record) == RECORD_FIELDS
    assert record["service"] == "suno" and record["id"] == "good-1"
    assert record["state"] == "pending" and record["meta"] == {"a": 1}
    assert record["response"] is None and record["reason"] is None and record["token"] == "default"

    plain = cli.run("status", "suno", "good-2")
    assert plain.returncode == 0 and "pending" in plain.stdout


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["enqueue", "suno", "bad id!"], "id"),
        (["enqueue", "Suno", "ok-1"], "service"),
        (["enqueue", "suno", "ok-1", "--meta", "not json"], "meta"),
        (["enqueue", "suno", "ok-1", "--meta", "[1]"], "meta"),
        (["enqueue", "suno", "ok-1", "--deadline-s", "0"], "deadline_s"),
    ],
    ids=["bad-id", "bad-service", "meta-not-json", "meta-not-object", "deadline-zero"],
)
def test_bad_input_exits_2_with_one_line_and_stores_nothing(cli: Cli, args: list[str], names: str) -> None:
    result = cli.run(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert names in one_line(result.stderr)
    assert result.stdout == ""
    cli.assert_not_tracked("ok-1")


def test_one_bad_id_among_several_stores_none_of_them(cli: Cli) -> None:
    result = cli.run("enqueue", "suno", "ok-a", "bad!", "ok-b")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "'bad!'" in one_line(result.stderr)
    cli.assert_not_tracked("ok-a", "ok-b")


def test_status_of_an_unknown_task_exits_1(cli: Cli) -> None:
    result = cli.run("status", "suno", "unknown-id")
    assert result.returncode == 1
    assert "unknown-id" in one_line(result.stderr)
    assert result.stdout == ""


@pytest.mark.parametrize("command", [["status", "suno", "x"], ["enqueue", "suno", "x"]])
def test_missing_redis_url_exits_2_naming_it(cli: Cli, command: list[str]) -> None:
    result = cli.run(*command, env=cli.with_env(ACETRACK_REDIS_URL=None))
    assert result.returncode == 2, result.stderr
    assert "ACETRACK_REDIS_URL" in one_line(result.stderr)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ACETRACK_BATCH_SIZE", "0"),
        ("ACETRACK_LOG_LEVEL", "LOUD"),
        ("ACETRACK_REDIS_URL", "http://localhost:6379"),
        ("ACETRACK_POLL_S", "100"),
    ],
)
def test_a_bad_setting_exits_2_naming_the_variable(cli: Cli, name: str, value: str) -> None:
    result = cli.run("enqueue", "suno", "ok-1", env=cli.with_env(**{name: value}))
    assert result.returncode == 2, result.stderr
    assert name in one_line(result.stderr)
    assert result.stdout == ""
    assert cli.db.dbsize() == 0


def test_help_lists_the_commands(cli: Cli) -> None:
    result = cli.run("--help")
    assert result.returncode == 0
    for command in ("worker", "demo", "sim", "enqueue", "status"):
        assert command in result.stdout


BAD_CALLS: list[tuple[dict[str, Any], str]] = [
    ({"service": "suno", "task_id": "bad id!"}, "id"),
    ({"service": "Suno", "task_id": "ok-1"}, "service"),
    ({"service": "suno", "task_id": "ok-1", "meta": [1]}, "meta"),
    ({"service": "suno", "task_id": "ok-1", "meta": {"k": "v" * 5000}}, "meta"),
    ({"service": "suno", "task_id": "ok-1", "meta": {"x": float("nan")}}, "meta"),
    ({"service": "suno", "task_id": "ok-1", "deadline_s": 0}, "deadline_s"),
    ({"service": "suno", "task_id": "ok-1", "callback_url": "ftp://example.com/x"}, "callback_url"),
]


@pytest.mark.parametrize(("kwargs", "field"), BAD_CALLS, ids=[f for _, f in BAD_CALLS])
async def test_python_api_bad_input_raises_invalid_input_and_stores_nothing(
    backend: Backend, kwargs: dict[str, Any], field: str
) -> None:
    tracker = Tracker.over(backend.redis)
    with pytest.raises(InvalidInput) as info:
        await tracker.enqueue(**kwargs)
    assert info.value.field == field
    assert field in str(info.value)
    assert await tracker.get("suno", kwargs["task_id"]) is None
    assert await backend.redis.dbsize() == 0


async def test_python_api_unknown_field_is_refused_and_stores_nothing(backend: Backend) -> None:
    tracker = Tracker.over(backend.redis)
    # enqueue has a fixed keyword signature, so Python itself refuses an unknown field (TypeError, not
    # InvalidInput); the intake rule behind it names the field when it gets one (the stream's path)
    with pytest.raises(TypeError, match="colour"):
        await tracker.enqueue("suno", "ok-1", colour="red")  # type: ignore[call-arg]
    assert await tracker.get("suno", "ok-1") is None
    assert await backend.redis.dbsize() == 0
