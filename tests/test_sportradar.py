from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from goalhorn.ingest.quarantine import Quarantine, rejected_count
from goalhorn.ingest.sequence import dropped_count
from goalhorn.ingest.sportradar import SportradarAdapter
from goalhorn.models import EventKind, GameStatus
from tests.feeds import fixture

AT = datetime(2022, 10, 2, 0, 15, tzinfo=UTC)
STREAM = fixture("sportradar/nba_v7_push.jsonstream")
BASKETS = [
    ("1852a103-e40a-482f-959c-9f1f967f64d0", 2, 0),
    ("6761e1f5-49ae-461c-9573-78ed820e2e73", 5, 0),
    ("94c2ca0f-1449-4e59-9292-439a4fcd937e", 7, 0),
]


def run(adapter: SportradarAdapter, chunks: list[bytes]):
    events, states, rejected = [], [], []
    for chunk in chunks:
        parsed = adapter.feed(chunk, received_at=AT)
        events += parsed.events
        states += parsed.states
        rejected += parsed.rejected
    rejected += adapter.close().rejected
    return events, states, rejected


def baskets(events):
    return [(e.event_id.rsplit(":", 1)[1], e.home_score, e.away_score) for e in events if e.kind is EventKind.BASKET]


@pytest.mark.parametrize("size", [1, 7, 333, 4096, len(STREAM)])
def test_partial_objects_are_buffered_across_reads_whatever_the_read_size(size: int) -> None:
    adapter = SportradarAdapter()
    events, states, rejected = run(adapter, [STREAM[i : i + size] for i in range(0, len(STREAM), size)])
    assert rejected == []
    assert baskets(events) == BASKETS
    assert adapter.heartbeats == 28
    assert {s.status for s in states} == {GameStatus.LIVE}
    assert states[-1].home_team == "Bucks"
    assert states[-1].home_score == 7


def test_resends_and_late_events_are_dropped_and_counted_not_repeated() -> None:
    late, duplicate = dropped_count("sportradar", "late"), dropped_count("sportradar", "duplicate")
    adapter = SportradarAdapter()
    events, _, _ = run(adapter, [STREAM])
    ids = [e.event_id for e in events]
    assert len(ids) == len(set(ids))
    assert adapter.gate.dropped["late"] > 0
    assert adapter.gate.dropped["duplicate"] > 0
    assert dropped_count("sportradar", "late") - late == adapter.gate.dropped["late"]
    assert dropped_count("sportradar", "duplicate") - duplicate == adapter.gate.dropped["duplicate"]
    sequences = [e.sequence for e in events]
    assert sequences == sorted(sequences)


def test_a_second_adapter_derives_the_same_ids() -> None:
    first, _, _ = run(SportradarAdapter(), [STREAM])
    second, _, _ = run(SportradarAdapter(), [STREAM[i : i + 1000] for i in range(0, len(STREAM), 1000)])
    assert [e.event_id for e in first] == [e.event_id for e in second]


def payload(event_type: str, sequence: int | None, number: int, home: int, op: str = "update", **event) -> bytes:
    body = {
        "payload": {
            "game": {
                "id": "g1",
                "status": "inprogress",
                "home": {"id": "h", "alias": "MIL", "name": "Bucks", "points": home},
                "away": {"id": "a", "alias": "MEM", "name": "Grizzlies", "points": 0},
            },
            "event": {
                "id": f"e{number}",
                "event_type": event_type,
                "number": number,
                "clock": "10:42",
                "period": {"number": 2},
                "attribution": {"id": "h"},
                **({"sequence": sequence} if sequence is not None else {}),
                **event,
            },
        },
        "metadata": {"league": "NBA", "operation": op},
    }
    return json.dumps(body).encode()


def test_a_deleted_basket_becomes_a_score_correction() -> None:
    adapter = SportradarAdapter()
    events, _, _ = run(adapter, [payload("twopointmade", 10, 1, 2), payload("twopointmade", None, 1, 0, op="delete")])
    assert [(e.kind, e.home_score) for e in events] == [(EventKind.BASKET, 2), (EventKind.SCORE_CORRECTION, 0)]
    assert events[0].team == "MIL"
    assert events[0].period == 2


def test_garbage_between_objects_is_rejected_and_the_objects_around_it_survive() -> None:
    quarantine = Quarantine()
    before = rejected_count("sportradar", "unbalanced")
    adapter = SportradarAdapter(quarantine=quarantine)
    broken = payload("twopointmade", 11, 2, 4)[:-40] + b'"}}'
    events, _, rejected = run(
        adapter, [payload("twopointmade", 10, 1, 2), broken, b"\n", payload("threepointmade", 12, 3, 7)]
    )
    assert [e.home_score for e in events] == [2, 7]
    assert [r.reason for r in rejected] == ["unbalanced"]
    assert rejected_count("sportradar", "unbalanced") == before + 1
    assert quarantine.items()[0].reason == "unbalanced"
    assert quarantine.items()[0].payload == broken


def test_an_unclosed_object_at_the_end_of_the_stream_is_rejected_as_truncated() -> None:
    adapter = SportradarAdapter()
    events, _, rejected = run(adapter, [payload("twopointmade", 10, 1, 2), payload("twopointmade", 11, 2, 4)[:50]])
    assert len(events) == 1
    assert [r.reason for r in rejected] == ["truncated"]


def test_an_oversized_partial_object_is_given_up_and_the_next_one_parses() -> None:
    adapter = SportradarAdapter(max_object_bytes=2000)
    huge = b'{"payload": {"pad": "' + b"x" * 5000
    events, _, rejected = run(adapter, [huge, b'"}}', payload("twopointmade", 10, 1, 2)])
    assert [e.home_score for e in events] == [2]
    assert "oversized" in [r.reason for r in rejected]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"payload": {"game": {}}}', "not_a_payload"),
        (b"[1, 2]", "garbage"),
        (payload("twopointmade", 1, 1, 2).replace(b'"NBA"', b'"XFL"'), "unknown_league"),
        (payload("twopointmade", 1, 1, 2).replace(b'"inprogress"', b'"weird"'), "unknown_status"),
        (payload("twopointmade", 1, 1, 2).replace(b'"points": 2', b'"points": "2"'), "bad_score"),
    ],
)
def test_malformed_payloads_are_rejected_with_a_reason(body: bytes, reason: str) -> None:
    _, _, rejected = run(SportradarAdapter(), [body])
    assert [r.reason for r in rejected] == [reason]


def test_a_game_score_that_goes_back_without_a_delete_is_a_correction_not_a_basket() -> None:
    adapter = SportradarAdapter()
    events, _, _ = run(adapter, [payload("twopointmade", 10, 1, 4), payload("rebound", 11, 2, 2)])
    assert [(e.kind, e.home_score) for e in events] == [(EventKind.BASKET, 4), (EventKind.SCORE_CORRECTION, 2)]
    assert events[1].event_id == "sportradar:g1:SCORE_CORRECTION:e2"
    assert events[1].team == "MIL"
