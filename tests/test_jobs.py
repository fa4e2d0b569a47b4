"""The arq wiring: a queued poll starts once, while queued and due; a poll of this process runs here."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import arq.utils
from arq.constants import job_key_prefix
from arq.worker import func

from conftest import Backend, fast_settings
from worker import jobs
from worker.store import Claimed, PendingTask


async def test_a_job_starts_once_and_only_while_queued_and_due(backend: Backend) -> None:
    pool = backend.make_arq_pool()
    kwargs = jobs.build_worker_settings(fast_settings("http://127.0.0.1:9"), redis_pool=pool, store_redis=backend.redis)
    first, second = (jobs.ResilientWorker(**kwargs, handle_signals=False) for _ in range(2))
    queue = jobs.ArqJobQueue(pool, kwargs["queue_name"], "unused")
    await queue.poll("suno", "default", Claimed("c1", ["t1", "t2"]))
    job_id = f"{jobs.POLL_JOB}:c1"
    started = await first._start_job(job_id)
    assert started is not None and abs(started - arq.utils.timestamp_ms()) < 5_000
    assert await second._start_job(job_id) is None  # another worker (or this one) runs it already
    await pool.zadd(kwargs["queue_name"], {"later": arq.utils.timestamp_ms() + 60_000})
    assert await first._start_job("later") is None  # queued again for later: not yet
    assert await first._start_job("gone") is None  # finished and removed from the queue
    await first.start_jobs([job_id.encode(), b"later"])
    assert not first.tasks and first.job_counter == 0  # nothing started, every slot given back
    await pool.aclose(close_connection_pool=True)


async def test_a_poll_of_this_process_runs_here_without_the_queue_while_a_slot_is_free(backend: Backend) -> None:
    pool = backend.make_arq_pool()
    kwargs = jobs.build_worker_settings(fast_settings("http://127.0.0.1:9"), redis_pool=pool, store_redis=backend.redis)
    ran: list[tuple[str, list[str], object]] = []
    release = asyncio.Event()

    async def poll(ctx: dict[str, Any], service: str, token: str, claim_id: str, ids: list[str], pending: Any) -> int:
        ran.append((claim_id, ids, pending))
        await release.wait()
        if claim_id == "c4":
            raise RuntimeError("upstream parser bug")
        return len(ids)

    functions = [func(poll, name=jobs.POLL_JOB, timeout=5)]
    worker = jobs.ResilientWorker(**{**kwargs, "max_jobs": 1, "functions": functions}, handle_signals=False)
    queue = jobs.ArqJobQueue(pool, kwargs["queue_name"], "unused", kwargs["ctx"]["local_workers"])
    await queue.poll("suno", "default", Claimed("c1", ["t0"]))  # before its first look at the queue: queued, not run
    assert not ran and worker.job_ready.is_set()
    assert await pool.zscore(kwargs["queue_name"], f"{jobs.POLL_JOB}:c1") is not None
    worker.accepting = True  # as its first look at the queue does (and it clears the wake-up)
    worker.job_ready.clear()
    read = {"t1": PendingTask("{}", deadline_at_ms=1, missing_since_ms=None)}
    await queue.poll("suno", "default", Claimed("c2", ["t1", "t2"], 0, read))
    await asyncio.sleep(0)
    # run with the tasks as the claim read them (t2 had finished: not pending)
    assert ran == [("c2", ["t1", "t2"], read)] and not worker.job_ready.is_set()
    # run here: no job key and no queue entry another worker could start again
    assert not await pool.exists(job_key_prefix + f"{jobs.POLL_JOB}:c2")
    assert await pool.zscore(kwargs["queue_name"], f"{jobs.POLL_JOB}:c2") is None
    await queue.poll("suno", "default", Claimed("c3", ["t3"]))  # the only slot is taken: it waits in the queue
    await asyncio.sleep(0)
    assert len(ran) == 1 and worker.job_ready.is_set()
    assert await pool.zscore(kwargs["queue_name"], f"{jobs.POLL_JOB}:c3") is not None
    release.set()
    await asyncio.gather(*worker.tasks.values())
    assert worker.job_counter == 0 and worker.jobs_complete == 1  # the slot came back when the job ended
    await queue.poll("suno", "default", Claimed("c4", ["t4"]))  # a job that raises: counted, logged, slot back
    await asyncio.gather(*worker.tasks.values())
    assert worker.job_counter == 0 and worker.jobs_failed == 1
    worker.handle_sig(signal.SIGTERM)  # stopping: a job queued now is left to a running worker
    assert not await worker.reserve_slot()
    await pool.aclose(close_connection_pool=True)


async def test_a_poll_run_here_is_cancelled_on_stop_and_ends_quietly(backend: Backend) -> None:
    pool = backend.make_arq_pool()
    kwargs = jobs.build_worker_settings(fast_settings("http://127.0.0.1:9"), redis_pool=pool, store_redis=backend.redis)
    stopped: list[str] = []

    async def poll(ctx: dict[str, Any], service: str, token: str, claim_id: str, ids: list[str], pending: Any) -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.append(claim_id)
            raise
        return 0

    worker = jobs.ResilientWorker(**{**kwargs, "functions": [func(poll, name=jobs.POLL_JOB)]}, handle_signals=False)
    queue = jobs.ArqJobQueue(pool, kwargs["queue_name"], "unused", kwargs["ctx"]["local_workers"])
    worker.accepting = True
    await queue.poll("suno", "default", Claimed("c1", ["t1"]))
    await asyncio.sleep(0)
    worker.handle_sig(signal.SIGTERM)
    results = await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
    assert stopped == ["c1"] and results == [None]  # ended, not re-raised into arq's reap of finished tasks
    assert worker.job_counter == 0 and worker.jobs_retried == 1
    await pool.aclose(close_connection_pool=True)
