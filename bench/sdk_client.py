"""The SDK contender, in its own process: one ``AsyncTaskHandle.wait()`` per task, as the SDK ships it.

``python -m bench.sdk_client PLAN.json OUT.json``. The plan names the simulator's base URL, a token,
the wait loop's ``poll_interval`` and ``max_wait`` (the SDK's defaults, 3 s and 600 s, times the
benchmark's time scale), the time scale itself and each task's id and start offset. The client prints
``READY``, then reads the run's start (epoch seconds) from stdin. Each task's ``wait()`` starts at its
offset; when it returns, the verdict is the SDK's own reduction of the returned state
(``acedatacloud._runtime.tasks.task_status``). A ``wait()`` that raises
(``RateLimitError`` after the transport's retries, ``TimeoutError`` after ``max_wait``) has no verdict.
On SIGTERM the waits still running are cancelled and recorded as ``still waiting``.

The one change to the SDK: its transport's retry back-off (``_backoff_delay``, 1-8.5 s between retries of
a 429/5xx) is multiplied by the time scale, like every other time constant of both contenders.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import Any

import acedatacloud._runtime.transport as sdk_transport
from acedatacloud import AsyncAceDataCloud
from acedatacloud._runtime.tasks import task_status

SERVICE = "suno"


def _scale_backoff(scale: float) -> None:
    original = sdk_transport._backoff_delay

    def scaled(attempt: int) -> float:
        return original(attempt) * scale

    sdk_transport._backoff_delay = scaled


async def _track(client: AsyncAceDataCloud, plan: dict[str, Any], task_id: str, start_at: float) -> dict[str, Any]:
    started = None
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        started = time.time()
        state = await client.tasks.wait(
            task_id, service=SERVICE, poll_interval=plan["poll_interval"], max_wait=plan["max_wait"]
        )
    except asyncio.CancelledError:
        return {"id": task_id, "started": started, "state": None, "at": None, "note": "still waiting"}
    except Exception as e:  # the SDK's wait() raising is the outcome we measure
        return {"id": task_id, "started": started, "state": None, "at": time.time(), "note": type(e).__name__}
    at = time.time()
    return {"id": task_id, "started": started, "state": task_status(state) or None, "at": at, "note": ""}


async def run(plan: dict[str, Any]) -> list[dict[str, Any]]:
    _scale_backoff(plan["scale"])
    client = AsyncAceDataCloud(api_token=plan["token"], base_url=plan["base_url"])
    print("READY", flush=True)
    t0 = float(await asyncio.to_thread(sys.stdin.readline))  # the run's start, sent once every process is up
    tasks = [asyncio.create_task(_track(client, plan, tid, t0 + offset)) for tid, offset in plan["tasks"]]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    all_done = asyncio.ensure_future(asyncio.gather(*tasks, return_exceptions=True))
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait([all_done, stopper], return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    await client.close()
    return [r for r in results if isinstance(r, dict)]


def main() -> None:
    plan_path, out_path = sys.argv[1], sys.argv[2]
    with open(plan_path) as f:
        plan = json.load(f)
    results = asyncio.run(run(plan))
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
