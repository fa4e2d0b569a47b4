"""Where the scheduler hands work: arq jobs, enqueued through ``ArqRedis.enqueue_job``.

A claimed batch becomes one ``poll`` job, and one try of a delivery one ``deliver`` job; whichever
worker has a free slot runs it. A poll job's id is its claim's and expires with the claim's lease
(by then its ids are due again and claimed anew). A delivery try's id is the delivery's and its due
time, so the same try handed over twice runs once.

Two things only this process can know are kept here, in memory: the tasks as the claim read
them, so a poll this process runs starts without reading them again (one that another process
runs reads them itself); and which delivery jobs run here now, so slow webhooks never take every
job slot and hold polls up (a delivery job that finds ``DELIVERY_SLOTS`` taken is deferred).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from arq.connections import ArqRedis

from worker.store import Claimed, PendingTask

POLL_JOB = "poll"
DELIVER_JOB = "deliver"
#: job slots of one worker process (polls and deliveries share them)
MAX_JOBS = 100
#: of those, how many deliveries one process runs at a time: polls always have the rest
DELIVERY_SLOTS = 50


class ArqJobQueue:
    """The scheduler's job queue over arq's pool."""

    def __init__(
        self,
        pool: ArqRedis,
        queue_name: str,
        *,
        lease_ms: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.queue_name = queue_name
        self.lease_ms = lease_ms
        #: delivery jobs this process runs now
        self.delivering: set[str] = set()
        self._monotonic = monotonic
        #: claim id -> (when it is forgotten, the tasks as the claim read them)
        self._claimed: dict[str, tuple[float, dict[str, PendingTask] | None]] = {}

    async def poll(self, service: str, token: str, claimed: Claimed) -> None:
        """Enqueue one poll job for a claimed batch."""
        now_s = self._monotonic()
        for claim_id in [c for c, (until_s, _) in self._claimed.items() if until_s < now_s]:
            del self._claimed[claim_id]  # polled by another process, or expired unstarted
        self._claimed[claimed.claim_id] = (now_s + self.lease_ms / 1000, claimed.pending)
        await self.pool.enqueue_job(
            POLL_JOB,
            service,
            token,
            claimed.claim_id,
            claimed.ids,
            _job_id=f"{POLL_JOB}:{claimed.claim_id}",
            _queue_name=self.queue_name,
            _expires=timedelta(milliseconds=self.lease_ms),
        )

    def pending_of(self, claim_id: str) -> dict[str, PendingTask] | None:
        """The tasks as this process's claim read them (None: claimed elsewhere, or not read)."""
        entry = self._claimed.pop(claim_id, None)
        return None if entry is None else entry[1]

    async def deliver(self, delivery_id: str, due_ms: int, leased_until_ms: int) -> None:
        """Enqueue one try of a delivery; the same try handed over twice (same due time) runs once.
        ``leased_until_ms``: the outbox lease this hand-over holds (a job whose lease was taken over
        by a later hand-over does nothing)."""
        job_id = f"{DELIVER_JOB}:{delivery_id}:{due_ms}"
        await self.pool.enqueue_job(
            DELIVER_JOB, delivery_id, leased_until_ms, _job_id=job_id, _queue_name=self.queue_name
        )

    def start_delivery(self, job_id: str) -> bool:
        """Count a delivery job as running here; False when ``DELIVERY_SLOTS`` already run (it waits)."""
        if len(self.delivering) >= DELIVERY_SLOTS:
            return False
        self.delivering.add(job_id)
        return True

    def delivery_ended(self, job_id: str) -> None:
        """A delivery job that ``start_delivery`` counted ended."""
        self.delivering.discard(job_id)
