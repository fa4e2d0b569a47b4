"""``acetrack``: the composition root. Parses argv, builds ``Settings``, configures logging, runs.

Exit codes: 0 success, 1 a lookup or check found a problem (task not found), 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging.config
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from config import Settings
from worker.clock import system_clock
from worker.errors import AcetrackError, ConfigError, InvalidInput
from worker.store import Store
from worker.tracker import Tracker

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


def default_log_config(level: str, as_json: bool) -> dict[str, Any]:
    """The one logging configuration: a line per event, or JSON lines with ``ACETRACK_LOG_JSON``."""
    fmt = (
        '{"at":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","message":"%(message)s"}'
        if as_json
        else "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"format": fmt}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {"aiohttp.access": {"level": "WARNING"}},
    }


def build_parser() -> argparse.ArgumentParser:
    """The ``acetrack`` argument parser."""
    parser = argparse.ArgumentParser(prog="acetrack", description="Track Ace Data Cloud tasks to completion.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run a worker (intake, batched polling, hooks)")
    sub.add_parser("demo", help="run the embedded demo: no Redis server, no token")
    sim = sub.add_parser("sim", help="serve the Tasks API simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8090)
    sim.add_argument("--rate-limit-rps", type=float, default=60.0)
    sim.add_argument("--error-rate", type=float, default=0.0)
    sim.add_argument("--latency-s", type=float, default=0.0)
    enqueue = sub.add_parser("enqueue", help="start tracking task ids")
    enqueue.add_argument("service")
    enqueue.add_argument("ids", nargs="+", metavar="ID")
    enqueue.add_argument("--callback-url")
    enqueue.add_argument("--deadline-s", type=float)
    enqueue.add_argument("--meta", help="a JSON object stored with the task")
    enqueue.add_argument("--token", help="name of a configured API token")
    enqueue.add_argument("--reopen", action="store_true", help="restart a finished task")
    enqueue.add_argument("--json", action="store_true")
    status = sub.add_parser("status", help="show a task's record")
    status.add_argument("service")
    status.add_argument("id")
    status.add_argument("--json", action="store_true")
    _add_hooks_parser(sub)
    return parser


def _add_hooks_parser(sub: Any) -> None:
    hooks = sub.add_parser("hooks", help="list, replay and re-enable hook and webhook deliveries")
    verbs = hooks.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", help="list deliveries")
    listing.add_argument("--dead", action="store_true", help="only dead-lettered deliveries")
    listing.add_argument("--json", action="store_true")
    replay = verbs.add_parser("replay", help="send deliveries again (same webhook-id, new signature)")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("delivery_id", nargs="?")
    target.add_argument("--since", help="replay every delivery dead-lettered since this ISO 8601 time")
    enable = verbs.add_parser("enable", help="re-enable a URL disabled by a 410 Gone")
    enable.add_argument("url")


def _tracker(settings: Settings) -> Tracker:
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


async def _enqueue(settings: Settings, args: argparse.Namespace) -> int:
    tracker = _tracker(settings)
    try:
        for task_id in args.ids:  # validate every id before storing any
            Tracker.validate(args.service, task_id, settings.services)
        for task_id in args.ids:
            record = await tracker.enqueue(
                args.service,
                task_id,
                callback_url=args.callback_url,
                deadline_s=args.deadline_s,
                token=args.token,
                meta=json.loads(args.meta) if args.meta else None,
                reopen=args.reopen,
            )
            print(json.dumps(record.to_dict()) if args.json else f"{record.service}/{record.id} {record.state.value}")
    finally:
        await tracker.close()
    return EXIT_OK


async def _status(settings: Settings, args: argparse.Namespace) -> int:
    tracker = _tracker(settings)
    try:
        record = await tracker.get(args.service, args.id)
    finally:
        await tracker.close()
    if record is None:
        print(f"acetrack: task {args.service}/{args.id} is not tracked", file=sys.stderr)
        return EXIT_PROBLEM
    if args.json:
        print(json.dumps(record.to_dict(), indent=2))
        return EXIT_OK
    clips = ", ".join(f"{c.title or c.id} ({c.state.value})" for c in record.clips) or "no clips yet"
    reason = f" ({record.reason.value})" if record.reason else ""
    print(f"{record.service}/{record.id}: {record.state.value}{reason}, progress {record.progress}, {clips}")
    return EXIT_OK


async def _hooks(settings: Settings, args: argparse.Namespace) -> int:
    tracker = _tracker(settings)
    store = tracker.store
    try:
        if args.verb == "list":
            return await _hooks_list(store, args)
        if args.verb == "enable":
            found = await store.enable_url(args.url)
            print(f"{args.url} enabled" if found else f"{args.url} was not disabled")
            return EXIT_OK
        ids = [args.delivery_id] if args.delivery_id else await store.dead_since(_iso_ms(args.since))
        replayed = [d for d in ids if await store.replay(d, system_clock())]
        for delivery_id in replayed:
            print(f"{delivery_id} queued again")
        if args.delivery_id and not replayed:
            print(f"acetrack: delivery {args.delivery_id} not found (expired or never existed)", file=sys.stderr)
            return EXIT_PROBLEM
        return EXIT_OK
    finally:
        await tracker.close()


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


def _iso_ms(text: str) -> int:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise InvalidInput("since", f"--since {text!r} is not an ISO 8601 time like 2026-11-25T09:00:00Z") from e
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)


def _run_worker(settings: Settings) -> int:
    from worker import jobs

    jobs.run_worker(jobs.build_worker_settings(settings))
    return EXIT_OK


def _run_sim(args: argparse.Namespace) -> int:
    from worker.sim import run_sim

    knobs = {"rate_limit_rps": args.rate_limit_rps, "error_rate": args.error_rate, "latency_s": args.latency_s}
    try:
        asyncio.run(run_sim(args.host, args.port, **knobs))
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def dispatch(args: argparse.Namespace) -> int:
    """Run one parsed command; returns its exit code."""
    if args.command == "sim":
        return _run_sim(args)
    if args.command == "demo":
        from worker.demo import run_demo

        return asyncio.run(run_demo())
    settings = Settings()
    logging.config.dictConfig(default_log_config(settings.log_level, settings.log_json))
    if args.command == "worker":
        return _run_worker(settings)
    if args.command == "enqueue":
        return asyncio.run(_enqueue(settings, args))
    if args.command == "hooks":
        return asyncio.run(_hooks(settings, args))
    return asyncio.run(_status(settings, args))


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    if args.command in ("sim", "demo"):
        logging.config.dictConfig(default_log_config("WARNING" if args.command == "demo" else "INFO", False))
    try:
        code = dispatch(args)
    except (InvalidInput, ConfigError) as e:
        print(f"acetrack: {e}", file=sys.stderr)
        code = EXIT_USAGE
    except ValidationError as e:
        first = e.errors()[0]
        where = f" ACETRACK_{str(first['loc'][0]).upper()}" if first["loc"] else "s"
        print(f"acetrack: bad setting{where}: {first['msg']}", file=sys.stderr)
        code = EXIT_USAGE
    except json.JSONDecodeError as e:
        print(f"acetrack: --meta is not valid JSON ({e.msg}); pass a JSON object", file=sys.stderr)
        code = EXIT_USAGE
    except AcetrackError as e:
        print(f"acetrack: {e}", file=sys.stderr)
        code = EXIT_PROBLEM
    sys.exit(code)
