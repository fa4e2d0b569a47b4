"""One try of one delivery (a Python hook or a webhook), as a ``deliver`` job runs it.

The delivery stays in the outbox, leased, for the whole try: a worker that dies mid-try loses
nothing, the try is handed over again after the lease (and counted as a possible duplicate). What a
try leads to is decided by ``delivery.after_try``; this module does the I/O around it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random

from worker import hooks as hooks_mod
from worker import metrics, webhooks
from worker.delivery import Delivery, Outcome, Try, after_try
from worker.parts import Parts
from worker.runtime import Runtime
from worker.store import Store

logger = logging.getLogger(__name__)

#: one try of one delivery (arq's job timeout): a webhook try is bounded by its 15 s timeout
TRY_TIMEOUT_S = 60
#: a Python hook that has not returned by then is a failed try (retried on its schedule)
HOOK_TIMEOUT_S = TRY_TIMEOUT_S - 10


async def run_try(runtime: Runtime, delivery_id: str, leased_until_ms: int | None = None) -> str:
    """Run one try of ``delivery_id``; returns its status after the try.

    ``leased_until_ms``: the outbox lease of the hand-over that made this job. If the outbox holds
    another (the job waited past its lease and the delivery was handed over again, or this try
    already ran once and arq runs it again), the job is stale: it does nothing, so a delivery
    never goes out twice at once, nor before its next try is due."""
    parts = runtime.started
    store = parts.store
    if leased_until_ms is not None:
        score = await store.outbox_score(delivery_id)
        if score is not None and score != leased_until_ms:
            return "stale"
    body = await store.load_delivery(delivery_id)
    if body is None or body.get("status") in ("delivered", "dead"):
        await store.outbox_done(delivery_id)
        if body is not None and body["status"] == "delivered":
            await store.count("duplicate_deliveries_skipped")
            metrics.DUPLICATES.inc()
        return "missing" if body is None else str(body["status"])
    now_ms = runtime.clock()
    delivery = await _mark_sending(runtime, parts, Delivery.from_dict(body), now_ms)
    try:
        result = await _attempt(runtime, parts, delivery, now_ms)
    except asyncio.CancelledError:
        if parts.scheduler.stopping.is_set():
            # a stopping worker hands the try back at once instead of waiting out the lease
            await asyncio.shield(store.requeue_delivery(delivery_id, runtime.clock()))
        raise
    if result is None:  # this worker could not try it (no webhook secret): no try is spent
        await store.save_delivery(delivery_id, dataclasses.replace(delivery, sending_since_ms=None).to_dict())
        await store.requeue_delivery(delivery_id, now_ms + int(webhooks.NO_SECRET_RETRY_S * 1000))
        return "retry"
    schedule_s = parts.webhook_config.schedule_s if delivery.is_webhook else hooks_mod.schedule_s(runtime.hook_retry_s)
    jitter = random.uniform(-1.0, 1.0) if delivery.is_webhook else 0.0
    after, outcome = after_try(delivery, result, now_ms, schedule_s, jitter)
    await _record(store, after, outcome, now_ms)
    return outcome.status


async def _record(store: Store, delivery: Delivery, outcome: Outcome, now_ms: int) -> None:
    delivery = dataclasses.replace(delivery, sending_since_ms=None)
    await store.save_delivery(delivery.delivery_id, delivery.to_dict())
    if outcome.disable_url:
        await store.disable_url(delivery.url, now_ms)
    if outcome.status == "dead":
        await store.dead_letter(delivery.delivery_id, now_ms)
        logger.warning(
            "delivery %s to %s dead-lettered (%s): %s",
            delivery.delivery_id,
            delivery.destination,
            delivery.reason,
            delivery.attempts[-1].error,
        )
    if outcome.status == "retry":
        await store.requeue_delivery(delivery.delivery_id, now_ms + int(outcome.retry_in_s * 1000))
    else:
        await store.outbox_done(delivery.delivery_id)
    await store.count(f"deliveries_{outcome.status}")
    metrics.DELIVERIES.labels("webhook" if delivery.is_webhook else "python", outcome.status).inc()


async def _mark_sending(runtime: Runtime, parts: Parts, delivery: Delivery, now_ms: int) -> Delivery:
    if delivery.sending_since_ms:
        # an earlier try started and never recorded its end (its worker died): the receiver may
        # already have it, so this try may be a duplicate (same webhook-id)
        await parts.store.count("possible_duplicate_deliveries")
        metrics.DUPLICATES.inc()
    delivery = dataclasses.replace(delivery, sending_since_ms=now_ms)
    await parts.store.save_delivery(delivery.delivery_id, delivery.to_dict())
    # keep the delivery leased for this whole try; if the worker dies, it is handed over again after
    try_s = parts.webhook_config.timeout_s if delivery.is_webhook else TRY_TIMEOUT_S
    lease_ms = int((try_s + runtime.settings.lease_s) * 1000)
    await parts.store.requeue_delivery(delivery.delivery_id, now_ms + lease_ms)
    return delivery


async def _attempt(runtime: Runtime, parts: Parts, delivery: Delivery, now_ms: int) -> Try | None:
    if not delivery.is_webhook:
        return await hooks_mod.attempt(runtime.plan.hooks, delivery, HOOK_TIMEOUT_S)
    disabled = await parts.store.is_disabled(delivery.url)
    return await webhooks.attempt(parts.session, parts.webhook_config, delivery, now_ms, disabled=disabled)
