"""The Live Activity registry over both backends: replacement and rotation, what it refuses, and
forgetting what a provider said is dead (only if it is still the token registered)."""

from __future__ import annotations

import pytest

from goalhorn.app.fanout import live_registry
from goalhorn.liveactivities.registry import Channel, TokenRejected
from goalhorn.redis_client import Redis
from goalhorn.settings import Settings

GAME = "espn:401"
FCM = "dGVzdA:APA91b" + "x" * 134


def hexa(n: int) -> str:
    return f"{n:064x}"


async def test_start_tokens_are_one_per_activity_type(redis: Redis, settings: Settings) -> None:
    registry = live_registry(settings, redis)
    assert await registry.set_start_token("acme/u1", "GameActivityAttributes", hexa(1)) == "created"
    assert await registry.set_start_token("acme/u1", "OtherAttributes", hexa(2)) == "created"
    assert await registry.set_start_token("acme/u1", "GameActivityAttributes", hexa(3)) == "replaced"
    assert await registry.start_tokens("acme/u1") == {"GameActivityAttributes": hexa(3), "OtherAttributes": hexa(2)}
    found = await registry.start_tokens_of([b"acme/u1", b"acme/nobody"], "GameActivityAttributes")
    assert found == [hexa(3), None]


async def test_a_rotated_update_token_cannot_come_back(redis: Redis, settings: Settings) -> None:
    registry = live_registry(settings, redis)
    await registry.set_update_token("acme/u1", GAME, hexa(1))
    assert await registry.set_update_token("acme/u1", GAME, hexa(2)) == "replaced"
    with pytest.raises(TokenRejected, match="replaced by a newer one"):
        await registry.set_update_token("acme/u1", GAME, hexa(1).upper())
    assert await registry.update_tokens(GAME) == {"acme/u1": hexa(2)}
    assert await redis.ttl(registry._keys.la_update_tokens(GAME)) > 0  # gone with the game


@pytest.mark.parametrize("token", ["", "has space", "x" * 1025, "tab\there"])
async def test_tokens_that_would_break_a_record_are_refused(redis: Redis, settings: Settings, token: str) -> None:
    with pytest.raises(TokenRejected, match="not a"):
        await live_registry(settings, redis).set_android("acme/u1", GAME, token)


async def test_dead_tokens_and_channels_are_forgotten_unless_registered_again(redis: Redis, settings: Settings) -> None:
    registry = live_registry(settings, redis)
    await registry.set_update_token("acme/u1", GAME, hexa(1))
    await registry.set_start_token("acme/u1", "GameActivityAttributes", hexa(5))
    await registry.set_android("acme/u1", GAME, FCM)
    await registry.keep_channel(Channel(GAME, "chan-1", 0, 1.0))
    assert not await registry.forget_dead(f"la:update:acme/u1:{GAME}", "acme/u1", hexa(9))  # not the one registered
    assert await registry.forget_dead(f"la:update:acme/u1:{GAME}", "acme/u1", hexa(1))
    assert await registry.forget_dead(f"la:start:acme/u1:{GAME}", "acme/u1", hexa(5))
    assert await registry.forget_dead(f"la:android:acme/u1:{GAME}", "acme/u1", FCM)
    assert not await registry.forget_dead(f"channel:{GAME}", f"channel:{GAME}", "channel:old")
    assert await registry.forget_dead(f"channel:{GAME}", f"channel:{GAME}", "channel:chan-1")
    assert not await registry.forget_dead("d-phone", "acme/u1", hexa(1))  # an alert device: not ours
    assert await registry.update_tokens(GAME) == {}
    assert await registry.start_tokens("acme/u1") == {}
    assert await registry.android(GAME) == {}
    assert await registry.channel(GAME) is None


async def test_a_deleted_user_leaves_no_start_token(redis: Redis, settings: Settings) -> None:
    registry = live_registry(settings, redis)
    await registry.set_start_token("acme/u1", "GameActivityAttributes", hexa(1))
    await registry.set_start_token("acme/u2", "GameActivityAttributes", hexa(2))
    await registry.mark_running("acme/u1", GAME)
    await registry.forget_user("acme/u1")
    assert await registry.start_tokens("acme/u1") == {}
    assert await registry.mark_running("acme/u1", GAME)  # its starts are forgotten too
    assert await registry.start_tokens("acme/u2") == {"GameActivityAttributes": hexa(2)}
