"""``create_redis``: commands packed by hiredis go on the wire exactly as redis-py packs them."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError
from support import require_real_redis

from worker.connect import HiredisPacking, create_redis, packing_class, tls_hint

ARG = st.one_of(
    st.text(),
    st.binary(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
PLAIN = Connection()
FAST = packing_class(Connection)()


@given(st.sampled_from(["EVALSHA", "CONFIG GET", b"MEMORY USAGE", "SET"]), st.lists(ARG, max_size=60))
def test_hiredis_packs_the_same_bytes_as_redis_py(command: str | bytes, args: list[object]) -> None:
    assert b"".join(FAST.pack_command(command, *args)) == b"".join(PLAIN.pack_command(command, *args))


def test_an_argument_redis_refuses_gets_redis_pys_own_error() -> None:
    with pytest.raises(DataError, match="NoneType"):
        FAST.pack_command("SET", "k", None)


async def test_every_url_form_gets_the_packing_and_only_once() -> None:
    for url in ("redis://localhost:6379/0", "rediss://localhost:6380/0", "unix:///tmp/redis.sock"):
        client = create_redis(url)  # nothing connects until a command is sent
        assert issubclass(client.connection_pool.connection_class, HiredisPacking)
        await client.aclose()
    unix = create_redis("unix:///tmp/redis.sock")
    assert issubclass(unix.connection_pool.connection_class, UnixDomainSocketConnection)
    assert packing_class(unix.connection_pool.connection_class) is unix.connection_pool.connection_class
    await unix.aclose()


@pytest.mark.realredis
async def test_a_real_server_reads_what_hiredis_packed(
    real_redis_url: str | None, request: pytest.FixtureRequest
) -> None:
    client = create_redis(require_real_redis(real_redis_url, request))
    try:
        values = {"text": "héllo wörld", "int": 12, "float": 0.1, "bytes": b"\x00\xff".decode("latin-1")}
        await client.hset("acetrack-test:connect", mapping=values)
        stored = await client.hgetall("acetrack-test:connect")
        assert stored == {k: str(v) for k, v in values.items()}
        assert await client.pipeline(transaction=False).hget("acetrack-test:connect", "int").delete(
            "acetrack-test:connect"
        ).execute() == ["12", 1]
    finally:
        await client.aclose()


@pytest.mark.realredis
async def test_a_pooled_connection_with_an_unread_reply_is_replaced(
    real_redis_url: str | None, request: pytest.FixtureRequest
) -> None:
    # the pool's readiness check reads the stream buffer: a reply nobody read must not answer the next command
    client = create_redis(require_real_redis(real_redis_url, request))
    try:
        await client.set("acetrack-test:ready", "right")
        pool = client.connection_pool
        stale = await pool.get_connection()
        await stale.send_command("ECHO", "stale")  # never read
        await pool.release(stale)
        await asyncio.sleep(0.05)  # the reply reaches the buffer
        assert await client.get("acetrack-test:ready") == "right"
        assert await client.delete("acetrack-test:ready") == 1
    finally:
        await client.aclose()


@pytest.mark.realredis
async def test_a_pooled_connection_the_server_closed_is_connected_again(
    real_redis_url: str | None, request: pytest.FixtureRequest
) -> None:
    url = require_real_redis(real_redis_url, request)
    client, killer = create_redis(url), create_redis(url)
    try:
        own_id = await client.client_id()
        assert await killer.client_kill_filter(_id=own_id) == 1
        await asyncio.sleep(0.05)  # the close reaches the buffer
        assert await client.client_id() != own_id  # answered, on a new connection
    finally:
        await client.aclose()
        await killer.aclose()


@pytest.mark.parametrize(
    ("url", "why", "words"),
    [
        ("rediss://h:6380", "Timeout connecting to server", "write redis:// instead of rediss://"),
        ("rediss://h:6380", "[SSL: WRONG_VERSION_NUMBER] wrong version number", "write redis://"),
        ("rediss://h:6380", "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", "ssl_ca_certs"),
        ("rediss://h:6380", "Error 111 connecting to h:6380. Connection refused.", ""),
        ("redis://h:6379", "Timeout connecting to server", ""),
    ],
)
def test_a_failed_tls_connect_says_what_to_look_at(url: str, why: str, words: str) -> None:
    hint = tls_hint(url, why)
    assert words in hint if words else hint == ""
