"""The arq wiring: a poll job starts once, and only while it is queued and due."""

from __future__ import annotations

import asyncio

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


async def test_a_job_queued_by_this_process_starts_by_id_without_reading_the_queue(backend: Backend) -> None:
    pool = backend.make_arq_pool()
    kwargs = jobs.build_worker_settings(fast_settings("http://127.0.0.1:9"), redis_pool=pool, store_redis=backend.redis)
    worker = jobs.ResilientWorker(**kwargs, handle_signals=False)
    ctx = kwargs["ctx"]
    queue = jobs.ArqJobQueue(pool, kwargs["queue_name"], "unused", ctx["job_ready"], 30_000, ctx["job_hints"])
    ran: list[str] = []
    reads: list[object] = []

    async def run_job(job_id: str, score: int) -> None:
        ran.append(job_id)

    async def zrangebyscore(*args: object, **kw: object) -> list[bytes]:
        reads.append(args)
        return []

    worker.run_job = run_job  # type: ignore[method-assign]
    worker.pool.zrangebyscore = zrangebyscore  # type: ignore[method-assign]
    await queue.poll("suno", "default", "c2", ["t1"])
    assert worker.hinted == [f"{jobs.POLL_JOB}:c2"] and worker.job_ready.is_set()
    await worker._poll_iteration()
    await asyncio.gather(*worker.tasks.values())
    assert ran == [f"{jobs.POLL_JOB}:c2"] and not reads and not worker.hinted
    await worker._poll_iteration()  # nothing hinted: arq reads the queue as usual
    assert len(reads) == 1
    await pool.aclose(close_connection_pool=True)
