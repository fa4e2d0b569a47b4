"""One try of one delivery (a Python hook or a webhook), as a ``deliver`` job runs it.

The delivery stays in the outbox, leased, for the whole try: a worker that dies mid-try loses
nothing, the try is handed over again after the lease (and counted as a possible duplicate).
"""

from __future__ import annotations

import asyncio
from typing import Any

from worker import hooks as hooks_mod
from worker import metrics, webhooks
from worker.hooks import WEBHOOK_PREFIX
from worker.runtime import Parts, Runtime
from worker.store import Store

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
    await _mark_sending(runtime, parts, body, now_ms)
    try:
        outcome = await _attempt(runtime, parts, body, now_ms)
    except asyncio.CancelledError:
        if parts.scheduler.stopping.is_set():
            # a stopping worker hands the try back at once instead of waiting out the lease
            await asyncio.shield(store.requeue_delivery(delivery_id, runtime.clock()))
        raise
    await _record(store, body, outcome, now_ms)
    return outcome.status


async def _record(store: Store, body: dict[str, Any], outcome: hooks_mod.Outcome, now_ms: int) -> None:
    delivery_id = body["delivery_id"]
    body["sending_since_ms"] = None
    await store.save_delivery(delivery_id, body)
    if outcome.disable_url:
        await store.disable_url(body["destination"].removeprefix(WEBHOOK_PREFIX), now_ms)
    if outcome.status == "dead":
        await store.dead_letter(delivery_id, now_ms)
    if outcome.status == "retry":
        await store.requeue_delivery(delivery_id, now_ms + int(outcome.retry_in_s * 1000))
    else:
        await store.outbox_done(delivery_id)
    await store.count(f"deliveries_{outcome.status}")
    kind = "webhook" if body["destination"].startswith(WEBHOOK_PREFIX) else "python"
    metrics.DELIVERIES.labels(kind, outcome.status).inc()


async def _mark_sending(runtime: Runtime, parts: Parts, body: dict[str, Any], now_ms: int) -> None:
    if body.get("sending_since_ms"):
        # an earlier try started and never recorded its end (its worker died): the receiver may
        # already have it, so this try may be a duplicate (same webhook-id)
        await parts.store.count("possible_duplicate_deliveries")
        metrics.DUPLICATES.inc()
    body["sending_since_ms"] = now_ms
    await parts.store.save_delivery(body["delivery_id"], body)
    # keep the delivery leased for this whole try; if the worker dies, it is handed over again after
    is_webhook = body["destination"].startswith(WEBHOOK_PREFIX)
    try_s = parts.webhook_config.timeout_s if is_webhook else TRY_TIMEOUT_S
    lease_ms = int((try_s + runtime.settings.lease_s) * 1000)
    await parts.store.requeue_delivery(body["delivery_id"], now_ms + lease_ms)


async def _attempt(runtime: Runtime, parts: Parts, body: dict[str, Any], now_ms: int) -> hooks_mod.Outcome:
    destination: str = body["destination"]
    if not destination.startswith(WEBHOOK_PREFIX):
        return await hooks_mod.attempt(runtime.plan.hooks, body, now_ms, runtime.hook_retry_s, HOOK_TIMEOUT_S)
    disabled = await parts.store.is_disabled(destination.removeprefix(WEBHOOK_PREFIX))
    return await webhooks.attempt(parts.session, parts.webhook_config, body, now_ms, disabled=disabled)
