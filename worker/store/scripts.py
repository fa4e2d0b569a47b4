"""acetrack's Lua scripts (``worker/lua``): which preludes each is built from, and one call of one.

Scripts take every key they touch as KEYS (or, for a task's hash, its name from a key builder as
ARGV: a claim cannot know its ids before it picks them), and never read Redis ``TIME``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

SCRIPTS = (
    "register",
    "claim",
    "spend",
    "load",
    "touch",
    "update",
    "finish",
    "write",
    "release",
    "take_outbox",
    "hint",
)
#: shared Lua preludes (``lua/_<name>.lua``) each script is prefixed with
PRELUDES: dict[str, tuple[str, ...]] = {
    "update": ("_events", "_front", "_touch", "_update"),
    "finish": ("_events", "_finish"),
    "touch": ("_front", "_touch"),
    "write": ("_events", "_front", "_touch", "_update", "_finish"),
    "claim": ("_rows",),
    "load": ("_rows",),
    "register": ("_wake",),
    "release": ("_wake",),
    "hint": ("_wake", "_front"),
}


@dataclass(frozen=True)
class ScriptCall:
    """One call of one of the store's scripts, ready to run alone or with others in one step (``run_calls``)."""

    script: str
    keys: list[str]
    args: list[Any]


def load_script(name: str) -> str:
    """The source of script ``name``: its preludes, then its own file."""
    parts = (*PRELUDES.get(name, ()), name)
    return "\n".join(resources.files("worker").joinpath(f"lua/{part}.lua").read_text() for part in parts)
