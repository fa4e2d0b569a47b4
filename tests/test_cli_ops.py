"""The CLI with workers at work: tokens and their pauses, webhook deliveries, a user's module shadowing acetrack's."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from clitools import (
    PAUSED_KEY,
    WHSEC,
    Cli,
    MakeSim,
    cli_fixture,  # noqa: F401  # the fixture "cli"
    has_key,
    one_line,
    returns,
    succeeded,
)
from receivers import serve
from support import Backend, eventually, fast_settings

from worker import jobs
from worker.clock import system_clock
from worker.tracker import Tracker

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


async def test_enqueue_on_a_host_without_tokens_checks_the_running_workers_tokens(
    cli: Cli, real_backend: Backend, make_sim: MakeSim
) -> None:
    sim_url, _ = await make_sim(auto=False)
    settings = fast_settings(sim_url, api_tokens={"team-a": "s3cr3t-a"})  # and 'default' (api_token)
    kwargs = jobs.worker_settings(settings, redis_pool=real_backend.make_arq_pool(), store_redis=real_backend.redis)
    async with jobs.running_worker(kwargs):
        assert await eventually(lambda: has_key(real_backend, "acetrack:worker:*"), 10)
        refused = cli.run("enqueue", "suno", "tok-1", "--token", "nosuch")
        accepted = cli.run("enqueue", "suno", "tok-2", "--token", "team-a")
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    line = one_line(refused.stderr)
    assert "ACETRACK_API_TOKENS" in line and line.endswith("configured tokens (the running workers'): default, team-a")
    assert "s3cr3t" not in line
    assert (accepted.returncode, accepted.stdout) == (0, "suno/tok-2 pending\n"), accepted.stderr


async def test_a_401_pause_outlives_its_worker_check_and_stats_show_it_and_tokens_resume_lifts_it(
    cli: Cli, real_backend: Backend, make_sim: MakeSim
) -> None:
    sim_url, state = await make_sim(auto=False, tokens=frozenset({"the-right-one"}))
    state.add_task("suno", "p-1", script="succeed", run_s=0.2, clip_gap_s=0.05)
    settings = fast_settings(sim_url, api_token="a-wrong-one")  # the 'default' token: the sim answers 401
    redis = real_backend.redis

    def a_worker() -> AbstractAsyncContextManager[Any]:
        pool = real_backend.make_arq_pool()
        return jobs.running_worker(jobs.worker_settings(settings, redis_pool=pool, store_redis=redis))

    await Tracker.over(redis, first_poll_s=0.1).enqueue("suno", "p-1")
    async with a_worker():
        assert await eventually(lambda: has_key(real_backend, PAUSED_KEY.format("default")), 20)
    for key in await redis.keys("acetrack:worker:*"):  # a stopped worker's heartbeat is gone (or soon expires)
        await redis.delete(key)
    env = cli.with_env(ACETRACK_API_TOKEN="a-wrong-one")
    async with a_worker():  # a fresh worker: its heartbeat knows of no pause
        assert await eventually(lambda: has_key(real_backend, "acetrack:worker:*"), 20)
        check = cli.run("check", env=env)
        assert check.returncode == 1, check.stdout
        assert check.stdout.startswith("unhealthy: token 'default' paused for ") and "401" in check.stdout
        assert "'acetrack tokens resume' lifts it" in check.stdout
        assert "paused tokens: default" in cli.run("stats", env=env).stdout
        (row,) = cli.run("tokens", env=env).stdout.splitlines()
        assert row.split()[:4] == ["default", "configured", "paused", "until"] and "401" in row
        assert "wrong-one" not in row
        state.config = replace(state.config, tokens=None)  # the token is good again (renewed upstream)
        resumed = cli.run("tokens", "resume", "default", env=env)
        assert (resumed.returncode, resumed.stdout) == (0, "token 'default' resumed: its waiting tasks are due now\n")
        assert await eventually(lambda: succeeded(redis, "p-1"), 20)  # polled at once, not ~300 s later
        assert cli.run("tokens", env=env).stdout.split()[:3] == ["default", "configured", "active"]
        assert (cli.run("check", env=env).returncode, cli.run("status", "suno", "p-1").returncode) == (0, 0)


async def test_a_worker_without_the_webhook_secret_leaves_the_delivery_for_one_that_has_it(
    cli: Cli, real_backend: Backend, make_sim: MakeSim
) -> None:
    sim_url, state = await make_sim(auto=False)
    store = real_backend.store()

    def worker_with(secret: str | None) -> AbstractAsyncContextManager[Any]:
        settings = fast_settings(sim_url, hooks=[], webhook_secret=secret, webhook_allow_hosts=["127.0.0.1"])
        pool = real_backend.make_arq_pool()
        return jobs.running_worker(jobs.worker_settings(settings, redis_pool=pool, store_redis=real_backend.redis))

    async def handed_back() -> bool:
        found = await store.deliveries()
        return bool(found) and (await store.outbox_score(found[0]["delivery_id"]) or 0) > system_clock() + 30_000

    async with serve() as receiver:
        url, hits = receiver.url + "/hook", receiver.hits
        state.add_task("suno", "cb-1", script="succeed", run_s=0.2, clip_gap_s=0.05)
        tracker = Tracker.over(real_backend.redis, first_poll_s=0.1, allow_hosts=["127.0.0.1"])
        await tracker.enqueue("suno", "cb-1", callback_url=url)
        async with worker_with(None):
            assert await eventually(handed_back, 20)
        listed = cli.run("hooks", "list", "--json")
        (body,) = [json.loads(line) for line in listed.stdout.splitlines()]
        assert (body["status"], body["tries"], body["attempts"]) == ("pending", 0, [])  # no try spent
        assert cli.run("hooks", "list", "--dead").stdout == "no dead-lettered deliveries\n" and hits == []
        # a worker with the secret delivers it (replay: now, rather than once the hand-back ends)
        replayed = cli.run("hooks", "replay", body["delivery_id"])
        assert replayed.returncode == 0, replayed.stderr
        async with worker_with(WHSEC):
            assert await eventually(lambda: returns(len(hits) == 1), 20)
    listed = cli.run("hooks", "list", "--json")
    assert json.loads(listed.stdout)["status"] == "delivered"
    assert hits[0].headers["webhook-id"] == body["event_id"]


# -- webhook deliveries as the CLI shows them ----------------------------------------------------------


async def test_a_webhook_host_that_does_not_resolve_is_retried_not_dead_lettered(
    cli: Cli, real_backend: Backend, make_sim: MakeSim
) -> None:
    sim_url, state = await make_sim(auto=False)
    settings = fast_settings(
        sim_url,
        hooks=[],
        webhook_urls=["http://nosuchhost.invalid/hook"],  # .invalid never resolves (RFC 6761)
        webhook_secret=WHSEC,
        webhook_schedule_s=[0, 0.1, 0.1, 600],
    )
    state.add_task("suno", "dns-1", script="succeed", run_s=0.2, clip_gap_s=0.05)
    store = real_backend.store()
    await Tracker.over(real_backend.redis, first_poll_s=0.1).enqueue("suno", "dns-1")
    kwargs = jobs.worker_settings(settings, redis_pool=real_backend.make_arq_pool(), store_redis=real_backend.redis)

    async def tried_three_times() -> bool:
        return any(d.get("tries", 0) >= 3 for d in await store.deliveries())

    async with jobs.running_worker(kwargs):
        assert await eventually(tried_three_times, 20)
    listed = cli.run("hooks", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (body,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (body["status"], body["reason"]) == ("retrying", None)
    errors = [a["error"] for a in body["attempts"]]
    assert len(errors) >= 3 and body["tries"] == len(errors), body
    assert all(e.startswith("webhook URL host 'nosuchhost.invalid' does not resolve (") for e in errors), errors
    assert not any("callback_url" in e for e in errors)
    text = cli.run("hooks", "list")
    assert text.returncode == 0 and "retrying" in text.stdout and "does not resolve" in text.stdout
    assert cli.run("hooks", "list", "--dead").stdout == "no dead-lettered deliveries\n"


# -- a user's module named like one of acetrack's -------------------------------------------------------


def as_a_user(tmp_path: Path, cli: Cli, *args: str, hooks: str | None = None) -> subprocess.CompletedProcess[str]:
    """The installed ``acetrack`` script run from ``tmp_path``, which is also on ``PYTHONPATH``."""
    env = cli.with_env(PYTHONPATH=str(tmp_path), ACETRACK_HOOKS=hooks)
    script = Path(sys.executable).parent / "acetrack"
    return subprocess.run([str(script), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_a_users_config_module_is_named_as_the_clash_at_start(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "config.py").write_text("DEBUG = True\n")
    (tmp_path / "myhooks.py").write_text("import config\n\nasync def on_done(event):\n    pass\n")
    for args in (["status", "suno", "x"], ["worker"]):
        result = as_a_user(tmp_path, cli, *args, hooks="myhooks:on_done")
        assert result.returncode == 2, result.stderr
        line = one_line(result.stderr)
        assert f"your module '{tmp_path / 'config.py'}' shadows acetrack's own package 'config'" in line, line
        assert "rename yours" in line and "PYTHONPATH" in line and "Traceback" not in result.stderr
    # python -m worker from that folder (the current directory comes first on sys.path)
    env = cli.with_env(PYTHONPATH=None)
    module = subprocess.run(
        [sys.executable, "-m", "worker", "list"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert module.returncode == 2 and "shadows acetrack's own package 'config'" in one_line(module.stderr)
    # renamed, the same hooks folder works
    (tmp_path / "config.py").rename(tmp_path / "myapp_config.py")
    (tmp_path / "myhooks.py").write_text("import myapp_config\n\nasync def on_done(event):\n    pass\n")
    assert cli.run("enqueue", "suno", "mine-1").returncode == 0
    result = as_a_user(tmp_path, cli, "status", "suno", "mine-1", hooks="myhooks:on_done")
    assert (result.returncode, result.stdout.splitlines()[0]) == (0, "suno/mine-1: pending"), result.stderr


@pytest.mark.parametrize("hook", ["config:on_done", "config.hooks:on_done"])
def test_a_hook_named_after_acetracks_config_package_is_refused_by_name(cli: Cli, hook: str) -> None:
    result = cli.run("worker", env=cli.with_env(ACETRACK_API_TOKEN="t", ACETRACK_HOOKS=hook))
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"acetrack: ACETRACK_HOOKS: hook {hook!r}: 'config' is the name of acetrack's own package")
    assert "rename your package or module" in line
