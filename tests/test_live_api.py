"""The sidecar's Live Activity routes, in-process over both backends: an app registers push-to-start
tokens, update tokens and Android registrations for its users, reads a game's channel, and gets
clear errors for bad tokens, rotated tokens and other tenants' users."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from goalhorn.app.fanout import live_registry
from goalhorn.keys import Keys
from goalhorn.liveactivities.registry import Channel
from goalhorn.settings import Settings
from tests.support.api import Api, running_api

START = "ab" * 32
UPDATE_1 = "c1" * 32
UPDATE_2 = "c2" * 32
FCM = "dGVzdA:APA91b" + "x" * 134
GAME = "espn:401461455"
USER = "acme/u42"


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with running_api(settings) as api:
        yield api
        redis = api.app.state.services.redis
        async for key in redis.scan_iter(match=Keys(settings.namespace).pattern()):
            await redis.delete(key)


def problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()


async def test_an_app_registers_replaces_and_deletes_its_users_tokens(api: Api, settings: Settings) -> None:
    client = await api.as_tenant("acme")
    assert (await client.put("/v1/users/u42", json={})).status_code == 201
    registry = live_registry(settings, api.app.state.services.redis)
    start = "/v1/users/u42/live-activities/start-tokens/GameActivityAttributes"
    first = await client.put(start, json={"token": START})
    assert (first.status_code, first.json()) == (201, {"result": "created"})
    assert (await client.put(start, json={"token": START.upper()})).json() == {"result": "unchanged"}
    replaced = await client.put(start, json={"token": "dd" * 32})
    assert (replaced.status_code, replaced.json()) == (200, {"result": "replaced"})
    assert await registry.start_tokens(USER) == {"GameActivityAttributes": "dd" * 32}

    update = f"/v1/users/u42/live-activities/games/{GAME}/update-token"
    assert (await client.put(update, json={"token": UPDATE_1})).status_code == 201
    rotated = await client.put(update, json={"token": UPDATE_2})
    assert rotated.json() == {"result": "replaced"}
    assert await registry.update_tokens(GAME) == {USER: UPDATE_2}
    stale = problem(await client.put(update, json={"token": UPDATE_1}), 409)  # a late request of the old token
    assert "replaced" in stale["detail"]
    assert await registry.update_tokens(GAME) == {USER: UPDATE_2}

    android = f"/v1/users/u42/live-activities/games/{GAME}/android"
    assert (await client.put(android, json={"token": FCM})).status_code == 201
    assert await registry.android(GAME) == {USER: FCM}

    for path in (start, update, android):
        assert (await client.delete(path)).status_code == 204
        problem(await client.delete(path), 404)
    assert await registry.start_tokens(USER) == {}
    assert await registry.update_tokens(GAME) == {}
    assert await registry.android(GAME) == {}
    problem(await client.put(update, json={"token": UPDATE_2}), 409)  # an ended activity's token stays dead


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("start-tokens/GameActivityAttributes", {"token": "xyz"}, "not an APNs token"),
        ("start-tokens/GameActivityAttributes", {"token": "abc"}, "not an APNs token"),
        (f"games/{GAME}/update-token", {"token": FCM}, "not an APNs token"),
        (f"games/{GAME}/update-token", {"token": 12}, "valid string"),
        (f"games/{GAME}/android", {"token": "short"}, "not an FCM token"),
        (f"games/{GAME}/android", {"token": FCM, "extra": 1}, "Extra inputs"),
    ],
)
async def test_a_bad_token_is_refused_naming_the_field(api: Api, path: str, body: dict, field: str) -> None:
    client = await api.as_tenant("acme")
    await client.put("/v1/users/u42", json={})
    refused = problem(await client.put(f"/v1/users/u42/live-activities/{path}", json=body), 422)
    assert refused["errors"][0]["field"].startswith("body.")
    assert field in refused["errors"][0]["detail"]


async def test_another_tenants_user_is_not_found(api: Api, settings: Settings) -> None:
    acme, other = await api.as_tenant("acme"), await api.as_tenant("globex")
    await acme.put("/v1/users/u42", json={})
    for path, token in (
        ("start-tokens/GameActivityAttributes", START),
        (f"games/{GAME}/update-token", UPDATE_1),
        (f"games/{GAME}/android", FCM),
    ):
        assert problem(await other.put(f"/v1/users/u42/live-activities/{path}", json={"token": token}), 404)
        problem(await other.delete(f"/v1/users/u42/live-activities/{path}"), 404)
    registry = live_registry(settings, api.app.state.services.redis)
    assert await registry.update_tokens(GAME) == {}
    assert await registry.start_tokens("globex/u42") == {}


async def test_an_app_says_its_activity_runs_already(api: Api, settings: Settings) -> None:
    client = await api.as_tenant("acme")
    await client.put("/v1/users/u42", json={})
    running = f"/v1/users/u42/live-activities/games/{GAME}/running"
    assert (await client.put(running)).status_code == 204
    assert (await client.put(running)).status_code == 204  # said twice: the same
    problem(await (await api.as_tenant("globex")).put(running), 404)
    assert not await live_registry(settings, api.app.state.services.redis).mark_running(USER, GAME)


async def test_a_game_answers_its_channel_once_it_has_one(api: Api, settings: Settings) -> None:
    client = await api.as_tenant("acme")
    path = f"/v1/games/{GAME}/live-activity"
    none = await client.get(path)
    assert none.status_code == 200, none.text
    assert none.json()["channel_id"] is None
    assert none.json()["activity_id"] == GAME
    assert none.json()["attributes_type"] == "GameActivityAttributes"
    await live_registry(settings, api.app.state.services.redis).keep_channel(Channel(GAME, "chan-7", 0, 1.7e9))
    some = (await client.get(path)).json()
    assert (some["channel_id"], some["channel_storage"]) == ("chan-7", 0)
    problem(await client.get("/v1/games/no-colon/live-activity"), 422)
    anonymous = await api.client.get(path)
    assert anonymous.status_code == 401


async def test_deleting_a_user_forgets_their_push_to_start_tokens(api: Api, settings: Settings) -> None:
    client = await api.as_tenant("acme")
    assert (await client.put("/v1/users/u42", json={})).status_code == 201
    start = "/v1/users/u42/live-activities/start-tokens/GameActivityAttributes"
    assert (await client.put(start, json={"token": START})).status_code == 201
    registry = live_registry(settings, api.app.state.services.redis)
    assert await registry.start_tokens(USER) == {"GameActivityAttributes": START}

    assert (await client.delete("/v1/users/u42")).status_code == 204

    assert await registry.start_tokens(USER) == {}, "a deleted user's phone would still get game starts"
