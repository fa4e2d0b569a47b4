"""The arq side of a worker, through arq's public API only: its jobs and its ``WorkerSettings``.

``worker_settings(settings)`` returns the keyword arguments of ``arq.worker.Worker``: the ``poll``
and ``deliver`` jobs, the ``prune`` cron job, start-up (``Runtime.start``: the store, one
``ClientSession``, the scheduler's loops) and shutdown. ``worker.WorkerSettings`` is the same, as
the class ``arq worker.WorkerSettings`` runs. Jobs are serialised as JSON, never pickle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from arq import Retry, Worker, cron
from arq.connections import ArqRedis
from arq.worker import func

from config import Settings
from worker import codec, deliver
from worker import hooks as hooks_mod
from worker.clock import Clock, system_clock
from worker.connect import FULL_LOG, arq_settings, is_full
from worker.parts import Parts
from worker.queue import DELIVER_JOB, MAX_JOBS, POLL_JOB
from worker.runtime import Runtime, runtime_of
from worker.startup import WorkerPlan, check_worker
from worker.store import arq_queue_name

logger = logging.getLogger(__name__)

PRUNE_JOB = "prune"
#: arq keeps a finished delivery try's id this long, so a try handed over twice runs once
KEEP_RESULT_S = 60
#: a delivery job that finds every delivery slot of its worker taken waits this long in the queue
DELIVERY_BUSY_DEFER_S = 0.5
#: a delivery try that met a full Redis waits this long before it is tried again
DELIVERY_FULL_DEFER_S = 5.0
#: arq tries of one delivery job: deferrals for want of a slot count too (if they run out, the
#: delivery is handed over again when its lease in the outbox ends: it is not lost)
DELIVER_MAX_TRIES = 200


def serialize(data: dict[str, Any]) -> bytes:
    """arq job serializer: JSON (other languages can read the queue; nothing is unpickled).

    arq stores a failed job's exception as its result: it is written as its text."""
    try:
        return codec.dumps(data)
    except TypeError:
        return json.dumps(data, separators=(",", ":"), default=repr).encode()


def deserialize(raw: bytes) -> dict[str, Any]:
    """arq job deserializer."""
    data: dict[str, Any] = codec.loads(raw)
    return data


async def startup(ctx: dict[str, Any]) -> None:
    """arq ``on_startup``: build the runtime over arq's pool and start the scheduler's loops."""
    await runtime_of(ctx).start(ctx["redis"], ctx["queue_name"])


async def shutdown(ctx: dict[str, Any]) -> None:
    """arq ``on_shutdown``: stop the loops and close the session."""
    await runtime_of(ctx).stop()


async def poll_job(ctx: dict[str, Any], service: str, token: str, claim_id: str, ids: list[str]) -> int:
    """Poll one claimed batch with one ``retrieve_batch``; returns how many tasks finished."""
    with runtime_of(ctx).job() as parts:
        pending = parts.queue.pending_of(claim_id)  # None when another process claimed it: read here
        try:
            return await parts.poller.poll_batch(service, token, claim_id, ids, pending)
        except Exception as e:
            if not is_full(e):
                raise
            # Redis refused the write: the tasks keep their state, the claim's lease hands them over again
            FULL_LOG.note("poll", e, time.monotonic())
            return 0


async def deliver_job(ctx: dict[str, Any], delivery_id: str, leased_until_ms: int | None = None) -> str:
    """Run one try of a delivery; a failed try goes back to the outbox for the next one."""
    runtime = runtime_of(ctx)
    with runtime.job() as parts:
        return await _deliver(runtime, parts, ctx["job_id"], delivery_id, leased_until_ms)


async def _deliver(runtime: Runtime, parts: Parts, job_id: str, delivery_id: str, leased_until_ms: int | None) -> str:
    if not parts.queue.start_delivery(job_id):
        # every delivery slot of this process is taken (slow webhooks): back to the queue, so the
        # slot stays free for polls; any worker may take it then
        raise Retry(defer=DELIVERY_BUSY_DEFER_S)
    try:
        return await deliver.run_try(runtime, delivery_id, leased_until_ms)
    except Exception as e:
        if not is_full(e):
            raise
        FULL_LOG.note("delivery", e, time.monotonic())  # the delivery stays in the outbox, leased
        raise Retry(defer=DELIVERY_FULL_DEFER_S) from e
    finally:
        parts.queue.delivery_ended(job_id)
        parts.scheduler.nudge("outbox")  # a slot is free: hand over the next due delivery


async def prune_job(ctx: dict[str, Any]) -> int:
    """Cron, once a minute across all workers: drop index entries of records that expired."""
    parts = runtime_of(ctx).started
    return await parts.store.prune(runtime_of(ctx).clock())


def queue_name_of(settings: Settings) -> str:
    """The arq queue of the workers of one key prefix."""
    return arq_queue_name(settings.key_prefix)


def worker_settings(
    settings: Settings,
    *,
    plan: WorkerPlan | None = None,
    redis_pool: ArqRedis | None = None,
    store_redis: aioredis.Redis | None = None,
    clock: Clock = system_clock,
    hook_retry_s: Sequence[float] = hooks_mod.HOOK_RETRY_S,
    own_signals: bool = False,
) -> dict[str, Any]:
    """Keyword arguments of ``arq.worker.Worker`` for acetrack's settings.

    Args:
        settings: the one ``Settings`` object.
        plan: the checked configuration (``check_worker(settings)`` when None; raises ``ConfigError``).
        redis_pool: an ``ArqRedis`` to use instead of connecting to ``settings.redis_url``.
        store_redis: a ``decode_responses`` client for the store (same server as the pool).
        clock: the epoch-ms clock.
        hook_retry_s: delays between tries of a failing Python hook.
        own_signals: the worker's start-up installs SIGINT/SIGTERM handlers that stop claiming,
            then end arq's main loop (``arq worker.WorkerSettings``); else the caller stops it.
    """
    plan = plan or check_worker(settings, needs_redis_url=redis_pool is None)
    queue_name = queue_name_of(settings)
    kwargs: dict[str, Any] = {
        "functions": [
            # a poll job's id is its claim's, never handed over twice: its result need not be kept;
            # a poll that fails is not retried, its claim's lease hands the ids over again
            func(poll_job, name=POLL_JOB, max_tries=1, timeout=max(60.0, settings.lease_s), keep_result=0),
            # a try's own failures are rescheduled through the outbox; arq retries crashed or deferred jobs
            func(deliver_job, name=DELIVER_JOB, max_tries=DELIVER_MAX_TRIES, timeout=deliver.TRY_TIMEOUT_S),
        ],
        "cron_jobs": [cron(prune_job, name=PRUNE_JOB, second=0, timeout=60, max_tries=1)],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "queue_name": queue_name,
        # how long a job waits for a worker to look: DESIGN.md §3 allows ~200 ms from due to poll
        "poll_delay": settings.job_poll_delay_s,
        "max_jobs": MAX_JOBS,
        "keep_result": KEEP_RESULT_S,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "ctx": {
            "acetrack": Runtime(settings, plan, clock, store_redis, hook_retry_s, own_signals=own_signals),
            "queue_name": queue_name,
        },
        # arq's own handlers would cancel the polls before the scheduler stops claiming
        "handle_signals": False,
    }
    if redis_pool is not None:
        kwargs["redis_pool"] = redis_pool
    elif plan.redis_url is not None:
        kwargs["redis_settings"] = arq_settings(plan.redis_url)
    return kwargs


def arq_pool_over(connection_pool: aioredis.ConnectionPool) -> ArqRedis:
    """An ``ArqRedis`` with acetrack's JSON serializer over an existing connection pool."""
    return ArqRedis(connection_pool=connection_pool, job_serializer=serialize, job_deserializer=deserialize)


def runtime_of_worker(worker: Worker) -> Runtime:
    """The runtime of a worker that ``worker_settings`` made."""
    return runtime_of(worker.ctx)


async def stop(worker: Worker) -> None:
    """Stop a worker run without arq's signal handlers: claim nothing more, then arq's ``close``
    (running jobs are cancelled: polls give their claims back, deliveries go back to the outbox)."""
    runtime = runtime_of_worker(worker)
    if runtime.parts is not None:
        runtime.parts.scheduler.begin_stop()  # before the polls it cancels give their ids back
    try:
        await worker.close()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this stop itself is being cancelled
        # a job cancelled while arq wrote its end re-raises the cancellation out of ``close``,
        # which then skips the rest: do it here, once every job ended (polls give their claims back)
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        await runtime.stop()
        await worker.pool.aclose(close_connection_pool=True)


@asynccontextmanager
async def running_worker(kwargs: dict[str, Any], **overrides: Any) -> AsyncIterator[Worker]:
    """Run one arq worker in this event loop (for tests, the demo and the benchmark); yields it.

    On exit it stops as on SIGTERM (``stop``).
    """
    worker = Worker(**{**kwargs, "handle_signals": False, **overrides})
    run = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        await stop(worker)
        await asyncio.gather(run, return_exceptions=True)
