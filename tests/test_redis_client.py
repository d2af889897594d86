"""The real-server client packs commands with hiredis, byte for byte as redis-py would."""

from __future__ import annotations

import hiredis
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import DataError

from goalhorn.redis_client import HiredisPacking, hiredis_packing, make_redis, pack_hmget
from tests.conftest import make_settings

ARGS = [
    ("SET", "k", "v"),
    (b"HMGET", b"bucket", *(f"u{i}".encode() for i in range(3000))),
    ("ZADD", "z", 1.5, "a", 2, "b", 1e20, "c"),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT LIST",),
    ("SET", "k", "é ünïcode"),
    ("SET", "k", bytearray(b"ba"), memoryview(b"mv")),
]


@pytest.mark.parametrize("args", ARGS, ids=lambda a: str(a[0]))
def test_hiredis_packing_is_byte_for_byte_redis_py_packing(args: tuple) -> None:
    plain = aioredis.Connection()
    packing = hiredis_packing(aioredis.Connection)()
    assert isinstance(packing, HiredisPacking)
    assert b"".join(packing.pack_command(*args)) == b"".join(plain.pack_command(*args))


@pytest.mark.parametrize("bad", [None, True, ["list"]])
def test_an_argument_redis_cannot_take_is_a_data_error(bad: object) -> None:
    with pytest.raises(DataError):
        hiredis_packing(aioredis.Connection)().pack_command("SET", "k", bad)  # type: ignore[arg-type]


async def test_the_real_client_round_trips_through_the_packer() -> None:
    settings = make_settings("real")
    redis = make_redis(settings)
    try:
        assert issubclass(redis.connection_pool.connection_class, HiredisPacking)
        key = f"{settings.namespace}:packing"
        await redis.hset(key, mapping={"a": b"\x00\r\n", "b": 2, "c": 1.25})
        assert await redis.hmget(key, ["a", "b", "c", "missing"]) == [b"\x00\r\n", b"2", b"1.25", None]
        await redis.delete(key)
    finally:
        await redis.aclose()


@given(
    key=st.text(min_size=1, max_size=30),
    fields=st.lists(st.binary(max_size=12), min_size=1, max_size=40)
    | st.integers(0, 12).flatmap(lambda n: st.lists(st.binary(min_size=n, max_size=n), min_size=1, max_size=40)),
)
def test_pack_hmget_is_byte_for_byte_hiredis(key: str, fields: list[bytes]) -> None:
    """Equal-length fields take the join path, others hiredis: both must give the same RESP."""
    assert pack_hmget(key, fields) == hiredis.pack_command((b"HMGET", key, *fields))  # type: ignore[arg-type]
