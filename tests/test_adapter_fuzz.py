"""Mutated real payloads thrown at every adapter: nothing escapes, every rejection is counted."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from goalhorn.ingest.adapter import ADAPTER_ERROR, FeedAdapter
from goalhorn.ingest.espn import EspnAdapter
from goalhorn.ingest.polymarket import PolymarketAdapter
from goalhorn.ingest.sportradar import SportradarAdapter
from goalhorn.ingest.statsperform import StatsPerformAdapter
from goalhorn.models import BookUpdate, GameEvent, GameState
from tests.feeds import fixture

AT = datetime(2025, 1, 1, tzinfo=UTC)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "0", "-1", "1e309", "99:99", "NaN", "home", "away", "post", "in", "BUY", "0.5"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths(value, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn, doc: Any, candidates: list[tuple]) -> bytes:
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(candidates))
        parent = doc
        try:
            for step in path[:-1]:
                parent = parent[step]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(ODD_VALUES)
        except (KeyError, IndexError, TypeError):
            continue
    body = json.dumps(doc).encode()
    cut = draw(st.sampled_from([None, None, None, "truncate", "byte"]))
    if cut == "truncate":
        body = body[: draw(st.integers(min_value=0, max_value=len(body)))]
    elif cut == "byte":
        at = draw(st.integers(min_value=0, max_value=max(0, len(body) - 1)))
        body = body[:at] + bytes([draw(st.integers(min_value=0, max_value=255))]) + body[at + 1 :]
    return body


def rejections(source: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "goalhorn_ingest_rejected":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total") and s.labels["source"] == source)
    return total


def check(adapter: FeedAdapter, chunks: list[bytes], *, close: bool = False) -> None:
    before = rejections(adapter.source)
    kept = len(adapter.quarantine)
    rejected = 0
    for chunk in chunks:
        parsed = adapter.feed(chunk, received_at=AT)
        rejected += len(parsed.rejected)
        for state in parsed.states:
            GameState.model_validate(state.model_dump())
        for event in parsed.events:
            GameEvent.model_validate(event.model_dump())
        for book in parsed.books:
            BookUpdate.model_validate(book.model_dump())
            if book.best_bid is not None and book.best_ask is not None:
                assert 0 <= book.best_bid <= 1
                assert 0 <= book.best_ask <= 1
        assert all(r.reason != ADAPTER_ERROR for r in parsed.rejected), parsed.rejected
    if close:
        rejected += len(adapter.close().rejected)
    assert rejections(adapter.source) - before == rejected
    assert len(adapter.quarantine) == min(kept + rejected, 1000)


def _load(name: str) -> Any:
    return json.loads(fixture(name))


ESPN = [_load(f"espn/{n}.json") for n in ("nhl_scoreboard", "usa1_scoreboard", "nba_scoreboard_in")]
ESPN_PATHS = [paths(doc) for doc in ESPN]


@FUZZ
@given(st.data())
def test_espn(data: st.DataObject) -> None:
    which = data.draw(st.integers(min_value=0, max_value=len(ESPN) - 1))
    check(EspnAdapter(), [data.draw(mutated(ESPN[which], ESPN_PATHS[which]))])


MA3 = _load("statsperform/ma3_hsv_svs.json")
MA3_PATHS = paths(MA3)


@FUZZ
@given(st.data())
def test_statsperform(data: st.DataObject) -> None:
    check(StatsPerformAdapter(), [data.draw(mutated(MA3, MA3_PATHS))])


POLY = [_load("polymarket/ws_market_docs_examples_rs-clob-client.json")]
POLY += [_load(f"polymarket/ws_market_{n}_nautilus_py.json") for n in ("book", "price_change_v2", "tick_size_change")]
POLY_PATHS = [paths(doc) for doc in POLY]


@FUZZ
@given(st.data())
def test_polymarket(data: st.DataObject) -> None:
    adapter = PolymarketAdapter()
    frames = [json.dumps(POLY[1]).encode()]
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        which = data.draw(st.integers(min_value=0, max_value=len(POLY) - 1))
        frames.append(data.draw(mutated(POLY[which], POLY_PATHS[which])))
    check(adapter, frames)


def _stream_objects(name: str, most: int) -> list[Any]:
    decoder, text, at = json.JSONDecoder(), fixture(name).decode(), 0
    found: list[Any] = []
    while len(found) < most and text[at:].strip():
        while text[at].isspace():
            at += 1
        obj, at = decoder.raw_decode(text, at)
        found.append(obj)
    return found


STREAM = [
    *_stream_objects("sportradar/nba_v7_push.jsonstream", 70),
    *(obj for league in ("mlb", "nfl", "nhl") for obj in _stream_objects(f"sportradar/{league}_push.jsonstream", 20)),
]
STREAM_PATHS = [paths(obj) for obj in STREAM]


@FUZZ
@given(st.data())
def test_sportradar(data: st.DataObject) -> None:
    bodies = [json.dumps(obj).encode() for obj in STREAM]
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        k = data.draw(st.integers(min_value=0, max_value=len(STREAM) - 1))
        bodies[k] = data.draw(mutated(STREAM[k], STREAM_PATHS[k]))
    stream = b"".join(bodies)
    size = data.draw(st.integers(min_value=1, max_value=len(stream)))
    check(SportradarAdapter(), [stream[i : i + size] for i in range(0, len(stream), size)], close=True)
