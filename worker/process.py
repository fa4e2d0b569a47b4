"""``acetrack worker``: one arq worker process that refuses what cannot work, waits for Redis, and
rides out an outage.

Before it connects, the configuration is checked (``startup.check_worker``: exit 2 with one line).
A Redis that is not up yet is waited for, a line per try; a user that may not run arq's start-up
``INFO`` is named at once. If Redis goes away while it runs, arq's worker ends with the connection
error: this waits for Redis again and resumes the same worker (its start-up hook builds nothing
twice). SIGINT and SIGTERM stop it: claim nothing more, cancel running jobs (polls give their
claims back), then arq's ``close``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable
from typing import TypeVar

import redis.asyncio as aioredis
from arq import Worker
from redis.exceptions import NoPermissionError

from config import Settings
from worker import jobs
from worker.connect import REDIS_DOWN, create_redis, describe, wait_for_redis
from worker.errors import ConfigError
from worker.startup import check_worker, permission_hint

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Stopped(Exception):
    """A signal asked the process to stop while it waited."""


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T:
    """``work``'s result, or ``Stopped`` as soon as ``stop`` is set (``work`` is then cancelled)."""
    task, stopper = asyncio.ensure_future(work), asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise Stopped
    return task.result()


async def check_redis_permissions(client: aioredis.Redis) -> None:
    """arq reads ``INFO`` as it starts: a user that may not is refused here, by name, not hung up."""
    try:
        await client.info("server")
    except NoPermissionError as e:
        raise ConfigError(f"ACETRACK_REDIS_URL: {permission_hint(e)}") from e


async def _run(worker: Worker, store_redis: aioredis.Redis, url: str, stop: asyncio.Event) -> None:
    """Run ``worker`` until ``stop``; after a Redis outage ends it, wait for Redis and resume."""
    while True:
        try:
            await _unless_stopped(stop, worker.async_run())
            return  # arq's main loop ends by itself only in burst mode
        except REDIS_DOWN as e:
            logger.warning("lost Redis at %s (%s): waiting for it, then resuming", describe(url), e)
            await _unless_stopped(stop, wait_for_redis(store_redis, url))


async def run_worker(settings: Settings) -> None:
    """Check, wait for Redis, run until SIGINT/SIGTERM."""
    plan = check_worker(settings)  # ConfigError: nothing was started
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    url = plan.redis_url
    assert url is not None  # check_worker requires it
    store_redis = create_redis(url)
    worker: Worker | None = None
    try:
        await _unless_stopped(stop, wait_for_redis(store_redis, url))
        await check_redis_permissions(store_redis)
        kwargs = jobs.worker_settings(settings, plan=plan, store_redis=store_redis)
        worker = Worker(**kwargs, handle_signals=False)
        await _run(worker, store_redis, url, stop)
    except Stopped:
        pass
    finally:
        if worker is not None:
            await _close(worker)
        await store_redis.aclose()
    logger.info("worker stopped")


async def _close(worker: Worker) -> None:
    try:
        await jobs.stop(worker)
    except REDIS_DOWN as e:  # arq's close writes to Redis: without it, still stop the loops
        logger.warning("stopping without Redis (%s)", e)
        await jobs.runtime_of_worker(worker).stop()
