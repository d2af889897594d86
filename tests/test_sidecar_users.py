"""The sidecar's subscriber routes, in-process over both backends: what an app backend does, what it
gets wrong, and what it must never see (another tenant's objects, an unauthenticated answer)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from goalhorn.keys import Keys
from goalhorn.preferences.store import PreferenceStore
from goalhorn.settings import Settings
from tests.support.api import Api, running_api

APNS = "ab" * 32
FCM = "f" * 140
SECRET = "whsec_" + "c2VjcmV0LXNpZ25pbmcta2V5LW9mLWEtYm90IQ=="


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with running_api(settings.model_copy(update={"webhook_allowlist": "127.0.0.1"})) as api:
        yield api
        keys = Keys(settings.namespace)
        redis = api.app.state.services.redis
        async for key in redis.scan_iter(match=keys.pattern()):
            await redis.delete(key)


def problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    return body


async def test_an_app_registers_a_user_devices_follows_and_mutes(api: Api) -> None:
    client = await api.as_tenant("acme")
    created = await client.put(
        "/v1/users/u42",
        json={
            "locale": "fr",
            "timezone": "Europe/Paris",
            "quiet_hours": {"start": "22:30", "end": "07:00"},
            "opted_in": ["GAME_END"],
            "cap": {"max_alerts": 3, "window_s": 600},
        },
    )
    assert created.status_code == 201, created.text
    apns = await client.post("/v1/users/u42/devices", json={"platform": "apns", "address": APNS})
    fcm = await client.post("/v1/users/u42/devices", json={"platform": "fcm", "address": FCM})
    hook = await client.post(
        "/v1/users/u42/devices", json={"platform": "webhook", "address": "http://127.0.0.1:9/h", "secret": SECRET}
    )
    assert [r.status_code for r in (apns, fcm, hook)] == [201, 201, 201]
    again = await client.post("/v1/users/u42/devices", json={"platform": "apns", "address": APNS})
    assert again.status_code == 200
    assert again.json() == apns.json()
    for path in ("follows/teams/6", "follows/matches/401", "follows/markets/tok1", "follows/sports/hockey"):
        assert (await client.put(f"/v1/users/u42/{path}")).status_code == 204
    assert (await client.put("/v1/users/u42/mutes/teams/16")).status_code == 204
    assert (await client.put("/v1/users/u42/mutes/matches/402")).status_code == 204

    user = (await client.get("/v1/users/u42")).json()
    assert user["locale"] == "fr"
    assert user["timezone"] == "Europe/Paris"
    assert user["quiet_hours"] == {"start": "22:30", "end": "07:00"}
    assert user["opted_in"] == ["GAME_END"]
    assert user["cap"] == {"max_alerts": 3, "window_s": 600}
    assert user["follows"] == {"teams": ["6"], "matches": ["401"], "markets": ["tok1"], "sports": ["hockey"]}
    assert user["mutes"] == {"teams": ["16"], "matches": ["402"]}
    assert sorted(d["platform"] for d in user["devices"]) == ["apns", "fcm", "webhook"]
    assert all(d["locale"] == "fr" for d in user["devices"])
    assert "secret" not in str(user)

    # what the expander reads: the tenant's user, under its stored id
    services = api.app.state.services
    keys: Keys = services.keys
    assert await services.redis.smembers(keys.team_followers("6")) == {b"acme/u42"}
    store: PreferenceStore = services.store
    assert {d.platform for d in await store.devices_of("acme/u42")} == {"apns", "fcm", "webhook"}
    assert (await store.preferences_of("acme/u42")).muted_teams == {"16"}

    # a PUT replaces the settings it holds and keeps mutes and follows
    await client.put("/v1/users/u42", json={"locale": "de"})
    user = (await client.get("/v1/users/u42")).json()
    assert (user["locale"], user["timezone"], user["quiet_hours"], user["cap"]) == ("de", "UTC", None, None)
    assert user["mutes"]["teams"] == ["16"]
    assert user["follows"]["teams"] == ["6"]

    assert (await client.delete("/v1/users/u42/follows/teams/6")).status_code == 204
    assert (await client.delete("/v1/users/u42/mutes/teams/16")).status_code == 204
    assert (await client.delete(f"/v1/users/u42/devices/{apns.json()['device_id']}")).status_code == 204
    user = (await client.get("/v1/users/u42")).json()
    assert user["follows"]["teams"] == []
    assert user["mutes"]["teams"] == []
    assert len(user["devices"]) == 2

    assert (await client.delete("/v1/users/u42")).status_code == 204
    problem(await client.get("/v1/users/u42"), 404)
    assert await store.devices_of("acme/u42") == []
    assert (await store.preferences_of("acme/u42")).is_default()
    for key in (keys.match_watchers("401"), keys.market_watchers("tok1"), keys.sport_fans("hockey")):
        assert await services.redis.smembers(key) == set()
    problem(await client.delete("/v1/users/u42"), 404)


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"platform": "apns", "address": "xyz"}, "body.address", "not an APNs token"),
        ({"platform": "fcm", "address": "short"}, "body.address", "not an FCM token"),
        ({"platform": "webhook", "address": "http://10.0.0.5/h", "secret": SECRET}, "body.address", "refused"),
        ({"platform": "webhook", "address": "http://localhost/h", "secret": SECRET}, "body.address", "loopback"),
        ({"platform": "webhook", "address": "http://127.0.0.1:9/h"}, "body.secret", "signing secret"),
        ({"platform": "webhook", "address": "http://127.0.0.1:9/h", "secret": "nope"}, "body.secret", "whsec_"),
        ({"platform": "apns", "address": APNS, "secret": SECRET}, "body.secret", "only a webhook"),
        ({"platform": "sms", "address": "+15551234"}, "body.platform", ""),
        ({"platform": "apns", "address": APNS, "color": "red"}, "body.color", "Extra inputs"),
    ],
)
async def test_a_bad_device_is_refused_naming_the_field(api: Api, body: dict, field: str, says: str) -> None:
    client = await api.as_tenant()
    await client.put("/v1/users/u1", json={})
    refused = problem(await client.post("/v1/users/u1/devices", json=body), 422)
    assert refused["errors"][0]["field"] == field
    assert says in refused["errors"][0]["detail"]
    assert (await client.get("/v1/users/u1")).json()["devices"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "body.timezone"),
        ({"locale": "not a locale"}, "body.locale"),
        ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "body.quiet_hours.start"),
        ({"opted_in": ["NOT_A_KIND"]}, "body.opted_in[0]"),
        ({"opted_in": ["GOAL"], "opted_out": ["GOAL"]}, "body.opted_in"),
        ({"cap": {"max_alerts": -1}}, "body.cap.max_alerts"),
        ({"locale": 5}, "body.locale"),
    ],
)
async def test_bad_preferences_are_refused_naming_the_field(api: Api, body: dict, field: str) -> None:
    client = await api.as_tenant()
    refused = problem(await client.put("/v1/users/u1", json=body), 422)
    assert refused["errors"][0]["field"] == field
    problem(await client.get("/v1/users/u1"), 404)


async def test_bad_requests_get_clear_problems(api: Api) -> None:
    client = await api.as_tenant()
    problem(await client.put("/v1/users/u1", content=b"{not json", headers={"content-type": "application/json"}), 422)
    problem(await client.put("/v1/users/u1", content=b"x", headers={"content-type": "text/plain"}), 415)
    problem(await client.put("/v1/users/u1/follows/teams/6"), 404)  # no such user yet
    await client.put("/v1/users/u1", json={})
    bad_sport = problem(await client.put("/v1/users/u1/follows/sports/quidditch"), 422)
    assert bad_sport["errors"][0]["field"] == "path.target_id"
    bad_kind = problem(await client.put("/v1/users/u1/follows/players/7"), 422)
    assert bad_kind["errors"][0]["field"] == "path.kind"
    problem(await client.delete("/v1/users/u1/devices/nope"), 404)
    big = {"locale": "en", "padding": "x" * 70_000}
    problem(await client.put("/v1/users/u1", json=big), 413)


async def test_without_a_valid_key_nothing_is_answered(api: Api) -> None:
    writer = await api.as_tenant("acme")
    await writer.put("/v1/users/u1", json={})
    key = writer.headers["authorization"].removeprefix("Bearer ")
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    for headers in (
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {tampered}"},
    ):
        refused = problem(await api.client.get("/v1/users/u1", headers=headers), 401)
        assert "user" not in refused
    assert (await api.client.get("/v1/users/u1", headers={"Authorization": f"Bearer {key}"})).status_code == 200

    reader = await api.as_tenant("acme", scopes=("read",))
    assert (await reader.get("/v1/users/u1")).status_code == 200
    assert "write" in problem(await reader.delete("/v1/users/u1"), 403)["detail"]

    services = api.app.state.services
    [record] = [r for r in await services.api_keys.list("acme") if r.scopes == ("read", "write")]
    await services.api_keys.revoke(record.id)
    problem(await writer.get("/v1/users/u1"), 401)
    assert (await reader.get("/v1/users/u1")).status_code == 200
    # health needs no key
    assert (await api.client.get("/healthz")).status_code == 200
    assert (await api.client.get("/readyz")).json() == {"status": "ready", "reasons": []}


async def test_another_tenants_objects_answer_404_on_every_route(api: Api) -> None:
    acme = await api.as_tenant("acme")
    rival = await api.as_tenant("rival")
    await acme.put("/v1/users/u1", json={"locale": "fr"})
    device = (await acme.post("/v1/users/u1/devices", json={"platform": "apns", "address": APNS})).json()["device_id"]
    await acme.put("/v1/users/u1/follows/teams/6")
    await acme.put("/v1/users/u1/mutes/teams/16")
    before = (await acme.get("/v1/users/u1")).json()

    attempts = [
        rival.get("/v1/users/u1"),
        rival.delete("/v1/users/u1"),
        rival.post("/v1/users/u1/devices", json={"platform": "fcm", "address": FCM}),
        rival.delete(f"/v1/users/u1/devices/{device}"),
        rival.put("/v1/users/u1/follows/teams/7"),
        rival.delete("/v1/users/u1/follows/teams/6"),
        rival.put("/v1/users/u1/mutes/teams/8"),
        rival.delete("/v1/users/u1/mutes/teams/16"),
    ]
    for attempt in attempts:
        refused = problem(await attempt, 404)
        assert "fr" not in str(refused)
        assert APNS not in str(refused)
    # rival's own u1 is another user altogether
    assert (await rival.put("/v1/users/u1", json={"locale": "es"})).status_code == 201
    assert (await rival.get("/v1/users/u1")).json()["devices"] == []
    await rival.delete("/v1/users/u1")
    assert (await acme.get("/v1/users/u1")).json() == before


async def test_import_takes_the_cli_format_into_the_callers_tenant(api: Api) -> None:
    acme = await api.as_tenant("acme")
    rival = await api.as_tenant("rival")
    lines = b"\n".join(
        [
            b'{"user_id": "imp1", "locale": "fr", "devices": [{"platform": "apns", "address": "'
            + APNS.encode()
            + b'"}],'
            b' "follows": {"teams": ["6"]}, "preferences": {"muted_teams": ["16"]}}',
            b'{"user_id": "imp2", "devices": [{"platform": "apns", "address": "nothex"}]}',
            b'{"user_id": "imp3"}',
        ]
    )
    answer = await acme.post("/v1/users:import", content=lines, headers={"content-type": "application/jsonl"})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert (report["imported"], report["rejected"]) == (2, 1)
    assert report["rejections"] == [
        {"line": 2, "reason": "devices[0].address: not an APNs token (an even number of 32-200 hex digits)"}
    ]
    user = (await acme.get("/v1/users/imp1")).json()
    assert user["locale"] == "fr"
    assert user["follows"]["teams"] == ["6"]
    assert user["mutes"]["teams"] == ["16"]
    assert len(user["devices"]) == 1
    problem(await rival.get("/v1/users/imp1"), 404)
    services = api.app.state.services
    assert await services.redis.smembers(services.keys.team_followers("6")) == {b"acme/imp1"}
    # deleting an imported user leaves the sets the import put it in
    assert (await acme.delete("/v1/users/imp1")).status_code == 204
    assert await services.redis.smembers(services.keys.team_followers("6")) == set()
    problem(await acme.post("/v1/users:import", content=b"{}", headers={"content-type": "image/png"}), 415)


async def test_readyz_names_a_service_that_fails_its_check(settings: Settings) -> None:
    from pydantic import SecretStr

    from goalhorn.errors import ConfigError
    from goalhorn.sidecar.app import create_app
    from tests.support.api import SECRET

    async def rabbitmq_down() -> None:
        raise ConfigError("GOALHORN_AMQP_URL=amqp://127.0.0.1:1/: RabbitMQ is unreachable")

    app = create_app(
        settings.model_copy(update={"api_key_secret": SecretStr(SECRET)}), checks={"RabbitMQ": rabbitmq_down}
    )
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            answer = await client.get("/readyz")
            alive = await client.get("/healthz")
    finally:
        await app.state.services.aclose()
    assert answer.status_code == 503
    assert answer.json() == {
        "status": "not ready",
        "reasons": ["RabbitMQ: GOALHORN_AMQP_URL=amqp://127.0.0.1:1/: RabbitMQ is unreachable"],
    }
    assert alive.status_code == 200
