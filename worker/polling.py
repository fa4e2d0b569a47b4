"""One batch poll: ask the upstream about claimed ids once, decide, write back (DESIGN.md §1, §3).

Engine-neutral: the job wiring (``jobs``) calls ``poll_batch``; nothing here knows arq.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from worker import cadence, metrics
from worker.api import UpstreamClient
from worker.cadence import Policy
from worker.clock import Clock
from worker.errors import (
    ConfigError,
    UnknownService,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTooLarge,
    UpstreamUnavailable,
)
from worker.models import Reason, Record
from worker.plan import BatchPlan, PlanContext, plan_batch, plan_failure
from worker.store import PendingTask, Store
from worker.wire import UpstreamTask

logger = logging.getLogger(__name__)

#: how long a token that got 401/403 stays paused before one batch probes it again
AUTH_PAUSE_S = 300.0
#: service back-off after a 429/5xx without Retry-After: base and cap
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
#: how long what a service's finished tasks teach is reused before it is read again
LEARN_EVERY_S = 5.0


@dataclass
class Poller:
    """What a batch poll needs, built once per worker process."""

    store: Store
    api: UpstreamClient
    clock: Clock
    policy: Policy
    rate_limit_rps: float
    #: ids per request (``ACETRACK_BATCH_SIZE``)
    batch_size: int = 50
    destinations: Mapping[str, Sequence[str]] = field(default_factory=dict)
    callback_events: frozenset[str] = frozenset()
    rng: cadence.Rng = random.random
    paused_tokens: set[str] = field(default_factory=set)
    #: the p95 detection latency polls aim at (``ACETRACK_TARGET_P95_S``; None: ``policy.poll_s`` as set)
    target_p95_s: float | None = None
    #: where the interval in effect per service is shared with the claim loop (its coalesce window)
    pace: cadence.Pace | None = None
    #: called with the queue and the soonest due time each batch's write scheduled (the claim loop's
    #: ``expect``)
    on_schedule: Callable[[str, str, int], None] | None = None
    #: called when a batch's write queued hook deliveries (wakes the outbox loop)
    on_deliveries: Callable[[], None] | None = None
    #: what each service's finished tasks teach, with when it was read (ms)
    _learned: dict[str, tuple[int, cadence.Lifetimes]] = field(default_factory=dict)

    async def poll_batch(
        self,
        service: str,
        token: str,
        claim_id: str,
        ids: Sequence[str],
        pending: Mapping[str, PendingTask] | None = None,
    ) -> int:
        """Poll ``ids`` (claimed under ``claim_id``) with one ``retrieve_batch``; returns tasks finished.
        ``pending``: the tasks as the claim read them (None: read them here)."""
        try:
            return await self._poll(service, token, claim_id, ids, pending)
        except asyncio.CancelledError:
            # a stopping worker gives its claims back at once instead of waiting out the lease
            await asyncio.shield(self.store.release(service, token, claim_id, ids, self.clock()))
            raise

    async def _poll(
        self, service: str, token: str, claim_id: str, ids: Sequence[str], pending: Mapping[str, PendingTask] | None
    ) -> int:
        if pending is None:
            pending = await self.store.load_pending(service, ids)
        if not pending:
            return 0
        try:
            found = await self._retrieve(service, token, list(pending))
        except UpstreamUnavailable as e:
            await self._back_off(service, token, claim_id, list(pending), e)
            return 0
        except UpstreamAuthError as e:
            await self._pause(service, token, claim_id, list(pending), e)
            return 0
        except UnknownService as e:
            return await self._fail_all(pending, Reason.UNKNOWN_SERVICE, e)
        except UpstreamRejected as e:
            return await self._split(service, token, claim_id, pending, e)
        except ConfigError as e:  # a task names a token this worker does not have
            return await self._fail_all(pending, Reason.REJECTED, e)
        self.paused_tokens.discard(token)
        return await self.apply(service, token, claim_id, pending, found)

    async def _retrieve(self, service: str, token: str, ids: list[str]) -> Mapping[str, UpstreamTask]:
        started_s = asyncio.get_running_loop().time()
        code = "200"
        try:
            return await self.api.retrieve_batch(service, ids, token)
        except UpstreamError as e:
            code = str(e.status) if e.status else "network"
            raise
        finally:
            metrics.REQUESTS.labels(service, code).inc()
            metrics.REQUEST_SECONDS.labels(service).observe(asyncio.get_running_loop().time() - started_s)
            metrics.BATCH_SIZE.observe(len(ids))

    async def apply(
        self,
        service: str,
        token: str,
        claim_id: str,
        pending: Mapping[str, PendingTask],
        found: Mapping[str, UpstreamTask],
    ) -> int:
        """Decide every pending task from what the upstream said and write the outcomes back at once
        (the request went through, so the service's past failures are forgotten in that write)."""
        ctx = await self._context(service, token)
        plan = plan_batch(pending, found, ctx)
        metrics.OBSERVATIONS.labels(service).inc(len(pending))
        return await self._write(service, token, plan, claim_id, ctx.now_ms, answered=True)

    async def _context(self, service: str, token: str) -> PlanContext:
        now_ms = self.clock()
        lifetimes = await self._lifetimes(service, now_ms)
        policy = cadence.with_target(self.policy, self.target_p95_s, lifetimes.late_ratio_p95)
        if self.pace is not None:
            self.pace.interval_s[service] = policy.poll_s
        demand = cadence.polling_demand(lifetimes.pending, policy, self.batch_size, self.rate_limit_rps)
        policy = cadence.with_callbacks(policy, lifetimes.callback_share, demand)
        backlog_ms = 0 if self.pace is None else self.pace.backlog_ms(service, token, now_ms)
        return PlanContext(now_ms, policy, lifetimes, self.rng, self.destinations, self.callback_events, backlog_ms)

    async def _lifetimes(self, service: str, now_ms: int) -> cadence.Lifetimes:
        # a batch every few ms need not re-read and re-sort 200 samples (a Redis round trip and ~1 ms of
        # CPU): lifetimes of tens of seconds are learned well enough from samples a few seconds old
        read_ms, learned = self._learned.get(service, (0, cadence.Lifetimes()))
        if now_ms - read_ms >= LEARN_EVERY_S * 1000 or now_ms < read_ms:
            now = await self.store.learning(service)
            share = cadence.callback_share(now.finished, now.called)
            learned = dataclasses.replace(
                cadence.lifetimes_from(now.samples), callback_share=share, pending=now.pending
            )
            self._learned[service] = (now_ms, learned)
        return learned

    async def _write(
        self, service: str, token: str, plan: BatchPlan, claim_id: str, now_ms: int, *, answered: bool = False
    ) -> int:
        store = self.store
        calls = [
            store.update_call(u.record, claim_id, now_ms, next_due_ms=u.next_due_ms, sched=u.sched, events=u.events)
            for u in plan.updates
        ]
        calls += [store.finish_call(f.record, now_ms, f.events, sample=f.sample) for f in plan.finishes]
        if plan.touched:
            calls.append(store.touch_call(service, token, claim_id, plan.touched))
        written = await store.run_calls(calls, clear_backoff=(service, token) if answered else None)
        soonest_ms = plan.soonest_due_ms
        if self.on_schedule is not None and soonest_ms is not None:
            # the claim loop learns when the soonest of these falls due again, without a round trip
            self.on_schedule(service, token, soonest_ms)
        if self.on_deliveries is not None and plan.has_deliveries:
            self.on_deliveries()
        finished = 0
        for finish, wrote in zip(plan.finishes, written[len(plan.updates) :], strict=False):
            if wrote:
                _count_terminal(finish.record, now_ms)
                finished += 1
        return finished

    async def _back_off(
        self, service: str, token: str, claim_id: str, ids: list[str], error: UpstreamUnavailable
    ) -> None:
        failures = await self.store.backoff_failures(service, token)
        delay_s = cadence.backoff_s(failures, BACKOFF_BASE_S, BACKOFF_CAP_S, error.retry_after_s, self.rng)
        until_ms = self.clock() + int(delay_s * 1000)
        await self.store.back_off(service, token, until_ms)
        metrics.BACKOFFS.labels(service).inc()
        await self.store.release(service, token, claim_id, ids, until_ms)
        logger.warning("%s/%s backing off %.1fs after %r", service, token, delay_s, error)

    async def _pause(self, service: str, token: str, claim_id: str, ids: list[str], error: UpstreamAuthError) -> None:
        until_ms = self.clock() + int(AUTH_PAUSE_S * 1000)
        await self.store.pause_token(token, int(AUTH_PAUSE_S * 1000), str(error))
        await self.store.release(service, token, claim_id, ids, until_ms)
        if token not in self.paused_tokens:
            logger.error(
                "token %r was refused (%s); polling with it is paused for %.0fs and its tasks stay pending. "
                "Check ACETRACK_API_TOKEN / ACETRACK_API_TOKENS.",
                token,
                error,
                AUTH_PAUSE_S,
            )
        self.paused_tokens.add(token)

    async def _split(
        self, service: str, token: str, claim_id: str, pending: Mapping[str, PendingTask], error: UpstreamRejected
    ) -> int:
        ids = list(pending)
        if len(ids) == 1 or not (isinstance(error, UpstreamTooLarge) or error.status == 400):
            return await self._fail_all(pending, Reason.REJECTED, error)
        half = len(ids) // 2
        logger.info(
            "%s batch of %d refused (%s); retrying as %d + %d", service, len(ids), error.status, half, len(ids) - half
        )
        finished = 0
        for part in (ids[:half], ids[half:]):
            await self._wait_for_budget(token)
            finished += await self._poll(service, token, claim_id, part, None)  # read again after the wait
        return finished

    async def _wait_for_budget(self, token: str) -> None:
        # the split's extra request spends the shared budget like any other
        while (wait_ms := await self.store.spend(token, self.clock(), self.rate_limit_rps)) > 0:
            await asyncio.sleep(wait_ms / 1000)

    async def _fail_all(
        self, pending: Mapping[str, PendingTask], reason: Reason, error: UpstreamRejected | ConfigError
    ) -> int:
        first = next(iter(pending.values())).record  # decoded above already
        ctx = await self._context(first.service, first.token)
        code = (error.code or str(error.status)) if isinstance(error, UpstreamRejected) else "unknown_token"
        plan = plan_failure(pending, reason, {"code": code, "message": str(error)}, ctx)
        finished = await self._write(first.service, first.token, plan, "", ctx.now_ms)
        logger.warning("%d task(s) failed with reason %s: %s", finished, reason.value, error)
        return finished


def _count_terminal(record: Record, now_ms: int) -> None:
    reason = record.reason.value if record.reason else ""
    metrics.TERMINAL.labels(record.service, record.state.value, reason).inc()
    if record.upstream_finished_at is not None:
        detection_s = max(0.0, now_ms / 1000 - record.upstream_finished_at)
        metrics.DETECTION_SECONDS.labels(record.service).observe(detection_s)
