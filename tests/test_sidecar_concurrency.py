"""Two API instances (two processes' worth of clients) taking hundreds of concurrent edits of the
same users lose none: the users end as a serial replay of the same requests leaves them."""

from __future__ import annotations

import asyncio
import random

import httpx

from goalhorn.settings import Settings
from tests.support.api import running_api

Request = tuple[str, str, dict | None]


def requests_for(users: list[str], per_user: int) -> list[Request]:
    """Edits whose end state does not depend on their order, each touching its own element, so a
    lost update shows as a missing element."""
    out: list[Request] = []
    for user in users:
        for n in range(per_user):
            kind = n % 5
            if kind == 0:
                out.append(("PUT", f"/v1/users/{user}/mutes/teams/t{n}", None))
            elif kind == 1:
                out.append(("POST", f"/v1/users/{user}/devices", {"platform": "apns", "address": f"{n:04x}" * 16}))
            elif kind == 2:
                out.append(("PUT", f"/v1/users/{user}/mutes/matches/m{n}", None))
            elif kind == 3:
                out.append(("PUT", f"/v1/users/{user}/follows/teams/f{n}", None))
            else:  # muted and unmuted again: the pair must leave nothing, whatever ran in between
                out.append(("PUT", f"/v1/users/{user}/mutes/teams/gone{n}", None))
    return out


async def send(client: httpx.AsyncClient, request: Request) -> None:
    method, path, body = request
    answer = await client.request(method, path, json=body)
    assert answer.status_code in (200, 201, 204), answer.text
    if path.split("/")[-2:-1] == ["teams"] and "/gone" in path:
        answer = await client.request("DELETE", path)
        assert answer.status_code == 204


async def state(client: httpx.AsyncClient, users: list[str]) -> dict[str, dict]:
    out = {}
    for user in users:
        body = (await client.get(f"/v1/users/{user}")).json()
        body.pop("created_at")
        for device in body["devices"]:
            device.pop("added_at")
        body["devices"].sort(key=lambda d: d["device_id"])
        out[user] = body
    return out


async def test_concurrent_edits_through_two_app_instances_match_a_serial_replay(settings: Settings) -> None:
    users = ["alice", "bob"]
    requests = requests_for(users, 150)
    random.Random(11).shuffle(requests)
    async with running_api(settings) as one, running_api(settings) as two:
        key = await one.key("acme")
        headers = {"Authorization": f"Bearer {key}"}
        clients = [
            httpx.AsyncClient(transport=api.client._transport, base_url="http://api", headers=headers)
            for api in (one, two)
        ]
        for user in users:
            await clients[0].put(f"/v1/users/{user}", json={})
        # 10 edits in flight, all on two users: enough to interleave the two instances' compare-and-set
        # writes; at 40, on a loaded 2-core CI machine, the retries of one request passed the API's 3 s
        # deadline (503) and the test read that as a lost edit.
        in_flight = asyncio.Semaphore(10)

        async def edit(i: int, request: Request) -> None:
            async with in_flight:
                await send(clients[i % 2], request)

        await asyncio.gather(*(edit(i, r) for i, r in enumerate(requests)))
        concurrent = await state(clients[1], users)

    serial_settings = settings.model_copy(update={"namespace": settings.namespace + "-serial"})
    async with running_api(serial_settings) as serial:
        client = await serial.as_tenant("acme")
        for user in users:
            await client.put(f"/v1/users/{user}", json={})
        for request in requests:
            await send(client, request)
        expected = await state(client, users)
        redis = serial.app.state.services.redis
        async for name in redis.scan_iter(match=f"{serial_settings.namespace}:*"):
            await redis.delete(name)
    assert concurrent == expected
    assert len(expected["alice"]["devices"]) == 30
    assert len(expected["alice"]["mutes"]["teams"]) == 30
    assert expected["alice"]["follows"]["teams"] != []


async def test_concurrent_registrations_never_pass_the_device_limit(settings: Settings) -> None:
    async with running_api(settings) as one, running_api(settings) as two:
        key = await one.key("acme")
        headers = {"Authorization": f"Bearer {key}"}
        clients = [
            httpx.AsyncClient(transport=api.client._transport, base_url="http://api", headers=headers)
            for api in (one, two)
        ]
        await clients[0].put("/v1/users/u1", json={})
        in_flight = asyncio.Semaphore(30)

        async def register(n: int) -> int:
            async with in_flight:
                body = {"platform": "apns", "address": f"{n:064x}"}
                return (await clients[n % 2].post("/v1/users/u1/devices", json=body)).status_code

        codes = await asyncio.gather(*(register(n) for n in range(60)))
        stored = (await clients[1].get("/v1/users/u1")).json()["devices"]
        redis = one.app.state.services.redis
        async for name in redis.scan_iter(match=f"{settings.namespace}:*"):
            await redis.delete(name)
    assert sorted(codes) == [201] * 50 + [409] * 10
    assert len(stored) == 50


async def test_of_concurrent_creations_of_one_user_exactly_one_is_201(settings: Settings) -> None:
    async with running_api(settings) as one, running_api(settings) as two:
        key = await one.key("acme")
        headers = {"Authorization": f"Bearer {key}"}
        clients = [
            httpx.AsyncClient(transport=api.client._transport, base_url="http://api", headers=headers)
            for api in (one, two)
        ]
        codes = await asyncio.gather(*(clients[n % 2].put("/v1/users/new", json={"locale": "fr"}) for n in range(20)))
        redis = one.app.state.services.redis
        async for name in redis.scan_iter(match=f"{settings.namespace}:*"):
            await redis.delete(name)
    assert sorted(c.status_code for c in codes) == [200] * 19 + [201]
