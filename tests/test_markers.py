"""Delivery markers' claims in one round trip: the newest-intent check and the claim go out together,
devices a newer intent was claimed for end ``superseded`` (counted once), and a script Redis does not
know yet is loaded and run, on the embedded backend and on real Redis."""

from __future__ import annotations

import uuid
from datetime import timedelta

from goalhorn.dispatch.markers import DeliveryMarkers
from goalhorn.keys import Keys
from goalhorn.models import Device, Intent
from goalhorn.redis_client import make_redis
from tests.conftest import delete_namespace, make_settings
from tests.support.builders import make_intent


def fans(n: int) -> list[Device]:
    return [Device(device_id=f"d{i}", user_id=f"u{i}", platform="fcm", address=f"tok-{i}") for i in range(n)]


def scored(intent_id: str, minute: int) -> Intent:
    intent = make_intent(intent_id)
    return intent.model_copy(
        update={"collapse_key": "g1:score", "event_at": intent.created_at + timedelta(minutes=minute)}
    )


async def test_a_window_with_stale_fresh_done_and_held_devices_is_sorted_out_in_one_claim(backend: str) -> None:
    settings = make_settings(backend)
    redis = make_redis(settings)
    keys = Keys(settings.namespace)
    markers = DeliveryMarkers(redis, keys, lease_s=30, sent_ttl_s=600)
    devices = fans(8)
    try:
        newer, older = scored("two-one", 60), scored("one-nil", 10)
        first = await markers.claim(newer, devices[:3])  # the newer intent reached d0-d2 first
        assert first.claimed == devices[:3]
        done = await markers.claim(older, devices[6:7])  # d6: the older one sent before the newer came
        await markers.settle([(older.intent_id, "sent", [d.device_id for d in done.claimed])])
        await DeliveryMarkers(redis, keys, lease_s=30, sent_ttl_s=600).claim(older, devices[7:8])  # d7: held

        claims = await markers.claim(older, devices)
        assert claims.ended == devices[:3], "stale: a newer intent was claimed for them"
        assert claims.claimed == devices[3:6]
        assert claims.already_done == devices[6:7]
        assert claims.held == devices[7:8]
        assert 0 < claims.held_for_s <= 30
        states = await redis.mget([keys.delivery_marker(older.intent_id, d.device_id) for d in devices])
        assert states[:3] == [b"superseded"] * 3
        assert states[3:6] == [b"inflight"] * 3

        again = await markers.claim(older, devices[:3])  # a redelivery: ended before, not counted again
        assert (again.claimed, again.ended, again.already_done) == ([], [], devices[:3])
        newest = await markers.claim(newer, devices[3:6])  # the newer intent still reaches the others
        assert newest.claimed == devices[3:6]
    finally:
        await delete_namespace(redis, settings.namespace)
        await redis.aclose()


async def test_a_script_redis_does_not_know_is_loaded_and_run(backend: str) -> None:
    settings = make_settings(backend)
    redis = make_redis(settings)
    markers = DeliveryMarkers(redis, Keys(settings.namespace), lease_s=30, sent_ttl_s=600)
    key = f"{settings.namespace}:probe"
    # A script body no Redis has seen (the uuid): its EVALSHA is refused (NOSCRIPT), the call is made again.
    unknown = redis.register_script(f"-- {uuid.uuid4()}\nreturn redis.call('INCR', KEYS[1])")
    known = redis.register_script("return redis.call('INCR', KEYS[1])")
    try:
        await known(keys=[key])  # loaded
        assert await markers._eval_many([(known, [key], []), (unknown, [key], []), (known, [key], [])]) == [2, 4, 3]
        assert await redis.get(key) == b"4", "each call ran once"
        assert await markers._eval_many([(unknown, [key], [])]) == [5]
    finally:
        await delete_namespace(redis, settings.namespace)
        await redis.aclose()
