from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from goalhorn.ingest.statsperform import StatsPerformAdapter
from goalhorn.models import EventKind, GameStatus
from tests.feeds import fixture

AT = datetime(2021, 9, 11, 20, 30, tzinfo=UTC)
DOC = fixture("statsperform/ma3_hsv_svs.json")
HSV, SVS = "75xi6hloabmnjn2kzgj1g8h1s", "884uzyf1wosc7ykji6e18gifp"


def parse(body: bytes):
    return StatsPerformAdapter().feed(body, received_at=AT)


def test_goals_cards_and_periods_of_a_real_match() -> None:
    parsed = parse(DOC)
    assert parsed.rejected == []
    summary = [(e.kind, e.team, e.home_score, e.away_score, e.period) for e in parsed.events]
    assert summary == [
        (EventKind.GAME_START, None, 0, 0, 1),
        (EventKind.HALFTIME, None, 0, 0, 1),
        (EventKind.RED_CARD, "SVS", 0, 0, 2),
        (EventKind.GOAL, "HSV", 1, 0, 2),
        (EventKind.GOAL, "SVS", 1, 1, 2),
        (EventKind.GOAL, "HSV", 2, 1, 2),
        (EventKind.PERIOD_END, None, 2, 1, 2),
        (EventKind.GAME_END, None, 2, 1, 2),
    ]
    goals = [e for e in parsed.events if e.kind is EventKind.GOAL]
    assert [g.player for g in goals] == ["D. Kinsombi", "J. Bachmann", "M. Heyer"]
    assert goals[0].event_id == "statsperform:71pif9hi2vwzp6q0xzilyxst0:GOAL:2328646979"
    assert all(e.sequence is None for e in parsed.events)
    (state,) = parsed.states
    assert (state.status, state.home_team, state.away_team, state.home_score, state.away_score) == (
        GameStatus.FINAL,
        "HSV",
        "SVS",
        2,
        1,
    )


def test_the_same_document_polled_again_gives_the_same_ids() -> None:
    assert [e.event_id for e in parse(DOC).events] == [e.event_id for e in parse(DOC).events]


def edited(mutate) -> bytes:
    doc = json.loads(DOC)
    mutate(doc)
    return json.dumps(doc).encode()


def test_an_own_goal_counts_for_the_other_side() -> None:
    def own_goal(doc):
        for event in doc["liveData"]["event"]:
            if event["id"] == 2328657401:
                event["contestantId"] = HSV
                event["qualifier"].append({"id": 1, "qualifierId": 28})

    goals = [e for e in parse(edited(own_goal)).events if e.kind is EventKind.GOAL]
    assert [(g.team, g.player) for g in goals][1] == ("SVS", "J. Bachmann (OG)")


def test_a_live_match_reads_live_with_its_minute() -> None:
    def live(doc):
        doc["liveData"]["matchDetails"]["matchStatus"] = "Playing"
        doc["liveData"]["event"] = [e for e in doc["liveData"]["event"] if e["periodId"] == 1]

    parsed = parse(edited(live))
    (state,) = parsed.states
    assert state.status is GameStatus.LIVE
    assert state.display_clock == "45'"
    assert EventKind.GAME_END not in {e.kind for e in parsed.events}


def test_a_malformed_event_is_rejected_alone() -> None:
    def break_one(doc):
        for event in doc["liveData"]["event"]:
            if event["id"] == 2328657401:
                event["timeMin"] = "86"

    parsed = parse(edited(break_one))
    assert [r.reason for r in parsed.rejected] == ["bad_event"]
    assert [e.team for e in parsed.events if e.kind is EventKind.GOAL] == ["HSV", "HSV"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "not_json"),
        (b"[]", "not_ma3"),
        (b'{"matchInfo": {}}', "not_ma3"),
        (b'{"matchInfo": {"id": "m"}, "liveData": {}}', "bad_home_away"),
        (b'{"matchInfo": {"contestant": []}, "liveData": {}}', "missing_id"),
    ],
)
def test_documents_that_are_not_ma3_are_rejected(body: bytes, reason: str) -> None:
    assert [r.reason for r in parse(body).rejected] == [reason]
