"""One batch poll: ask the upstream about claimed ids once, decide, write back (DESIGN.md §1, §3).

Engine-neutral: the job wiring (``jobs``) calls ``poll_batch``; nothing here knows arq.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from worker import classify, metrics
from worker.api import UpstreamClient
from worker.classify import Policy
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
from worker.events import build_events
from worker.models import EventType, Reason, Record, UpstreamTask
from worker.store import PendingTask, ScriptCall, Store

logger = logging.getLogger(__name__)

#: how long a token that got 401/403 stays paused before one batch probes it again
AUTH_PAUSE_S = 300.0
#: service back-off after a 429/5xx without Retry-After: base and cap
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0


@dataclass
class Poller:
    """What a batch poll needs, built once per worker process."""

    store: Store
    api: UpstreamClient
    clock: Clock
    policy: Policy
    rate_limit_rps: float
    destinations: Mapping[str, Sequence[str]] = field(default_factory=dict)
    callback_events: frozenset[str] = frozenset()
    rng: classify.Rng = random.random
    paused_tokens: set[str] = field(default_factory=set)

    async def poll_batch(self, service: str, token: str, claim_id: str, ids: Sequence[str]) -> int:
        """Poll ``ids`` (claimed under ``claim_id``) with one ``retrieve_batch``; returns tasks finished."""
        try:
            return await self._poll(service, token, claim_id, ids)
        except asyncio.CancelledError:
            # a stopping worker gives its claims back at once instead of waiting out the lease
            await asyncio.shield(self.store.release(service, token, claim_id, ids, self.clock()))
            raise

    async def _poll(self, service: str, token: str, claim_id: str, ids: Sequence[str]) -> int:
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
        await self.store.clear_backoff(service, token)
        self.paused_tokens.discard(token)
        return await self.apply(service, claim_id, pending, found)

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
        self, service: str, claim_id: str, pending: Mapping[str, PendingTask], found: Mapping[str, UpstreamTask]
    ) -> int:
        """Decide every pending task from what the upstream said and write the outcomes back at once."""
        now_ms = self.clock()
        lifetimes = classify.lifetimes_from(await self.store.lifetimes_s(service))
        decisions = [
            (
                task.record,
                classify.decide(
                    found.get(task_id),
                    task.record,
                    now_ms,
                    deadline_at_ms=task.deadline_at_ms,
                    missing_since_ms=task.missing_since_ms,
                    policy=self.policy,
                    usual_lifetime_s=lifetimes.usual_s,
                    earliest_lifetime_s=lifetimes.earliest_s,
                    seen=task.seen,
                    misses=task.misses,
                    rng=self.rng,
                ),
            )
            for task_id, task in pending.items()
        ]
        return await self._write(decisions, claim_id, now_ms)

    async def _write(self, decisions: Sequence[tuple[Record, classify.Decision]], claim_id: str, now_ms: int) -> int:
        calls = [self._call(before, decision, claim_id, now_ms) for before, decision in decisions]
        written = await self.store.run_calls(calls)
        finished = 0
        for (before, decision), wrote in zip(decisions, written, strict=True):
            metrics.OBSERVATIONS.labels(before.service).inc()
            if decision.terminal and wrote:
                _count_terminal(decision.record, now_ms)
                finished += 1
        return finished

    def _call(self, before: Record, decision: classify.Decision, claim_id: str, now_ms: int) -> ScriptCall:
        events = build_events(
            decision.events, before, decision.record, now_ms, self.destinations, callback_events=self.callback_events
        )
        if decision.terminal:
            lifetime_ms = now_ms - before.enqueued_at_ms if decision.record.reason is None else None
            return self.store.finish_call(decision.record, now_ms, events, lifetime_ms=lifetime_ms)
        return self.store.update_call(
            decision.record,
            claim_id,
            now_ms,
            next_due_ms=decision.next_poll_ms if decision.next_poll_ms is not None else now_ms,
            missing_since_ms=decision.missing_since_ms,
            events=events,
        )

    async def _back_off(
        self, service: str, token: str, claim_id: str, ids: list[str], error: UpstreamUnavailable
    ) -> None:
        failures = await self.store.backoff_failures(service, token)
        delay_s = classify.backoff_s(failures, BACKOFF_BASE_S, BACKOFF_CAP_S, error.retry_after_s, self.rng)
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
            finished += await self._poll(service, token, claim_id, part)
        return finished

    async def _wait_for_budget(self, token: str) -> None:
        # the split's extra request spends the shared budget like any other
        while (wait_ms := await self.store.spend(token, self.clock(), self.rate_limit_rps)) > 0:
            await asyncio.sleep(wait_ms / 1000)

    async def _fail_all(
        self, pending: Mapping[str, PendingTask], reason: Reason, error: UpstreamRejected | ConfigError
    ) -> int:
        now_ms = self.clock()
        code = (error.code or str(error.status)) if isinstance(error, UpstreamRejected) else "unknown_token"
        detail: dict[str, str | None] = {"code": code, "message": str(error)}
        decisions = [
            (
                task.record,
                classify.Decision(classify.fail(task.record, reason, now_ms, detail), [EventType.TASK_FAILED]),
            )
            for task in pending.values()
        ]
        finished = await self._write(decisions, "", now_ms)
        logger.warning("%d task(s) failed with reason %s: %s", finished, reason.value, error)
        return finished


def _count_terminal(record: Record, now_ms: int) -> None:
    reason = record.reason.value if record.reason else ""
    metrics.TERMINAL.labels(record.service, record.state.value, reason).inc()
    if record.upstream_finished_at is not None:
        detection_s = max(0.0, now_ms / 1000 - record.upstream_finished_at)
        metrics.DETECTION_SECONDS.labels(record.service).observe(detection_s)
