"""Connecting to Redis: one place turns a URL into clients, arq's settings and a wait for the server.

Every URL form acetrack accepts (``redis://``, ``rediss://`` with TLS options in the query,
``unix://``, ``redis+sentinel://``) reaches both the store's client and arq's pool with the same
options: arq's ``RedisSettings.from_dsn`` drops the query string, so the settings are built here
from what redis-py parses out of the URL.

Commands of the store's client are packed by hiredis (C) rather than redis-py's Python loop: a
poll's scripts carry an argument or more per task id, and packing a 50-id batch took ~95 µs in
Python against ~14 µs in hiredis. This only overrides ``pack_command``, a public method, in a
connection class given to the pool as redis-py documents (``connection_class``); the wire bytes
are the same (``tests/test_connect.py`` checks them against redis-py's own packer).
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import hiredis
import redis.asyncio as aioredis
from arq.connections import RedisSettings
from redis.asyncio.connection import (
    URL_QUERY_ARGUMENT_PARSERS,
    AbstractConnection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError, OutOfMemoryError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.errors import ConfigError

logger = logging.getLogger(__name__)

#: errors that mean Redis is (for now) unreachable, as opposed to a bug
REDIS_DOWN: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)
#: connection errors that waiting does not mend: wrong credentials (redis-py makes them ConnectionErrors)
REFUSED_CREDENTIALS: tuple[type[Exception], ...] = (AuthenticationError, AuthorizationError)
#: a full Redis (``OOM command not allowed``) is logged at most this often by one process
FULL_LOG_EVERY_S = 60.0
#: what to tell a user when Redis refuses writes for want of memory
FULL_HINT = (
    "Redis is full (maxmemory reached, OOM): it refuses writes; nothing acknowledged is lost and work "
    "resumes by itself once memory frees: raise maxmemory, or lower ACETRACK_RETENTION_S / ACETRACK_EVENTS_MAXLEN"
)
#: the longest wait between two tries to reach a Redis that is down (so work starts within that of
#: Redis answering)
MAX_RETRY_S = 1.5
#: arq's own start-up retries (``arq worker.WorkerSettings``): one try a second for a day, each logged
ARQ_CONN_RETRIES = 86_400
#: URL query options of redis-py that arq's ``RedisSettings`` has a field for, by that field's name
_ARQ_FIELDS = {
    "ssl_keyfile": "ssl_keyfile",
    "ssl_certfile": "ssl_certfile",
    "ssl_cert_reqs": "ssl_cert_reqs",
    "ssl_ca_certs": "ssl_ca_certs",
    "ssl_ca_data": "ssl_ca_data",
    "ssl_check_hostname": "ssl_check_hostname",
    "socket_connect_timeout": "conn_timeout",
    "max_connections": "max_connections",
}


class HiredisPacking(AbstractConnection):
    """Mixed in front of a redis-py connection class: ``pack_command`` done by hiredis."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # like redis-py: a command name with spaces ('CONFIG GET') is sent as separate words
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            # a type hiredis refuses (None, a bool): redis-py's packer raises its own clear DataError
            return super().pack_command(*args)


def is_full(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) is Redis refusing a write for want of memory."""
    while error is not None:
        if isinstance(error, OutOfMemoryError):
            return True
        error = error.__cause__  # type: ignore[assignment]
    return False


class OncePer:
    """A warning logged at most once every ``every_s`` by one process, however often it recurs."""

    def __init__(self, every_s: float = FULL_LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._next_s = 0.0

    def warn(self, message: str, now_s: float) -> None:
        """Log ``message`` unless a line was written less than ``every_s`` ago."""
        if now_s >= self._next_s:
            self._next_s = now_s + self.every_s
            logger.warning("%s", message)

    def note(self, where: str, error: BaseException, now_s: float) -> None:
        """Log that ``where`` met a full Redis (``FULL_HINT``)."""
        self.warn(f"{where}: {FULL_HINT} ({error})", now_s)


#: the process's one rate-limited log of a full Redis
FULL_LOG = OncePer()
#: and of a command the Redis user may not run, found while running
REFUSED_LOG = OncePer()


def permission_hint(error: RedisError) -> str | None:
    """For a command the Redis user may not run: one line naming it and what to do; else None."""
    if not isinstance(error, NoPermissionError):
        return None
    refused = re.search(r"run the '([^']+)' command", str(error))
    grant = f"+{refused[1]}" if refused else "it"
    return (
        f"the Redis user may not run a command acetrack needs ({error}); grant {grant} in the user's ACL "
        "(docs/deploy.md, 'TLS and a least-privilege Redis user', has the minimal ACL)"
    )


def packing_class(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` (a redis-py connection class) with ``HiredisPacking`` in front, once."""
    if issubclass(base, HiredisPacking):
        return base
    return type(f"Hiredis{base.__name__}", (HiredisPacking, base), {})


def fast_packing(client: aioredis.Redis) -> aioredis.Redis:
    """``client`` (not yet connected) with its connections' commands packed by hiredis."""
    pool = client.connection_pool
    pool.connection_class = packing_class(pool.connection_class)
    return client


@dataclass(frozen=True)
class SentinelUrl:
    """The parts of ``redis+sentinel://[:password@]host:port[,host:port]/service_name[/db]``."""

    nodes: list[tuple[str, int]]
    service_name: str
    db: int
    password: str | None

    @classmethod
    def parse(cls, url: str) -> SentinelUrl | None:
        """The parts of a Sentinel URL; None for any other scheme."""
        parts = urlsplit(url)
        if parts.scheme != "redis+sentinel":
            return None
        nodes = []
        for node in parts.netloc.split("@")[-1].split(","):
            host, _, port = node.partition(":")
            nodes.append((host, int(port or 26379)))
        path = [p for p in parts.path.split("/") if p]
        return cls(nodes, path[0], int(path[1]) if len(path) > 1 else 0, parts.password)


#: the name acetrack's connections to Sentinels carry (``CLIENT SETNAME``)
SENTINEL_CLIENT_NAME = "acetrack"


def tls_hint(url: str, why: str) -> str:
    """What to add after ``why`` a connect to a ``rediss://`` URL failed: a certificate that was
    not accepted wants its CA; a handshake that hung or broke off, a server that may not speak TLS."""
    if urlsplit(url).scheme != "rediss":
        return ""
    if "certificate" in why.lower():
        return "; give the server's CA with ?ssl_ca_certs=/path/to/ca.pem (or ?ssl_cert_reqs=none to test)"
    if any(sign in why for sign in ("Timeout", "SSL", "EOF")):
        return "; if this Redis does not use TLS, write redis:// instead of rediss://"
    return ""


def create_redis(url: str) -> aioredis.Redis:
    """A ``decode_responses`` client for ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://`` URLs."""
    sentinel_url = SentinelUrl.parse(url)
    if sentinel_url is None:
        return fast_packing(aioredis.Redis.from_url(url, decode_responses=True))
    # named, so an operator (and a test) can tell acetrack's connections in a Sentinel's CLIENT LIST
    sentinel_kwargs = {"client_name": SENTINEL_CLIENT_NAME}
    sentinel = Sentinel(sentinel_url.nodes, sentinel_kwargs=sentinel_kwargs, decode_responses=True)  # type: ignore[no-untyped-call]
    master: aioredis.Redis = sentinel.master_for(
        sentinel_url.service_name, db=sentinel_url.db, password=sentinel_url.password
    )
    return fast_packing(master)


#: what redis-py reads out of a URL that arq's settings take apart from ``_ARQ_FIELDS``
_ARQ_BASICS = frozenset({"host", "port", "db", "username", "password", "path"})


def check_url_options(url: str) -> ConnectionPool | None:
    """Refuse a URL whose options redis-py cannot use (a typo such as ``ssl_ca_cert``), naming the
    option; returns redis-py's pool for it (None for Sentinel URLs). Nothing connects.

    Raises:
        ConfigError: naming ``ACETRACK_REDIS_URL`` and the option.
    """
    if SentinelUrl.parse(url) is not None:
        return None
    try:
        pool = ConnectionPool.from_url(url)
        pool.make_connection()  # type: ignore[no-untyped-call]  # builds the object only: nothing connects
    except (TypeError, ValueError) as e:
        raise ConfigError(f"ACETRACK_REDIS_URL {describe(url)}: {_option_problem(url, e)}") from e
    return pool


#: TLS options of redis-py's URLs (``rediss://`` only)
_TLS_OPTIONS = frozenset(o for o in _ARQ_FIELDS if o.startswith("ssl_"))


def _option_problem(url: str, error: Exception) -> str:
    """What is wrong with the URL's query string, in words (redis-py says ``__init__() got an
    unexpected keyword argument``)."""
    unknown = re.search(r"unexpected keyword argument '([^']+)'", str(error))
    if unknown is None:
        return f"{error}; check the options in its query string"
    name = unknown[1]
    if name in _TLS_OPTIONS:
        return f"option {name!r} applies to TLS only: use a rediss:// URL"
    known = sorted(set(URL_QUERY_ARGUMENT_PARSERS) | _TLS_OPTIONS)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "known options: " + ", ".join(known)
    return f"redis-py knows no URL option {name!r}; {hint}"


def check_url(url: str) -> None:
    """``check_url_options``, then warn of options that reach the store's connections but not arq's."""
    pool = check_url_options(url)
    if pool is None:
        return
    not_for_arq = sorted(set(pool.connection_kwargs) - _ARQ_BASICS - set(_ARQ_FIELDS))
    if not_for_arq:
        logger.warning(
            "ACETRACK_REDIS_URL: %s apply to the store's connections but not to arq's job queue", ", ".join(not_for_arq)
        )


def arq_settings(url: str) -> RedisSettings:
    """arq's connection settings with every option the URL gives (TLS ones included)."""
    sentinel_url = SentinelUrl.parse(url)
    retries: dict[str, Any] = {"conn_retries": ARQ_CONN_RETRIES, "conn_retry_delay": 1}
    if sentinel_url is not None:
        return RedisSettings(
            host=sentinel_url.nodes,
            sentinel=True,
            sentinel_master=sentinel_url.service_name,
            database=sentinel_url.db,
            password=sentinel_url.password,
            **retries,
        )
    # redis-py's own reading of the URL: what its clients (the store's) connect with
    parsed = ConnectionPool.from_url(url)
    options, connection_class = dict(parsed.connection_kwargs), parsed.connection_class
    fields: dict[str, Any] = {
        "host": options.pop("host", "localhost"),
        "port": options.pop("port", 6379),
        "database": options.pop("db", 0),
        "username": options.pop("username", None),
        "password": options.pop("password", None),
        "ssl": issubclass(connection_class, SSLConnection),
    }
    if issubclass(connection_class, UnixDomainSocketConnection):
        fields["unix_socket_path"] = options.pop("path")
    for option, field in _ARQ_FIELDS.items():
        if option in options:
            fields[field] = options[option]
    return RedisSettings(**fields, **retries)


def describe(url: str) -> str:
    """The URL as a log line may show it: scheme, host(s) and path, never a password."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{hosts}{parts.path}"


async def wait_for_room(
    client: aioredis.Redis, probe_key: str, *, sleep: Callable[[float], Any] = asyncio.sleep
) -> None:
    """Return once a full Redis takes writes again (or cannot be reached: whoever writes next
    finds that out and says so). The probe is ``SET probe_key '' XX`` of a key that never exists:
    it writes nothing, but Redis refuses it while full, as it refuses every write that may grow."""
    wait_s, tries = 0.25, 0
    while True:
        tries += 1
        try:
            await client.set(probe_key, "", xx=True)
            if tries > 1:
                logger.info("Redis takes writes again: resuming")
            return
        except OutOfMemoryError as e:
            FULL_LOG.note("worker", e, time.monotonic())
        except REDIS_DOWN:
            return
        await sleep(wait_s)
        wait_s = min(MAX_RETRY_S, wait_s * 2)


async def wait_for_redis(client: aioredis.Redis, url: str, *, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
    """Return once ``client`` answers a PING: tries with a capped back-off, one log line per try.

    Only a server that cannot be reached is waited for; any other error (a wrong password, a
    refused command) is raised at once, since waiting would not mend it.
    """
    wait_s, tries = 0.25, 0
    while True:
        tries += 1
        try:
            await client.ping()
        except REFUSED_CREDENTIALS:
            raise
        except REDIS_DOWN as e:
            logger.warning(
                "waiting for Redis at %s (%s%s); try %d, next in %.1f s",
                describe(url),
                e,
                tls_hint(url, str(e)),
                tries,
                wait_s,
            )
            await sleep(wait_s)
            wait_s = min(MAX_RETRY_S, wait_s * 2)
            continue
        if tries > 1:
            logger.info("Redis at %s answers after %d tries", describe(url), tries)
        return
