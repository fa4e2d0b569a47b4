"""The composition root of the ``acetrack`` commands: builds ``Settings``, configures logging, runs
one parsed command and turns what it raises into an exit code and one line on stderr (exit codes:
``worker.cli``). ``worker.cli.main`` imports this only once no module shadows acetrack's packages.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging.config
import os
import sys
from collections.abc import Coroutine
from typing import Any

from pydantic import ValidationError
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError, RedisError

from config import Settings
from config.settings import misspelt_settings
from worker import commands
from worker.arq_settings import settings_error
from worker.cli import EXIT_USAGE, default_log_config
from worker.commands import EXIT_OK, EXIT_PROBLEM
from worker.connect import FULL_HINT, REDIS_DOWN, REFUSED_CREDENTIALS, describe, is_full, permission_hint, tls_hint
from worker.errors import AcetrackError, ConfigError, InvalidInput, StoreError
from worker.parts import tracker_for
from worker.tracker import Tracker
from worker.watch import watch as watch_tasks


async def _redis_command(settings: Settings, args: argparse.Namespace) -> int:
    tracker = tracker_for(settings)
    try:
        return await _command(settings, tracker, args)
    except (StoreError, RedisError) as e:
        down = _unreachable(e)
        if down is None:
            raise
        print(
            f"acetrack: cannot reach Redis at {describe(settings.redis_url or '')} ({down}"
            f"{tls_hint(settings.redis_url or '', down)}); start it, or set ACETRACK_REDIS_URL to a Redis that runs",
            file=sys.stderr,
        )
        return EXIT_PROBLEM
    finally:
        await tracker.close()


def _unreachable(error: Exception) -> str | None:
    """Why Redis could not be reached, when that is what ``error`` (or the error it wraps) says; else None."""
    cause = error if isinstance(error, RedisError) else error.__cause__
    if isinstance(cause, REDIS_DOWN) and not isinstance(cause, REFUSED_CREDENTIALS):
        return str(cause).rstrip(".")
    return None


async def _command(settings: Settings, tracker: Tracker, args: argparse.Namespace) -> int:
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


def _run_sim(args: argparse.Namespace) -> int:
    from worker.sim import run_sim

    knobs = {"rate_limit_rps": args.rate_limit_rps, "error_rate": args.error_rate, "latency_s": args.latency_s}
    knobs |= {"callback_url": args.callback_url, "callback_loss": args.callback_loss}
    knobs["callback_delay_s"] = args.callback_delay_s
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
    for name, meant in misspelt_settings(os.environ):
        logging.getLogger(__name__).warning("%s is not a setting and is ignored: did you mean %s?", name, meant)
    if args.command == "worker":
        from worker.process import run_worker

        run_loop(run_worker(settings))
        return EXIT_OK
    if args.command == "serve":
        from worker.http_serve import serve
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


def run(args: argparse.Namespace) -> int:
    """Run one parsed command; returns the exit code, having said what went wrong on stderr."""
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
        why = FULL_HINT if is_full(e) else "check ACETRACK_REDIS_URL"
        print(f"acetrack: Redis answered with an error ({e}); {why}", file=sys.stderr)
        code = EXIT_PROBLEM
    except OSError as e:  # not Redis (redis-py wraps its socket errors): a port taken, a file missing
        print(f"acetrack: {e}", file=sys.stderr)
        code = EXIT_PROBLEM
    except AcetrackError as e:
        print(f"acetrack: {e}" + (f"; {FULL_HINT}" if is_full(e) else ""), file=sys.stderr)
        code = EXIT_PROBLEM
    except KeyboardInterrupt:
        code = EXIT_PROBLEM
    return code
