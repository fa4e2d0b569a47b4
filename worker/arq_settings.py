"""``worker.WorkerSettings`` for arq's own CLI: ``arq worker.WorkerSettings`` runs a complete worker.

arq reads the class's attributes as ``Worker`` keyword arguments. The class is built from the
environment the first time it is looked up, once. Settings that cannot work end the process there,
with exit 2 and one line on stderr that names the setting, as ``acetrack worker`` does; so do wrong
Redis credentials and a user that may not run ``INFO`` (a quick look before arq connects). A Redis
that is not up yet is waited for by arq's own ``create_pool`` (a line per try, for a day); a Redis
lost while it runs ends the process (arq's behaviour: run it under a restart policy), where
``acetrack worker`` waits for it and resumes.

SIGINT and SIGTERM: the start-up hook installs handlers that stop claiming before arq cancels the
running polls (their ids are given back, and must not be claimed again by this worker).
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any

import redis
from pydantic import ValidationError
from redis.exceptions import NoPermissionError, RedisError

from config import Settings
from worker.connect import REDIS_DOWN, REFUSED_CREDENTIALS, SentinelUrl, permission_hint
from worker.errors import ConfigError

#: how long the look before arq connects waits for an answer (a Redis that is down is arq's to wait for)
LOOK_TIMEOUT_S = 2.0


@functools.cache
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
    _log_to_stderr(settings.log_level)
    assert plan.redis_url is not None
    _look_at_redis(plan.redis_url)
    attrs: dict[str, Any] = jobs.worker_settings(settings, plan=plan, own_signals=True)
    return type("WorkerSettings", (), attrs)


def settings_error(error: ValidationError) -> str:
    """One line for the first invalid setting: its variable's name and what is wrong."""
    first = error.errors()[0]
    where = f" ACETRACK_{str(first['loc'][0]).upper()}" if first["loc"] else "s"
    # a validator's own message, without the "Value error, " pydantic puts before it
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"bad setting{where}: {message}"


def _look_at_redis(url: str) -> None:
    """Refuse wrong credentials and a user without ``INFO`` now; leave a Redis that is down to arq."""
    if SentinelUrl.parse(url) is not None:
        return  # arq asks the Sentinels for the primary itself
    client = redis.Redis.from_url(url, socket_connect_timeout=LOOK_TIMEOUT_S, socket_timeout=LOOK_TIMEOUT_S)
    try:
        client.info("server")
    except REFUSED_CREDENTIALS as e:
        _refuse(f"ACETRACK_REDIS_URL: Redis refused the credentials ({e}); check the user and password")
    except NoPermissionError as e:
        _refuse(f"ACETRACK_REDIS_URL: {permission_hint(e)}")
    except REDIS_DOWN:
        pass
    except RedisError as e:
        _refuse(f"ACETRACK_REDIS_URL: Redis answered with an error ({e})")
    finally:
        client.close()


def _log_to_stderr(level: str) -> None:
    # arq configures only its own loggers: acetrack's lines (the start-up line among them) need a handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    for name in ("worker", "config"):
        named = logging.getLogger(name)
        named.addHandler(handler)
        named.setLevel(level)
        named.propagate = False


def _refuse(message: str) -> Any:
    print(f"acetrack: {message}", file=sys.stderr)
    raise SystemExit(2)
