"""The upstream's callbacks in the benchmark: the simulator calls one URL, this fans each out.

The simulator holds one task per id for every contender of a phase, so it sends one callback per
task; ``FanOut`` (served in the benchmark's own process) forwards it to each acetrack contender's
``acetrack serve`` (``POST /callbacks/suno?key=...``), as if each had named itself as the task's
``callback_url``. The SDK contenders take no callbacks: the official SDK has no use for them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp import web

from bench.targets import CALLBACK_ANSWER_MS
from bench.workload import percentile

KEY = "bench-callback-key"


class FanOut:
    """Forward every callback body to each of ``targets`` (set per phase)."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.received = 0
        #: per target URL: how long each forwarded callback took to be answered (ms), and the statuses
        self.answers_ms: dict[str, list[float]] = {}
        self.statuses: dict[str, dict[str, int]] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/cb", self._take)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/cb"

    async def _take(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received += 1
        await asyncio.gather(*(self._forward(url, body) for url in self.targets), return_exceptions=True)
        return web.json_response({}, status=202)

    async def _forward(self, url: str, body: bytes) -> None:
        assert self._session is not None
        started, status = time.perf_counter(), "error"  # no answer at all (refused, timed out) counts too
        try:
            async with self._session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
                await resp.read()
                status = str(resp.status)
        finally:
            self.answers_ms.setdefault(url, []).append((time.perf_counter() - started) * 1000)
            counts = self.statuses.setdefault(url, {})
            counts[status] = counts.get(status, 0) + 1

    def reset(self) -> None:
        """Forget the answers so far (a warm-up's): the figures are the measured workload's."""
        self.answers_ms.clear()
        self.statuses.clear()

    def answer_stats(self, url: str) -> dict[str, Any]:
        """How ``url`` answered its callbacks: count, statuses, p50/p99/max ms (real time: the route's
        answer does not scale with ``--scale``), and how many took longer than ``CALLBACK_ANSWER_MS``."""
        times = sorted(self.answers_ms.get(url, []))
        if not times:
            return {"n": 0}
        return {
            "n": len(times),
            "statuses": dict(sorted(self.statuses.get(url, {}).items())),
            "p50_ms": round(percentile(times, 50), 1),
            "p99_ms": round(percentile(times, 99), 1),
            "max_ms": round(times[-1], 1),
            "over_target": sum(1 for t in times if t > CALLBACK_ANSWER_MS),
        }

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()


def sim_args(loss: float, delay_s: Sequence[float], scale: float, url: str) -> list[str]:
    """The simulator's callback options for a run (delays unscaled, as every bench time)."""
    low_s, high_s = (d * scale for d in delay_s)
    return ["--callback-url", url, "--callback-loss", repr(loss), "--callback-delay-s", f"{low_s!r},{high_s!r}"]
