"""The Redis client every stage uses: redis-py asyncio with a blocking pool, or fakeredis.

A client is bound to the event loop it first talks on, so each loop (the main one, dramatiq's
event-loop thread) makes its own with :func:`make_redis`. On the embedded default all clients of one
process and namespace share one in-memory ``FakeServer``, so they see the same data, as they would
on a real server.
"""

from __future__ import annotations

import threading

import redis.asyncio as aioredis
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis

from goalhorn.settings import Settings

Redis = aioredis.Redis

_fake_servers: dict[str, FakeServer] = {}
_fake_lock = threading.Lock()


def fake_server(namespace: str) -> FakeServer:
    """The process's embedded Redis for a namespace."""
    with _fake_lock:
        server = _fake_servers.get(namespace)
        if server is None:
            server = _fake_servers[namespace] = FakeServer()
        return server


def make_redis(settings: Settings) -> Redis:
    """A client for ``settings.redis_url``, or for the process's embedded server when it is unset."""
    if settings.redis_url is None:
        return FakeRedis(server=fake_server(settings.namespace))
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_s,
    )
    return aioredis.Redis.from_pool(pool)
