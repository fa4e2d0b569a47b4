"""``acetrack``: the composition root. Parses argv, builds ``Settings``, configures logging, runs.

Exit codes: 0 success, 1 a lookup or check found a problem (task not found, unhealthy), 2 bad
usage or input, each with one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging.config
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from pydantic import ValidationError
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError, RedisError

from config import Settings
from worker import __version__, commands
from worker.arq_settings import settings_error
from worker.commands import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from worker.connect import permission_hint
from worker.errors import AcetrackError, ConfigError, InvalidInput
from worker.watch import watch as watch_tasks

logger = logging.getLogger(__name__)


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
        # arq logs each job's start and end at INFO: a line per poll; its warnings and errors still show
        "loggers": {"aiohttp.access": {"level": "WARNING"}, "arq": {"level": "WARNING"}},
    }


def _task_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service")
    parser.add_argument("id")
    parser.add_argument("--json", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    """The ``acetrack`` argument parser."""
    parser = argparse.ArgumentParser(prog="acetrack", description="Track Ace Data Cloud tasks to completion.")
    parser.add_argument("--version", action="version", version=f"acetrack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run a worker (intake, batched polling, hooks)")
    sub.add_parser("serve", help="serve the HTTP API")
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
    _task_args(sub.add_parser("status", help="show a task's record"))
    listing = sub.add_parser("list", help="list tasks, oldest first")
    listing.add_argument("--state", choices=["pending", "succeeded", "failed"])
    listing.add_argument("--service")
    listing.add_argument("--limit", type=_positive, default=100)
    listing.add_argument("--cursor", help="start after the last page's end ('next cursor: ...')")
    listing.add_argument("--json", action="store_true")
    cancel = sub.add_parser("cancel", help="stop tracking a pending task (failed, reason cancelled)")
    _task_args(cancel)
    cancel.add_argument("--silent", action="store_true", help="do not fire hooks or webhooks")
    _task_args(sub.add_parser("reopen", help="restart a finished task"))
    sub.add_parser("stats", help="counts, backlog and workers").add_argument("--json", action="store_true")
    check = sub.add_parser("check", help="health probe: exit 0 healthy, 1 not")
    check.add_argument("--local", action="store_true", help="require a worker on this host")
    check.add_argument("--json", action="store_true")
    watch = sub.add_parser("watch", help="live progress until the tasks finish")
    watch.add_argument("service", nargs="?")
    watch.add_argument("ids", nargs="*", metavar="ID")
    watch.add_argument("--all", action="store_true", help="every pending task (of SERVICE, if given)")
    watch.add_argument("--interval-s", type=float, default=0.5)
    watch.add_argument("--json", action="store_true", help="a JSON line per change of a task, then the totals")
    _add_hooks_parser(sub)
    _add_tokens_parser(sub)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _add_tokens_parser(sub: Any) -> None:
    tokens = sub.add_parser("tokens", help="configured API tokens and their pauses (a 401/403 pauses one)")
    tokens.add_argument("--json", action="store_true")
    verbs = tokens.add_subparsers(dest="verb")
    listing = verbs.add_parser("list", help="each token and whether it is paused (the default)")
    listing.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    verbs.add_parser("resume", help="lift a token's pause: its tasks are polled again now").add_argument("name")


def _add_hooks_parser(sub: Any) -> None:
    hooks = sub.add_parser("hooks", help="list, replay and re-enable hook and webhook deliveries")
    verbs = hooks.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", help="list deliveries")
    listing.add_argument("--dead", action="store_true", help="only dead-lettered deliveries")
    listing.add_argument("--limit", type=_positive, default=100, help="at most this many, oldest first")
    listing.add_argument("--json", action="store_true")
    replay = verbs.add_parser("replay", help="send deliveries again (same webhook-id, new signature)")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("delivery_id", nargs="?")
    target.add_argument("--since", help="replay every delivery dead-lettered since this ISO 8601 time")
    enable = verbs.add_parser("enable", help="re-enable a URL disabled by a 410 Gone")
    enable.add_argument("url")


async def _redis_command(settings: Settings, args: argparse.Namespace) -> int:
    tracker = commands.tracker_from(settings)
    try:
        match args.command:
            case "enqueue":
                return await commands.enqueue(settings, tracker, args)
            case "status":
                return await commands.status(tracker, args)
            case "list":
                return await commands.list_tasks(tracker, args)
            case "cancel":
                return await commands.cancel(settings, tracker, args)
            case "reopen":
                return await commands.reopen(settings, tracker, args)
            case "stats":
                return await commands.stats(tracker, args)
            case "check":
                return await commands.check(tracker, args)
            case "watch":
                return await watch_tasks(tracker, args)
            case "tokens":
                return await commands.tokens(settings, tracker, args)
            case _:
                return await commands.hooks(tracker, args)
    finally:
        await tracker.close()


def _run_sim(args: argparse.Namespace) -> int:
    from worker.sim import run_sim

    knobs = {"rate_limit_rps": args.rate_limit_rps, "error_rate": args.error_rate, "latency_s": args.latency_s}
    try:
        asyncio.run(run_sim(args.host, args.port, **knobs))
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run a long-lived service (worker, HTTP API) on uvloop where it is installed.

    A worker's CPU goes mostly to waking up and to socket I/O (Redis round trips, the upstream's
    HTTP); uvloop does both in C, where asyncio's default loop does them in Python.
    """
    # what the imports made lives as long as the process: out of the collector's sight, a full
    # collection walks only what the service makes (about 60,000 objects fewer). Every object in
    # the process is frozen, so this runs once, for a process that runs this one service.
    gc.collect()
    gc.freeze()
    try:
        import uvloop
    except ImportError:  # not on Windows, nor on PyPy: asyncio's own loop does the same job
        asyncio.run(main)
        return
    uvloop.run(main)


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
        from worker.process import run_worker

        run_loop(run_worker(settings))
        return EXIT_OK
    if args.command == "serve":
        from worker.http import serve
        from worker.startup import check_api

        check_api(settings)
        run_loop(serve(settings))
        return EXIT_OK
    return asyncio.run(_redis_command(settings, args))


def _stdout_closed() -> int:
    """The reader of stdout went away (``acetrack list | head -1``): no error, as for other CLIs.
    Python's recipe (docs.python.org/3/library/signal.html#note-on-sigpipe): point stdout at
    devnull, so flushing what is left at exit does not fail again, and exit 0."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    if args.command in ("sim", "demo"):
        logging.config.dictConfig(default_log_config("WARNING" if args.command == "demo" else "INFO", False))
    try:
        code = dispatch(args)
        sys.stdout.flush()  # here, not at exit: a reader that is gone is found out in this try
    except BrokenPipeError:
        code = _stdout_closed()
    except (InvalidInput, ConfigError) as e:
        print(f"acetrack: {e}", file=sys.stderr)
        code = EXIT_USAGE
    except ValidationError as e:
        print(f"acetrack: {settings_error(e)}", file=sys.stderr)
        code = EXIT_USAGE
    except json.JSONDecodeError as e:
        print(f"acetrack: --meta is not valid JSON ({e.msg}); pass a JSON object", file=sys.stderr)
        code = EXIT_USAGE
    except (NoPermissionError, AuthenticationError, AuthorizationError) as e:
        hint = permission_hint(e) or f"Redis refused the credentials ({e}); check the user and password"
        print(f"acetrack: ACETRACK_REDIS_URL: {hint}", file=sys.stderr)
        code = EXIT_USAGE
    except RedisError as e:
        print(f"acetrack: cannot reach Redis ({e}); check ACETRACK_REDIS_URL", file=sys.stderr)
        code = EXIT_PROBLEM
    except OSError as e:  # not Redis (redis-py wraps its socket errors): a port taken, a file missing
        print(f"acetrack: {e}", file=sys.stderr)
        code = EXIT_PROBLEM
    except AcetrackError as e:
        print(f"acetrack: {e}", file=sys.stderr)
        code = EXIT_PROBLEM
    except KeyboardInterrupt:
        code = EXIT_PROBLEM
    sys.exit(code)
