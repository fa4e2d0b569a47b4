"""Bodies of the CLI's Redis commands (``enqueue``, ``status``, ``list``, ``cancel``, ``reopen``,
``stats``, ``check``, ``hooks``, ``tokens``; ``watch`` is in ``worker.watch``). Each returns an exit
code; ``cli`` parses and dispatches.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, TextIO

from config import Settings
from worker.clock import system_clock
from worker.control import collect_stats, decode_cursor, encode_cursor, live_workers
from worker.errors import InvalidInput
from worker.intake import DEFAULT_TOKEN, check_id, check_service
from worker.models import Clip, ClipState, Record, TaskState
from worker.parts import control_for
from worker.redis_policy import eviction_problem
from worker.store import Cursor, Store
from worker.tracker import Tracker

#: exit codes (``worker.cli``'s docstring; bad usage, 2, is ``worker.cli.EXIT_USAGE``)
EXIT_OK, EXIT_PROBLEM = 0, 1
#: what the CLI calls a watched id that acetrack does not track (not a ``TaskState``: no record has it)
UNKNOWN = "unknown"
#: colour of each state in text output on a terminal (``rich`` style names)
STATE_COLOURS: dict[str, str] = {
    TaskState.SUCCEEDED: "green",
    TaskState.FAILED: "red",
    TaskState.PENDING: "yellow",
    ClipState.RUNNING: "yellow",
    UNKNOWN: "magenta",
}
_ANSI = {"green": "32", "red": "31", "yellow": "33", "magenta": "35"}


def _err(message: str) -> None:
    print(f"acetrack: {message}", file=sys.stderr)


def colour_enabled(stream: TextIO) -> bool:
    """Colours only on a terminal, and not with ``NO_COLOR`` set (no-color.org) or ``TERM=dumb``."""
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def paint(text: str, state: str, colour: bool) -> str:
    """``text`` in ``state``'s colour (ANSI), or as is when ``colour`` is off."""
    code = _ANSI.get(STATE_COLOURS.get(state, ""))
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def _head(record: Record, colour: bool) -> str:
    reason = ""
    if record.reason:
        reason = f" ({record.reason.value})"
    elif record.partial:  # a success with a clip failed (its line below says why)
        reason = " (partial)"
    progress = "" if record.progress is None else f", {record.progress}%"
    return f"{record.service}/{record.id}: {paint(record.state.value + reason, record.state, colour)}{progress}"


def summary_line(record: Record, colour: bool = False) -> str:
    """One human line for a record."""
    clips = ", ".join(f"{c.title or c.id} ({paint(c.state.value, c.state, colour)})" for c in record.clips)
    return f"{_head(record, colour)}, {clips or 'no clips yet'}"


def _clip_line(clip: Clip, colour: bool) -> str:
    name = (clip.id or "?") + (f' "{clip.title}"' if clip.title else "")
    audio = f" {clip.audio_url}" if clip.audio_url else ""
    error = f" ({clip.error})" if clip.error else ""
    return f"  clip {name}: {paint(clip.state.value, clip.state, colour)}{audio}{error}"


def detail_lines(record: Record, colour: bool = False) -> list[str]:
    """``status``'s text: the head line, a failed task's error, then one line per clip with its audio URL."""
    lines = [_head(record, colour)]
    if record.error:
        code, message = record.error.get("code"), record.error.get("message")
        lines.append("  error: " + ": ".join(p for p in (code, message) if p))
    lines += [_clip_line(clip, colour) for clip in record.clips] or ["  no clips" + ("" if record.terminal else " yet")]
    return lines


async def check_token(settings: Settings, store: Store, name: str | None) -> None:
    """Refuse a token name that is not configured: in the CLI's settings, or, on a host that
    configures none (a producer's), in the running workers' (their heartbeats name their tokens).
    With neither, any name is accepted: the workers decide.

    Raises:
        InvalidInput: on field ``token``, naming ``ACETRACK_API_TOKENS`` and the configured tokens.
    """
    token = name or DEFAULT_TOKEN
    configured: Collection[str] = settings.tokens().keys()
    whose = ""
    if not configured:
        live = await live_workers(store, system_clock())
        configured, whose = {t for w in live for t in w.get("tokens", [])}, " (the running workers')"
    if configured and token not in configured:
        raise InvalidInput(
            "token",
            f"token {token!r} is not configured (ACETRACK_API_TOKEN is 'default', ACETRACK_API_TOKENS names "
            f"the others); configured tokens{whose}: {', '.join(sorted(configured))}",
        )


def _enqueued_line(earlier: Record | None, record: Record, colour: bool) -> str:
    state = paint(record.state.value, record.state, colour)
    name = f"{record.service}/{record.id}"
    if earlier is None:
        return f"{name} {state}"
    if earlier.terminal and not record.terminal:
        return f"{name} reopened ({state})"
    hint = "; --reopen restarts it" if record.terminal else ""
    return f"{name} already tracked ({state}){hint}"


async def enqueue(settings: Settings, tracker: Tracker, args: argparse.Namespace) -> int:
    """Validate every id (and the token) first, then store them all, saying which were tracked already."""
    meta = json.loads(args.meta) if args.meta else None
    for task_id in args.ids:
        Tracker.validate(args.service, task_id, settings.services)
    await check_token(settings, tracker.store, args.token)
    colour = colour_enabled(sys.stdout)
    for task_id in args.ids:
        earlier = await tracker.get(args.service, task_id)
        record = await tracker.enqueue(
            args.service,
            task_id,
            callback_url=args.callback_url,
            deadline_s=args.deadline_s,
            token=args.token,
            meta=meta,
            reopen=args.reopen,
        )
        _say(json.dumps(record.to_dict()) if args.json else _enqueued_line(earlier, record, colour))
    return EXIT_OK


def _say(line: str) -> None:
    """Print ``line`` as it comes; a reader that stops early (``| head``) stops the printing only."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        # as the Python docs advise: stdout to devnull, so the rest (and the exit's flush) go nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


async def status(tracker: Tracker, args: argparse.Namespace) -> int:
    """Print one record; exit 1 when it is not tracked."""
    record = await tracker.get(check_service(args.service), check_id(args.id))
    if record is None:
        _err(f"task {args.service}/{args.id} is not tracked")
        return EXIT_PROBLEM
    print(
        json.dumps(record.to_dict(), indent=2)
        if args.json
        else "\n".join(detail_lines(record, colour_enabled(sys.stdout)))
    )
    return EXIT_OK


async def _tasks_page(
    tracker: Tracker,
    args: argparse.Namespace,
    service: str | None,
    state: TaskState | None,
    limit: int,
    after: Cursor | None,
) -> tuple[list[Record], Cursor | None]:
    if args.search is None:
        return await tracker.store.list_page(service, state, limit, after)
    found = await tracker.store.search_page(service, state, args.search, limit, after)
    return found.records, found.next_cursor


async def list_tasks(tracker: Tracker, args: argparse.Namespace) -> int:
    """Tasks matching the filters (and ``--search``), oldest first, from ``--cursor`` on; then the next
    page's cursor, if any. A search goes on, a bounded stretch of tasks at a time, until ``--limit``
    matches or the end."""
    service = check_service(args.service) if args.service else None
    state = TaskState(args.state) if args.state else None
    after = decode_cursor(args.cursor, state) if args.cursor else None
    colour = colour_enabled(sys.stdout)
    shown = 0
    while shown < args.limit:
        records, after = await _tasks_page(tracker, args, service, state, min(500, args.limit - shown), after)
        for record in records:
            print(json.dumps(record.to_dict()) if args.json else summary_line(record, colour))
        shown += len(records)
        if after is None:
            break
    if after is not None:
        # JSON lines stay records only: there the cursor goes to stderr
        print(f"next cursor: {encode_cursor(after)}", file=sys.stderr if args.json else sys.stdout)
    return EXIT_OK


async def cancel(settings: Settings, tracker: Tracker, args: argparse.Namespace) -> int:
    """Cancel a pending task; exit 1 if unknown or already finished."""
    outcome, record = await control_for(settings, tracker.store).cancel(
        check_service(args.service), check_id(args.id), silent=args.silent
    )
    if record is None or outcome != "cancelled":
        _err(f"task {args.service}/{args.id} " + ("is not tracked" if record is None else "has already finished"))
        return EXIT_PROBLEM
    print(json.dumps(record.to_dict()) if args.json else summary_line(record, colour_enabled(sys.stdout)))
    return EXIT_OK


async def reopen(settings: Settings, tracker: Tracker, args: argparse.Namespace) -> int:
    """Restart a finished task; exit 1 if unknown or still pending."""
    outcome, record = await control_for(settings, tracker.store).reopen(check_service(args.service), check_id(args.id))
    if record is None or outcome != "reopened":
        _err(f"task {args.service}/{args.id} " + ("is not tracked" if record is None else "is still pending"))
        return EXIT_PROBLEM
    print(json.dumps(record.to_dict()) if args.json else summary_line(record, colour_enabled(sys.stdout)))
    return EXIT_OK


async def stats(tracker: Tracker, args: argparse.Namespace) -> int:
    """Print the stats (a table, or JSON)."""
    data = await collect_stats(tracker.store, system_clock())
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    for service, counts in data["services"].items():
        age_s = counts["oldest_pending_age_s"]
        print(
            f"{service:<12} pending {counts['pending']:>6}  succeeded {counts['succeeded']:>6}  "
            f"failed {counts['failed']:>6}  oldest pending {'-' if age_s is None else f'{age_s} s'}"
        )
    print(
        f"workers: {len(data['workers'])}  backlog due now: {sum(data['backlog'].values())}  "
        f"paused tokens: {', '.join(data['paused_tokens']) or 'none'}"
    )
    return EXIT_OK


async def check(tracker: Tracker, args: argparse.Namespace) -> int:
    """Health probe: Redis answers, a worker (this host's, if it runs one) beats and is ready, and no
    token is paused (by a heartbeat's account or in Redis: a pause outlives the worker that made it)."""
    await tracker.store.redis.ping()
    now_ms = system_clock()
    live = await live_workers(tracker.store, now_ms)
    mine = [w for w in live if str(w.get("worker_id", "")).startswith(socket.gethostname() + "-")]
    candidates = mine or ([] if args.local else live)
    problems = [] if candidates else ["no live worker heartbeat" + (" on this host" if args.local else "")]
    pauses = await tracker.store.token_pauses()
    paused = sorted({t for w in candidates for t in w.get("paused_tokens", [])} | pauses.keys())
    problems += [f"token {t!r} paused" + _pause_left(pauses.get(t)) for t in paused]
    healthy = not problems
    warning = await eviction_problem(tracker.store.redis)  # a warning: healthy all the same
    problems += [warning] if warning else []
    result = {"healthy": healthy, "workers": len(live), "problems": problems}
    verdict = "healthy" if healthy else "unhealthy"
    print(json.dumps(result) if args.json else (verdict + (": " + "; ".join(problems) if problems else "")))
    return EXIT_OK if healthy else EXIT_PROBLEM


def _pause_left(pause: tuple[str, int] | None) -> str:
    return "" if pause is None else f" for {pause[1] / 1000:.0f} s more ({pause[0]}); 'acetrack tokens resume' lifts it"


async def tokens(settings: Settings, tracker: Tracker, args: argparse.Namespace) -> int:
    """``tokens``: each configured token (never its secret) and each paused in Redis, with its pause;
    ``tokens resume NAME``: lift a pause (exit 1 if the token was not paused)."""
    if args.verb == "resume":
        return await _resume(tracker.store, args.name)
    now_ms = system_clock()
    configured = settings.tokens()
    pauses = await tracker.store.token_pauses()
    rows = [_token_row(n, n in configured, pauses.get(n), now_ms) for n in sorted(configured.keys() | pauses.keys())]
    if not rows and not args.json:
        print("no token configured here (ACETRACK_API_TOKEN, ACETRACK_API_TOKENS) and none paused in Redis")
    for row in rows:
        print(json.dumps(row) if args.json else _token_text(row))
    return EXIT_OK


def _token_row(name: str, configured: bool, pause: tuple[str, int] | None, now_ms: int) -> dict[str, Any]:
    until_ms = None if pause is None else now_ms + pause[1]
    reason = None if pause is None else pause[0]
    return {
        "name": name,
        "configured": configured,
        "paused": pause is not None,
        "paused_until_ms": until_ms,
        "reason": reason,
    }


def _token_text(row: dict[str, Any]) -> str:
    where = "configured" if row["configured"] else "not configured here"
    if not row["paused"]:
        return f"{row['name']:<16} {where:<20} active"
    until = datetime.fromtimestamp(row["paused_until_ms"] / 1000, tz=UTC).isoformat(timespec="seconds")
    return f"{row['name']:<16} {where:<20} paused until {until.replace('+00:00', 'Z')} ({row['reason']})"


async def _resume(store: Store, name: str) -> int:
    if not await store.resume_token(name, system_clock()):
        _err(f"token {name!r} is not paused")
        return EXIT_PROBLEM
    print(f"token {name!r} resumed: its waiting tasks are due now")
    return EXIT_OK


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
    """The ``--limit`` oldest deliveries (dead letters with ``--dead``)."""
    if args.dead:
        ids = await store.dead_letters()
        found = len(ids)
        bodies = [b for b in [await store.load_delivery(d) for d in ids[: args.limit]] if b]
    else:
        # the store reads at most this many (in no order) before sorting them oldest first
        every = await store.deliveries(max(args.limit, 1000))
        found, bodies = len(every), every[: args.limit]
    if found > args.limit:
        _err(f"showing the {args.limit} oldest of {found}; --limit shows more")
    if not bodies and not args.json:
        print("no dead-lettered deliveries" if args.dead else "no deliveries")
    for body in bodies:
        summary = {k: body.get(k) for k in ("delivery_id", "event_id", "destination", "status", "reason", "tries")}
        summary["attempts"] = body.get("attempts")
        if args.json:
            print(json.dumps(summary))
        else:
            attempts = body.get("attempts") or []
            last = (attempts[-1].get("error") or "ok") if attempts else "no try yet"
            print(f"{body['delivery_id']} {body['status']:<9} {body['destination']} last: {last}")
    return EXIT_OK


def iso_ms(text: str) -> int:
    """An ISO 8601 time as epoch ms (UTC when no zone is given)."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise InvalidInput("since", f"--since {text!r} is not an ISO 8601 time like 2026-11-25T09:00:00Z") from e
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)
