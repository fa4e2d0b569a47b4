"""The arq wiring: a poll job starts once, and only while it is queued and due."""

from __future__ import annotations

import asyncio
import signal

import arq.utils

from conftest import Backend, fast_settings
from worker import jobs


async def test_a_job_starts_once_and_only_while_queued_and_due(backend: Backend) -> None:
    pool = backend.make_arq_pool()
    kwargs = jobs.build_worker_settings(fast_settings("http://127.0.0.1:9"), redis_pool=pool, store_redis=backend.redis)
    first, second = (jobs.ResilientWorker(**kwargs, handle_signals=False) for _ in range(2))
    queue = jobs.ArqJobQueue(pool, kwargs["queue_name"], "unused")
    await queue.poll("suno", "default", "c1", ["t1", "t2"])
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


async def test_a_job_queued_by_this_process_starts_here_at_once_while_a_slot_is_free(backend: Backend) -> None:
    pool = backend.make_arq_pool()
    kwargs = jobs.build_worker_settings(fast_settings("http://127.0.0.1:9"), redis_pool=pool, store_redis=backend.redis)
    worker = jobs.ResilientWorker(**{**kwargs, "max_jobs": 1}, handle_signals=False)
    queue = jobs.ArqJobQueue(pool, kwargs["queue_name"], "unused", kwargs["ctx"]["local_workers"])
    ran: list[str] = []
    release = asyncio.Event()

    async def run_job(job_id: str, score: int) -> None:
        ran.append(job_id)
        await release.wait()

    worker.run_job = run_job  # type: ignore[method-assign]
    await queue.poll("suno", "default", "c1", ["t0"])  # before its first look at the queue: not running yet
    assert not ran and worker.job_ready.is_set()
    worker.accepting = True  # as its first look at the queue does (and it clears the wake-up)
    worker.job_ready.clear()
    await queue.poll("suno", "default", "c2", ["t1"])
    await asyncio.sleep(0)
    assert ran == [f"{jobs.POLL_JOB}:c2"] and not worker.job_ready.is_set()
    # started in the same round trip: marked in progress, so no other worker's read starts it again
    assert await worker._start_job(f"{jobs.POLL_JOB}:c2") is None
    await queue.poll("suno", "default", "c3", ["t2"])  # the only slot is taken: it waits in the queue
    await asyncio.sleep(0)
    assert ran == [f"{jobs.POLL_JOB}:c2"] and worker.job_ready.is_set()
    assert await pool.zscore(kwargs["queue_name"], f"{jobs.POLL_JOB}:c3") is not None
    release.set()
    await asyncio.gather(*worker.tasks.values())
    assert worker.job_counter == 0  # the slot came back when the job ended
    worker.handle_sig(signal.SIGTERM)  # stopping: a job queued now is left to a running worker
    assert not await worker.reserve_slot()
    await pool.aclose(close_connection_pool=True)
