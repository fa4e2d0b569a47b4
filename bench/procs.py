"""Processes the benchmark starts (redis-server, the simulator, workers, SDK clients) and their CPU time."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process, from ``/proc/<pid>/stat``; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15 of stat)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine() -> dict[str, object]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": sys.version.split()[0]}


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time (only our own child, by its pid)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class RedisServer:
    """A throwaway ``redis-server`` on a free loopback port, no persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("bench: redis-server is not on PATH (apt-get install redis-server)")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit(f"bench: redis-server did not start on port {self.port}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        stop(self.proc)


def start_python(module: str, args: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """``python -m module args`` from the repository root, stderr to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
    )


def read_line(proc: subprocess.Popen[bytes], prefix: str, timeout_s: float = 30.0) -> str:
    """Wait for a line starting with ``prefix`` on the child's stdout; return the rest of it."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            raise SystemExit(f"bench: {proc.args} exited before saying {prefix!r} (see its log)")
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise SystemExit(f"bench: {proc.args} did not say {prefix!r} within {timeout_s}s")


def reap(pid: int) -> tuple[bool, float | None]:
    """Non-blocking: (exited, its CPU seconds from rusage) for a child started by us."""
    try:
        got, _, usage = os.wait4(pid, os.WNOHANG)
    except ChildProcessError:
        return True, None
    if got == 0:
        return False, None
    return True, usage.ru_utime + usage.ru_stime
