"""``acetrack worker``: one arq worker process that refuses what cannot work, waits for Redis, and
rides out an outage.

Before it connects, the configuration is checked (``startup.check_worker``: exit 2 with one line).
A Redis that is not up yet is waited for, a line per try; a user that may not run arq's start-up
``INFO`` is named at once. If Redis goes away while it runs, arq's worker ends with the connection
error: this drops that worker (its jobs cancelled: polls give their claims back once Redis is back,
or their leases do), waits for Redis, and starts a fresh arq worker over the same pool and runtime
(its start-up hook builds nothing twice). A full Redis ends arq's main loop too (its cron job's
enqueue and its health key are writes it does not catch): the same, once Redis takes writes again.
SIGINT and SIGTERM stop it: claim nothing more, cancel running jobs (polls give their claims back),
then arq's ``close``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from arq import Worker
from arq.connections import ArqRedis, create_pool
from redis.exceptions import NoPermissionError

from config import Settings
from worker import jobs
from worker.connect import (
    REDIS_DOWN,
    REFUSED_CREDENTIALS,
    arq_settings,
    create_redis,
    describe,
    is_full,
    permission_hint,
    wait_for_redis,
    wait_for_room,
)
from worker.errors import ConfigError
from worker.runtime import runtime_of
from worker.startup import check_worker
from worker.store import Keys

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


class Supervisor:
    """Runs arq workers over one pool until stopped, a fresh one after each Redis outage."""

    def __init__(
        self, kwargs: dict[str, Any], store_redis: aioredis.Redis, url: str, stop: asyncio.Event, keys: Keys
    ) -> None:
        self.kwargs, self.store_redis, self.url, self.stop, self.keys = kwargs, store_redis, url, stop, keys
        self.pool: ArqRedis | None = None
        self.worker: Worker | None = None

    async def run(self) -> None:
        """Until ``stop``: connect arq's pool, run a worker; after an outage, wait and run another."""
        settings = dataclasses.replace(arq_settings(self.url), conn_retries=0)  # the waiting is done here
        self.pool = await create_pool(
            settings,
            job_serializer=jobs.serialize,
            job_deserializer=jobs.deserialize,
            default_queue_name=self.kwargs["queue_name"],
        )
        while True:
            self.worker = Worker(**{**self.kwargs, "redis_pool": self.pool, "handle_signals": False})
            try:
                await _unless_stopped(self.stop, self.worker.async_run())
                return  # arq's main loop ends by itself only in burst mode
            except REFUSED_CREDENTIALS:
                raise
            except REDIS_DOWN as e:
                logger.warning("lost Redis at %s (%s): waiting for it, then resuming", describe(self.url), e)
                await self._drop_worker()
                await _unless_stopped(self.stop, wait_for_redis(self.store_redis, self.url))
            except Exception as e:
                if not is_full(e):
                    raise
                await self._drop_worker()  # wait_for_room logs it, once a minute
                await _unless_stopped(self.stop, wait_for_room(self.store_redis, self.keys.write_probe_key))

    async def _drop_worker(self) -> None:
        """Cancel the jobs of a worker whose main loop ended (their claims are given back or lease out)."""
        assert self.worker is not None
        for task in self.worker.tasks.values():
            task.cancel()
        await asyncio.gather(*self.worker.tasks.values(), return_exceptions=True)

    async def close(self) -> bool:
        """Stop the current worker (arq's ``close``), or at least the runtime and the pool; whether
        the runtime had started (then it logged its own stop line)."""
        started = runtime_of(self.kwargs["ctx"]).parts is not None
        try:
            if self.worker is not None:
                await jobs.stop(self.worker)
                return started
        except REDIS_DOWN as e:  # arq's close writes to Redis: without it, still stop the loops
            logger.warning("stopping without Redis (%s)", e)
        await runtime_of(self.kwargs["ctx"]).stop()
        if self.pool is not None:
            await self.pool.aclose(close_connection_pool=True)
        return started


async def run_worker(settings: Settings) -> None:
    """Check, wait for Redis, run until SIGINT/SIGTERM."""
    plan = check_worker(settings)  # ConfigError: nothing was started
    url = plan.redis_url
    assert url is not None  # check_worker requires it
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    store_redis = create_redis(url)
    supervisor: Supervisor | None = None
    started = False
    try:
        await _unless_stopped(stop, wait_for_redis(store_redis, url))
        await check_redis_permissions(store_redis)
        supervisor = Supervisor(
            jobs.worker_settings(settings, plan=plan, store_redis=store_redis),
            store_redis,
            url,
            stop,
            Keys(settings.key_prefix),
        )
        await supervisor.run()
    except Stopped:
        pass
    finally:
        if supervisor is not None:
            started = await supervisor.close()
        await store_redis.aclose()
    if not started:  # a started worker's runtime logged its own stop line
        logger.info("worker stopped before it started")
