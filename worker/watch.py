"""``acetrack watch``: follow tasks until each is finished or unknown.

On a terminal, a live bar per task in its state's colour and a totals line; piped or redirected,
a plain line whenever what it says of a task changes, then the totals line. With ``--json``, one
JSON line whenever a task is first seen or its state, reason, progress or clips change (the record
as ``status --json`` prints it; ``{"service", "id", "state": "unknown"}`` for an id acetrack does
not track), then a ``{"totals": {...}}`` line. Exit 0 when every watched task succeeded, 1 when one
failed or is unknown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, Task, TextColumn
from rich.progress_bar import ProgressBar
from rich.text import Text

from worker.commands import EXIT_OK, EXIT_PROBLEM, STATE_COLOURS, UNKNOWN
from worker.intake import check_id, check_service
from worker.models import Record, TaskState
from worker.store import Store
from worker.tracker import Tracker

#: ``watch --all`` follows at most this many pending tasks (the oldest)
WATCH_ALL_MAX = 200
#: terminal lines the live view keeps for itself (the totals line, the cursor's)
RESERVED_LINES = 2

Key = tuple[str, str]


class _Console(Console):
    """A console that lets a closed stdout surface as ``BrokenPipeError`` (``cli.main`` ends quietly
    with exit 0) instead of rich's own exit 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


class _StateBar(BarColumn):
    """A bar in its task's state colour: a failed task's bar is red, never green."""

    def render(self, task: Task) -> ProgressBar:
        style = STATE_COLOURS.get(task.fields.get("state", UNKNOWN), "yellow")
        return ProgressBar(
            total=task.total,
            completed=task.completed,
            width=self.bar_width,
            animation_time=task.get_time(),
            style=self.style,
            complete_style=style,
            finished_style=style,
        )


def state_of(record: Record | None) -> str:
    """A watched task's state, ``unknown`` when acetrack does not track it."""
    return UNKNOWN if record is None else record.state.value


def totals(records: Sequence[Record | None]) -> dict[str, int]:
    """How many watched tasks are in each state (``unknown`` included)."""
    counts = dict.fromkeys([TaskState.SUCCEEDED.value, TaskState.FAILED.value, TaskState.PENDING.value, UNKNOWN], 0)
    for record in records:
        counts[state_of(record)] += 1
    return counts


def totals_line(counts: dict[str, int]) -> str:
    """``totals: a succeeded, b failed, c pending, d unknown``."""
    return "totals: " + ", ".join(f"{n} {state}" for state, n in counts.items())


def label(record: Record | None) -> str:
    """A task's state as the live view shows it (rich markup, in the state's colour)."""
    if record is None:
        return f"[{STATE_COLOURS[UNKNOWN]}]{UNKNOWN}[/] (not tracked)"
    text = record.state.value + (f" ({record.reason.value})" if record.reason else "")
    ready = sum(1 for c in record.clips if c.audio_url)
    clips = f", {ready}/{len(record.clips)} clips ready" if record.clips else ""
    return f"[{STATE_COLOURS[record.state]}]{escape(text)}[/]{clips}"


def _completed(record: Record | None) -> int:
    if record is None:
        return 0
    return 100 if record.terminal else (record.progress or 0)


async def watch(tracker: Tracker, args: argparse.Namespace) -> int:
    """Follow the tasks until none is pending; exit 0 only when every one succeeded."""
    keys = await _watched_keys(tracker.store, args)
    if not keys:
        print("nothing to watch: no pending tasks")
        return EXIT_OK
    if args.json:
        records = await _follow_json(tracker.store, keys, args.interval_s)
        print(json.dumps({"totals": totals(records)}), flush=True)
    elif sys.stdout.isatty():
        records = await _follow_live(tracker.store, keys, args.interval_s)
    else:
        records = await _follow_lines(tracker.store, keys, args.interval_s)
    succeeded = all(r is not None and r.state is TaskState.SUCCEEDED for r in records)
    return EXIT_OK if succeeded else EXIT_PROBLEM


async def _watched_keys(store: Store, args: argparse.Namespace) -> list[Key]:
    service = check_service(args.service) if args.service else None
    if args.ids and not args.all:
        return [(check_service(args.service), check_id(i)) for i in dict.fromkeys(args.ids)]
    pending, more = await store.list_page(service, TaskState.PENDING, WATCH_ALL_MAX)
    if more is not None:
        print(f"acetrack: watching the oldest {WATCH_ALL_MAX} pending tasks; more are pending", file=sys.stderr)
    return [(r.service, r.id) for r in pending]


async def _rounds(store: Store, keys: list[Key], interval_s: float) -> AsyncIterator[list[Record | None]]:
    """The watched records every ``interval_s``, until none is pending (an unknown id is not waited for)."""
    while True:
        records = await store.get_many(keys)
        yield records
        if all(r is None or r.terminal for r in records):
            return
        await asyncio.sleep(interval_s)


def _json_line(key: Key, record: Record | None) -> dict[str, Any]:
    return {"service": key[0], "id": key[1], "state": UNKNOWN} if record is None else record.to_dict()


def _view(record: Record | None) -> tuple[Any, ...]:
    """What a JSON line is printed for a change of (not the poll count or times)."""
    if record is None:
        return (UNKNOWN,)
    return record.state, record.reason, record.progress, [(c.id, c.state, c.audio_url) for c in record.clips]


async def _follow_json(store: Store, keys: list[Key], interval_s: float) -> list[Record | None]:
    seen: dict[Key, tuple[Any, ...]] = {}
    records: list[Record | None] = []
    async for records in _rounds(store, keys, interval_s):
        for key, record in zip(keys, records, strict=True):
            if seen.get(key) != (view := _view(record)):
                seen[key] = view
                print(json.dumps(_json_line(key, record)), flush=True)
    return records


async def _follow_lines(store: Store, keys: list[Key], interval_s: float) -> list[Record | None]:
    """Piped or redirected: a plain line as each task changes (a file or a reader sees them as they
    come, where a live view would be printed once at the end), then the totals."""
    printed: dict[Key, str] = {}
    records: list[Record | None] = []
    async for records in _rounds(store, keys, interval_s):
        for key, record in zip(keys, records, strict=True):
            progress = f", {record.progress}%" if record and not record.terminal and record.progress else ""
            line = f"{key[0]}/{key[1]}  {Text.from_markup(label(record)).plain}{progress}"
            if printed.get(key) != line:  # a line only when what it says changed
                printed[key] = line
                print(line, flush=True)
    print(totals_line(totals(records)), flush=True)
    return records


async def _follow_live(store: Store, keys: list[Key], interval_s: float) -> list[Record | None]:
    console = _Console(highlight=False)
    progress = Progress(TextColumn("{task.description}"), _StateBar(), TextColumn("{task.fields[label]}"))
    rows = {key: progress.add_task(escape(f"{key[0]}/{key[1]}"), total=100, label="", state=UNKNOWN) for key in keys}
    footer = Text()
    live = Live(Group(progress, footer), console=console, refresh_per_second=4)
    records: list[Record | None] = []
    try:
        async for records in _rounds(store, keys, interval_s):
            # rows past the terminal's height are hidden, and the totals line says so, never cut off
            fit = max(1, console.size.height - RESERVED_LINES)
            for n, (key, record) in enumerate(zip(keys, records, strict=True)):
                progress.update(rows[key], completed=_completed(record), visible=n < fit)
                progress.update(rows[key], label=label(record), state=state_of(record))
            hidden = f" ({len(keys) - fit} more not shown)" if len(keys) > fit else ""
            footer.plain = totals_line(totals(records)) + hidden
            if not live.is_started:
                live.start()  # once the first round is in: no frame of empty rows
    finally:
        live.stop()
    return records
