"""A worker process's parts, built once when its arq worker starts: the composition root of a worker.

arq calls ``on_startup`` with its connected pool in ``ctx["redis"]``; ``Runtime.start`` has the
composition root (``parts.worker_parts``) build the store, the upstream client, the poller and the
scheduler from the checked ``WorkerPlan``, and starts the scheduler's loops. The
poll and delivery jobs find the parts in ``ctx["acetrack"]``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from arq.connections import ArqRedis

from config import Settings
from worker import hooks as hooks_mod
from worker import metrics
from worker.clock import Clock
from worker.connect import create_redis
from worker.errors import ConfigError
from worker.httpcore import listen
from worker.parts import Parts, worker_parts
from worker.queue import ArqJobQueue
from worker.scheduler import Scheduler
from worker.startup import WorkerPlan, describe_worker

logger = logging.getLogger(__name__)

#: how long a worker stopping on a signal under arq's CLI lets its running jobs end
STOP_GRACE_S = 20.0


@dataclass
class Runtime:
    """A worker process's settings and, once started, its parts."""

    settings: Settings
    plan: WorkerPlan
    clock: Clock
    store_redis: aioredis.Redis | None = None
    hook_retry_s: Sequence[float] = hooks_mod.HOOK_RETRY_S
    #: install SIGINT/SIGTERM handlers at start (a worker run by arq's CLI; see ``_own_signals``)
    own_signals: bool = False
    parts: Parts | None = None
    #: poll and delivery jobs running in this process now (``job``), and an event set while none is
    running_jobs: int = 0
    no_jobs: asyncio.Event = field(default_factory=asyncio.Event)
    #: the store's client was made here (closed on stop), not handed in
    owns_store_redis: bool = False
    metrics_runner: web.AppRunner | None = None
    _stopper: asyncio.Future[None] | None = None

    @contextmanager
    def job(self) -> Iterator[Parts]:
        """The parts, for one poll or delivery job, counted while it runs (a stop waits for them)."""
        parts = self.started
        self.running_jobs += 1
        self.no_jobs.clear()
        try:
            yield parts
        finally:
            self.running_jobs -= 1
            if self.running_jobs == 0:
                self.no_jobs.set()

    @property
    def started(self) -> Parts:
        """The parts; only inside a job or loop of a started worker."""
        if self.parts is None:
            raise RuntimeError("the worker's runtime is not started: run it through arq (on_startup)")
        return self.parts

    async def start(self, pool: ArqRedis, queue_name: str) -> None:
        """Build the parts over arq's pool and start the scheduler's loops. Again (arq runs
        ``on_startup`` again when a worker resumes after an outage) it only adopts the new pool.
        The parts are kept only once all of them started: a start that fails leaves nothing."""
        if self.parts is not None:
            self.parts.queue.pool = pool
            return
        parts = self._build(pool, queue_name)
        try:
            await parts.scheduler.start()
            await self._serve_metrics()
        except BaseException:
            await parts.scheduler.stop()
            await parts.session.close()
            raise
        self.parts = parts
        if self.own_signals:
            self._own_signals(parts.scheduler)
        self.no_jobs.set()
        logger.info("%s (id %s)", describe_worker(self.settings, self.plan), parts.scheduler.worker_id)

    def _own_signals(self, scheduler: Scheduler) -> None:
        """On SIGINT/SIGTERM: claim nothing more, let running jobs end (``STOP_GRACE_S`` at most),
        then end arq's main loop (this start-up runs in it); arq's ``run`` then closes the worker.
        Jobs are not left to arq's close to cancel: a job cancelled while arq records its end
        re-raises the cancellation out of ``close`` (a traceback, and ``on_shutdown`` skipped)."""
        main = asyncio.current_task()
        assert main is not None

        def stop() -> None:
            if scheduler.stopping.is_set():
                return
            logger.info("worker stopping: claims nothing more, lets running jobs end")
            scheduler.begin_stop()
            self._stopper = asyncio.ensure_future(self._end_main_when_idle(main))

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)

    async def _end_main_when_idle(self, main: asyncio.Task[Any]) -> None:
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                while self.running_jobs:
                    await self.no_jobs.wait()
        except TimeoutError:
            logger.warning(
                "worker stopping: %d jobs still running after %.0f s are cancelled", self.running_jobs, STOP_GRACE_S
            )
        main.cancel()

    async def _serve_metrics(self) -> None:
        port = self.settings.worker_metrics_port
        if not port or self.metrics_runner is not None:
            return
        runner = await metrics.metrics_runner()
        host = self.settings.worker_metrics_host
        try:
            await listen(runner, host, port, "ACETRACK_WORKER_METRICS_PORT (0: none)", "ACETRACK_WORKER_METRICS_HOST")
        except ConfigError:
            await runner.cleanup()  # a start that fails leaves nothing behind
            raise
        self.metrics_runner = runner

    async def stop(self) -> None:
        """Stop the loops, close the session and the store's client."""
        parts, self.parts = self.parts, None
        if parts is not None:
            await parts.scheduler.stop()
            await parts.session.close()
            counts = ", ".join(f"{n} {what}" for what, n in parts.scheduler.counters.items())
            logger.info("worker %s stopped: %s", parts.scheduler.worker_id, counts)
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
            self.metrics_runner = None
        if self.owns_store_redis and self.store_redis is not None:
            await self.store_redis.aclose()
            self.store_redis = None

    def _build(self, pool: ArqRedis, queue_name: str) -> Parts:
        if self.store_redis is None:
            if self.plan.redis_url is None:
                raise RuntimeError("a worker handed no Redis URL needs its store client handed in too")
            self.store_redis, self.owns_store_redis = create_redis(self.plan.redis_url), True
        queue = ArqJobQueue(pool, queue_name, lease_ms=int(self.settings.lease_s * 1000))
        return worker_parts(self.settings, self.plan, self.store_redis, queue, self.clock)


def runtime_of(ctx: dict[str, Any]) -> Runtime:
    """The runtime a job's arq context carries."""
    runtime: Runtime = ctx["acetrack"]
    return runtime
