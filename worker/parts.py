"""The composition root: every part acetrack's processes are built from, from the settings, in one
place. A worker (``runtime``), the HTTP API (``http``), the CLI (``commands``) and the demo take their
store, control and tracker from here, so each is configured the same way (key prefix, retention,
events cap, hook destinations); each part gets its collaborators in its constructor.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import redis.asyncio as aioredis

from config import Settings
from worker import hooks as hooks_mod
from worker import webhooks
from worker.api import UpstreamClient
from worker.cadence import Pace, Policy, grid_s
from worker.clock import Clock, system_clock
from worker.connect import check_url_options, create_redis
from worker.control import Control
from worker.errors import ConfigError
from worker.polling import Poller
from worker.queue import ArqJobQueue
from worker.scheduler import Cadence, Scheduler
from worker.startup import WorkerPlan
from worker.store import Store
from worker.tracker import Tracker


@dataclass
class Parts:
    """What the jobs of one worker process share."""

    store: Store
    session: aiohttp.ClientSession
    poller: Poller
    scheduler: Scheduler
    queue: ArqJobQueue
    webhook_config: webhooks.WebhookConfig


def store_for(settings: Settings, redis: aioredis.Redis) -> Store:
    """The store over a ready ``decode_responses`` client, as the settings configure it."""
    return Store(redis, settings.key_prefix, retention_s=settings.retention_s, events_maxlen=settings.events_maxlen)


def destinations_for(settings: Settings) -> dict[str, list[str]]:
    """Which hook and webhook destinations get each event type."""
    return hooks_mod.destinations_by_event(
        settings.hooks, settings.hook_events, settings.webhook_urls, settings.webhook_events
    )


def control_for(settings: Settings, store: Store, clock: Clock = system_clock) -> Control:
    """Cancel and reopen, with the hook destinations a worker uses."""
    events = frozenset(settings.webhook_events)
    return Control(store, destinations_for(settings), events, settings.deadline_s, settings.first_poll_s, clock)


def tracker_for(settings: Settings) -> Tracker:
    """A tracker (the CLI's, a producer's) connected as the settings say."""
    if settings.redis_url is None:
        raise ConfigError("ACETRACK_REDIS_URL is not set; e.g. ACETRACK_REDIS_URL=redis://localhost:6379/0")
    check_url_options(settings.redis_url)
    return Tracker(
        store_for(settings, create_redis(settings.redis_url)),
        deadline_s=settings.deadline_s,
        first_poll_s=settings.first_poll_s,
        services=settings.services,
        allow_hosts=settings.webhook_allow_hosts,
    )


def cadence_for(s: Settings, pace: Pace | None = None) -> Cadence:
    """The scheduler's numbers from the settings (``pace``: the intervals a latency target moves)."""
    return Cadence(
        batch_size=s.batch_size,
        # the grid's step unless set: ids due at the next grid point join this batch
        coalesce_ms=int((grid_s(s.poll_s) if s.coalesce_s is None else s.coalesce_s) * 1000),
        coalesce_for=None if pace is None else pace.coalesce_ms,
        note_claim=None if pace is None else pace.note_claim,
        lease_ms=int(s.lease_s * 1000),
        rate_limit_rps=s.rate_limit_rps,
        deadline_s=s.deadline_s,
        first_poll_s=s.first_poll_s,
        min_repoll_ms=int(s.poll_s * 1000 / 4),
        claim_idle_ms=Cadence.idle_ms_for(s.first_poll_s),
    )


def worker_parts(
    s: Settings, plan: WorkerPlan, redis: aioredis.Redis, queue: ArqJobQueue, clock: Clock = system_clock
) -> Parts:
    """A worker's store, upstream session, scheduler and poller, wired to each other."""
    store = store_for(s, redis)
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=s.api_timeout_s, connect=min(10.0, s.api_timeout_s))
    )
    paused_tokens: set[str] = set()  # the poller pauses a token on a 401; the heartbeat tells
    pace = Pace(s.poll_s, s.coalesce_s)  # the poller moves a service's interval, claims follow its grid
    scheduler = Scheduler(
        store,
        queue,
        clock,
        cadence_for(s, pace),
        services=s.services,
        tokens=plan.tokens.keys(),
        allow_hosts=frozenset(s.webhook_allow_hosts),
        heartbeat_info=lambda: {
            "ready": not paused_tokens,
            "paused_tokens": sorted(paused_tokens),
            "tokens": sorted(plan.tokens),  # names only: a producer's CLI checks --token against them
        },
    )
    poller = Poller(
        store,
        UpstreamClient(session, s.api_base_url, plan.tokens),
        clock,
        Policy(poll_s=s.poll_s, max_poll_s=s.max_poll_s, not_found_grace_s=s.not_found_grace_s),
        s.rate_limit_rps,
        s.batch_size,
        destinations_for(s),
        callback_events=frozenset(s.webhook_events),
        paused_tokens=paused_tokens,
        target_p95_s=s.target_p95_s,
        pace=pace,
        on_schedule=scheduler.expect,
        on_deliveries=lambda: scheduler.nudge("outbox"),
    )
    config = webhooks.WebhookConfig(plan.webhook_secret, tuple(s.webhook_schedule_s), frozenset(s.webhook_allow_hosts))
    return Parts(store, session, poller, scheduler, queue, config)
