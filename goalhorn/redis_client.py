"""The Redis client every stage uses: redis-py asyncio with a blocking pool, or fakeredis.

A client is bound to the event loop it first talks on, so each loop (the main one, dramatiq's
event-loop thread) makes its own with :func:`make_redis`. On the embedded default all clients of one
process and namespace share one in-memory ``FakeServer``, so they see the same data, as they would
on a real server.

Commands to a real server are packed by hiredis in C. redis-py's synchronous client does this when
hiredis is installed; its asyncio client packs in Python, re-joining a growing buffer per argument,
which cost 0.71 µs per argument against hiredis's 0.13 µs: most of the expander's client time on
its per-chunk HMGETs of thousands of user ids.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.typing import EncodableT

from goalhorn.settings import Settings

if TYPE_CHECKING:  # fakeredis (with numpy and lupa, ~25 MB) is imported only by a process that embeds Redis
    from fakeredis import FakeServer

Redis = aioredis.Redis

_fake_servers: dict[str, FakeServer] = {}
_fake_lock = threading.Lock()


def fake_server(namespace: str) -> FakeServer:
    """The process's embedded Redis for a namespace."""
    from fakeredis import FakeServer

    with _fake_lock:
        server = _fake_servers.get(namespace)
        if server is None:
            server = _fake_servers[namespace] = FakeServer()
        return server


class HiredisPacking:
    """Connection mixin: pack commands with ``hiredis.pack_command``; arguments hiredis refuses
    (bytearray, memoryview, or a type Redis cannot take) go through redis-py's own encoder, which
    converts the first and raises redis-py's ``DataError`` for the others."""

    encoder: Any

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        pack = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)  # its stub types a 1-tuple
        try:
            return [pack(args)]
        except TypeError:
            return [pack(tuple(bytes(a) for a in map(self.encoder.encode, args)))]


Connection = aioredis.connection.AbstractConnection
_packing_classes: dict[type[Connection], type[Connection]] = {}


def hiredis_packing(connection_class: type[Connection]) -> type[Connection]:
    """``connection_class`` with :class:`HiredisPacking` mixed in (one class per base)."""
    packing = _packing_classes.get(connection_class)
    if packing is None:
        name = f"HiredisPacking{connection_class.__name__}"
        packing = _packing_classes[connection_class] = type(name, (HiredisPacking, connection_class), {})
    return packing


def pack_hmget(key: str, fields: Sequence[bytes]) -> bytes:
    """``HMGET key fields...`` in RESP. Fields of one length (user ids usually are: UUIDs, Firebase
    uids, fixed-width ids) are packed with one ``bytes.join``, 10x hiredis's per-argument packing."""
    if fields and len(set(map(len, fields))) == 1:
        name, size = key.encode(), len(fields[0])
        return b"*%d\r\n$5\r\nHMGET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            len(fields) + 2,
            len(name),
            name,
            size,
            (b"\r\n$%d\r\n" % size).join(fields),
        )
    pack = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)
    return pack((b"HMGET", key, *fields))


async def hmget_many(redis: Redis, commands: Sequence[tuple[str, Sequence[bytes]]]) -> list[list[bytes | None]]:
    """``HMGET key fields...`` for each ``(key, fields)``, pipelined on one connection: packed in one
    call and sent in one write, the replies read straight off the connection (no per-command
    bookkeeping of redis-py's ``Pipeline``: on the expander's hot path that is a tenth of its time)."""
    if not commands:
        return []
    packed = [pack_hmget(key, fields) for key, fields in commands]
    pool = redis.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await connection.send_packed_command(packed, check_health=False)
        return [cast(list[bytes | None], await connection.read_response()) for _ in packed]
    except BaseException:
        await connection.disconnect(nowait=True)  # replies may be left unread: never reuse it
        raise
    finally:
        await pool.release(connection)


def make_redis(settings: Settings) -> Redis:
    """A client for ``settings.redis_url``, or for the process's embedded server when it is unset."""
    if settings.redis_url is None:
        from fakeredis.aioredis import FakeRedis

        return FakeRedis(server=fake_server(settings.namespace))
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_s,
    )
    pool.connection_class = hiredis_packing(pool.connection_class)
    return aioredis.Redis.from_pool(pool)
