"""acetrack: completion tracker for Ace Data Cloud generation tasks.

``worker.WorkerSettings`` is what ``arq worker.WorkerSettings`` runs: a complete worker (intake,
claims, polls, deliveries, heartbeat) built from the ``ACETRACK_*`` environment when first looked
up (once). A configuration that cannot work ends the process there with exit 2 and one line on stderr.
"""

from __future__ import annotations

import sys
from typing import Any

__version__ = "0.2.0"
__all__ = ["__version__"]  # WorkerSettings is looked up by name (``arq worker.WorkerSettings``)


def __getattr__(name: str) -> Any:
    # built on first use, not at import: importing the package (the CLI, the tests) reads no settings
    if name == "WorkerSettings":
        from worker.own_packages import clash

        if (shadowing := clash()) is not None:  # before arq_settings imports acetrack's 'config'
            print(f"acetrack: {shadowing}", file=sys.stderr)
            raise SystemExit(2)
        from worker.arq_settings import worker_settings_class

        return worker_settings_class()
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
