"""A worker as a stranger starts it: refused at once when it cannot work, waiting for a late Redis,
and run by arq's own CLI (``arq worker.WorkerSettings``), each as a real process."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from receivers import Receiver, serve
from servers import RedisServer, free_port, server_kind
from support import eventually, require_real_redis

from worker import sim
from worker.embedded import embedded_server
from worker.models import TaskState
from worker.tracker import Tracker

ROOT = Path(__file__).resolve().parents[1]
MakeSim = Callable[..., Awaitable[tuple[str, sim.SimState]]]
SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def _env(**values: str) -> dict[str, str]:
    """The process's environment with no ACETRACK_* of the caller's, and ``values`` (as ACETRACK_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACETRACK_")}
    env.update({f"ACETRACK_{k.upper()}": v for k, v in values.items()})
    return env


BASE = {"redis_url": "redis://127.0.0.1:9/0", "api_token": "t"}  # nothing listens on port 9
REFUSED = [
    ({"redis_url": BASE["redis_url"]}, "ACETRACK_API_TOKEN"),
    ({**BASE, "webhook_urls": "https://hooks.example/x"}, "ACETRACK_WEBHOOK_SECRET"),
    ({**BASE, "hooks": "nosuchmod:on_event"}, "ACETRACK_HOOKS: hook 'nosuchmod:on_event': cannot import"),
    ({**BASE, "hooks": "os:sep"}, "ACETRACK_HOOKS: hook 'os:sep' is a str, not a function"),
    ({**BASE, "hooks": "os:getcwd"}, "must be an 'async def'"),
    ({**BASE, "hooks": "asyncio:wait_for"}, "must take one argument"),
    ({**BASE, "api_tokens": "not json"}, "ACETRACK_API_TOKENS"),
    ({**BASE, "api_tokens": '["a list"]'}, "ACETRACK_API_TOKENS"),
    ({"api_token": "t"}, "ACETRACK_REDIS_URL"),
    ({**BASE, "redis_url": "rediss://127.0.0.1:9/0?ssl_ca_cert=/ca.pem"}, "did you mean 'ssl_ca_certs'?"),
]


def _refused(args: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stderr, time.monotonic() - started


@pytest.mark.parametrize(("values", "named"), REFUSED)
def test_acetrack_worker_refuses_what_cannot_work_in_one_line(values: dict[str, str], named: str) -> None:
    code, stderr, took_s = _refused([sys.executable, "-m", "worker", "worker"], _env(**values))
    assert code == 2, stderr
    assert named in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "waiting for redis" not in stderr.lower(), stderr  # refused before any connection is tried


@pytest.mark.parametrize(("values", "named"), [REFUSED[0], REFUSED[2], REFUSED[6]])
def test_arqs_own_cli_refuses_the_same_way(values: dict[str, str], named: str) -> None:
    code, stderr, _ = _refused([sys.executable, "-m", "arq", "worker.WorkerSettings"], _env(**values))
    assert code == 2, stderr
    assert named in stderr and stderr.strip().splitlines()[-1].startswith("acetrack: "), stderr


def test_serve_refuses_without_a_redis_url() -> None:
    code, stderr, _ = _refused([sys.executable, "-m", "worker", "serve"], _env(http_port="0"))
    assert code == 2 and "ACETRACK_REDIS_URL" in stderr, stderr


@pytest.fixture
async def hooks() -> AsyncIterator[Receiver]:
    """A webhook receiver that checks each signature (``Hit.payload``: the verified body)."""
    async with serve(SECRET) as receiver:
        yield receiver


async def _track(tracker: Tracker, state: sim.SimState, ids: list[str], timeout_s: float) -> list[TaskState]:
    for task_id in ids:
        state.add_task("suno", task_id, script="succeed", run_s=0.5, clip_gap_s=0.1)
        await tracker.enqueue("suno", task_id)

    async def all_done() -> bool:
        records = await tracker.store.get_many(("suno", i) for i in ids)
        return all(r is not None and r.terminal for r in records)

    await eventually(all_done, timeout_s)
    return [r.state if r else TaskState.PENDING for r in await tracker.store.get_many(("suno", i) for i in ids)]


FAST = {"first_poll_s": "0.2", "poll_s": "0.4", "coalesce_s": "0.2", "lease_s": "5"}


async def test_a_worker_started_before_its_redis_tracks_tasks_once_it_is_up(
    make_sim: MakeSim, tmp_path: Path, real_redis_url: str | None, request: pytest.FixtureRequest
) -> None:
    require_real_redis(real_redis_url, request)  # the kind of server this run tests
    sim_url, state = await make_sim(auto=False)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        env = _env(redis_url=url, api_base_url=sim_url, api_token="t", **FAST)
        proc = subprocess.Popen([sys.executable, "-m", "worker", "worker"], env=env, cwd=ROOT, stderr=out)
        try:
            await asyncio.sleep(8.0)
            assert proc.poll() is None, log.read_text()
            with embedded_server(server_kind(), port=port):
                tracker = Tracker.from_url(url, first_poll_s=0.2)
                try:
                    states = await _track(tracker, state, ["late-1", "late-2"], timeout_s=20)
                finally:
                    await tracker.close()
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    text = log.read_text()
    assert states == [TaskState.SUCCEEDED] * 2, text
    assert text.count("waiting for Redis at redis://127.0.0.1") >= 3, text  # a line per try
    assert "worker starting:" in text and "tokens=default" in text and "'t'" not in text


async def test_arqs_own_cli_runs_a_complete_worker(
    real_redis_url: str | None, request: pytest.FixtureRequest, make_sim: MakeSim, hooks: Receiver, tmp_path: Path
) -> None:
    url = require_real_redis(real_redis_url, request)
    sim_url, state = await make_sim(auto=False)
    tracker = Tracker.from_url(url, first_poll_s=0.2)
    await tracker.store.redis.flushall()
    env = _env(
        redis_url=url,
        api_base_url=sim_url,
        api_token="t",
        webhook_urls=hooks.url + "/hook",
        webhook_secret=SECRET,
        webhook_allow_hosts="127.0.0.1",
        **FAST,
    )
    log = tmp_path / "arq.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "arq", "worker.WorkerSettings"], env=env, cwd=ROOT, stderr=out)
        try:
            states = await _track(tracker, state, ["arq-1", "arq-2", "arq-3"], timeout_s=20)
            delivered = await eventually(lambda: _return(len(hooks.hits) >= 3), 10)
        finally:
            proc.terminate()
            code = proc.wait(timeout=15)
            await tracker.close()
    text = log.read_text()
    assert states == [TaskState.SUCCEEDED] * 3, text
    assert code == 0 and "worker starting:" in text and "worker stopping: claims nothing more" in text, text
    assert "Traceback" not in text, text
    # the stop line counts in words, not a dict
    assert re.search(r"worker \S+ stopped: \d+ claims, \d+ accepted, \d+ rejected$", text, re.MULTILINE), text
    assert delivered and all(h.path == "/hook" and h.error is None for h in hooks.hits), hooks.hits
    assert sorted(h.task_id or "" for h in hooks.hits) == ["arq-1", "arq-2", "arq-3"]
    assert len(state.log) < 9, len(state.log)  # batched: far fewer requests than 3 tasks x their polls


async def _return(value: bool) -> bool:
    return value


def _certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl's CLI)."""
    paths = {name: folder / name for name in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt", "ext")}
    paths["ext"].write_text("subjectAltName=IP:127.0.0.1\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=acetrack test CA"]
        + ["-keyout", str(paths["ca.key"]), "-out", str(paths["ca.crt"])],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"]
        + ["-keyout", str(paths["server.key"]), "-out", str(paths["server.csr"])],
        ["x509", "-req", "-in", str(paths["server.csr"]), "-CA", str(paths["ca.crt"]), "-CAkey", str(paths["ca.key"])]
        + ["-CAcreateserial", "-days", "1", "-extfile", str(paths["ext"]), "-out", str(paths["server.crt"])],
    ]
    for step in steps:
        subprocess.run(["openssl", *step], check=True, capture_output=True, cwd=folder)
    return paths


def _tls_options(folder: Path) -> dict[str, str]:
    certs = _certificates(folder)
    return {
        "save": "",
        "appendonly": "no",
        "tls-cert-file": str(certs["server.crt"]),
        "tls-key-file": str(certs["server.key"]),
        "tls-ca-cert-file": str(certs["ca.crt"]),
        "tls-auth-clients": "no",
    }


def documented_acl() -> str:
    """The minimal ACL that docs/deploy.md gives a user limited to acetrack's keys ('+info': arq reads
    INFO at start), with this test's password: the page's own line is what the test grants."""
    page = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
    line = next(line for line in page.read_text().splitlines() if line.startswith("ACL SETUSER acetrack "))
    return line.removeprefix("ACL SETUSER acetrack ").replace(">PASSWORD", ">pw")


ACL = documented_acl()


@pytest.mark.redis_server_only
async def test_a_least_privilege_user_over_tls_tracks_tasks_and_a_missing_grant_is_named(
    make_sim: MakeSim, tmp_path: Path, real_redis_url: str | None, request: pytest.FixtureRequest
) -> None:
    require_real_redis(real_redis_url if shutil.which("redis-server") else None, request)
    sim_url, state = await make_sim(auto=False)
    server = RedisServer(tmp_path, _tls_options(tmp_path), tls=True).start("the TLS test")
    port, ca = server.port, tmp_path / "ca.crt"
    try:
        admin = Tracker.from_url(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", first_poll_s=0.2)
        assert await eventually(lambda: _pings(admin), 10)
        await admin.store.redis.execute_command("ACL", "SETUSER", "acetrack", *ACL.split())
        await admin.store.redis.execute_command("ACL", "SETUSER", "noinfo", *ACL.removesuffix(" +info").split())

        def url(user: str) -> str:
            return f"rediss://{user}:pw@127.0.0.1:{port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required"

        code, stderr, _ = _refused(
            [sys.executable, "-m", "worker", "worker"], _env(redis_url=url("noinfo"), api_token="t")
        )
        assert code == 2 and "'info' command" in stderr and "+info" in stderr, stderr
        env = _env(redis_url=url("acetrack"), api_base_url=sim_url, api_token="t", **FAST)
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "worker", "worker"], env=env, cwd=ROOT, stderr=out)
            try:
                states = await _track(admin, state, ["tls-1", "tls-2"], timeout_s=20)
            finally:
                proc.terminate()
                proc.wait(timeout=15)
        assert states == [TaskState.SUCCEEDED] * 2, log.read_text()
        assert "ERROR" not in log.read_text(), log.read_text()
        await admin.close()
    finally:
        server.stop()


async def _pings(tracker: Tracker) -> bool:
    try:
        return bool(await tracker.store.redis.ping())
    except Exception:  # not listening yet
        return False
