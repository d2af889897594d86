from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from goalhorn.ingest.book import OrderBook
from goalhorn.ingest.polymarket import PolymarketAdapter
from goalhorn.ingest.quarantine import rejected_count
from tests.feeds import fixture

AT = datetime(2025, 1, 1, tzinfo=UTC)
BIG = "48331043336612883890938759509493159234755048973500640148014422747788308965732"


def feed(adapter: PolymarketAdapter, message) -> list[tuple[str, float | None, float | None, int]]:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    return [(b.token_id, b.best_bid, b.best_ask, b.ts_ms) for b in adapter.feed(body, received_at=AT).books]


def book(token: str, bids, asks, ts: str = "1000") -> dict:
    return {
        "event_type": "book",
        "asset_id": token,
        "market": "0xm",
        "bids": [{"price": p, "size": s} for p, s in bids],
        "asks": [{"price": p, "size": s} for p, s in asks],
        "timestamp": ts,
        "hash": "h",
    }


def change(token: str, side: str, price: str, size: str, ts: str = "2000") -> dict:
    return {
        "event_type": "price_change",
        "market": "0xm",
        "timestamp": ts,
        "price_changes": [{"asset_id": token, "price": price, "size": size, "side": side, "hash": "x"}],
    }


def test_best_bid_and_ask_come_from_the_book_not_from_level_order() -> None:
    adapter = PolymarketAdapter()
    assert feed(adapter, fixture("polymarket/ws_market_book_nautilus_py.json")) == [(BIG, 0.511, 0.514, 1728799418260)]
    shuffled = book("t", [(".50", "15"), (".48", "30"), ("0.49", "20")], [(".53", "60"), (".52", "25")])
    assert feed(adapter, shuffled) == [("t", 0.5, 0.52, 1000)]


def test_level_updates_move_the_top_and_a_zero_size_removes_a_level() -> None:
    adapter = PolymarketAdapter()
    feed(adapter, book("t", [(".48", "30"), (".50", "15")], [(".52", "25"), (".53", "60")]))
    assert feed(adapter, change("t", "BUY", "0.51", "10")) == [("t", 0.51, 0.52, 2000)]
    assert feed(adapter, change("t", "BUY", "0.49", "10", ts="2001")) == []
    assert feed(adapter, change("t", "BUY", "0.51", "0", ts="2002")) == [("t", 0.5, 0.52, 2002)]
    assert feed(adapter, change("t", "SELL", ".52", "0", ts="2003")) == [("t", 0.5, 0.53, 2003)]
    assert adapter.books["t"].depth("bid") == {0.48: 30.0, 0.5: 15.0, 0.49: 10.0}


def test_the_older_price_change_format_is_applied_too() -> None:
    adapter = PolymarketAdapter()
    feed(adapter, book("t", [(".48", "30")], [(".52", "25")]))
    legacy = {
        "event_type": "price_change",
        "asset_id": "t",
        "market": "0xm",
        "changes": [{"price": "0.47", "side": "BUY", "size": "5"}, {"price": "0.51", "side": "SELL", "size": "5"}],
        "timestamp": "3000",
        "hash": "h",
    }
    assert feed(adapter, legacy) == [("t", 0.48, 0.51, 3000)]


def test_an_array_frame_pong_and_quiet_messages() -> None:
    adapter = PolymarketAdapter()
    out = feed(adapter, fixture("polymarket/ws_market_docs_examples_rs-clob-client.json"))
    token = "65818619657568813474341868652308942079804919287380422192892211131408793125422"
    assert out == [(token, 0.5, 0.52, 123456789000)]
    assert adapter.stats["no_book"] == 1
    assert feed(adapter, b"PONG") == []
    assert adapter.stats["heartbeats"] == 1
    assert feed(adapter, fixture("polymarket/ws_market_last_trade_price_nautilus_py.json")) == []
    assert feed(adapter, fixture("polymarket/ws_market_tick_size_change_nautilus_py.json")) == []


def test_updates_before_a_snapshot_are_skipped_until_the_next_book_after_reset() -> None:
    adapter = PolymarketAdapter()
    feed(adapter, book("t", [(".48", "30")], [(".52", "25")]))
    adapter.reset()
    assert feed(adapter, change("t", "BUY", "0.51", "10")) == []
    assert adapter.stats["no_book"] == 1
    assert feed(adapter, book("t", [(".40", "1")], [(".60", "1")], ts="5000")) == [("t", 0.4, 0.6, 5000)]


def test_a_frame_with_one_bad_message_keeps_the_good_ones() -> None:
    before = rejected_count("polymarket", "bad_price")
    adapter = PolymarketAdapter()
    frame = [book("a", [(".4", "1")], [(".6", "1")]), book("b", [("1.5", "1")], []), book("c", [], [(".7", "2")])]
    assert feed(adapter, frame) == [("a", 0.4, 0.6, 1000), ("c", None, 0.7, 1000)]
    assert rejected_count("polymarket", "bad_price") == before + 1
    assert "b" not in adapter.books


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"{not json", "not_json"),
        ({"event_type": "bogus"}, "unknown_event_type"),
        (change("t", "HOLD", "0.5", "1"), "bad_side"),
        (change("t", "BUY", "0.5", "-1"), "bad_size"),
        (change("t", "BUY", "nan", "1"), "bad_price"),
        (book("t", [], [], ts="12:00"), "bad_timestamp"),
        ({"event_type": "book", "asset_id": 5, "bids": [], "asks": [], "timestamp": "1"}, "bad_asset_id"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(message, reason: str) -> None:
    adapter = PolymarketAdapter()
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    assert [r.reason for r in adapter.feed(body, received_at=AT).rejected] == [reason]


def test_order_book_recomputes_the_best_only_when_it_goes() -> None:
    ob = OrderBook()
    ob.replace([(0.4, 1.0), (0.45, 2.0)], [(0.55, 1.0)], 1)
    ob.set("bid", 0.45, 0.0, 2)
    assert ob.top() == (0.4, 0.55)
    ob.set("ask", 0.55, 0.0, 3)
    assert ob.top() == (0.4, None)
    ob.set("ask", 0.7, 1.0, 4)
    ob.set("ask", 0.6, 1.0, 5)
    assert ob.top() == (0.4, 0.6)
