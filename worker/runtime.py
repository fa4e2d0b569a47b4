"""A worker process's parts, built once when its arq worker starts: the composition root of a worker.

arq calls ``on_startup`` with its connected pool in ``ctx["redis"]``; ``Runtime.start`` builds
the store, the upstream client (one ``aiohttp.ClientSession``), the poller and the scheduler from
the checked ``WorkerPlan``, each given its collaborators, and starts the scheduler's loops. The
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

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from arq.connections import ArqRedis

from config import Settings
from worker import hooks as hooks_mod
from worker import metrics, webhooks
from worker.api import UpstreamClient
from worker.classify import Policy
from worker.clock import Clock
from worker.connect import create_redis
from worker.errors import ConfigError
from worker.polling import Poller
from worker.queue import ArqJobQueue
from worker.scheduler import Cadence, Scheduler
from worker.startup import WorkerPlan, describe_worker
from worker.store import Store

logger = logging.getLogger(__name__)

#: how long a worker stopping on a signal under arq's CLI lets its running jobs end
STOP_GRACE_S = 20.0


@dataclass
class Parts:
    """What the jobs of one worker process share."""

    store: Store
    session: aiohttp.ClientSession
    poller: Poller
    scheduler: Scheduler
    queue: ArqJobQueue
    webhook_config: webhooks.WebhookConfig


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
        try:
            self.metrics_runner = await metrics.serve_metrics(self.settings.worker_metrics_host, port)
        except OSError as e:
            raise ConfigError(
                f"ACETRACK_WORKER_METRICS_PORT: cannot serve metrics on {self.settings.worker_metrics_host}:{port} "
                f"({e.strerror or e}); choose a free port, or 0 for none"
            ) from e

    async def stop(self) -> None:
        """Stop the loops, close the session and the store's client."""
        parts, self.parts = self.parts, None
        if parts is not None:
            await parts.scheduler.stop()
            await parts.session.close()
            logger.info("worker %s stopped: %s", parts.scheduler.worker_id, parts.scheduler.counters)
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
            self.metrics_runner = None
        if self.owns_store_redis and self.store_redis is not None:
            await self.store_redis.aclose()
            self.store_redis = None

    def _build(self, pool: ArqRedis, queue_name: str) -> Parts:
        s, plan = self.settings, self.plan
        if self.store_redis is None:
            if plan.redis_url is None:
                raise RuntimeError("a worker handed no Redis URL needs its store client handed in too")
            self.store_redis, self.owns_store_redis = create_redis(plan.redis_url), True
        store = Store(self.store_redis, s.key_prefix, retention_s=s.retention_s, events_maxlen=s.events_maxlen)
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=s.api_timeout_s, connect=min(10.0, s.api_timeout_s))
        )
        queue = ArqJobQueue(pool, queue_name, lease_ms=int(s.lease_s * 1000))
        paused_tokens: set[str] = set()  # the poller pauses a token on a 401; the heartbeat tells
        scheduler = Scheduler(
            store,
            queue,
            self.clock,
            _cadence(s),
            services=s.services,
            tokens=plan.tokens.keys(),
            allow_hosts=frozenset(s.webhook_allow_hosts),
            heartbeat_info=lambda: {"ready": not paused_tokens, "paused_tokens": sorted(paused_tokens)},
        )
        poller = Poller(
            store,
            UpstreamClient(session, s.api_base_url, plan.tokens),
            self.clock,
            Policy(poll_s=s.poll_s, max_poll_s=s.max_poll_s, not_found_grace_s=s.not_found_grace_s),
            s.rate_limit_rps,
            hooks_mod.destinations_by_event(s.hooks, s.hook_events, s.webhook_urls, s.webhook_events),
            callback_events=frozenset(s.webhook_events),
            paused_tokens=paused_tokens,
            on_schedule=scheduler.expect,
            on_deliveries=lambda: scheduler.nudge("outbox"),
        )
        config = webhooks.WebhookConfig(
            plan.webhook_secret, tuple(s.webhook_schedule_s), frozenset(s.webhook_allow_hosts)
        )
        return Parts(store, session, poller, scheduler, queue, config)


def _cadence(s: Settings) -> Cadence:
    return Cadence(
        batch_size=s.batch_size,
        coalesce_ms=int(s.coalesce_s * 1000),
        lease_ms=int(s.lease_s * 1000),
        rate_limit_rps=s.rate_limit_rps,
        deadline_s=s.deadline_s,
        first_poll_s=s.first_poll_s,
        min_repoll_ms=int(s.poll_s * 1000 / 4),
        claim_idle_ms=Cadence.idle_ms_for(s.first_poll_s),
    )


def runtime_of(ctx: dict[str, Any]) -> Runtime:
    """The runtime a job's arq context carries."""
    runtime: Runtime = ctx["acetrack"]
    return runtime
