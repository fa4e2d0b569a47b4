"""``worker.WorkerSettings`` for arq's own CLI: ``arq worker.WorkerSettings`` runs a complete worker.

arq reads the class's attributes as ``Worker`` keyword arguments. The class is built from the
environment the first time it is looked up; settings that cannot work end the process there, with
exit 2 and one line on stderr that names the setting, as ``acetrack worker`` does. Under arq, arq's
own ``create_pool`` waits for a Redis that is not up yet (a line per try, for a day), and a Redis
lost while it runs ends the process (arq's behaviour: run it under a restart policy);
``acetrack worker`` waits for it and resumes instead.
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import ValidationError

from config import Settings
from worker.errors import ConfigError


def worker_settings_class() -> type:
    """A ``WorkerSettings`` class for the current environment; exits 2 on a bad configuration."""
    from worker import jobs
    from worker.startup import check_worker

    try:
        settings = Settings()
        plan = check_worker(settings)
    except ValidationError as e:
        _refuse(settings_error(e))
    except ConfigError as e:
        _refuse(str(e))
    attrs: dict[str, Any] = jobs.worker_settings(settings, plan=plan)
    return type("WorkerSettings", (), attrs)


def settings_error(error: ValidationError) -> str:
    """One line for the first invalid setting: its variable's name and what is wrong."""
    first = error.errors()[0]
    where = f" ACETRACK_{str(first['loc'][0]).upper()}" if first["loc"] else "s"
    return f"bad setting{where}: {first['msg']}"


def _refuse(message: str) -> Any:
    print(f"acetrack: {message}", file=sys.stderr)
    raise SystemExit(2)
