"""Live Activity intents (issue 15, ingest side): what one is made of, which states become one and at
which priority (Redis pacing, on both backends), and the ingest stage publishing them on the bus."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from goalhorn.catalog import CatalogInvalid, parse_catalog
from goalhorn.intents.live_pacing import PENDING_S, Claim, LivePacing
from goalhorn.intents.liveactivity import (
    ATTRIBUTES_TYPE,
    BROADCAST_LIMIT,
    FCM_DATA_LIMIT,
    HIGH,
    LOW,
    STALE_S,
    TOKEN_LIMIT,
    live_intent,
    sizes_of,
)
from goalhorn.keys import Keys
from goalhorn.models import EventKind, GameEvent, GameState, GameStatus, Intent, Sport
from goalhorn.redis_client import make_redis
from goalhorn.settings import Settings

pytestmark = pytest.mark.timeout(60)
T0 = datetime(2026, 5, 2, 19, 30, tzinfo=UTC)
CONTENT = {
    "home",
    "away",
    "home_score",
    "away_score",
    "period",
    "clock",
    "status",
    "detail",
    "last_event",
    "updated_at",
}


def soccer(second: float = 0, **changes: Any) -> GameState:
    values: dict[str, Any] = {
        "game_id": "760415",
        "source": "espn",
        "sport": Sport.SOCCER,
        "league": "usa.1",
        "status": GameStatus.LIVE,
        "status_detail": "STATUS_FIRST_HALF",
        "home_team": "MIA",
        "away_team": "ORL",
        "home_team_id": "20232",
        "away_team_id": "12011",
        "home_score": 0,
        "away_score": 0,
        "period": 1,
        "display_clock": "1'",
        "observed_at": T0 + timedelta(seconds=second),
    }
    return GameState(**(values | changes))


def event(state: GameState, kind: EventKind, player: str | None = "Messi", home: bool = True) -> GameEvent:
    return GameEvent(
        event_id=f"espn:{state.game_id}:{kind}:{state.observed_at.timestamp()}",
        kind=kind,
        source=state.source,
        game_id=state.game_id,
        sport=state.sport,
        league=state.league,
        team_id=state.home_team_id if home else state.away_team_id,
        team=state.home_team if home else state.away_team,
        home_team=state.home_team,
        away_team=state.away_team,
        home_score=state.home_score,
        away_score=state.away_score,
        period=state.period,
        display_clock=state.display_clock,
        player=player,
        observed_at=state.observed_at,
    )


def aps(intent: Intent) -> dict[str, Any]:
    return json.loads(intent.data["liveactivity"])


def android(intent: Intent) -> dict[str, str]:
    return json.loads(intent.data["live_update"])


# --- the intent ------------------------------------------------------------------------------------


def test_a_start_carries_the_activity_attributes_the_content_state_and_an_alert() -> None:
    state = soccer(display_clock="1'")
    now = T0 + timedelta(seconds=2)
    intent = live_intent(
        state,
        [event(state, EventKind.GAME_START)],
        live_event="start",
        priority=HIGH,
        last_event="",
        now=now,
        dismiss_s=900,
    )
    assert (intent.kind, intent.priority, intent.template) == (EventKind.GAME_START, HIGH, "liveactivity")
    assert intent.game_id == "espn:760415"
    assert intent.segments == ("live:espn:760415",)
    assert intent.collapse_key == "live:espn:760415"
    assert intent.event_id == f"live:espn:760415:{int(T0.timestamp() * 1000)}"
    assert intent.event_at == T0
    assert intent.data["apns_push_type"] == "liveactivity"
    assert (intent.data["activity_id"], intent.data["live_event"]) == ("espn:760415", "start")
    assert (intent.data["home_team_id"], intent.data["away_team_id"]) == ("20232", "12011")
    sent = aps(intent)
    assert sent["event"] == "start"
    assert sent["timestamp"] == int(T0.timestamp())
    assert sent["stale-date"] == int(T0.timestamp()) + STALE_S
    assert "dismissal-date" not in sent
    assert set(sent["content-state"]) == CONTENT
    assert sent["content-state"]["home_score"] == 0
    assert sent["content-state"]["status"] == "live"
    assert sent["attributes-type"] == ATTRIBUTES_TYPE
    assert sent["attributes"] == {
        "game_id": "espn:760415",
        "league": "usa.1",
        "sport": "soccer",
        "home_team": "MIA",
        "away_team": "ORL",
        "home_team_id": "20232",
        "away_team_id": "12011",
    }
    assert sent["alert"]["title"] == "MIA vs ORL"
    phone = android(intent)
    assert phone["activity_id"] == "espn:760415"
    assert phone["event"] == "start"
    assert phone["timestamp"] == str(int(T0.timestamp()))
    assert set(phone) >= CONTENT
    assert all(isinstance(value, str) for value in phone.values())
    assert intent.expires_at - intent.created_at <= timedelta(minutes=10)


def test_a_goal_update_names_the_scorer_and_a_tick_has_no_alert() -> None:
    state = soccer(60, home_score=1, display_clock="67'")
    goal = live_intent(
        state,
        [event(state, EventKind.GOAL)],
        live_event="update",
        priority=HIGH,
        last_event="GOAL Messi 67'",
        now=T0 + timedelta(seconds=61),
        dismiss_s=900,
    )
    assert (goal.kind, goal.team_id) == (EventKind.GOAL, "20232")
    sent = aps(goal)
    assert sent["event"] == "update"
    assert "attributes" not in sent
    assert sent["content-state"]["last_event"] == "GOAL Messi 67'"
    assert sent["content-state"]["home_score"] == 1
    assert sent["alert"] == {"title": "GOAL MIA", "body": "MIA 1-0 ORL (Messi 67')"}
    tick = live_intent(
        soccer(120, home_score=1, display_clock="68'"),
        [],
        live_event="update",
        priority=LOW,
        last_event="GOAL Messi 67'",
        now=T0 + timedelta(seconds=121),
        dismiss_s=900,
    )
    assert (tick.kind, tick.priority) == (EventKind.LIVE_UPDATE, LOW)
    assert "alert" not in aps(tick)
    assert aps(tick)["content-state"]["last_event"] == "GOAL Messi 67'"  # the ticker keeps its last line
    assert tick.expires_at - tick.created_at == timedelta(minutes=2)


def test_an_end_is_dismissed_after_the_configured_time_and_says_final() -> None:
    state = soccer(6000, status=GameStatus.FINAL, status_detail="STATUS_FULL_TIME", home_score=2, away_score=1)
    now = T0 + timedelta(seconds=6005)
    intent = live_intent(
        state,
        [event(state, EventKind.GAME_END)],
        live_event="end",
        priority=HIGH,
        last_event="",
        now=now,
        dismiss_s=900,
    )
    sent = aps(intent)
    assert sent["event"] == "end"
    assert sent["dismissal-date"] == int(now.timestamp()) + 900
    assert sent["alert"] == {"title": "Final", "body": "MIA 2-1 ORL"}
    assert android(intent)["dismissal_date"] == str(int(now.timestamp()) + 900)
    assert intent.kind is EventKind.GAME_END
    assert intent.expires_at - intent.created_at > timedelta(minutes=10)


@pytest.mark.parametrize("filler", ["x", "é", "⚽"])
def test_long_texts_are_cut_until_every_payload_fits_and_the_score_stays(filler: str) -> None:
    long_line = "GOAL " + filler * 6000
    state = soccer(60, home_score=3, away_score=2, status_detail=filler * 6000, display_clock="90'+4'")
    for live_event in ("start", "update", "end"):
        intent = live_intent(
            state,
            [event(state, EventKind.GOAL, player=filler * 3000)],
            live_event=live_event,
            priority=HIGH,
            last_event=long_line,
            now=T0,
            dismiss_s=900,
        )
        sizes = sizes_of(intent)
        assert sizes.token <= TOKEN_LIMIT
        assert sizes.broadcast <= BROADCAST_LIMIT
        assert sizes.android <= FCM_DATA_LIMIT
        sent = aps(intent)
        # what the provider sends, escaped or not, stays under Apple's limit for a token
        assert len(json.dumps({"aps": sent}).encode()) < TOKEN_LIMIT
        assert len(json.dumps({"aps": sent}, ensure_ascii=False).encode()) < TOKEN_LIMIT
        content = sent["content-state"]
        assert (content["home_score"], content["away_score"], content["clock"]) == (3, 2, "90'+4'")
        assert content["last_event"].startswith("GOAL") or content["last_event"] == ""
        assert len(content["last_event"]) < len(long_line)


def test_a_short_payload_is_not_cut() -> None:
    state = soccer(60, home_score=1, display_clock="67'", status_detail="STATUS_FIRST_HALF")
    intent = live_intent(state, [], live_event="update", priority=LOW, last_event="GOAL Messi 67'", now=T0, dismiss_s=0)
    content = aps(intent)["content-state"]
    assert (content["last_event"], content["detail"]) == ("GOAL Messi 67'", "STATUS_FIRST_HALF")
    assert sizes_of(intent).token < 1000


# --- pacing: which states, which priority --------------------------------------------------------


class Published(LivePacing):
    """Pacing as the ingestor uses it when every intent gets out: each claim is confirmed at once."""

    async def claim(self, state: GameState, events: Sequence[GameEvent], now: datetime) -> Claim | None:
        claim = await super().claim(state, events, now)
        if claim is not None:
            assert await self.confirm(claim)
        return claim


def pacing(redis: Any, settings: Settings, *, high: int = 12, tick_s: float = 60.0) -> LivePacing:
    return Published(redis, Keys(settings.namespace), high_per_hour=high, tick_s=tick_s, retention_s=3600)


def unconfirmed(redis: Any, settings: Settings, *, high: int = 12) -> LivePacing:
    """Pacing whose claims are confirmed only when the test says (the broker's confirm)."""
    return LivePacing(redis, Keys(settings.namespace), high_per_hour=high, tick_s=60.0, retention_s=3600)


def what(claim: Claim | None) -> tuple[str, int] | None:
    return None if claim is None else (claim.live_event, claim.priority)


async def test_a_match_starts_updates_ticks_and_ends_once_each(settings: Settings, redis) -> None:
    pace = pacing(redis, settings)
    at = lambda s: T0 + timedelta(seconds=s)  # noqa: E731 -- the wall clock of each poll
    assert await pace.claim(soccer(0, status=GameStatus.SCHEDULED), [], at(0)) is None
    assert what(await pace.claim(soccer(5), [], at(5))) == ("start", HIGH)
    assert await pace.claim(soccer(5), [], at(6)) is None  # the same state again
    assert await pace.claim(soccer(10), [], at(10)) is None  # re-polled, nothing changed
    scored = soccer(15, home_score=1, display_clock="2'")
    claim = await pace.claim(scored, [event(scored, EventKind.GOAL)], at(15))
    assert what(claim) == ("update", HIGH)
    assert claim is not None
    assert claim.last_event == "GOAL Messi 2'"
    assert await pace.claim(soccer(12), [], at(16)) is None  # an older poll comes late
    assert await pace.claim(soccer(30, home_score=1, display_clock="3'"), [], at(30)) is None  # inside the tick window
    tick = await pace.claim(soccer(80, home_score=1, display_clock="3'"), [], at(80))
    assert what(tick) == ("update", LOW)
    assert tick is not None
    assert tick.last_event == "GOAL Messi 2'"
    assert await pace.claim(soccer(150, home_score=1, display_clock="3'"), [], at(150)) is None  # no change
    card_at = soccer(160, home_score=1, display_clock="4'")
    card = await pace.claim(card_at, [event(card_at, EventKind.RED_CARD, player="Busquets", home=False)], at(160))
    assert what(card) == ("update", HIGH)  # an event is not held back by the tick window
    half = soccer(170, home_score=1, display_clock="45'", status_detail="STATUS_HALFTIME")
    assert what(await pace.claim(half, [event(half, EventKind.HALFTIME)], at(170))) == ("update", LOW)
    final = soccer(6000, home_score=1, status=GameStatus.FINAL, status_detail="STATUS_FULL_TIME")
    assert what(await pace.claim(final, [event(final, EventKind.GAME_END)], at(6000))) == ("end", HIGH)
    assert await pace.claim(soccer(6010, home_score=1, status=GameStatus.FINAL), [], at(6010)) is None
    assert await pace.claim(soccer(6020, home_score=2), [], at(6020)) is None  # nothing after the end


async def test_ticks_are_coalesced_and_the_newest_content_goes_when_the_window_ends(settings: Settings, redis) -> None:
    pace = pacing(redis, settings, tick_s=60)
    assert what(await pace.claim(soccer(0), [], T0)) == ("start", HIGH)
    sent = []
    for second in range(5, 200, 5):  # a poll every 5 s, the clock moving every 10 s
        state = soccer(second, display_clock=f"{second // 10}'")
        claim = await pace.claim(state, [], T0 + timedelta(seconds=second))
        if claim is not None:
            sent.append((second, claim.live_event, claim.priority))
    assert sent == [(60, "update", LOW), (120, "update", LOW), (180, "update", LOW)]


async def test_a_final_game_never_seen_live_has_no_activity_to_end(settings: Settings, redis) -> None:
    pace = pacing(redis, settings)
    assert await pace.claim(soccer(0, status=GameStatus.FINAL), [], T0) is None


async def test_the_hourly_budget_downgrades_scores_but_never_start_or_end_and_renews_on_the_hour(
    settings: Settings, redis
) -> None:
    pace = pacing(redis, settings, high=3, tick_s=1)
    hour = datetime(2026, 5, 2, 19, 0, tzinfo=UTC)
    got = [what(await pace.claim(soccer(0), [], hour + timedelta(minutes=40)))]
    for minute, score in ((41, 1), (42, 2), (43, 3), (44, 4)):
        state = soccer(minute * 60, home_score=score)
        got.append(what(await pace.claim(state, [event(state, EventKind.GOAL)], hour + timedelta(minutes=minute))))
    card = soccer(45 * 60, home_score=4, display_clock="45'")
    got.append(
        what(await pace.claim(card, [event(card, EventKind.RED_CARD)], hour + timedelta(minutes=59, seconds=59)))
    )
    assert got == [
        ("start", HIGH),
        ("update", HIGH),
        ("update", HIGH),
        ("update", LOW),
        ("update", LOW),
        ("update", LOW),
    ]
    late = soccer(61 * 60, home_score=5)  # the next clock hour: a new budget
    assert what(await pace.claim(late, [event(late, EventKind.GOAL)], hour + timedelta(hours=1, minutes=1))) == (
        "update",
        HIGH,
    )
    for goals in range(2):
        more = soccer((62 + goals) * 60, home_score=6 + goals)
        await pace.claim(more, [event(more, EventKind.GOAL)], hour + timedelta(hours=1, minutes=2 + goals))
    final = soccer(95 * 60, home_score=7, status=GameStatus.FINAL)
    assert what(await pace.claim(final, [], hour + timedelta(hours=1, minutes=35))) == ("end", HIGH)  # over budget


async def test_ingest_processes_on_one_redis_publish_a_state_once(settings: Settings, redis) -> None:
    others = [make_redis(settings) for _ in range(3)]
    try:
        paces = [pacing(redis, settings), *(pacing(other, settings) for other in others)]
        await paces[0].claim(soccer(0), [], T0)
        # four processes poll the same change, each at its own moment
        polls = [soccer(90 + i * 0.1, display_clock="2'") for i in range(4)]
        claims = await asyncio.gather(
            *(pace.claim(state, [], T0 + timedelta(seconds=91)) for pace, state in zip(paces, polls, strict=True))
        )
        assert len([c for c in claims if c is not None]) == 1
        scored = soccer(100, home_score=1, display_clock="2'")
        goals = await asyncio.gather(
            *(pace.claim(scored, [event(scored, EventKind.GOAL)], T0 + timedelta(seconds=101)) for pace in paces)
        )
        assert [what(c) for c in goals if c is not None] == [("update", HIGH)]
    finally:
        for other in others:
            await other.aclose()


async def test_a_released_claim_is_claimed_again_and_gives_its_budget_back(settings: Settings, redis) -> None:
    pace = pacing(redis, settings, high=2)
    await pace.claim(soccer(0), [], T0)
    scored = soccer(10, home_score=1)
    claim = await pace.claim(scored, [event(scored, EventKind.GOAL)], T0)
    assert claim is not None
    assert await pace.release(claim)
    retry = soccer(15, home_score=1)
    again = await pace.claim(retry, [event(scored, EventKind.GOAL)], T0)
    assert what(again) == ("update", HIGH)  # start (1) + this goal (2): the released one was not counted
    assert again is not None
    assert again.last_event == "GOAL Messi 1'"
    assert not await pace.release(claim)  # a newer claim stands


async def test_a_claim_whose_process_died_before_the_confirm_is_claimed_again_after_pending_s(
    settings: Settings, redis
) -> None:
    """A start claimed by a process killed before the broker's confirm (no confirm, no release)."""
    killed, other = unconfirmed(redis, settings, high=2), unconfirmed(redis, settings, high=2)
    lost = await killed.claim(soccer(0), [], T0)
    assert what(lost) == ("start", HIGH)
    soon = T0 + timedelta(seconds=PENDING_S - 1)
    assert await other.claim(soccer(PENDING_S - 1), [], soon) is None  # still in flight for all it knows
    later = T0 + timedelta(seconds=PENDING_S)
    again = await other.claim(soccer(PENDING_S), [], later)
    assert what(again) == ("start", HIGH)  # the start goes out after all
    assert again is not None
    assert again.restored
    assert lost is not None
    assert not await killed.confirm(lost)  # too late: it was taken for lost
    assert await other.confirm(again)
    scored = soccer(PENDING_S + 5, home_score=1)
    goal = await other.claim(scored, [event(scored, EventKind.GOAL)], later + timedelta(seconds=5))
    assert what(goal) == ("update", HIGH)  # start + this goal = 2: the lost start gave its count back
    assert goal is not None
    assert await other.confirm(goal)
    quiet = later + timedelta(seconds=5 + PENDING_S + 1)
    assert await other.claim(soccer(PENDING_S + 5 + PENDING_S + 1, home_score=1), [], quiet) is None  # nothing lost


async def test_a_lost_end_is_claimed_again_and_confirmed_claims_are_not(settings: Settings, redis) -> None:
    pace = unconfirmed(redis, settings)
    start = await pace.claim(soccer(0), [], T0)
    assert start is not None
    assert await pace.confirm(start)
    final = soccer(6000, status=GameStatus.FINAL)
    assert what(await pace.claim(final, [], T0 + timedelta(seconds=6000))) == ("end", HIGH)  # then killed
    assert await pace.claim(soccer(6010, status=GameStatus.FINAL), [], T0 + timedelta(seconds=6010)) is None
    after = T0 + timedelta(seconds=6000 + PENDING_S)
    end = await pace.claim(soccer(6000 + PENDING_S, status=GameStatus.FINAL), [], after)
    assert what(end) == ("end", HIGH)
    assert end is not None
    assert await pace.confirm(end)
    much_later = after + timedelta(hours=1)
    assert await pace.claim(soccer(9999, status=GameStatus.FINAL), [], much_later) is None  # ended, once


async def test_two_claims_in_flight_a_lost_older_one_is_not_hidden_by_a_newer_confirm(
    settings: Settings, redis
) -> None:
    """Process A claims the start and dies; process B claims the next change and confirms it: the
    start is still put back (the restore goes to what the oldest unconfirmed claim found)."""
    a, b = unconfirmed(redis, settings), unconfirmed(redis, settings)
    assert what(await a.claim(soccer(0), [], T0)) == ("start", HIGH)  # A dies here
    scored = soccer(3, home_score=1)
    goal = await b.claim(scored, [event(scored, EventKind.GOAL)], T0 + timedelta(seconds=3))
    assert what(goal) == ("update", HIGH)
    assert goal is not None
    assert await b.confirm(goal)
    again = await b.claim(soccer(PENDING_S + 1, home_score=1), [], T0 + timedelta(seconds=PENDING_S + 1))
    assert what(again) == ("start", HIGH)


def test_a_catalog_rule_cannot_take_live_updates() -> None:
    yaml = """\
segments:
  fans: {source: "team:{team_id}:followers"}
rules:
  ticker:
    kinds: [GOAL, LIVE_UPDATE]
    priority: 3
    segments: [fans]
    template: goal
templates:
  goal:
    en: {title: "GOAL {team}", body: "{home_score}-{away_score}"}
"""
    with pytest.raises(CatalogInvalid) as caught:
        parse_catalog(yaml, "live.yaml")
    assert any(p.startswith("live.yaml:5:") and "LIVE_UPDATE is no rule's kind" in p for p in caught.value.problems)
