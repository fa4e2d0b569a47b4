"""The simulator's callbacks: ``POST callback_url`` when a task finishes, as the real upstream does.

A task's callback goes to its own ``callback_url`` (given when the task is added), else to the
simulator's ``callback_url`` knob (one URL for all). The body is the task's ``response`` as the
Tasks API would answer it at that moment (``{success, task_id, data}``; Producer: ``{task_id,
data}``). ``callback_loss`` drops that share of callbacks (never sent), and each one sent is
``callback_delay_s`` (a uniform range) late, so a tracker that uses callbacks as hints can be tested
against lost and late ones. Sends are fire-and-forget: a refused or failed POST is logged, not retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp

from worker.sim_tasks import SimTask, build_record

logger = logging.getLogger(__name__)

#: how long one callback POST may take before it is given up
SEND_TIMEOUT_S = 10.0


def finish_after_s(task: SimTask) -> float | None:
    """Seconds after creation at which ``task`` is final upstream (None: never, or no finish time)."""
    if task.script in ("unknown", "stuck", "legacy"):
        return None
    if task.script == "error":
        return task.run_s
    return task.clip_finish_s(task.clip_count - 1)


@dataclass
class Sent:
    """One callback the simulator made: where, for which task, and the answer's status (0: failed)."""

    url: str
    task_id: str
    status: int


@dataclass
class CallbackSender:
    """Schedules and sends each task's callback (``schedule``), while the app runs."""

    default_url: str | None
    loss: float
    delay_s: tuple[float, float]
    clock: Callable[[], float]
    rng: random.Random = field(default_factory=random.Random)
    #: the callbacks sent so far (tests and the bench read it)
    sent: list[Sent] = field(default_factory=list)
    lost: int = 0
    _session: aiohttp.ClientSession | None = None
    _pending: set[asyncio.Task[None]] = field(default_factory=set)

    def schedule(self, task: SimTask, url: str | None) -> None:
        """Send ``task``'s callback when it finishes, unless it is lost (or goes nowhere)."""
        target, after_s = url or self.default_url, finish_after_s(task)
        if target is None or after_s is None or self._session is None:
            return
        if self.rng.random() < self.loss:
            self.lost += 1
            return
        send_at_s = task.created_at + after_s + self.rng.uniform(*self.delay_s)
        job = asyncio.get_running_loop().create_task(self._send_at(task, target, send_at_s))
        self._pending.add(job)
        job.add_done_callback(self._pending.discard)

    async def _send_at(self, task: SimTask, url: str, send_at_s: float) -> None:
        await asyncio.sleep(max(0.0, send_at_s - self.clock()))
        body = build_record(task, self.clock())["response"]
        assert self._session is not None  # scheduled only while the app runs
        try:
            async with self._session.post(url, json=body) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            logger.warning("sim callback for %s to %s failed: %s", task.id, url, e)
            status = 0
        self.sent.append(Sent(url, task.id, status))

    async def running(self, _app: object) -> AsyncIterator[None]:
        """An aiohttp cleanup context: one client session while the app runs; pending sends are
        cancelled when it stops."""
        timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self._session = session
            try:
                yield
            finally:
                self._session = None
                for job in list(self._pending):
                    job.cancel()
                await asyncio.gather(*self._pending, return_exceptions=True)
