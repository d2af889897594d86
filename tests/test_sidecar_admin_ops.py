"""The ops commands through the sidecar: ``/v1/admin/...`` with an admin key, refused without one."""

from __future__ import annotations

import time

import pytest

from goalhorn.admin.breakers import read_board
from goalhorn.admin.documents import breakers_json
from goalhorn.dispatch.breaker import State, Transition
from goalhorn.dispatch.breaker_board import encode
from goalhorn.settings import Settings
from tests.conftest import make_settings
from tests.support.api import running_api

pytestmark = pytest.mark.timeout(60)

ROUTES = [
    ("GET", "/v1/admin/status?interval=0.2"),
    ("GET", "/v1/admin/queues"),
    ("GET", "/v1/admin/dlq?provider=fcm"),
    ("POST", "/v1/admin/dlq/replay?dry_run=true"),
    ("GET", "/v1/admin/breakers"),
    ("POST", "/v1/admin/breakers/fcm:proj/reset"),
    ("POST", "/v1/admin/pause/fcm"),
    ("POST", "/v1/admin/resume/fcm"),
    ("GET", "/v1/admin/trace/i-1"),
]


@pytest.fixture
def real_settings() -> Settings:
    return make_settings("real")


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_an_admin_route_refuses_a_read_or_write_key_and_no_key(
    real_settings: Settings, method: str, path: str
) -> None:
    async with running_api(real_settings) as api:
        for scopes in (("read",), ("read", "write")):
            key = await api.key(scopes=scopes)
            answer = await api.client.request(method, path, headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 403, (scopes, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
        anonymous = await api.client.request(method, path)
        assert anonymous.status_code == 401
        paused = await api.app.state.services.redis.hgetall(api.app.state.services.keys.paused())
        assert paused == {}  # nothing refused changed anything


async def test_each_admin_route_answers_an_admin_key_with_the_commands_document(real_settings: Settings) -> None:
    async with running_api(real_settings) as api:
        admin = await api.as_tenant("ops", scopes=("admin",))
        svc = api.app.state.services
        async with admin:
            paused = await admin.post("/v1/admin/pause/fcm", params={"reason": "vendor incident"})
            assert paused.status_code == 200, paused.text
            assert paused.json()["provider"] == "fcm"
            assert paused.json()["paused"] is True

            status = (await admin.get("/v1/admin/status", params={"interval": 0.2})).json()
            assert status["namespace"] == real_settings.namespace
            assert status["paused"]["fcm"]["reason"] == "vendor incident"
            fcm = next(q for q in status["queues"] if q["name"] == f"{real_settings.namespace}.delivery.fcm")
            assert fcm["paused"] is True

            queues = (await admin.get("/v1/admin/queues")).json()
            by_name = {q["name"]: q for q in queues}
            assert by_name[f"{real_settings.namespace}.delivery.fcm"]["paused"] is True
            assert by_name[f"{real_settings.namespace}.delivery.apns"]["paused"] is False

            resumed = await admin.post("/v1/admin/resume/fcm")
            assert resumed.json() == {"provider": "fcm", "paused": False, "was_paused": True, "within_s": 1.0}
            assert (await admin.post("/v1/admin/resume/fcm")).json()["was_paused"] is False
            assert (await admin.post("/v1/admin/pause/sms")).status_code == 422

            assert (await admin.get("/v1/admin/dlq")).json() == {"groups": [], "unreadable": []}
            bad = await admin.get("/v1/admin/dlq", params={"reason": "bored"})
            assert bad.status_code == 422
            assert "bored" in bad.json()["detail"]
            replay = await admin.post("/v1/admin/dlq/replay", params={"provider": "fcm", "dry_run": "true"})
            assert replay.json() == {"replayed": 0, "devices": 0, "expired": 0, "skipped": []}

            assert (await admin.get("/v1/admin/breakers")).json() == []
            assert (await admin.post("/v1/admin/breakers/fcm:proj/reset")).status_code == 404
            opened = Transition(State.OPEN, time.time(), time.time() + 30.0, "worker-1")
            await svc.redis.hset(svc.keys.breakers(), "fcm:proj", encode(opened))
            await svc.redis.hset(svc.keys.breaker_failures(), "fcm:proj", 5)
            listed = (await admin.get("/v1/admin/breakers")).json()
            assert listed[0]["circuit"] == "fcm:proj"
            assert listed[0]["state"] != "closed"
            assert (await admin.post("/v1/admin/breakers/fcm:proj/reset")).status_code == 204
            after = (await admin.get("/v1/admin/breakers")).json()
            assert after == breakers_json(await read_board(svc.redis, svc.keys))
            assert (after[0]["state"], after[0]["failures"], after[0]["by"].startswith("api:")) == ("closed", 0, True)

            missing = await admin.get("/v1/admin/trace/i-nobody-sent")
            assert missing.status_code == 404
