"""The producer client installed alone in a fresh virtualenv (where ``worker``, ``config`` and
``arq`` are not importable) against a running worker; the README's examples run there too."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from clientstack import CLIENT_DIR, HTTP_TOKEN, REPO, MakeSim, Stack, stack_fixture  # noqa: F401  # the fixture "stack"
from servers import free_port
from support import Backend

pytestmark = [pytest.mark.realredis, pytest.mark.slow]

VENV_CACHE = REPO / ".pytest_cache" / "client-venv"
PRODUCER = """
import asyncio, json, sys
from acetrack import Client, SyncClient

redis_url, http_url, token = sys.argv[1:4]
out = {}

def show(record, got):
    return {"state": record.state, "meta": record.meta, "audio": [c.audio_url for c in record.clips],
            "response": got is not None and got.response is not None}

for via, client in (("redis", SyncClient.from_redis(redis_url)), ("http", SyncClient.from_http(http_url, token))):
    with client:
        client.enqueue("suno", f"venv-sync-{via}", meta={"via": via})
        record = client.wait("suno", f"venv-sync-{via}", timeout_s=60)
        out[f"sync-{via}"] = show(record, client.get("suno", f"venv-sync-{via}"))

async def main():
    for via, client in (("redis", Client.from_redis(redis_url)), ("http", Client.from_http(http_url, token))):
        async with client:
            await client.enqueue("suno", f"venv-async-{via}", meta={"via": via})
            record = await client.wait("suno", f"venv-async-{via}", timeout_s=60)
            out[f"async-{via}"] = show(record, await client.get("suno", f"venv-async-{via}"))

asyncio.run(main())
print(json.dumps(out))
"""


def client_digest() -> str:
    """A hash of the client's sources: the cached virtualenv is rebuilt when they change."""
    digest = hashlib.sha256()
    for path in sorted(CLIENT_DIR.rglob("*")):
        parts = path.relative_to(CLIENT_DIR).parts
        if path.is_file() and parts[0] not in ("build", "dist") and not any(p.endswith(".egg-info") for p in parts):
            if "__pycache__" not in parts:
                digest.update(str(path.relative_to(CLIENT_DIR)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture
def client_venv(tmp_path: Path) -> Path:
    """A virtualenv with only the client installed (``pip install ./client`` from a copy of the
    folder, so no build files land in the clone), cached under ``.pytest_cache/``."""
    target = VENV_CACHE / client_digest()
    if not (target / "bin" / "python").exists():
        building = VENV_CACHE / f"{target.name}.{os.getpid()}.tmp"
        shutil.rmtree(building, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
        source = shutil.copytree(CLIENT_DIR, tmp_path / "client", ignore=shutil.ignore_patterns("build", "*.egg-info"))
        pip = [str(building / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)]
        subprocess.run(pip, check=True, env=clean_env())
        for old in VENV_CACHE.iterdir():
            if old.name != building.name:
                shutil.rmtree(old, ignore_errors=True)
        building.rename(target)  # a venv's scripts name its path: only bin/python is used here
    return target / "bin" / "python"


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


async def test_the_client_installed_alone_enqueues_waits_and_reads_results_from_a_running_worker(
    client_venv: Path, stack: Stack, tmp_path: Path
) -> None:
    # run from an empty folder: the clone (with worker/ and config/) is not on the path
    for module in ("worker", "config", "arq"):
        probe = subprocess.run(
            [str(client_venv), "-c", f"import {module}"], cwd=tmp_path, env=clean_env(), capture_output=True, text=True
        )
        assert probe.returncode == 1 and f"No module named '{module}'" in probe.stderr, probe.stderr
    where = subprocess.run(
        [str(client_venv), "-c", "import acetrack; print(acetrack.__file__)"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(VENV_CACHE)), where
    for task_id in PRODUCER_IDS:
        stack.add(task_id)
    check_produced(await produce(client_venv, tmp_path, stack.redis_url, stack.http_url))


PRODUCER_IDS = [f"venv-{mode}-{via}" for mode in ("sync", "async") for via in ("redis", "http")]


async def run_in(python: Path, cwd: Path, *args: str) -> str:
    """Run ``python *args`` in ``cwd`` (without this clone on the path) and return what it printed."""
    proc = await asyncio.create_subprocess_exec(
        str(python), *args, cwd=cwd, env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    return stdout.decode()


async def produce(python: Path, cwd: Path, redis_url: str, http_url: str) -> dict[str, dict[str, Any]]:
    """Run ``PRODUCER`` with the client alone: each of its tasks as it ended."""
    (cwd / "produce.py").write_text(PRODUCER)
    printed = await run_in(python, cwd, "produce.py", redis_url, http_url, HTTP_TOKEN)
    out: dict[str, dict[str, Any]] = json.loads(printed)
    return out


def check_produced(out: dict[str, dict[str, Any]]) -> None:
    assert sorted(out) == ["async-http", "async-redis", "sync-http", "sync-redis"]
    for key, result in out.items():
        via = key.split("-")[1]
        assert result["state"] == "succeeded" and result["meta"] == {"via": via} and result["response"], key
        assert len(result["audio"]) == 2 and all(url.startswith("http") for url in result["audio"]), key


async def until_listening(port: int, log: Path) -> None:
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError(f"acetrack serve never listened on {port}: {log.read_text()}")


async def test_the_client_installed_alone_works_with_acetrack_worker_and_serve_processes(
    client_venv: Path, real_backend: Backend, real_redis_url: str | None, make_sim: MakeSim, tmp_path: Path
) -> None:
    sim_url, sim_state = await make_sim(auto=False)
    for task_id in PRODUCER_IDS:
        sim_state.add_task("suno", task_id, script="succeed", run_s=0.6, clip_gap_s=0.2)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACETRACK_")}
    env.update(
        ACETRACK_REDIS_URL=str(real_redis_url),
        ACETRACK_API_BASE_URL=sim_url,
        ACETRACK_API_TOKEN="test-token",
        ACETRACK_FIRST_POLL_S="0.2",
        ACETRACK_POLL_S="0.4",
        ACETRACK_MAX_POLL_S="2",
        ACETRACK_COALESCE_S="0.2",
        ACETRACK_HTTP_HOST="127.0.0.1",
        ACETRACK_HTTP_PORT=str(port),
        ACETRACK_HTTP_TOKEN=HTTP_TOKEN,
    )
    procs = []
    for role in ("worker", "serve"):
        with (tmp_path / f"{role}.log").open("wb") as log:
            argv = [sys.executable, "-m", "worker", role]
            procs.append(subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    try:
        await until_listening(port, tmp_path / "serve.log")
        producer_dir = tmp_path / "producer"
        producer_dir.mkdir()
        check_produced(await produce(client_venv, producer_dir, str(real_redis_url), f"http://127.0.0.1:{port}"))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


README_ID = "eae26f89-b64b-404d-a80c-761996660b1c"


def readme_examples() -> list[str]:
    """The first two Python blocks of ``client/README.md`` (sync, async), pointed at the test's stack."""
    text = (CLIENT_DIR / "README.md").read_text()
    blocks = [part.split("```", 1)[0] for part in text.split("```python\n")[1:]]
    assert len(blocks) >= 2 and README_ID in blocks[0] and README_ID in blocks[1]
    return blocks[:2]


async def test_the_readme_examples_run_with_the_client_installed_alone(
    client_venv: Path, stack: Stack, tmp_path: Path
) -> None:
    stack.add(README_ID)
    changes = {
        "redis://localhost:6379/0": stack.redis_url,
        "http://localhost:8080": stack.http_url,
        "<ACETRACK_HTTP_TOKEN>": HTTP_TOKEN,
    }
    for n, example in enumerate(readme_examples()):
        for old, new in changes.items():
            example = example.replace(old, new)
        (tmp_path / f"example{n}.py").write_text(example)
        printed = await run_in(client_venv, tmp_path, f"example{n}.py")
        assert printed.startswith("succeeded ") and "https://" in printed, printed
