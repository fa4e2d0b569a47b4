"""The ``acetrack`` CLI as a user runs it (subprocesses against a real redis-server), and the Python API's input rules.

Exit codes (DESIGN.md §5): 0 success, 1 a lookup found a problem (task not found), 2 bad usage or input,
with one line on stderr.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import pytest
from clitools import (
    GREEN,
    RED,
    REPO,
    YELLOW,
    Cli,
    cli_fixture,  # noqa: F401  # the fixture "cli"
    finish,
    on_terminal,
    one_line,
    piped,
    store_at,
)
from servers import free_port
from support import RECORD_FIELDS, Backend

import worker
from worker.commands import detail_lines
from worker.errors import InvalidInput
from worker.models import Clip, ClipState, Record, TaskState
from worker.store import Keys
from worker.tracker import Tracker


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


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--callback-loss", "2"], "--callback-loss: '2' is not a share from 0 to 1"),
        (["--error-rate", "-0.1"], "--error-rate: '-0.1' is not a share"),
        (["--callback-url", "ftp://x"], "--callback-url: 'ftp://x' is not an http(s) URL"),
        (["--callback-delay-s", "2,1"], "--callback-delay-s: '2,1' is not LOW or LOW,HIGH seconds"),
    ],
)
def test_a_bad_simulator_option_exits_2_naming_it(cli: Cli, args: list[str], named: str) -> None:
    result = cli.run("sim", "--port", "0", *args)
    assert result.returncode == 2 and named in result.stderr, result.stderr


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


def test_enqueue_piped_into_head_stores_every_id(cli: Cli) -> None:
    ids = " ".join(f"many-{n}" for n in range(3000))
    result = piped(cli, f"enqueue suno {ids} | head -1")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout == "suno/many-0 pending\n"
    keys = [Keys().task_key("suno", f"many-{n}") for n in (0, 1, 1500, 2999)]
    assert all(cli.db.exists(key) for key in keys)


def _watching(cli: Cli, *args: str) -> subprocess.Popen[str]:
    """``acetrack watch suno ARGS`` polling every 0.1 s, its stdout a pipe read by the test."""
    command = [sys.executable, "-m", "worker", "watch", "suno", *args, "--interval-s", "0.1"]
    return subprocess.Popen(command, env=cli.env, cwd=REPO, stdout=subprocess.PIPE, text=True)


async def test_watch_json_prints_a_line_per_change_then_totals(cli: Cli, real_redis_url: str) -> None:
    assert cli.run("enqueue", "suno", "live-1").returncode == 0
    with _watching(cli, "live-1", "--json") as proc:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert (first["id"], first["state"]) == ("live-1", "pending") and set(first) == RECORD_FIELDS
        await finish(real_redis_url, "live-1", succeed=True)
        rest = [json.loads(line) for line in proc.stdout]
        assert proc.wait(timeout=10) == 0
        assert [r.get("state") for r in rest] == ["succeeded", None]
    assert rest[-1] == {"totals": {"succeeded": 1, "failed": 0, "pending": 0, "unknown": 0}}


async def test_watch_piped_prints_each_change_as_it_comes(cli: Cli, real_redis_url: str) -> None:
    assert cli.run("enqueue", "suno", "piped-1", "piped-2").returncode == 0
    with _watching(cli, "piped-1", "piped-2") as proc:
        assert proc.stdout is not None
        assert [proc.stdout.readline() for _ in range(2)] == ["suno/piped-1  pending\n", "suno/piped-2  pending\n"]
        await finish(real_redis_url, "piped-1", succeed=True)
        # read while piped-2 is still pending: the line is not held back until the end
        assert proc.stdout.readline().startswith("suno/piped-1  succeeded")
        await finish(real_redis_url, "piped-2", succeed=False)
        rest = proc.stdout.read().splitlines()
        assert proc.wait(timeout=10) == 1
    assert rest[0].startswith("suno/piped-2  failed")
    assert rest[-1] == "totals: 1 succeeded, 1 failed, 0 pending, 0 unknown"


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


@pytest.mark.parametrize(
    ("command", "env", "names"),
    [
        (["sim", "--port", "{port}"], {}, "acetrack sim --port"),
        (["serve"], {"ACETRACK_HTTP_PORT": "{port}"}, "ACETRACK_HTTP_PORT"),
        (
            ["worker"],
            {"ACETRACK_WORKER_METRICS_PORT": "{port}", "ACETRACK_API_TOKEN": "t"},
            "ACETRACK_WORKER_METRICS_PORT (0: none)",
        ),
    ],
)
def test_a_port_already_taken_names_what_to_change(
    cli: Cli, command: list[str], env: dict[str, str], names: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = [a.format(port=port) for a in command]
        hosts = {"ACETRACK_HTTP_HOST": "127.0.0.1", "ACETRACK_WORKER_METRICS_HOST": "127.0.0.1"}
        extra = {k: v.format(port=port) for k, v in env.items()} | hosts
        result = cli.run(*args, env=cli.env | extra)
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and names in result.stderr
    assert "(Address already in use)" in result.stderr and "Traceback" not in result.stderr


def test_serve_on_an_address_not_this_machines_names_the_host_setting(cli: Cli) -> None:
    env = {"ACETRACK_HTTP_HOST": "192.0.2.1", "ACETRACK_HTTP_PORT": "8080"}  # TEST-NET-1: no machine's
    result = cli.run("serve", env=cli.env | env)
    assert result.returncode == 2, result.stderr
    assert "cannot listen on 192.0.2.1:8080 (Cannot assign requested address)" in result.stderr
    assert "set ACETRACK_HTTP_HOST" in result.stderr and "Traceback" not in result.stderr


def test_serve_names_a_misspelt_setting(cli: Cli) -> None:
    with socket.socket() as taken:  # serve then stops at once, after its start-up checks
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {"ACETRACK_HTTP_HOST": "127.0.0.1", "ACETRACK_HTTP_PORT": str(taken.getsockname()[1])}
        result = cli.run("serve", env=cli.env | env | {"ACETRACK_HTTP_TOKNE": "s3cret"})
    assert "ACETRACK_HTTP_TOKNE is not a setting and is ignored: did you mean ACETRACK_HTTP_TOKEN?" in result.stderr


def test_tls_against_a_redis_without_it_says_so(cli: Cli) -> None:
    plain = urlsplit(cli.env["ACETRACK_REDIS_URL"])
    # the URL's own connect timeout keeps this test short (else the TLS handshake waits 60 s)
    url = f"rediss://{plain.netloc}/0?socket_connect_timeout=0.5"
    result = cli.run("enqueue", "suno", "tls-1", env=cli.env | {"ACETRACK_REDIS_URL": url})
    assert result.returncode == 1, result.stderr
    assert "cannot reach Redis at rediss://" in result.stderr
    assert "if this Redis does not use TLS, write redis:// instead of rediss://" in result.stderr
    assert cli.db.dbsize() == 0


def test_status_says_a_partial_success_is_partial() -> None:
    good = Clip("c1", "Intro", ClipState.SUCCEEDED, audio_url="https://cdn.example/c1.mp3")
    bad = Clip("c2", "Intro", ClipState.FAILED, error="clip generation failed")
    record = Record("suno", "half", TaskState.SUCCEEDED, progress=100, partial=True, clips=[good, bad])
    assert detail_lines(record) == [
        "suno/half: succeeded (partial), 100%",
        '  clip c1 "Intro": succeeded https://cdn.example/c1.mp3',
        '  clip c2 "Intro": failed (clip generation failed)',
    ]
    whole = Record("suno", "whole", TaskState.SUCCEEDED, progress=100, clips=[good])
    assert detail_lines(whole)[0] == "suno/whole: succeeded, 100%"


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
    assert (
        line.startswith(f"acetrack: token {token or 'default'!r} is not configured") and "ACETRACK_API_TOKENS" in line
    )
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


def test_list_search_finds_ids_and_meta_and_pages_with_the_cursor(cli: Cli) -> None:
    assert cli.run("enqueue", "suno", "Song-1", "other-2").returncode == 0
    assert cli.run("enqueue", "suno", "other-3", "--meta", '{"title": "A SONG"}').returncode == 0
    assert cli.run("enqueue", "suno", "song-4", "other-5").returncode == 0
    first = cli.run("list", "--search", "song", "--limit", "2")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["suno/Song-1", "suno/other-3"]
    assert lines[2].startswith("next cursor: ")
    rest = cli.run("list", "--search", "song", "--cursor", lines[2].removeprefix("next cursor: "))
    assert [line.split(":")[0] for line in rest.stdout.splitlines()] == ["suno/song-4"]
    bad = cli.run("list", "--search", "")
    assert bad.returncode == 2 and "--search" in bad.stderr.splitlines()[-1]  # argparse's usage, then the error


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


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["enqueue", "suno", "j-2", "--json"], 0),
        (["status", "suno", "ok-1", "--json"], 0),
        (["list", "--json"], 0),
        (["cancel", "suno", "j-1", "--json"], 0),
        (["reopen", "suno", "ok-1", "--json"], 0),
        (["stats", "--json"], 0),
        (["check", "--json"], 1),  # no worker beats here
        (["watch", "suno", "ok-1", "--json"], 0),
        (["tokens", "--json"], 0),
        (["tokens", "list", "--json"], 0),
        (["hooks", "list", "--json"], 0),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
async def test_json_wherever_the_readme_documents_it(cli: Cli, real_redis_url: str, args: list[str], code: int) -> None:
    await finish(real_redis_url, "ok-1", succeed=True)
    assert cli.run("enqueue", "suno", "j-0", "j-1").returncode == 0
    env = cli.with_env(ACETRACK_API_TOKEN="t", ACETRACK_HOOKS="tests.probe_hooks:record")
    assert cli.run("cancel", "suno", "j-0", env=env).returncode == 0  # a hook delivery for 'hooks list'
    result = cli.run(*args, env=env)
    assert result.returncode == code, (result.stdout, result.stderr)
    text = result.stdout.strip()
    # one JSON document (status, stats: indented) or JSON lines
    documents = [json.loads(text)] if text.startswith("{\n") else [json.loads(line) for line in text.splitlines()]
    assert documents and all(isinstance(d, dict) for d in documents), result.stdout


def test_demo_piped_into_head_exits_0_quietly(cli: Cli) -> None:
    result = piped(cli, "demo | head -5")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 5 and lines[0].startswith("acetrack demo: 36 tasks"), lines


def test_demo_counts_each_task_once(cli: Cli) -> None:
    result = cli.run("demo", timeout_s=180)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(n for n, line in enumerate(lines) if "succeeded" in line and "partial" in line)
    assert [w for w in lines[header].split() if w.isalpha()][:4] == ["succeeded", "partial", "failed", "pending"]
    row = [int(w) for w in lines[header + 2].split() if w.isdigit()]
    succeeded, partial, failed, pending = row[:4]
    assert succeeded + partial + failed + pending == 36, row
    assert (succeeded, partial, failed, pending) == (28, 4, 4, 0), row  # demo.DEMO_MIX: 2 errors, 2 unknown ids


def test_hooks_list_says_when_there_is_nothing(cli: Cli) -> None:
    every = cli.run("hooks", "list")
    assert (every.returncode, every.stdout, every.stderr) == (0, "no deliveries\n", "")
    dead = cli.run("hooks", "list", "--dead")
    assert (dead.returncode, dead.stdout) == (0, "no dead-lettered deliveries\n")
    as_json = cli.run("hooks", "list", "--json")
    assert (as_json.returncode, as_json.stdout) == (0, "")  # JSON lines: none


@pytest.mark.parametrize(
    ("query", "said"),
    [
        (
            "rediss://127.0.0.1:6379/0?ssl_ca_cert=/etc/ca.pem",
            "no URL option 'ssl_ca_cert'; did you mean 'ssl_ca_certs'?",
        ),
        (
            "redis://127.0.0.1:6379/0?ssl_ca_certs=/etc/ca.pem",
            "'ssl_ca_certs' applies to TLS only: use a rediss:// URL",
        ),
        ("redis://127.0.0.1:6379/0?colour=red", "no URL option 'colour'; known options: db, "),
    ],
    ids=["typo", "tls-option-without-tls", "unknown"],
)
def test_a_redis_url_option_redis_py_cannot_use_is_named(cli: Cli, query: str, said: str) -> None:
    result = cli.run("status", "suno", "x", env=cli.with_env(ACETRACK_REDIS_URL=query))
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("acetrack: ACETRACK_REDIS_URL ") and said in line, line
    assert "__init__" not in line and "keyword argument" not in line


@pytest.mark.parametrize(
    "command", [["status", "suno", "x"], ["enqueue", "suno", "x"], ["list"], ["watch", "suno", "x"]]
)
def test_redis_down_is_one_line_naming_the_url_and_what_to_do_exit_1(cli: Cli, command: list[str]) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://user:s3cr3t@127.0.0.1:{port}/3"
    result = cli.run(*command, env=cli.with_env(ACETRACK_REDIS_URL=url))
    assert result.returncode == 1, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"acetrack: cannot reach Redis at redis://127.0.0.1:{port}/3 ("), line
    assert line.endswith("start it, or set ACETRACK_REDIS_URL to a Redis that runs") and "s3cr3t" not in line
    assert result.stdout == ""


def test_a_validator_message_has_no_pydantic_prefix(cli: Cli) -> None:
    result = cli.run("status", "suno", "x", env=cli.with_env(ACETRACK_REDIS_URL="http://localhost:6379"))
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith("acetrack: bad setting ACETRACK_REDIS_URL: redis url 'http://localhost:6379' must start")
    assert "Value error" not in line
