"""The demo runs in a namespace of its own and never deletes data it did not write."""

from __future__ import annotations

import pytest

from goalhorn.demo.night import NotADemoNamespace, clear_namespace, demo_namespace
from goalhorn.keys import Keys
from goalhorn.redis_client import Redis
from goalhorn.settings import Settings


def test_the_demo_namespace_is_beside_the_configured_one() -> None:
    assert demo_namespace("goalhorn") == "goalhorn-demo"
    assert demo_namespace("prod") == "prod-demo"
    assert demo_namespace("prod-demo") == "prod-demo"


async def test_a_namespace_holding_someone_elses_data_is_left_alone(redis: Redis, settings: Settings) -> None:
    users = Keys(settings.namespace).team_followers("6")
    await redis.sadd(users, "u1", "u2")
    with pytest.raises(NotADemoNamespace, match="holds data the demo did not write"):
        await clear_namespace(redis, settings.namespace)
    assert await redis.scard(users) == 2


async def test_the_demos_own_namespace_is_cleared_for_a_rerun(redis: Redis, settings: Settings) -> None:
    await clear_namespace(redis, settings.namespace)  # empty: the demo takes it and marks it
    followers = Keys(settings.namespace).team_followers("6")
    await redis.sadd(followers, "u1")
    await clear_namespace(redis, settings.namespace)
    assert await redis.exists(followers) == 0
