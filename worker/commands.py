"""Bodies of the CLI's Redis commands (``enqueue``, ``status``, ``list``, ``cancel``, ``reopen``,
``stats``, ``check``, ``watch``, ``hooks``). Each returns an exit code; ``cli`` parses and dispatches.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from datetime import UTC, datetime

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn

from config import Settings
from worker.clock import system_clock
from worker.control import collect_stats, live_workers
from worker.errors import ConfigError, InvalidInput
from worker.http import control_from_settings
from worker.intake import check_id, check_service
from worker.models import Record, TaskState
from worker.redis_policy import eviction_problem
from worker.store import Store
from worker.tracker import Tracker

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


def tracker_from(settings: Settings) -> Tracker:
    """A tracker for the CLI from the settings."""
    if settings.redis_url is None:
        raise ConfigError("ACETRACK_REDIS_URL is not set; e.g. ACETRACK_REDIS_URL=redis://localhost:6379/0")
    return Tracker.from_url(
        settings.redis_url,
        prefix=settings.key_prefix,
        deadline_s=settings.deadline_s,
        first_poll_s=settings.first_poll_s,
        services=settings.services,
        allow_hosts=settings.webhook_allow_hosts,
    )


def _err(message: str) -> None:
    print(f"acetrack: {message}", file=sys.stderr)


def summary_line(record: Record) -> str:
    """One human line for a record."""
    clips = ", ".join(f"{c.title or c.id} ({c.state.value})" for c in record.clips) or "no clips yet"
    reason = f" ({record.reason.value})" if record.reason else ""
    progress = "" if record.progress is None else f", {record.progress}%"
    return f"{record.service}/{record.id}: {record.state.value}{reason}{progress}, {clips}"


async def enqueue(settings: Settings, tracker: Tracker, args: argparse.Namespace) -> int:
    """Validate every id first, then store them all."""
    meta = json.loads(args.meta) if args.meta else None
    for task_id in args.ids:
        Tracker.validate(args.service, task_id, settings.services)
    for task_id in args.ids:
        record = await tracker.enqueue(
            args.service,
            task_id,
            callback_url=args.callback_url,
            deadline_s=args.deadline_s,
            token=args.token,
            meta=meta,
            reopen=args.reopen,
        )
        print(json.dumps(record.to_dict()) if args.json else f"{record.service}/{record.id} {record.state.value}")
    return EXIT_OK


async def status(tracker: Tracker, args: argparse.Namespace) -> int:
    """Print one record; exit 1 when it is not tracked."""
    record = await tracker.get(check_service(args.service), check_id(args.id))
    if record is None:
        _err(f"task {args.service}/{args.id} is not tracked")
        return EXIT_PROBLEM
    print(json.dumps(record.to_dict(), indent=2) if args.json else summary_line(record))
    return EXIT_OK


async def list_tasks(tracker: Tracker, args: argparse.Namespace) -> int:
    """Every task matching the filters, oldest first, page by page."""
    service = check_service(args.service) if args.service else None
    state = TaskState(args.state) if args.state else None
    after, shown = None, 0
    while shown < args.limit:
        records, after = await tracker.store.list_page(service, state, min(500, args.limit - shown), after)
        for record in records:
            print(json.dumps(record.to_dict()) if args.json else summary_line(record))
        shown += len(records)
        if after is None:
            break
    return EXIT_OK


async def cancel(settings: Settings, tracker: Tracker, args: argparse.Namespace) -> int:
    """Cancel a pending task; exit 1 if unknown or already finished."""
    outcome, record = await control_from_settings(settings, tracker.store).cancel(
        check_service(args.service), check_id(args.id), silent=args.silent
    )
    if record is None or outcome != "cancelled":
        _err(f"task {args.service}/{args.id} " + ("is not tracked" if record is None else "has already finished"))
        return EXIT_PROBLEM
    print(json.dumps(record.to_dict()) if args.json else summary_line(record))
    return EXIT_OK


async def reopen(settings: Settings, tracker: Tracker, args: argparse.Namespace) -> int:
    """Restart a finished task; exit 1 if unknown or still pending."""
    outcome, record = await control_from_settings(settings, tracker.store).reopen(
        check_service(args.service), check_id(args.id)
    )
    if record is None or outcome != "reopened":
        _err(f"task {args.service}/{args.id} " + ("is not tracked" if record is None else "is still pending"))
        return EXIT_PROBLEM
    print(json.dumps(record.to_dict()) if args.json else summary_line(record))
    return EXIT_OK


async def stats(tracker: Tracker, args: argparse.Namespace) -> int:
    """Print the stats (a table, or JSON)."""
    data = await collect_stats(tracker.store, system_clock())
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    for service, counts in data["services"].items():
        print(
            f"{service:<12} pending {counts['pending']:>6}  succeeded {counts['succeeded']:>6}  "
            f"failed {counts['failed']:>6}  oldest pending {counts['oldest_pending_age_s']} s"
        )
    print(
        f"workers: {len(data['workers'])}  backlog due now: {sum(data['backlog'].values())}  "
        f"paused tokens: {', '.join(data['paused_tokens']) or 'none'}"
    )
    return EXIT_OK


async def check(tracker: Tracker, args: argparse.Namespace) -> int:
    """Health probe: Redis answers and a worker (this host's, if it runs one) beats and is ready."""
    await tracker.store.redis.ping()
    now_ms = system_clock()
    live = await live_workers(tracker.store, now_ms)
    mine = [w for w in live if str(w.get("worker_id", "")).startswith(socket.gethostname() + "-")]
    candidates = mine or ([] if args.local else live)
    problems = [] if candidates else ["no live worker heartbeat" + (" on this host" if args.local else "")]
    problems += [f"token {t!r} paused" for w in candidates for t in w.get("paused_tokens", [])]
    healthy = not problems
    warning = await eviction_problem(tracker.store.redis)  # a warning: healthy all the same
    problems += [warning] if warning else []
    result = {"healthy": healthy, "workers": len(live), "problems": problems}
    verdict = "healthy" if healthy else "unhealthy"
    print(json.dumps(result) if args.json else (verdict + (": " + "; ".join(problems) if problems else "")))
    return EXIT_OK if healthy else EXIT_PROBLEM


async def watch(tracker: Tracker, args: argparse.Namespace) -> int:
    """A live view with a progress bar per task, until every watched task is terminal."""
    service = check_service(args.service) if args.service else None
    if args.all or not args.ids:
        pending, _ = await tracker.store.list_page(service, TaskState.PENDING, 200)
        keys = [(r.service, r.id) for r in pending]
    else:
        keys = [(check_service(args.service), check_id(i)) for i in args.ids]
    if not keys:
        print("nothing to watch: no pending tasks")
        return EXIT_OK
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[state]}"))
    bars = {key: progress.add_task(f"{key[0]}/{key[1]}", total=100, state="pending") for key in keys}
    with Live(progress, console=Console(), refresh_per_second=4):
        while True:
            records = await tracker.store.get_many(keys)
            for key, record in zip(keys, records, strict=True):
                if record is not None:
                    done = 100 if record.terminal else (record.progress or 0)
                    progress.update(bars[key], completed=done, state=_state_text(record))
            if all(r is None or r.terminal for r in records):
                break
            await asyncio.sleep(args.interval_s)
    finished = [r for r in records if r is not None]
    ok = sum(1 for r in finished if r.state is TaskState.SUCCEEDED)
    print(f"{ok} succeeded, {len(finished) - ok} failed, {len(keys) - len(finished)} unknown")
    return EXIT_OK


def _state_text(record: Record) -> str:
    if record.reason:
        return f"{record.state.value} ({record.reason.value})"
    ready = sum(1 for c in record.clips if c.audio_url)
    return f"{record.state.value}, {ready}/{len(record.clips)} clips ready" if record.clips else record.state.value


async def hooks(tracker: Tracker, args: argparse.Namespace) -> int:
    """``hooks list|replay|enable``."""
    store = tracker.store
    if args.verb == "list":
        return await _hooks_list(store, args)
    if args.verb == "enable":
        found = await store.enable_url(args.url)
        print(f"{args.url} enabled" if found else f"{args.url} was not disabled")
        return EXIT_OK
    ids = [args.delivery_id] if args.delivery_id else await store.dead_since(iso_ms(args.since))
    replayed = [d for d in ids if await store.replay(d, system_clock())]
    for delivery_id in replayed:
        print(f"{delivery_id} queued again")
    if args.delivery_id and not replayed:
        _err(f"delivery {args.delivery_id} not found (expired or never existed)")
        return EXIT_PROBLEM
    return EXIT_OK


async def _hooks_list(store: Store, args: argparse.Namespace) -> int:
    if args.dead:
        bodies = [b for b in [await store.load_delivery(d) for d in await store.dead_letters()] if b]
    else:
        bodies = await store.deliveries()
    for body in bodies:
        summary = {k: body.get(k) for k in ("delivery_id", "event_id", "destination", "status", "reason", "tries")}
        summary["attempts"] = body.get("attempts")
        if args.json:
            print(json.dumps(summary))
        else:
            last = (body.get("attempts") or [{}])[-1]
            print(f"{body['delivery_id']} {body['status']:<9} {body['destination']} last: {last.get('error') or 'ok'}")
    return EXIT_OK


def iso_ms(text: str) -> int:
    """An ISO 8601 time as epoch ms (UTC when no zone is given)."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise InvalidInput("since", f"--since {text!r} is not an ISO 8601 time like 2026-11-25T09:00:00Z") from e
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)
