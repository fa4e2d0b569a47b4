"""Connecting to Redis: ``create_redis(url)`` for every URL form acetrack accepts.

Two changes to redis-py's connections, both for a worker's CPU per observation:

- Commands are packed by hiredis (C) rather than redis-py's Python loop: a poll's scripts carry an
  argument per task id (``load``) or three (``touch``), and packing a 50-id batch took ~95 µs in
  Python against ~14 µs in hiredis. The wire bytes are the same (``tests/test_connect.py`` checks
  them against redis-py's own packer).
- Before each command the pool checks that the connection holds no unread reply and was not closed
  by the server. redis-py checks by waiting on the socket with a zero timeout, which costs an event
  loop turn and a cancelled read (~25 µs, ~70 µs after a pause; a poll sends two commands). The same
  bytes are already in the connection's stream buffer, where the event loop puts them as they come:
  the check here looks there.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import hiredis
import redis.asyncio as aioredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import Sentinel


class HiredisPacking(AbstractConnection):
    """Mixed in front of a redis-py connection class: ``pack_command`` done by hiredis, and the
    pool's readiness check read from the stream buffer."""

    async def can_read_destructive(self) -> bool:
        """True when the connection is unfit for a new command: bytes of an unread reply, or closed
        by the server (the pool then disconnects it and connects again)."""
        reader, parser = self._reader, self._parser
        replies = parser._reader if isinstance(parser, _AsyncHiredisParser) and parser._connected else None
        # not connected (redis-py raises its own error), no hiredis, or not a socket (fakeredis)
        if replies is None or not isinstance(reader, asyncio.StreamReader):
            ready: bool = await super().can_read_destructive()  # type: ignore[no-untyped-call]
            return ready
        # redis-py reads this buffer too (``_socket_is_empty``); asyncio has no public view of it
        buffered = bool(reader._buffer)
        return buffered or reader.at_eof() or reader.exception() is not None or replies.gets() is not NOT_ENOUGH_DATA

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


def packing_class(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` (a redis-py connection class) with ``HiredisPacking`` in front, once."""
    if issubclass(base, HiredisPacking):
        return base
    return type(f"Hiredis{base.__name__}", (HiredisPacking, base), {})


def fast_packing(client: aioredis.Redis) -> aioredis.Redis:
    """``client`` with its connections' commands packed by hiredis (connections made from now on)."""
    pool = client.connection_pool
    pool.connection_class = packing_class(pool.connection_class)
    return client


def adopt_fast_packing(client: aioredis.Redis) -> None:
    """``fast_packing`` for a client already in use: arq makes its pools and pings them before a
    worker's start-up hook runs. The connections it holds are given the packing class in place
    (it only changes how a command is packed, so no I/O and nothing in flight is disturbed)."""
    pool = client.connection_pool
    fast_packing(client)
    held = [*getattr(pool, "_available_connections", ()), *getattr(pool, "_in_use_connections", ())]
    for connection in held:
        connection.__class__ = packing_class(type(connection))


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


def create_redis(url: str) -> aioredis.Redis:
    """A ``decode_responses`` client for ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://`` URLs."""
    sentinel_url = SentinelUrl.parse(url)
    if sentinel_url is None:
        return fast_packing(aioredis.Redis.from_url(url, decode_responses=True))
    sentinel = Sentinel(sentinel_url.nodes, decode_responses=True)  # type: ignore[no-untyped-call]
    master: aioredis.Redis = sentinel.master_for(
        sentinel_url.service_name, db=sentinel_url.db, password=sentinel_url.password
    )
    return fast_packing(master)
