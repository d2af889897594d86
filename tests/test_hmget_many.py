"""``hmget_many``: many HMGETs in one write on one connection, replies aligned with their fields; an
error reply raises and never leaves unread replies on a connection the pool hands out again."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ResponseError

from goalhorn.redis_client import Redis, hmget_many, make_redis
from goalhorn.settings import Settings
from tests.conftest import delete_namespace, make_settings


async def test_replies_are_aligned_with_keys_and_fields(redis: Redis, settings: Settings) -> None:
    ns = settings.namespace
    await redis.hset(f"{ns}:h1", mapping={"a": b"1", "b": b"2"})
    await redis.hset(f"{ns}:h2", mapping={"c": b"\x00\r\n$3\r\n", "d": b""})
    got = await hmget_many(
        redis,
        [
            (f"{ns}:h1", [b"a", b"missing", b"b"]),
            (f"{ns}:absent", [b"a", b"b"]),
            (f"{ns}:h2", [b"d", b"c", b"c"]),
            (f"{ns}:h1", [b"b"]),
        ],
    )
    assert got == [[b"1", None, b"2"], [None, None], [b"", b"\x00\r\n$3\r\n", b"\x00\r\n$3\r\n"], [b"2"]]
    assert await hmget_many(redis, []) == []


async def test_many_large_hmgets_in_one_write(redis: Redis, settings: Settings) -> None:
    ns = settings.namespace
    for k in range(20):
        await redis.hset(f"{ns}:b{k}", mapping={f"u{i}": f"{k}:{i}".encode() for i in range(0, 600, 2)})
    commands = [(f"{ns}:b{k}", [f"u{i}".encode() for i in range(600)]) for k in range(20)]
    got = await hmget_many(redis, commands)
    assert got == [[f"{k}:{i}".encode() if i % 2 == 0 else None for i in range(600)] for k in range(20)]


@pytest.fixture
async def one_connection(backend: str) -> AsyncIterator[tuple[Redis, str]]:
    """A client whose pool holds a single connection, so a command after a failure reuses it."""
    settings = make_settings(backend, redis_max_connections=1, redis_pool_timeout_s=2)
    client = make_redis(settings)
    try:
        yield client, settings.namespace
    finally:
        await delete_namespace(client, settings.namespace)
        await client.aclose()


async def test_an_error_reply_raises_and_the_pool_stays_usable(one_connection: tuple[Redis, str]) -> None:
    redis, ns = one_connection
    await redis.hset(f"{ns}:h1", mapping={"a": b"1", "b": b"2"})
    await redis.hset(f"{ns}:h2", mapping={"c": b"stale"})
    await redis.set(f"{ns}:string", b"not a hash")
    for failing in range(3):  # the error first, in the middle, last: replies after it are left unread
        commands = [(f"{ns}:h2", [b"c"]), (f"{ns}:h2", [b"c"])]
        commands.insert(failing, (f"{ns}:string", [b"a"]))
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await hmget_many(redis, commands)
        # The next commands on the pool's only connection read their own replies, not the ones left over.
        assert await redis.hmget(f"{ns}:h1", ["a", "b"]) == [b"1", b"2"]
        assert await hmget_many(redis, [(f"{ns}:h1", [b"b", b"a"])]) == [[b"2", b"1"]]
        assert await redis.get(f"{ns}:string") == b"not a hash"
