"""The simulator as a subprocess of the benchmark (its own CPU), with a few bench-only control routes.

``python -m bench.simserver --rps R --burst B [--unlimited TOKEN ...] [--latency-s S]`` serves ``worker.sim.create_app``
unchanged on a free loopback port and prints ``PORT <n>`` when ready. Added routes:

- ``POST /_bench/tasks``: ``[{"id", "script", "run_s", "clip_gap_s"}, ...]`` (already scaled) are created
  now on the sim's clock; answers ``{"created_at": [epoch s, ...]}`` so ground truth is exact.
- ``GET /_bench/log?since=i``: the request log from entry ``i`` as compact rows
  ``[at_s, token, ids polled, status]`` (``at_s``: epoch seconds, the sim's monotonic loop clock moved
  to the wall clock when read, so requests line up with the bench's own times).

The rate limit is the sim's own token bucket, per bearer token; tokens given with ``--unlimited`` skip it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import time
from typing import Any

from aiohttp import web

from worker import sim


class PerTokenLimiter:
    """The sim's ``TokenBucket`` for every token but the exempt ones."""

    def __init__(self, bucket: sim.TokenBucket, exempt: frozenset[str]) -> None:
        self.bucket = bucket
        self.exempt = exempt

    def take(self, key: str, now_s: float) -> float:
        return 0.0 if key in self.exempt else self.bucket.take(key, now_s)


async def add_tasks(request: web.Request) -> web.Response:
    state = request.app[sim.SIM_STATE]
    created = []
    for spec in await request.json():
        state.add_task("suno", spec["id"], spec["script"], float(spec["run_s"]), float(spec["clip_gap_s"]))
        created.append(state.tasks[("suno", spec["id"])].created_at)
    return web.json_response({"created_at": created})


async def read_log(request: web.Request) -> web.Response:
    state = request.app[sim.SIM_STATE]
    since = int(request.query.get("since", "0"))
    to_epoch_s = time.time() - asyncio.get_running_loop().time()
    rows = [[e.at_s + to_epoch_s, e.token, len(e.ids), e.status] for e in state.log[since:]]
    return web.json_response(rows)


async def serve(rps: float | None, burst: int | None, exempt: frozenset[str], **knobs: Any) -> None:
    app = sim.create_app(rate_limit_rps=rps, burst=burst, auto=False, seed=1, **knobs)
    state = app[sim.SIM_STATE]
    if state.limiter is not None and exempt:
        state.limiter = PerTokenLimiter(state.limiter, exempt)  # type: ignore[assignment]
    app.router.add_post("/_bench/tasks", add_tasks)
    app.router.add_get("/_bench/log", read_log)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = runner.addresses[0][1]
    print(f"PORT {port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rps", type=float, default=60.0, help="token refill per second per token (0: no limit)")
    parser.add_argument("--burst", type=int, default=None, help="bucket size (default: ceil(rps))")
    parser.add_argument("--unlimited", action="append", default=[], help="a token the limit does not apply to")
    parser.add_argument("--latency-s", type=float, default=0.0, help="delay before each Tasks API answer")
    parser.add_argument("--callback-url", help="where finished tasks call back")
    parser.add_argument("--callback-loss", type=float, default=0.0, help="share of callbacks never sent")
    parser.add_argument("--callback-delay-s", default="0,0", help="LOW,HIGH: how late callbacks are")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rps = args.rps if args.rps > 0 else None
    burst = args.burst if args.burst is not None else (math.ceil(rps) if rps else None)
    try:
        low_s, high_s = (float(x) for x in args.callback_delay_s.split(","))
        knobs = {"latency_s": args.latency_s, "callback_url": args.callback_url, "callback_loss": args.callback_loss}
        asyncio.run(serve(rps, burst, frozenset(args.unlimited), **knobs, callback_delay_s=(low_s, high_s)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
