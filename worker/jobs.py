"""The job engine's wiring: the only module that imports arq.

``build_worker_settings(settings)`` returns the kwargs of an arq ``Worker``: the poll and delivery
jobs, start-up (one ``ClientSession``, the store, the scheduler's loops) and shutdown. Jobs are
serialised as JSON, never pickle.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import arq.utils
import arq.worker
import redis.asyncio as aioredis
from aiohttp import web
from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import serialize_job
from arq.worker import func
from redis.commands.core import AsyncScript

from config import Settings
from worker import codec, metrics, webhooks
from worker import hooks as hooks_mod
from worker.api import UpstreamClient
from worker.classify import Policy
from worker.clock import Clock, system_clock
from worker.connect import SentinelUrl, adopt_fast_packing, create_redis
from worker.errors import ConfigError
from worker.hooks import WEBHOOK_PREFIX
from worker.polling import Poller
from worker.scheduler import MAX_OUTAGE_SLEEP_S, Cadence, Scheduler
from worker.store import REDIS_DOWN, Claimed, PendingTask, Store

logger = logging.getLogger(__name__)

POLL_JOB = "poll"
DELIVER_JOB = "deliver"
#: arq keeps a finished job's id this long, so a delivery handed over twice runs once
KEEP_RESULT_S = 60
MAX_CONCURRENT_JOBS = 50
#: how often a full arq worker (``MAX_CONCURRENT_JOBS`` running) looks whether a slot is free
BUSY_TICK_S = 0.1
#: longest wait of an idle arq worker: jobs this process enqueues wake it at once, so this only
#: bounds how long a job waits whose own worker is full or died before starting it (each look is
#: a Redis round trip and a wake-up, a few tenths of a ms of CPU on a small VM)
IDLE_TICK_S = 5.0
#: a poll job written as ``enqueue_job`` writes it, in one round trip where ``enqueue_job`` takes
#: three (WATCH, EXISTS, MULTI/EXEC) to refuse an existing job id: a claim id is new by construction.
#: KEYS: 1 job key, 2 queue; ARGV: 1 job, 2 job id, 3 score ms, 4 job expiry ms.
QUEUE_JOB_LUA = """
redis.call('PSETEX', KEYS[1], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return 1
"""
#: arq's start of one job, atomic in one round trip where arq takes four (WATCH, EXISTS, ZSCORE,
#: MULTI/EXEC): the job's in-progress key is set once, and only while the job is queued and due.
#: KEYS: 1 in-progress key, 2 queue; ARGV: 1 job id, 2 now ms, 3 in-progress timeout ms.
#: Returns the job's score, or nil (running or finished elsewhere, or queued again for later).
START_JOB_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('PSETEX', KEYS[1], ARGV[3], '1')
return score
"""
#: one try of one delivery (a webhook try is bounded by its 15 s timeout; a Python hook by this)
DELIVER_TIMEOUT_S = 60


def serialize(data: dict[str, Any]) -> bytes:
    """arq job serializer: JSON (other languages can read the queue; nothing is unpickled)."""
    return codec.dumps(data)


def deserialize(raw: bytes) -> dict[str, Any]:
    """arq job deserializer."""
    data: dict[str, Any] = codec.loads(raw)
    return data


def redis_settings(url: str) -> RedisSettings:
    """arq's connection settings from a ``redis://``, ``rediss://`` or ``redis+sentinel://`` URL."""
    sentinel_url = SentinelUrl.parse(url)
    if sentinel_url is None:
        return RedisSettings.from_dsn(url)
    return RedisSettings(
        host=sentinel_url.nodes,
        sentinel=True,
        sentinel_master=sentinel_url.service_name,
        database=sentinel_url.db,
        password=sentinel_url.password,
    )


class ArqJobQueue:
    """The scheduler's ``JobQueue`` over an ``ArqRedis`` pool."""

    def __init__(
        self,
        pool: ArqRedis,
        queue_name: str,
        deliver_queue_name: str,
        local: Mapping[str, ResilientWorker] | None = None,
        poll_expiry_ms: int = 30_000,
    ) -> None:
        self.pool = pool
        self.poll_expiry_ms = poll_expiry_ms
        self.queue_name = queue_name
        self.deliver_queue_name = deliver_queue_name
        #: per queue name, this process's arq worker of that queue
        self.local = local or {}
        self._queue_script = pool.register_script(QUEUE_JOB_LUA)

    def _wake(self, queue_name: str) -> None:
        worker = self.local.get(queue_name)
        if worker is not None:
            worker.job_ready.set()

    async def poll(self, service: str, token: str, claimed: Claimed) -> None:
        """Run one batch poll here at once if this process's worker has a free slot, else queue it
        for whichever worker has one.

        A poll run here writes nothing to the job queue: its claim's lease already covers a worker
        that dies mid-poll (the ids fall due again and are claimed anew), so arq's job keys would
        buy nothing and cost three round trips per batch (write, read, finish). A queued job
        expires with the lease: by then its ids are due again, so a job that could not start in
        time is not worth running. A poll run here uses the tasks as the claim read them; a queued
        one reads them when it starts.
        """
        job_id, args = f"{POLL_JOB}:{claimed.claim_id}", (service, token, claimed.claim_id, claimed.ids)
        worker = self.local.get(self.queue_name)
        if worker is not None and await worker.reserve_slot():
            worker.run_direct(job_id, POLL_JOB, args, {"pending": claimed.pending})
            return
        now_ms = arq.utils.timestamp_ms()
        job = serialize_job(POLL_JOB, args, {}, None, now_ms, serializer=serialize)
        keys = [job_key_prefix + job_id, self.queue_name]
        await self._queue_script(keys=keys, args=[job, job_id, now_ms, self.poll_expiry_ms])
        self._wake(self.queue_name)

    async def deliver(self, delivery_id: str, due_ms: int) -> None:
        """Queue one try of a delivery; the same try handed over twice (same due time) runs once."""
        await self.pool.enqueue_job(
            DELIVER_JOB,
            delivery_id,
            _job_id=f"{DELIVER_JOB}:{delivery_id}:{due_ms}",
            _queue_name=self.deliver_queue_name,
        )
        self._wake(self.deliver_queue_name)


@dataclass
class Runtime:
    """Everything the jobs of one worker process share, built in ``startup``."""

    settings: Settings
    clock: Clock
    store_redis: aioredis.Redis | None = None
    hook_retry_s: Sequence[float] = hooks_mod.HOOK_RETRY_S
    session: aiohttp.ClientSession | None = None
    store: Store | None = None
    poller: Poller | None = None
    scheduler: Scheduler | None = None
    hooks: dict[str, hooks_mod.Hook] = field(default_factory=dict)
    webhook_config: webhooks.WebhookConfig | None = None
    metrics_runner: web.AppRunner | None = None
    #: arq workers (the poll and the delivery queue's) that started with this runtime and not yet stopped
    users: int = 0


def _runtime(ctx: dict[str, Any]) -> Runtime:
    runtime: Runtime = ctx["acetrack"]
    return runtime


def _build(runtime: Runtime, ctx: dict[str, Any]) -> None:
    s = runtime.settings
    tokens = s.tokens()
    if not tokens:
        raise ConfigError("no API token: set ACETRACK_API_TOKEN (or ACETRACK_API_TOKENS) before starting a worker")
    if runtime.store_redis is None:
        if s.redis_url is None:
            raise ConfigError("ACETRACK_REDIS_URL is not set; e.g. redis://localhost:6379/0")
        runtime.store_redis = create_redis(s.redis_url)
    runtime.hooks = hooks_mod.resolve_hooks(s.hooks)
    secret = s.webhook_secret.get_secret_value() if s.webhook_secret else None
    if s.webhook_urls and not secret:
        raise ConfigError("ACETRACK_WEBHOOK_URLS is set but ACETRACK_WEBHOOK_SECRET (whsec_...) is not")
    runtime.webhook_config = webhooks.WebhookConfig(
        secret, tuple(s.webhook_schedule_s), frozenset(s.webhook_allow_hosts)
    )
    store = Store(runtime.store_redis, s.key_prefix, retention_s=s.retention_s, events_maxlen=s.events_maxlen)
    runtime.session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=s.api_timeout_s, connect=min(10.0, s.api_timeout_s))
    )
    api = UpstreamClient(runtime.session, s.api_base_url, tokens)
    policy = Policy(poll_s=s.poll_s, max_poll_s=s.max_poll_s, not_found_grace_s=s.not_found_grace_s)
    destinations = hooks_mod.destinations_by_event(s.hooks, s.hook_events, s.webhook_urls, s.webhook_events)
    runtime.store = store
    runtime.poller = Poller(
        store, api, runtime.clock, policy, s.rate_limit_rps, destinations, callback_events=frozenset(s.webhook_events)
    )
    cadence = Cadence(
        batch_size=s.batch_size,
        coalesce_ms=int(s.coalesce_s * 1000),
        lease_ms=int(s.lease_s * 1000),
        rate_limit_rps=s.rate_limit_rps,
        deadline_s=s.deadline_s,
        first_poll_s=s.first_poll_s,
        min_repoll_ms=int(s.poll_s * 1000 / 4),
        claim_idle_ms=Cadence.idle_ms_for(s.first_poll_s),
    )
    poller = runtime.poller
    scheduler = runtime.scheduler = Scheduler(
        store,
        ArqJobQueue(
            ctx["redis"], ctx["queue_name"], ctx["deliver_queue_name"], ctx.get("local_workers"), int(s.lease_s * 1000)
        ),
        runtime.clock,
        cadence,
        services=s.services,
        tokens=tokens.keys(),
        allow_hosts=frozenset(s.webhook_allow_hosts),
        heartbeat_info=lambda: {"ready": not poller.paused_tokens, "paused_tokens": sorted(poller.paused_tokens)},
    )
    poller.on_schedule = scheduler.expect
    poller.on_deliveries = lambda: scheduler.nudge("outbox")


async def startup(ctx: dict[str, Any]) -> None:
    """arq ``on_startup`` of both queues' workers: the first builds the runtime and starts the loops."""
    runtime = _runtime(ctx)
    runtime.users += 1
    adopt_fast_packing(ctx["redis"])  # each queue's worker has its own pool
    if runtime.scheduler is not None:
        return
    _build(runtime, ctx)
    assert runtime.scheduler is not None
    await runtime.scheduler.start()
    if runtime.settings.worker_metrics_port:
        runtime.metrics_runner = await metrics.serve_metrics(
            runtime.settings.worker_metrics_host, runtime.settings.worker_metrics_port
        )
    logger.info("worker %s started", runtime.scheduler.worker_id)


async def shutdown(ctx: dict[str, Any]) -> None:
    """arq ``on_shutdown``: the last of the two workers stops the loops and closes the session."""
    runtime = _runtime(ctx)
    runtime.users -= 1
    if runtime.users > 0:
        return
    if runtime.scheduler is not None:
        await runtime.scheduler.stop()
        logger.info("worker stopped: %r", runtime.scheduler)
    if runtime.session is not None:
        await runtime.session.close()
    if runtime.metrics_runner is not None:
        await runtime.metrics_runner.cleanup()


async def poll_job(
    ctx: dict[str, Any],
    service: str,
    token: str,
    claim_id: str,
    ids: list[str],
    pending: Mapping[str, PendingTask] | None = None,
) -> int:
    """Poll one claimed batch; ``pending`` (the tasks as the claim read them) only in a run here."""
    runtime = _runtime(ctx)
    assert runtime.poller is not None
    return await runtime.poller.poll_batch(service, token, claim_id, ids, pending)


async def deliver_job(ctx: dict[str, Any], delivery_id: str) -> str:
    """Run one try of a delivery; a failed try goes back to the outbox for the next one."""
    runtime = _runtime(ctx)
    store = runtime.store
    assert store is not None
    body = await store.load_delivery(delivery_id)
    if body is None or body.get("status") in ("delivered", "dead"):
        await store.outbox_done(delivery_id)
        if body is not None and body["status"] == "delivered":
            await store.count("duplicate_deliveries_skipped")
            metrics.DUPLICATES.inc()
        return "missing" if body is None else str(body["status"])
    now_ms = runtime.clock()
    await _mark_sending(runtime, store, body, now_ms)
    try:
        outcome = await _attempt(runtime, store, body, now_ms)
    except asyncio.CancelledError:
        # a stopping worker hands the try back at once instead of waiting out the lease
        await asyncio.shield(store.requeue_delivery(delivery_id, runtime.clock()))
        raise
    body["sending_since_ms"] = None
    await store.save_delivery(delivery_id, body)
    if outcome.disable_url:
        await store.disable_url(body["destination"].removeprefix(WEBHOOK_PREFIX), now_ms)
    if outcome.status == "dead":
        await store.dead_letter(delivery_id, now_ms)
    if outcome.status == "retry":
        await store.requeue_delivery(delivery_id, now_ms + int(outcome.retry_in_s * 1000))
        if runtime.scheduler is not None:
            runtime.scheduler.nudge("outbox")  # it sleeps until the soonest delivery it knows: now this one
    else:
        await store.outbox_done(delivery_id)
    await store.count(f"deliveries_{outcome.status}")
    kind = "webhook" if body["destination"].startswith(WEBHOOK_PREFIX) else "python"
    metrics.DELIVERIES.labels(kind, outcome.status).inc()
    return outcome.status


async def _mark_sending(runtime: Runtime, store: Store, body: dict[str, Any], now_ms: int) -> None:
    if body.get("sending_since_ms"):
        # an earlier try started and never recorded its end (its worker died): the receiver may
        # already have it, so this try may be a duplicate (same webhook-id)
        await store.count("possible_duplicate_deliveries")
        metrics.DUPLICATES.inc()
    body["sending_since_ms"] = now_ms
    await store.save_delivery(body["delivery_id"], body)
    # keep the delivery leased for this whole try; if the worker dies, it is handed over again after
    is_webhook = body["destination"].startswith(WEBHOOK_PREFIX)
    try_s = runtime.webhook_config.timeout_s if is_webhook and runtime.webhook_config else DELIVER_TIMEOUT_S
    await store.requeue_delivery(body["delivery_id"], now_ms + int((try_s + runtime.settings.lease_s) * 1000))


async def _attempt(runtime: Runtime, store: Store, body: dict[str, Any], now_ms: int) -> hooks_mod.Outcome:
    destination: str = body["destination"]
    if not destination.startswith(WEBHOOK_PREFIX):
        return await hooks_mod.attempt(runtime.hooks, body, now_ms, runtime.hook_retry_s)
    assert runtime.session is not None and runtime.webhook_config is not None
    disabled = await store.is_disabled(destination.removeprefix(WEBHOOK_PREFIX))
    return await webhooks.attempt(runtime.session, runtime.webhook_config, body, now_ms, disabled=disabled)


def build_worker_settings(
    settings: Settings,
    *,
    redis_pool: ArqRedis | None = None,
    store_redis: aioredis.Redis | None = None,
    clock: Clock = system_clock,
    hook_retry_s: Sequence[float] = hooks_mod.HOOK_RETRY_S,
) -> dict[str, Any]:
    """kwargs for ``arq.worker.Worker`` (or ``arq.run_worker``) from acetrack's settings.

    Args:
        settings: the one ``Settings`` object.
        redis_pool: an ``ArqRedis`` to use instead of connecting to ``settings.redis_url``.
        store_redis: a ``decode_responses`` client for the store (same server as ``redis_pool``).
        clock: the epoch-ms clock.
        hook_retry_s: delays between tries of a failing Python hook.
    """
    queue_name = f"{settings.key_prefix}:arq:queue"
    deliver_queue_name = f"{settings.key_prefix}:arq:deliveries"
    kwargs: dict[str, Any] = {
        "functions": [
            # a poll job's id is its claim's, never handed over twice: its result need not be kept
            func(poll_job, name=POLL_JOB, max_tries=1, timeout=max(60.0, settings.lease_s), keep_result=0),
        ],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "queue_name": queue_name,
        # a plain arq Worker given these polls every BUSY_TICK_S; ResilientWorker waits for work instead
        "poll_delay": BUSY_TICK_S,
        "max_jobs": MAX_CONCURRENT_JOBS,
        "keep_result": KEEP_RESULT_S,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "ctx": {
            "acetrack": Runtime(settings, clock, store_redis, hook_retry_s),
            "queue_name": queue_name,
            "deliver_queue_name": deliver_queue_name,
        },
    }
    if redis_pool is not None:
        kwargs["redis_pool"] = redis_pool
    elif settings.redis_url is not None:
        kwargs["redis_settings"] = redis_settings(settings.redis_url)
    else:
        raise ConfigError("ACETRACK_REDIS_URL is not set; e.g. redis://localhost:6379/0")
    return kwargs


def _deliver_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # deliveries run on their own queue and job slots: slow webhooks never hold up polling
    return {
        **kwargs,
        # a try's own failures are rescheduled through the outbox; arq retries only crashed jobs
        "functions": [func(deliver_job, name=DELIVER_JOB, max_tries=3, timeout=DELIVER_TIMEOUT_S)],
        "queue_name": kwargs["ctx"]["deliver_queue_name"],
    }


class ResilientWorker(arq.worker.Worker):
    """arq's ``Worker`` that waits for work instead of polling, and rides out a Redis outage.

    arq polls its queue every ``poll_delay``; each poll is a Redis round trip and an event-loop
    wake-up, which was most of an idle worker's CPU. Here a job this process enqueues wakes the
    worker at once (``job_ready``, set by ``ArqJobQueue``); otherwise it looks every
    ``BUSY_TICK_S`` while all its job slots are taken and every ``IDLE_TICK_S`` otherwise.

    arq 0.28 lets the first ``ConnectionError`` in its poll iteration end ``Worker.main``, which
    would leave the process up but running no jobs. Here an outage is one warning line and a
    back-off, and the loop goes on once Redis is back.
    """

    outage_s = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poll_delay_s = 0.0  # arq's sleep between polls: ``_wait_for_work`` replaces it
        self.job_ready = asyncio.Event()
        self.ctx.setdefault("local_workers", {})[self.queue_name] = self
        self._start_script: AsyncScript | None = None
        #: runs jobs handed to it (``run_direct``): from its first look at the queue (its pool is
        #: ready, its start-up done) until it is told to stop or its main loop ends
        self.accepting = False

    async def main(self) -> None:
        try:
            await super().main()
        finally:
            self.accepting = False

    def handle_sig(self, signum: signal.Signals) -> None:
        self.accepting = False  # a job queued from now on waits in the queue for a running worker
        runtime: Runtime | None = self.ctx.get("acetrack")
        if runtime is not None and runtime.scheduler is not None:
            runtime.scheduler.begin_stop()  # before the polls it cancels give their ids back
        super().handle_sig(signum)

    async def reserve_slot(self) -> bool:
        """Take a job slot for a job this process runs without the queue (``run_direct``); False
        when all are taken (the job then waits in the queue for a slot here or elsewhere)."""
        if not self.accepting or self.sem.locked() or self.job_counter >= self.max_jobs:
            return False
        await self.sem.acquire()  # not locked: returns at once
        self.job_counter += 1
        return True

    def run_direct(self, job_id: str, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Run a job in a slot of ``reserve_slot``, as arq would run it but without its Redis keys:
        same function, timeout, counters and cancellation on stop. ``kwargs`` need not serialise."""
        self._track(job_id, self._run_direct(job_id, name, args, kwargs))

    async def _run_direct(self, job_id: str, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        function = self.functions[name]
        try:
            async with asyncio.timeout(function.timeout_s):
                await function.coroutine({**self.ctx, "job_id": job_id, "job_try": 1}, *args, **kwargs)
            self.jobs_complete += 1
        except asyncio.CancelledError:
            # a stopping worker cancels its jobs; like arq's own, the job ends here (its claims
            # went back in ``poll_batch``), so the reap of finished tasks does not re-raise it
            self.jobs_retried += 1
        except Exception:
            self.jobs_failed += 1
            logger.exception("job %s failed", job_id)

    def _track(self, job_id: str, job: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(job)
        task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
        self.tasks[job_id] = task

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's ``start_jobs``, each start one round trip (``START_JOB_LUA``) instead of four."""
        for job_id_b in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            job_id = job_id_b.decode()
            try:
                score = await self._start_job(job_id)
            except BaseException:
                self._release_sem_dec_counter_on_complete()
                raise
            if score is None:  # started or finished elsewhere, or queued again for later
                self._release_sem_dec_counter_on_complete()
                continue
            self._track(job_id, self.run_job(job_id, score))

    async def _start_job(self, job_id: str) -> int | None:
        if self._start_script is None:
            self._start_script = self.pool.register_script(START_JOB_LUA)
        keys = [in_progress_key_prefix + job_id, self.queue_name]
        args: list[str | int] = [job_id, arq.utils.timestamp_ms(), int(self.in_progress_timeout_s * 1000)]
        score = await self._start_script(keys=keys, args=args)
        return None if score is None else int(float(score))

    async def _wait_for_work(self) -> None:
        if self.job_ready.is_set():
            return
        if self.burst:  # a burst run ends when the queue is empty: it must keep looking
            await asyncio.sleep(BUSY_TICK_S)
            return
        try:
            full = self.job_counter >= self.max_jobs  # only a job that ends can let it start more
            await asyncio.wait_for(self.job_ready.wait(), BUSY_TICK_S if full else IDLE_TICK_S)
        except TimeoutError:
            pass

    async def _redis_answers(self) -> bool:
        try:
            await self.pool.ping()
        except REDIS_DOWN:
            return False
        return True

    async def _poll_iteration(self) -> None:
        self.accepting = True
        await self._wait_for_work()
        self.job_ready.clear()  # before the read: a job enqueued during it wakes the next one
        try:
            await super()._poll_iteration()
        except REDIS_DOWN as e:
            if await self._redis_answers():
                # arq re-raises, one per iteration, the error of a job that ended during an outage
                # already over: no reason to wait
                logger.info("job queue %s: a job failed during the outage (%s)", self.queue_name, e)
                return
            self.outage_s = min(MAX_OUTAGE_SLEEP_S, max(0.5, self.outage_s * 2))
            logger.warning("job queue %s: redis unavailable (%s); retrying in %.1fs", self.queue_name, e, self.outage_s)
            await asyncio.sleep(self.outage_s)
            return
        if self.outage_s:
            logger.info("job queue %s: redis is back", self.queue_name)
        self.outage_s = 0.0


def create_workers(kwargs: dict[str, Any], **overrides: Any) -> list[arq.worker.Worker]:
    """The poll queue's and the delivery queue's arq workers, sharing one runtime."""
    return [ResilientWorker(**{**kw, **overrides}) for kw in (kwargs, _deliver_kwargs(kwargs))]


@asynccontextmanager
async def running_worker(kwargs: dict[str, Any], **overrides: Any) -> AsyncIterator[arq.worker.Worker]:
    """Run a worker process's arq workers in this event loop; yields the poll queue's worker.

    On exit they stop as on SIGTERM: running jobs are cancelled (polls give their claims back,
    deliveries go back to the outbox) and the loops end.
    """
    workers = create_workers(kwargs, handle_signals=False, **overrides)
    mains = [asyncio.create_task(worker.main()) for worker in workers]
    for worker, main in zip(workers, mains, strict=True):
        worker.main_task = main
    try:
        yield workers[0]
    finally:
        for worker in workers:
            worker.handle_sig(signal.SIGUSR1)  # cancels the main loop and the running jobs
        for worker, main in zip(workers, mains, strict=True):
            await asyncio.gather(main, *worker.tasks.values(), return_exceptions=True)
            worker.tasks.clear()
            await worker.close()


async def run_until_signal(kwargs: dict[str, Any]) -> None:
    """Run a worker in the foreground until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_worker(kwargs):
        await stop.wait()
    logger.info("worker stopped by signal")


async def _skip_redis_info(*_: Any) -> None:
    return None


def allow_fakeredis() -> None:
    """fakeredis rejects the ``INFO`` sections arq logs at start-up: skip that log line."""
    setattr(arq.worker, "log_redis_info", _skip_redis_info)  # noqa: B010 (patching a module attribute)


def arq_pool_over(connection_pool: aioredis.ConnectionPool) -> ArqRedis:
    """An ``ArqRedis`` with acetrack's JSON serializer over an existing connection pool."""
    return ArqRedis(pool_or_conn=connection_pool, job_serializer=serialize, job_deserializer=deserialize)
