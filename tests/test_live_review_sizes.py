"""Review of the Live Activity payload sizes (issue 15): an intent ``sizes_of`` says fits is accepted by
APNs and FCM as the providers send it.

``live_intent`` cuts texts until ``sizes_of(intent).fit()``; the providers then add what ``sizes_of``
does not measure: ``intent_id`` and ``event_id`` beside ``aps`` (and in the FCM data), the
``input-push-channel`` of a start, aioapns' JSON separators (``", "``, ``": "``) and FCM's. The
largest payload that is not cut must still be accepted, for the longest game keys ingest makes
(Sportradar's, ``sportradar:<uuid>``) too; else every push of it is refused (413, not retried).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from goalhorn.intents.liveactivity import HIGH, LiveEvent, live_intent
from goalhorn.models import Device, GameState, GameStatus, Intent, Sport
from goalhorn.providers.apns import ApnsProvider
from goalhorn.providers.fcm import FcmProvider
from goalhorn.sandbox.apns_server import ApnsSandbox
from goalhorn.sandbox.fcm_server import FcmSandbox
from goalhorn.settings import Settings
from tests.support.apns_sandbox import apns_settings, batch_of, token

T0 = datetime(2026, 5, 2, 19, 30, tzinfo=UTC)
CHANNEL = base64.b64encode(bytes(range(16))).decode()  # as long as the ids APNs hands out
GAMES = {"espn": "401559281", "sportradar": "00da130f-db90-56a9-a149-c2bbf2d782a6"}


@pytest.fixture
async def apns(tmp_path: Path) -> AsyncIterator[ApnsSandbox]:
    async with ApnsSandbox(tmp_path) as server:
        yield server


@pytest.fixture
async def fcm() -> AsyncIterator[FcmSandbox]:
    async with FcmSandbox() as server:
        yield server


def state(source: str, detail: str) -> GameState:
    return GameState(
        game_id=GAMES[source],
        source=source,
        sport=Sport.SOCCER,
        league="eng.1",
        status=GameStatus.LIVE,
        status_detail=detail,
        home_team="Arsenal",
        away_team="Chelsea",
        home_team_id="359",
        away_team_id="363",
        home_score=1,
        away_score=0,
        period=1,
        display_clock="12'",
        observed_at=T0,
    )


def largest_uncut(source: str, live_event: LiveEvent) -> Intent:
    """The intent whose ``detail`` is as long as it can be without ``live_intent`` cutting it."""

    def build(length: int) -> Intent:
        return live_intent(
            state(source, "d" * length),
            [],
            live_event=live_event,
            priority=HIGH,
            last_event="GOAL Saka 12'",
            now=T0,
            dismiss_s=900,
        )

    low, high = 0, 6000
    while low < high:  # the longest detail kept whole
        mid = (low + high + 1) // 2
        if '"detail":"' + "d" * mid + '"' in build(mid).data["liveactivity"]:
            low = mid
        else:
            high = mid - 1
    return build(low)


@pytest.mark.parametrize("source", sorted(GAMES))
@pytest.mark.parametrize("live_event", ["start", "update"])
async def test_the_largest_uncut_update_is_accepted_by_apns(
    apns: ApnsSandbox, source: str, live_event: LiveEvent
) -> None:
    intent = largest_uncut(source, live_event)
    if live_event == "start":  # the fanout names the game's channel on a push-to-start
        intent = intent.model_copy(update={"data": {**intent.data, "input_push_channel": CHANNEL}})
    device = Device(device_id=f"la:{live_event}:u1:g", user_id="u1", platform="apns", address=token(1))
    async with ApnsProvider(apns_settings(apns)) as provider:
        (result,) = await provider.send(batch_of(intent, device))
    assert (result.outcome, result.reason) == ("sent", None), "a payload sizes_of said fits was refused"


@pytest.mark.parametrize("source", sorted(GAMES))
@pytest.mark.parametrize("live_event", ["start", "update"])
async def test_the_largest_uncut_update_is_accepted_by_fcm(
    fcm: FcmSandbox, tmp_path: Path, source: str, live_event: LiveEvent
) -> None:
    intent = largest_uncut(source, live_event)
    settings = Settings(fcm_credentials_file=str(fcm.service_account(tmp_path / "sa.json")), fcm_base_url=fcm.url)
    device = Device(device_id="la:android:u1:g", user_id="u1", platform="fcm", address="tok-1")
    async with FcmProvider(settings) as provider:
        (result,) = await provider.send(batch_of(intent, device))
    assert (result.outcome, result.reason) == ("sent", None), "a payload sizes_of said fits was refused"
