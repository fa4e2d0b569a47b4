"""``acetrack``: the console entry point. Parses argv, makes sure acetrack's own packages are the ones
imported (a user's ``config.py`` on ``PYTHONPATH`` would shadow acetrack's ``config``), then runs the
command (``worker.cli_run``: the composition root that builds ``Settings``).

Exit codes: 0 success; 1 a lookup or check found a problem (task not found, unhealthy, a watched task
failed or unknown) or Redis cannot be reached; 2 bad usage, input or configuration (a setting, a
Redis URL option, a module shadowing acetrack's). Each failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from worker import __version__
from worker.own_packages import clash

#: exit code of bad usage, input or configuration (``worker.commands`` has the others)
EXIT_USAGE = 2


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
    _add_sim_parser(sub)
    _add_task_parsers(sub)
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


def _add_sim_parser(sub: Any) -> None:
    sim = sub.add_parser("sim", help="serve the Tasks API simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8090)
    sim.add_argument("--rate-limit-rps", type=float, default=60.0)
    sim.add_argument("--error-rate", type=_share, default=0.0, help="share of answers that are a 429/5xx (0 to 1)")
    sim.add_argument("--latency-s", type=float, default=0.0, help="delay before each Tasks API answer")
    sim.add_argument(
        "--callback-url", type=_http_url, help="where finished tasks call back (unless a task names its own)"
    )
    sim.add_argument("--callback-loss", type=_share, default=0.0, help="share of callbacks never sent (0 to 1)")
    sim.add_argument(
        "--callback-delay-s", type=_seconds_range, default=(0.0, 0.0), help="LOW[,HIGH]: how late callbacks are"
    )


def _add_task_parsers(sub: Any) -> None:
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
    listing.add_argument(
        "--search", type=_search_text, metavar="TEXT", help="only tasks whose id or meta contains TEXT"
    )
    listing.add_argument("--json", action="store_true")
    cancel = sub.add_parser("cancel", help="stop tracking a pending task (failed, reason cancelled)")
    _task_args(cancel)
    cancel.add_argument("--silent", action="store_true", help="do not fire hooks or webhooks")
    _task_args(sub.add_parser("reopen", help="restart a finished task"))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _search_text(text: str) -> str:
    if not 1 <= len(text) <= 200:
        raise argparse.ArgumentTypeError("the text to search for must be 1 to 200 characters")
    return text


def _share(text: str) -> float:
    """A share: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share from 0 to 1 (0.1: a tenth)")
    return value


def _http_url(text: str) -> str:
    """An http(s) URL with a host."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an http(s) URL, e.g. http://127.0.0.1:8080/callbacks/suno?key=K"
        )
    return text


def _seconds_range(text: str) -> tuple[float, float]:
    """``LOW`` or ``LOW,HIGH`` seconds, 0 <= LOW <= HIGH."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or not 0 <= parts[0] <= parts[-1]:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW or LOW,HIGH seconds (0 <= LOW <= HIGH)")
    return parts[0], parts[-1]


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


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    shadowing = clash()
    if shadowing is not None:
        print(f"acetrack: {shadowing}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    from worker.cli_run import run  # only now: it imports acetrack's 'config'

    sys.exit(run(args))
