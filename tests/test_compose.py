"""The deployment files, checked by running them: docker-compose.yml (+ the demo override) as local processes.

Every command, entry point, environment and health check comes from `docker-compose.yml`,
`docker-compose.demo.yml` and the `Dockerfile`; nothing is written again here, so a drift in
those files fails these tests. The translation to local processes is mechanical: service host
names become 127.0.0.1, each port a service `expose`s becomes a free loopback port, the image's
`acetrack` entry point becomes `python -m worker` of this interpreter, and `redis-server` gets a
port, a loopback bind and a data folder under tmp_path (where the image has /data).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import free_port
from support import require_real_redis

from config import Settings
from worker.cli import build_parser
from worker.sim_tasks import auto_script

pytestmark = pytest.mark.redis_server_only

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "docker-compose.yml"
DEMO = ROOT / "docker-compose.demo.yml"
DOCKERFILE = ROOT / "Dockerfile"
SECRETS = ("api_token", "api_tokens", "webhook_secret", "http_token")
#: `docker compose up --scale worker=2`
SCALE = {"worker": 2}
TASKS_PER_SERVICE = 18
DEADLINE_S = 45.0


# --- reading the Dockerfile ------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) instruction argument; the shell form is refused."""
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def image_entrypoint() -> list[str]:
    return exec_form(next(args for word, args in final_stage() if word == "ENTRYPOINT"))


def image_healthcheck() -> list[str]:
    args = next(args for word, args in final_stage() if word == "HEALTHCHECK")
    return exec_form(args.split(" CMD ", 1)[1])


def image_env() -> dict[str, str]:
    """The runtime stage's ENV, less PATH and VIRTUAL_ENV (this interpreter stands in for the venv)."""
    env: dict[str, str] = {}
    for word, args in final_stage():
        if word == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return {k: v for k, v in env.items() if k not in ("PATH", "VIRTUAL_ENV")}


# --- the effective compose configuration -------------------------------------------------------------

_VAR = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?-)([^}]*))?\}|(\w+))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `$$`, applied to every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        if m.group(3) == ":-":
            return env.get(name) or m.group(4)
        if m.group(3) == "-":
            return env.get(name, m.group(4))
        return env.get(name, "")

    return _VAR.sub(one, value)


def normalized(service: dict[str, Any]) -> dict[str, Any]:
    """List-form `environment` and `depends_on` as mappings; values as compose prints them."""
    service = dict(service)
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    service["environment"] = {k: None if v is None else str(v) for k, v in env.items()}
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        deps = {name: {"condition": "service_started"} for name in deps}
    service["depends_on"] = deps
    return service


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """An override file over a base one, for the keys these files use (compose's merge rules)."""
    out = dict(base)
    for name, service in over.get("services", {}).items():
        merged = normalized(out.get("services", {}).get(name, {}))
        service = normalized(service)
        for key, value in service.items():
            if key in ("environment", "depends_on"):
                merged[key] = {**merged.get(key, {}), **value}
            elif key == "volumes":  # by mount point
                target = {v.split(":")[1]: v for v in merged.get(key, [])}
                merged[key] = list({**target, **{v.split(":")[1]: v for v in value}}.values())
            elif key in ("expose", "ports"):
                merged[key] = list(dict.fromkeys([*merged.get(key, []), *value]))
            else:
                merged[key] = value
        out["services"] = {**out.get("services", {}), name: merged}
    out["volumes"] = {**(base.get("volumes") or {}), **(over.get("volumes") or {})}
    return out


def python_config(*files: Path) -> dict[str, Any]:
    """The effective configuration computed here (YAML anchors and merge keys by PyYAML)."""
    config: dict[str, Any] = {"services": {}}
    for path in files:
        config = merge(config, interpolate(yaml.safe_load(path.read_text()), {}))
    config["services"] = {name: normalized(s) for name, s in config["services"].items()}
    return config


def compose_config(*files: Path, tmp_path: Path) -> dict[str, Any] | None:
    """`docker-compose config` of the files, with no .env and no ACETRACK_/COMPOSE_ variables; None without it."""
    binary = shutil.which("docker-compose")
    if binary is None:
        return None
    empty = tmp_path / "empty.env"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACETRACK_", "COMPOSE_"))}
    argv = [binary, "--project-directory", str(ROOT), "--env-file", str(empty)]
    argv += [arg for path in files for arg in ("-f", str(path))]
    out = subprocess.run([*argv, "config"], env=env, capture_output=True, text=True, timeout=60, check=True)
    config: dict[str, Any] = yaml.safe_load(out.stdout)
    config["services"] = {name: normalized(s) for name, s in config["services"].items()}
    return config


def effective_config(*files: Path, tmp_path: Path) -> dict[str, Any]:
    return compose_config(*files, tmp_path=tmp_path) or python_config(*files)


def ours(service: dict[str, Any]) -> bool:
    """A service that runs the image this repository's Dockerfile builds."""
    return "build" in service


def argv_of(service: dict[str, Any]) -> list[str]:
    """What the container runs: its entrypoint (the Dockerfile's for our image) plus its command."""
    command = service.get("command") or []
    command = shlex.split(command) if isinstance(command, str) else list(command)
    entrypoint = service.get("entrypoint") or (image_entrypoint() if ours(service) else [])
    entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)
    return entrypoint + command


# --- the same, as local processes --------------------------------------------------------------------


class Loopback:
    """Maps the compose network onto 127.0.0.1: host names, exposed ports, programs."""

    def __init__(self, config: dict[str, Any], data_dir: Path) -> None:
        self.names = sorted(config["services"], key=len, reverse=True)
        self.ports = {int(p): free_port() for s in config["services"].values() for p in s.get("expose", [])}
        self.data_dir = data_dir
        redis_port = next(int(p) for p in config["services"]["redis"]["expose"])
        # what the redis image implies: its default port, and /data as the working folder
        self.redis_port = self.ports[redis_port]

    def text(self, value: str, own: dict[int, int] | None = None) -> str:
        if value == "0.0.0.0":  # a container's every interface is the host's loopback here
            return "127.0.0.1"
        ports = {**self.ports, **(own or {})}
        names = "|".join(re.escape(n) for n in self.names)
        value = re.sub(rf"(?<=://)({names})(?=[:/]|$)", "127.0.0.1", value)
        value = re.sub(rf"\b({names}):(?=\d)", "127.0.0.1:", value)
        return re.sub(r"(?<![\d.])(\d{2,5})(?!\d)", lambda m: str(ports.get(int(m[1]), m[1])), value)

    def program(self, argv: list[str], own: dict[int, int] | None = None) -> list[str]:
        argv = [self.text(arg, own) for arg in argv]
        head, rest = argv[0], argv[1:]
        if head == "acetrack":
            return [sys.executable, "-m", "worker", *rest]
        if head == "python":
            return [sys.executable, *rest]
        if head == "redis-server":
            local = ["--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.data_dir)]
            return [_which(head), *rest, *local]
        if head == "redis-cli":
            return [_which(head), "-p", str(self.redis_port), *rest]
        return [_which(head), *rest]

    def healthcheck(self, test: list[str], own: dict[int, int] | None = None) -> list[str]:
        if test[0] == "CMD":
            return self.program(test[1:], own)
        assert test[0] == "CMD-SHELL", test
        script = self.text(test[1], own)
        script = re.sub(r"\bredis-cli\b", f"{shlex.quote(_which('redis-cli'))} -p {self.redis_port}", script)
        return ["sh", "-c", script]

    def env(self, service: dict[str, Any], own: dict[int, int] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACETRACK_")}
        if ours(service):
            env.update(image_env())
        for key, value in service["environment"].items():
            if value is not None:  # a variable named without a value stays unset
                env[key] = self.text(value, own)
        return env


def _which(program: str) -> str:
    path = shutil.which(program)
    assert path is not None, f"{program} is not on PATH"
    return path


class Stack:
    """The processes of one compose project; every one is ended at teardown."""

    def __init__(self, config: dict[str, Any], tmp_path: Path) -> None:
        self.config = config
        self.tmp_path = tmp_path
        (tmp_path / "data").mkdir()
        self.net = Loopback(config, tmp_path / "data")
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.instances: dict[str, list[dict[int, int]]] = {}

    def service(self, name: str) -> dict[str, Any]:
        service: dict[str, Any] = self.config["services"][name]
        return service

    def start(self, name: str) -> None:
        service = self.service(name)
        for n in range(SCALE.get(name, 1)):
            # replicas each get their own ports for what they expose (nobody else dials them)
            own = {int(p): free_port() for p in service.get("expose", [])} if SCALE.get(name, 1) > 1 else {}
            log = self.tmp_path / f"{name}-{n + 1}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    self.net.program(argv_of(service), own),
                    env=self.net.env(service, own),
                    cwd=self.tmp_path,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            self.procs.append((f"{name}-{n + 1}", proc, log))
            self.instances.setdefault(name, []).append(own)

    def run_check(
        self, name: str, test: list[str] | None = None, instance: int = 0
    ) -> subprocess.CompletedProcess[str]:
        service = self.service(name)
        own = self.instances.get(name, [{}])[instance]
        argv = self.net.healthcheck(test or service["healthcheck"]["test"], own)
        return subprocess.run(argv, env=self.net.env(service, own), capture_output=True, text=True, timeout=30)

    def wait_healthy(self, name: str, timeout_s: float = 30.0) -> None:
        """What `depends_on: condition: service_healthy` waits for: the service's own health check."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.assert_running()
            result = self.run_check(name)
            if result.returncode == 0:
                return
            assert time.monotonic() < deadline, f"{name} never became healthy: {result.stdout}{result.stderr}"
            time.sleep(0.3)

    def assert_running(self) -> None:
        for label, proc, log in self.procs:
            if proc.poll() is not None and not label.startswith(tuple(self.one_shots())):
                pytest.fail(f"{label} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")

    def one_shots(self) -> list[str]:
        return [name for name, s in self.config["services"].items() if str(s.get("restart")) == "no"]

    def up(self) -> None:
        """Start services in depends_on order, honouring each condition with the real health checks."""
        done: set[str] = set()
        pending = list(self.config["services"])
        while pending:
            name = next(n for n in pending if set(self.service(n)["depends_on"]) <= done)
            for dep, spec in self.service(name)["depends_on"].items():
                if spec.get("condition") == "service_healthy":
                    self.wait_healthy(dep)
            self.start(name)
            if name in self.one_shots():
                _, proc, log = self.procs[-1]
                assert proc.wait(timeout=60) == 0, log.read_text(errors="replace")
            done.add(name)
            pending.remove(name)
        for name, service in self.config["services"].items():  # `docker compose up --wait`
            if "healthcheck" in service and name not in self.one_shots():
                self.wait_healthy(name)

    def logs(self, name: str) -> str:
        return "".join(log.read_text(errors="replace") for label, _, log in self.procs if label.startswith(name + "-"))

    def down(self) -> None:
        """Like `docker compose down`: dependents first (reverse start order), SIGTERM, then SIGKILL."""
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


# --- the tests ---------------------------------------------------------------------------------------


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    require_real_redis(shutil.which("redis-server") and shutil.which("redis-cli"), request)
    running = Stack(effective_config(BASE, DEMO, tmp_path=tmp_path), tmp_path)
    try:
        yield running
    finally:
        running.down()


def expected_state(task_id: str) -> str:
    """The state an id the simulator invents must end in, from the script its id picks."""
    return "failed" if auto_script(task_id) == "error" else "succeeded"


def wait_terminal(stack: Stack, api: str, tasks: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    records: dict[tuple[str, str], dict[str, Any]] = {}
    deadline = time.monotonic() + DEADLINE_S
    while len(records) < len(tasks):
        stack.assert_running()
        assert time.monotonic() < deadline, f"not terminal in time: {sorted(set(tasks) - set(records))}"
        for service, task_id in tasks:
            if (service, task_id) not in records:
                status, record = http("GET", f"{api}/tasks/{service}/{task_id}")
                assert status == 200, record
                if record["state"] != "pending":
                    records[(service, task_id)] = record
        time.sleep(0.5)
    return records


def wait_hooks(api: str, tasks: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Every task's terminal event delivered to each configured Python hook."""
    deadline = time.monotonic() + 15
    while True:
        status, body = http("GET", f"{api}/hooks")
        assert status == 200, body
        done = {
            (d["event"]["service"], d["event"]["id"])
            for d in body["deliveries"]
            if d["status"] == "delivered" and d["event"]["type"] in ("task.succeeded", "task.failed")
        }
        if set(tasks) <= done:
            return list(body["deliveries"])
        assert time.monotonic() < deadline, f"hooks not delivered: {sorted(set(tasks) - done)}"
        time.sleep(0.3)


@pytest.mark.realredis
def test_demo_stack_runs_as_local_processes(stack: Stack, tmp_path: Path) -> None:
    """redis, sim, api, two workers and demo-tasks from the files; tasks enqueued over HTTP finish."""
    stack.up()
    api = f"http://127.0.0.1:{stack.net.ports[8080]}"
    demo = build_parser().parse_args(argv_of(stack.service("demo-tasks"))[1:])
    assert demo.command == "enqueue" and demo.ids, "demo-tasks enqueues nothing"

    run = uuid.uuid4().hex[:6]
    services = ("suno", "producer")
    tasks = [(service, f"compose-{run}-{service}-{n:02d}") for service in services for n in range(TASKS_PER_SERVICE)]
    status, body = http("POST", f"{api}/tasks", [{"service": s, "id": i} for s, i in tasks])
    assert status == 202, body
    assert len(body["tasks"]) == len(tasks) and body["duplicates"] == []

    everything = tasks + [(demo.service, task_id) for task_id in demo.ids]
    records = wait_terminal(stack, api, everything)
    for (_, task_id), record in records.items():
        assert record["state"] == expected_state(task_id), record
        assert not record["partial"] or auto_script(task_id) == "partial", record
    deliveries = wait_hooks(api, everything)
    hook = stack.service("worker")["environment"]["ACETRACK_HOOKS"]
    assert {d["destination"] for d in deliveries} == {f"python:{hook}"}
    assert "ready" in stack.logs("worker"), "the demo hook printed nothing in the workers' logs"

    status, stats = http("GET", f"{api}/stats")
    assert status == 200 and len(stats["workers"]) == SCALE["worker"], stats
    status, ready = http("GET", f"{api}/readyz")
    assert status == 200 and ready["ready"], ready
    polled = {entry["service"] for entry in http("GET", f"http://127.0.0.1:{stack.net.ports[8090]}/_sim/log")[1]}
    assert polled == {"suno", "producer"}

    # every health check in the files passes now, and so does the image's own
    for name, service in stack.config["services"].items():
        for n in range(len(stack.instances[name]) if "healthcheck" in service else 0):
            result = stack.run_check(name, instance=n)
            assert result.returncode == 0, (name, n, result.stdout, result.stderr)
    for n in range(SCALE["worker"]):
        result = stack.run_check("worker", ["CMD", *image_healthcheck()], instance=n)
        assert result.returncode == 0, result.stderr
        port = stack.instances["worker"][n][int(stack.service("worker")["expose"][0])]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
    assert any((tmp_path / "data").rglob("*.aof")), "redis-server --appendonly yes wrote no AOF"


def test_compose_services_and_rules(tmp_path: Path) -> None:
    """The production file: what each service must have for scaling, health and secrets."""
    services = effective_config(BASE, tmp_path=tmp_path)["services"]
    assert set(services) == {"redis", "worker", "api"}
    redis = services["redis"]
    assert not ours(redis) and str(redis["image"]).startswith("redis:")
    assert argv_of(redis)[:1] == ["redis-server"] and "--appendonly yes" in " ".join(argv_of(redis))
    assert any(v.split(":")[0] == "redis-data" and v.split(":")[1] == "/data" for v in redis["volumes"])
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    for name in ("worker", "api"):
        service = services[name]
        assert ours(service) and service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["environment"]["ACETRACK_REDIS_URL"] == "redis://redis:6379/0"
        assert "healthcheck" in service
        for field in SECRETS:  # secrets only ever come from .env, the shell or /run/secrets
            assert service["environment"].get(f"ACETRACK_{field.upper()}") is None
    worker, api = services["worker"], services["api"]
    assert argv_of(worker) == ["acetrack", "worker"]
    assert "container_name" not in worker and "ports" not in worker, "`--scale worker=4` needs neither"
    assert worker["environment"]["ACETRACK_API_BASE_URL"] is None  # the real Tasks API by default
    assert worker["healthcheck"]["test"] == ["CMD", "acetrack", "check", "--local"]
    assert argv_of(api) == ["acetrack", "serve"]
    assert api["environment"]["ACETRACK_HTTP_HOST"] == "0.0.0.0" and api["ports"]
    passed = set(worker["environment"]) | set(api["environment"])
    assert passed == {f"ACETRACK_{field.upper()}" for field in Settings.model_fields}


def test_demo_override_points_the_workers_at_the_simulator(tmp_path: Path) -> None:
    services = effective_config(BASE, DEMO, tmp_path=tmp_path)["services"]
    sim_argv = argv_of(services["sim"])
    assert sim_argv[:2] == ["acetrack", "sim"] and sim_argv[sim_argv.index("--host") + 1] == "0.0.0.0"
    sim_port = sim_argv[sim_argv.index("--port") + 1]
    assert services["sim"]["expose"] == [sim_port]
    worker = services["worker"]
    assert worker["environment"]["ACETRACK_API_BASE_URL"] == f"http://sim:{sim_port}"
    assert worker["environment"]["ACETRACK_API_TOKEN"]
    assert worker["depends_on"]["sim"]["condition"] == "service_healthy"


def test_compose_merge_here_matches_docker_compose(tmp_path: Path) -> None:
    """The Python merge (used without docker-compose) agrees with docker-compose 1.29's."""
    for files in ((BASE,), (BASE, DEMO)):
        theirs = compose_config(*files, tmp_path=tmp_path)
        if theirs is None:
            message = "docker-compose is not installed: run .ci/compose-check first (it installs it)"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        mine = python_config(*files)
        keys = ("command", "entrypoint", "environment", "depends_on", "expose", "image", "restart")
        for name, service in theirs["services"].items():
            assert {k: service.get(k) for k in keys} == {k: mine["services"][name].get(k) for k in keys}, name
            assert service.get("healthcheck", {}).get("test") == mine["services"][name].get("healthcheck", {}).get(
                "test"
            )


def test_dockerfile_rules() -> None:
    instructions = dockerfile_instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    base_image = next(args for word, args in instructions if word == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert "-slim" in base_image
    runtime = final_stage()
    user = [args for word, args in runtime if word == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert image_entrypoint() == ["acetrack"]
    assert image_healthcheck()[:2] == ["acetrack", "check"]
    assert not any(word == "COPY" and "--from" not in args for word, args in runtime), "runtime copies the venv only"
    runs = " ".join(args for word, args in instructions if word == "RUN")
    assert "--require-hashes" in runs and "requirements.lock" in runs and "pip install --no-deps ." in runs
    declared = " ".join(args for word, args in instructions if word in ("ENV", "ARG"))
    for field in SECRETS:
        assert f"ACETRACK_{field.upper()}" not in declared, "no secret baked into the image"


def test_dockerignore_admits_exactly_what_the_build_copies() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    assert lines[0] == "*", "an allow-list, so .env, secrets/ and .git never reach the build context"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for word, args in dockerfile_instructions():
        if word == "COPY" and "--from" not in args:
            copied |= {src.rstrip("/") for src in args.split()[:-1]}
    assert copied == allowed
    assert not any(name.startswith(".env") or name.startswith("secrets") for name in allowed)


def test_env_example_documents_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    missing = [f for f in Settings.model_fields if not re.search(rf"^#?ACETRACK_{f.upper()}=", text, re.M)]
    assert not missing


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    lock = (ROOT / "requirements.lock").read_text()
    # a pin may carry an environment marker: 'uvloop==0.23.0 ; sys_platform != "win32" ... \\'
    pins = re.finditer(r"^([A-Za-z0-9._-]+)==\S+( ;[^\\\n]*)? \\$", lock, re.M)
    pinned = {m[1].lower().replace("_", "-") for m in pins}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {re.split(r"[\[<>=~!; ]", dep, maxsplit=1)[0].lower().replace("_", "-") for dep in project["dependencies"]}
    assert wanted <= pinned, sorted(wanted - pinned)
    for entry in re.split(r"\n(?=[A-Za-z0-9])", lock):
        if "==" in entry.split("\n")[0]:
            assert "--hash=sha256:" in entry, entry.split("\n")[0]
