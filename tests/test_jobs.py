"""The arq side: batches and delivery tries become arq jobs (public API), and the queue's bookkeeping."""

from __future__ import annotations

from pathlib import Path

from arq.connections import ArqRedis
from support import Backend

from worker.queue import DELIVERY_SLOTS, POLL_JOB, ArqJobQueue
from worker.store import Claimed, PendingTask


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


async def _queued(pool: ArqRedis, queue_name: str) -> dict[str, tuple[str, tuple[object, ...]]]:
    return {job.job_id: (job.function, tuple(job.args)) for job in await pool.queued_jobs(queue_name=queue_name)}


async def test_a_claimed_batch_is_one_poll_job_whose_id_is_the_claims(backend: Backend) -> None:
    pool = backend.make_arq_pool()
    queue = ArqJobQueue(pool, "acetrack:arq:queue", lease_ms=5000)
    await queue.poll("suno", "default", Claimed("c1", ["t1", "t2"]))
    await queue.poll("suno", "default", Claimed("c1", ["t1", "t2"]))  # handed over twice: still one job
    queued = await _queued(pool, "acetrack:arq:queue")
    assert queued == {f"{POLL_JOB}:c1": (POLL_JOB, ("suno", "default", "c1", ["t1", "t2"]))}
    await pool.aclose(close_connection_pool=True)


async def test_the_claims_rows_are_handed_to_a_poll_run_here_once(backend: Backend) -> None:
    clock = FakeClock()
    queue = ArqJobQueue(backend.make_arq_pool(), "q", lease_ms=5000, monotonic=clock)
    rows = {"t1": PendingTask.__new__(PendingTask)}
    await queue.poll("suno", "default", Claimed("c1", ["t1"], pending=rows))
    await queue.poll("suno", "default", Claimed("c2", ["t2"], pending=None))
    assert queue.pending_of("c1") is rows
    assert queue.pending_of("c1") is None  # a second run (arq retried it) reads the tasks itself
    assert queue.pending_of("c3") is None  # claimed by another process
    clock.now_s += 6  # a claim polled elsewhere is forgotten after its lease
    await queue.poll("suno", "default", Claimed("c4", ["t4"]))
    assert queue.pending_of("c2") is None and queue.pending_of("c4") is None
    await queue.pool.aclose(close_connection_pool=True)


async def test_deliveries_leave_job_slots_for_polls(backend: Backend) -> None:
    pool = backend.make_arq_pool()
    queue = ArqJobQueue(pool, "q", lease_ms=5000)
    await queue.deliver("d1", 1000, 31_000)
    await queue.deliver("d1", 1000, 31_000)  # the same try handed over twice: one job
    assert list(await _queued(pool, "q")) == ["deliver:d1:1000"]
    assert all(queue.start_delivery(f"deliver:d{i}:1") for i in range(DELIVERY_SLOTS))
    assert not queue.start_delivery("deliver:one-too-many:1")  # the job is deferred, its slot stays free
    queue.delivery_ended("deliver:d0:1")
    assert queue.start_delivery("deliver:one-too-many:1")
    await pool.aclose(close_connection_pool=True)


def test_no_private_name_of_arq_redis_py_or_asyncio_is_used() -> None:
    """The names the old worker relied on, none of which those libraries document or promise to keep."""
    private = (
        "_AsyncHiredisParser",
        "NOT_ENOUGH_DATA",
        "StreamReader._buffer",
        "._buffer",
        "_available_connections",
        "_in_use_connections",
        "log_redis_info",
        "_poll_iteration",
        "_release_sem_dec_counter_on_complete",
        "_start_job",
        "job_key_prefix",
        "in_progress_key_prefix",
        "serialize_job",
        "arq.worker.Worker)",  # a subclass of arq's Worker
    )
    root = Path(__file__).resolve().parents[1]
    folders = ("worker", "config", "client", "bench", "tests")  # the tests too: none may lean on them either
    this = Path(__file__).resolve()
    sources = {p: p.read_text() for folder in folders for p in (root / folder).rglob("*.py") if p != this}
    found = [(p.name, name) for p, text in sources.items() for name in private if name in text]
    assert len(sources) > 20 and found == []
