"""The ``acetrack`` CLI as a user runs it (subprocesses against a real redis-server), and the Python API's input rules.

Exit codes (DESIGN.md §5): 0 success, 1 a lookup found a problem (task not found), 2 bad usage or input,
with one line on stderr.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

import worker
from conftest import RECORD_FIELDS, Backend, require_real_redis
from worker import deliver, webhooks
from worker.classify import fail
from worker.clock import system_clock
from worker.connect import create_redis
from worker.errors import InvalidInput
from worker.hooks import Outcome
from worker.intake import EnqueueRequest
from worker.models import Clip, ClipState, Reason, TaskState
from worker.store import Store
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


# -- a CLI that tells the truth (issue 21) -------------------------------------------------------

PAUSED_KEY = "acetrack:paused:{}"
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
        _, record = await store.register(EnqueueRequest("suno", task_id), now_ms, deadline_s=600, first_poll_s=3)
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


def test_version(cli: Cli) -> None:
    result = cli.run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"acetrack {worker.__version__}"


def test_list_piped_into_head_exits_0_quietly(cli: Cli) -> None:
    assert cli.run("enqueue", "suno", *(f"id-{n}" for n in range(3000))).returncode == 0
    # about 100 KB of lines: more than a pipe holds, so the writer meets the closed pipe
    result = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {sys.executable} -m worker list --limit 3000 | head -1"],
        env=cli.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("suno/id-0: pending") and result.stdout.count("\n") == 1


async def test_watch_json_prints_a_line_per_change_then_totals(cli: Cli, real_redis_url: str) -> None:
    assert cli.run("enqueue", "suno", "live-1").returncode == 0
    with subprocess.Popen(
        [sys.executable, "-m", "worker", "watch", "suno", "live-1", "--json", "--interval-s", "0.1"],
        env=cli.env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert (first["id"], first["state"]) == ("live-1", "pending") and set(first) == RECORD_FIELDS
        await finish(real_redis_url, "live-1", succeed=True)
        rest = [json.loads(line) for line in proc.stdout]
        assert proc.wait(timeout=10) == 0
        assert [r.get("state") for r in rest] == ["succeeded", None]
    assert rest[-1] == {"totals": {"succeeded": 1, "failed": 0, "pending": 0, "unknown": 0}}


async def test_watch_json_failed_and_unknown_exit_1(cli: Cli, real_redis_url: str) -> None:
    await finish(real_redis_url, "ok-1", succeed=True)
    await finish(real_redis_url, "bad-1", succeed=False)
    result = cli.run("watch", "suno", "ok-1", "bad-1", "never-enqueued", "--json")
    assert result.returncode == 1, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r.get("id"), r.get("state")) for r in lines[:3]] == [
        ("ok-1", "succeeded"),
        ("bad-1", "failed"),
        ("never-enqueued", "unknown"),
    ]
    assert lines[3] == {"totals": {"succeeded": 1, "failed": 1, "pending": 0, "unknown": 1}}


@pytest.mark.parametrize(
    ("ids", "code"),
    [(["ok-1"], 0), (["ok-1", "bad-1"], 1), (["ok-1", "never-enqueued"], 1)],
    ids=["all-succeeded", "one-failed", "one-unknown"],
)
async def test_watch_exit_code_says_whether_every_task_succeeded(
    cli: Cli, real_redis_url: str, ids: list[str], code: int
) -> None:
    await finish(real_redis_url, "ok-1", succeed=True)
    await finish(real_redis_url, "bad-1", succeed=False)
    result = cli.run("watch", "suno", *ids)
    assert result.returncode == code, (result.stdout, result.stderr)
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("suno/")}
    assert "succeeded" in rows["suno/ok-1"]
    if "never-enqueued" in ids:
        assert "unknown" in rows["suno/never-enqueued"] and "pending" not in rows["suno/never-enqueued"]
    failed = int("bad-1" in ids)
    unknown = int("never-enqueued" in ids)
    assert result.stdout.splitlines()[-1] == f"totals: 1 succeeded, {failed} failed, 0 pending, {unknown} unknown"


async def test_watch_on_a_terminal_paints_a_failed_bar_red_and_counts_rows_it_cannot_show(
    cli: Cli, real_redis_url: str
) -> None:
    await finish(real_redis_url, "ok-1", succeed=True)
    await finish(real_redis_url, "bad-1", succeed=False)
    code, out = on_terminal(cli, "watch", "suno", "ok-1", "bad-1")
    assert code == 1
    failed_row = next(line for line in out.splitlines() if "suno/bad-1" in line)
    assert RED in failed_row and GREEN not in failed_row
    assert GREEN in next(line for line in out.splitlines() if "suno/ok-1" in line)

    ids = [f"gone-{n:02d}" for n in range(20)]  # never enqueued: unknown, so watch ends at once
    code, out = on_terminal(cli, "watch", "suno", *ids, lines=8)
    assert code == 1
    assert "totals: 0 succeeded, 0 failed, 0 pending, 20 unknown (14 more not shown)" in out
    assert "gone-05" in out and "gone-19" not in out


async def test_status_shows_audio_urls_and_the_error(cli: Cli, real_redis_url: str) -> None:
    await finish(real_redis_url, "ok-1", succeed=True)
    await finish(real_redis_url, "bad-1", succeed=False)
    ok = cli.run("status", "suno", "ok-1")
    assert ok.returncode == 0
    assert ok.stdout.splitlines() == [
        "suno/ok-1: succeeded, 100%",
        '  clip c1 "Intro": succeeded https://cdn.example/ok-1.mp3',
    ]
    bad = cli.run("status", "suno", "bad-1")
    assert bad.returncode == 0
    assert bad.stdout.splitlines() == [
        "suno/bad-1: failed (upstream_error)",
        "  error: content_policy: lyrics refused",
        "  no clips",
    ]
    assert json.loads(cli.run("status", "suno", "bad-1", "--json").stdout)["error"]["code"] == "content_policy"


def test_enqueue_says_when_an_id_is_already_tracked(cli: Cli) -> None:
    assert cli.run("enqueue", "suno", "dup-1").stdout == "suno/dup-1 pending\n"
    again = cli.run("enqueue", "suno", "dup-1", "new-1")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["suno/dup-1 already tracked (pending)", "suno/new-1 pending"]


@pytest.mark.parametrize(
    ("settings", "token", "named"),
    [
        ({"ACETRACK_API_TOKENS": '{"team-a": "s3cr3t-a", "team-b": "s3cr3t-b"}'}, "nosuch", "team-a, team-b"),
        ({"ACETRACK_API_TOKEN": "s3cr3t-d"}, "nosuch", "default"),
        ({"ACETRACK_API_TOKENS": '{"team-a": "s3cr3t-a"}'}, None, "team-a"),  # no --token: 'default'
    ],
    ids=["named-tokens", "default-token", "implicit-default"],
)
def test_enqueue_of_an_unconfigured_token_exits_2_naming_the_configured_ones(
    cli: Cli, settings: dict[str, str], token: str | None, named: str
) -> None:
    args = ["enqueue", "suno", "tok-1"] + (["--token", token] if token else [])
    result = cli.run(*args, env=cli.with_env(**settings))
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = one_line(result.stderr)
    assert f"configured tokens: {named}" in line and "s3cr3t" not in line
    cli.assert_not_tracked("tok-1")


def test_enqueue_with_no_token_configured_accepts_any_name(cli: Cli) -> None:
    result = cli.run("enqueue", "suno", "tok-1", "--token", "elsewhere")
    assert (result.returncode, result.stderr) == (0, "")
    ok = cli.run(
        "enqueue", "suno", "tok-2", "--token", "team-a", env=cli.with_env(ACETRACK_API_TOKENS='{"team-a": "x"}')
    )
    assert (ok.returncode, ok.stdout) == (0, "suno/tok-2 pending\n")


async def test_stats_without_pending_tasks_prints_a_dash(cli: Cli, real_redis_url: str) -> None:
    await finish(real_redis_url, "ok-1", succeed=True)
    result = cli.run("stats")
    assert result.returncode == 0
    assert "None" not in result.stdout
    assert result.stdout.splitlines()[0].endswith("oldest pending -")


def test_list_pages_with_the_cursor_it_prints(cli: Cli) -> None:
    ids = [f"page-{n}" for n in range(5)]
    for task_id in ids:  # one by one: each its own enqueue time
        assert cli.run("enqueue", "suno", task_id).returncode == 0
    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(3):
        result = cli.run("list", "--limit", "2", *cursor)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        rows = [line for line in lines if line.startswith("suno/")]
        seen += [row.split(":")[0].removeprefix("suno/") for row in rows]
        nexts = [line.removeprefix("next cursor: ") for line in lines if line.startswith("next cursor: ")]
        cursor = ["--cursor", nexts[0]] if nexts else []
    assert seen == ids and cursor == []
    as_json = cli.run("list", "--limit", "2", "--json")
    assert len(as_json.stdout.splitlines()) == 2 and as_json.stderr.startswith("next cursor: ")
    bad = cli.run("list", "--cursor", "not-a-cursor")
    assert bad.returncode == 2 and "cursor" in one_line(bad.stderr)


async def test_hooks_list_limit(cli: Cli, real_redis_url: str) -> None:
    async with store_at(real_redis_url) as store:
        for n in range(3):
            body = {"delivery_id": f"dlv-{n}", "event_id": f"evt-{n}", "destination": "python:x:y"}
            await store.save_delivery(f"dlv-{n}", {**body, "status": "dead", "created_at_ms": n, "attempts": []})
            await store.dead_letter(f"dlv-{n}", n)
    result = cli.run("hooks", "list", "--limit", "2")
    assert result.returncode == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["dlv-0", "dlv-1"]
    assert "no try yet" in result.stdout and "2 oldest of 3" in one_line(result.stderr)
    dead = cli.run("hooks", "list", "--dead", "--limit", "1", "--json")
    assert [json.loads(line)["delivery_id"] for line in dead.stdout.splitlines()] == ["dlv-0"]
    assert len(cli.run("hooks", "list").stdout.splitlines()) == 3


async def test_colours_by_state_on_a_terminal_only(cli: Cli, real_redis_url: str) -> None:
    await finish(real_redis_url, "ok-1", succeed=True)
    await finish(real_redis_url, "bad-1", succeed=False)
    assert cli.run("enqueue", "suno", "wait-1").returncode == 0
    code, out = on_terminal(cli, "list")
    assert code == 0
    for task_id, colour in (("ok-1", GREEN), ("bad-1", RED), ("wait-1", YELLOW)):
        assert colour in next(line for line in out.splitlines() if f"suno/{task_id}:" in line)
    code, out = on_terminal(cli, "status", "suno", "bad-1")
    assert code == 0 and RED in out
    piped = cli.run("list")
    assert piped.returncode == 0 and "\x1b[" not in piped.stdout and len(piped.stdout.splitlines()) == 3


TOKENS_ENV = {"ACETRACK_API_TOKENS": '{"team-a": "s3cr3t-a", "team-b": "s3cr3t-b"}'}


def test_tokens_lists_names_and_pauses_never_secrets(cli: Cli) -> None:
    env = cli.with_env(**TOKENS_ENV)
    result = cli.run("tokens", env=env)
    assert result.returncode == 0
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["team-a", "configured", "active"],
        ["team-b", "configured", "active"],
    ]
    cli.db.set(PAUSED_KEY.format("team-b"), "401 invalid token", px=300_000)
    result = cli.run("tokens", env=env)
    assert "s3cr3t" not in result.stdout
    paused = result.stdout.splitlines()[1]
    assert paused.startswith("team-b") and "paused until" in paused and "401 invalid token" in paused
    rows = [json.loads(line) for line in cli.run("tokens", "--json", env=env).stdout.splitlines()]
    assert [(r["name"], r["paused"]) for r in rows] == [("team-a", False), ("team-b", True)]
    assert 250_000 < rows[1]["paused_until_ms"] - system_clock() <= 300_000
    # a host with no token configured still sees the pause
    assert cli.run("tokens").stdout.split()[:4] == ["team-b", "not", "configured", "here"]


def test_tokens_resume_lifts_a_pause_and_its_tasks_fall_due_now(cli: Cli) -> None:
    env = cli.with_env(**TOKENS_ENV)
    assert cli.run("enqueue", "suno", "held-1", "--token", "team-a", env=env).returncode == 0
    # as a 401 leaves it: the token paused for 5 minutes, its ids released to the pause's end
    pause_end_ms = system_clock() + 300_000
    cli.db.set(PAUSED_KEY.format("team-a"), "401 invalid token", px=300_000)
    cli.db.zadd("acetrack:due:suno:team-a", {"held-1": pause_end_ms})
    resumed = cli.run("tokens", "resume", "team-a", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "team-a" in resumed.stdout
    assert not cli.db.exists(PAUSED_KEY.format("team-a"))
    assert cli.db.zscore("acetrack:due:suno:team-a", "held-1") <= system_clock()
    again = cli.run("tokens", "resume", "team-a", env=env)
    assert again.returncode == 1 and "not paused" in one_line(again.stderr)


def test_check_and_stats_report_a_pause_no_heartbeat_mentions(cli: Cli) -> None:
    beat = {"worker_id": "elsewhere-1", "at_ms": system_clock(), "paused_tokens": []}
    cli.db.set("acetrack:worker:elsewhere-1", json.dumps(beat), px=60_000)
    assert cli.run("check").returncode == 0
    cli.db.set(PAUSED_KEY.format("team-a"), "401 invalid token", px=300_000)
    check = cli.run("check")
    assert check.returncode == 1
    assert check.stdout.startswith("unhealthy: token 'team-a' paused")
    assert "paused tokens: team-a" in cli.run("stats").stdout
    assert cli.run("tokens", "resume", "team-a").returncode == 0
    assert cli.run("check").stdout.strip() == "healthy"


async def test_a_worker_without_the_webhook_secret_hands_the_delivery_back(cli: Cli, real_redis_url: str) -> None:
    now_ms = system_clock()
    body: dict[str, Any] = {
        "delivery_id": "dlv-1",
        "event_id": "evt-1",
        "destination": "webhook:https://hooks.example/acetrack",
        "status": "pending",
        "created_at_ms": now_ms,
        "attempts": [],
        "event": {"type": "task.succeeded", "record": {}},
    }
    config = webhooks.WebhookConfig(secret=None, schedule_s=(0.0, 5.0))
    async with store_at(real_redis_url) as store, aiohttp.ClientSession() as session:
        await store.save_delivery("dlv-1", body)
        outcome = await webhooks.attempt(session, config, body, now_ms)
        assert outcome == Outcome("retry", webhooks.NO_SECRET_RETRY_S)
        await deliver._record(store, body, outcome, now_ms)  # as a deliver job records it
        assert await store.outbox_score("dlv-1") == now_ms + int(webhooks.NO_SECRET_RETRY_S * 1000)
    listed = json.loads(cli.run("hooks", "list", "--json").stdout)
    assert (listed["status"], listed["tries"], listed["attempts"]) == ("pending", None, [])
    assert cli.run("hooks", "list", "--dead").stdout == ""
