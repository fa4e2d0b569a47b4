"""The time scale (``--scale``): acetrack's settings and the SDK's ``wait()`` defaults it multiplies.

Time settings are multiplied by the scale, request rates divided by it; every figure is reported in
unscaled seconds.
"""

from __future__ import annotations

import inspect

from acedatacloud._runtime.tasks import AsyncTaskHandle

from config import Settings
from worker.cadence import grid_s

#: the documented polling limit of the Tasks API, per token (DESIGN.md §1)
DOCUMENTED_RPS = 60.0
ACETRACK_TIME_SETTINGS = (
    "first_poll_s",
    "poll_s",
    "max_poll_s",
    "coalesce_s",
    "lease_s",
    "deadline_s",
    "not_found_grace_s",
    "target_p95_s",
)
_WAIT = inspect.signature(AsyncTaskHandle.wait).parameters
SDK_POLL_INTERVAL_S: float = _WAIT["poll_interval"].default
SDK_MAX_WAIT_S: float = _WAIT["max_wait"].default


def acetrack_settings(scale: float, overrides: dict[str, float] | None = None) -> dict[str, float]:
    """acetrack's defaults (read from ``config.Settings``) or ``overrides`` (unscaled), time settings times
    ``scale``, rate over it."""
    fields = Settings.model_fields
    given = overrides or {}
    defaults = {name: fields[name].default for name in ACETRACK_TIME_SETTINGS}
    # a setting whose default derives from another's (None) is passed explicitly: a baseline
    # checkout may have had a number there
    defaults["coalesce_s"] = defaults["coalesce_s"] or grid_s(given.get("poll_s", defaults["poll_s"]))
    chosen = {name: given.get(name, defaults[name]) for name in ACETRACK_TIME_SETTINGS}
    # one still None (a target not asked for) is left out: the workers' own default applies
    values = {name: float(value) * scale for name, value in chosen.items() if value is not None}
    values["deadline_s"] = max(1.0, values["deadline_s"])
    values["rate_limit_rps"] = float(fields["rate_limit_rps"].default) / scale
    return values
