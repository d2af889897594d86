"""Adapter for Polymarket's CLOB market channel (``wss://.../ws/market``): one ``feed`` is one frame.

A frame is a JSON object or a JSON array of them, or the plain-text heartbeat reply ``PONG``.
Message types (``event_type``):

- ``book``: a full snapshot of one token's book (``bids``/``asks`` of ``{price, size}``; the best
  level comes *last*, but nothing here relies on the order);
- ``price_change``: level updates, either the current format (``price_changes[]``, each with its
  own ``asset_id``, ``side`` BUY/SELL, ``price``, ``size``, and the server's ``best_bid``/``best_ask``)
  or the older one (top-level ``asset_id`` with ``changes[]``); a size of ``"0"`` removes the level;
- ``last_trade_price`` and ``tick_size_change``: checked, but they do not move the book.

Prices, sizes and millisecond timestamps are strings. A full book is kept per token and the best
bid and ask are derived from it; a :class:`BookUpdate` is returned for every token whose top of
book a frame changed. Updates for a token whose snapshot has not arrived yet (at start, or after
:meth:`PolymarketAdapter.reset` on a reconnect) cannot be applied and are skipped and counted until
the next ``book``. A malformed message is rejected on its own; the other messages of its frame apply.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from goalhorn.errors import PayloadRejected
from goalhorn.ingest.adapter import FeedAdapter, Parsed
from goalhorn.ingest.book import OrderBook, Side
from goalhorn.ingest.quarantine import Quarantine
from goalhorn.models import BookUpdate

SOURCE = "polymarket"
HEARTBEAT = b"PONG"
_SIDES: dict[str, Side] = {"BUY": "bid", "SELL": "ask"}
_QUIET = frozenset({"last_trade_price", "tick_size_change"})


class _Bad(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class PolymarketAdapter(FeedAdapter):
    """The books of every token seen on one connection."""

    source = SOURCE

    def __init__(self, quarantine: Quarantine | None = None) -> None:
        super().__init__(quarantine)
        self.books: dict[str, OrderBook] = {}
        self.stats = {"heartbeats": 0, "no_book": 0, "best_mismatch": 0, "applied": 0}

    def reset(self) -> None:
        """Forget every book (after a reconnect): each is rebuilt from its next ``book`` snapshot."""
        self.books.clear()

    def book(self, token_id: str) -> OrderBook | None:
        return self.books.get(token_id)

    def _parse(self, data: bytes, received_at: datetime) -> Parsed:
        text = data.strip()
        if text.upper() == HEARTBEAT:
            self.stats["heartbeats"] += 1
            return Parsed()
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise PayloadRejected(SOURCE, "not_json", text[:40].decode("utf-8", "replace")) from exc
        messages = frame if isinstance(frame, list) else [frame]
        parsed = Parsed()
        before: dict[str, tuple[float | None, float | None] | None] = {}
        for message in messages:
            try:
                self._message(message, before)
            except _Bad as bad:
                parsed.rejected.append(PayloadRejected(SOURCE, bad.reason, bad.detail))
        for token_id, top in before.items():
            book = self.books[token_id]
            if top is None or book.top() != top:
                best_bid, best_ask = book.top()
                parsed.books.append(
                    BookUpdate(
                        token_id=token_id,
                        best_bid=best_bid,
                        best_ask=best_ask,
                        ts_ms=book.ts_ms,
                        received_at=received_at,
                    )
                )
        return parsed

    def _message(self, message: object, before: dict[str, tuple[float | None, float | None] | None]) -> None:
        if not isinstance(message, dict):
            raise _Bad("not_a_message", type(message).__name__)
        kind = message.get("event_type")
        if not isinstance(kind, str):
            raise _Bad("unknown_event_type", repr(kind)[:40])
        if kind == "book":
            token_id = _token(message.get("asset_id"))
            bids, asks = _levels(message.get("bids"), "bids"), _levels(message.get("asks"), "asks")
            ts_ms = _ts(message.get("timestamp"))
            book = self.books.get(token_id)
            if token_id not in before:
                before[token_id] = book.top() if book is not None else None
            if book is None:
                book = self.books[token_id] = OrderBook()
            book.replace(bids, asks, ts_ms)
            self.stats["applied"] += 1
        elif kind == "price_change":
            ts_ms = _ts(message.get("timestamp"))
            changes = _changes(message)
            for token_id, side, price, size, server_best in changes:
                book = self.books.get(token_id)
                if book is None:
                    self.stats["no_book"] += 1
                    continue
                before.setdefault(token_id, book.top())
                book.set(side, price, size, ts_ms)
                self.stats["applied"] += 1
                if server_best is not None and server_best != book.top():
                    self.stats["best_mismatch"] += 1
        elif kind in _QUIET:
            _token(message.get("asset_id"))
            _ts(message.get("timestamp"))
        else:
            raise _Bad("unknown_event_type", repr(kind)[:40])


Change = tuple[str, Side, float, float, tuple[float | None, float | None] | None]


def _changes(message: dict[str, Any]) -> list[Change]:
    """Every level change of a ``price_change``, validated before any is applied."""
    entries = message.get("price_changes")
    legacy = entries is None
    if legacy:
        entries = message.get("changes")
    if not isinstance(entries, list):
        raise _Bad("bad_price_change", "no price_changes[] or changes[]")
    shared = _token(message.get("asset_id")) if legacy else None
    out: list[Change] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise _Bad("bad_price_change", type(entry).__name__)
        raw_side = entry.get("side")
        side = _SIDES.get(raw_side) if isinstance(raw_side, str) else None
        if side is None:
            raise _Bad("bad_side", repr(entry.get("side"))[:20])
        token_id = shared if shared is not None else _token(entry.get("asset_id"))
        server = None
        if "best_bid" in entry or "best_ask" in entry:
            server = (_best(entry.get("best_bid")), _best(entry.get("best_ask")))
        out.append((token_id, side, _price(entry.get("price")), _size(entry.get("size")), server))
    return out


def _levels(raw: object, name: str) -> list[tuple[float, float]]:
    if not isinstance(raw, list):
        raise _Bad("bad_book", f"{name} is not a list")
    levels = []
    for level in raw:
        if not isinstance(level, dict):
            raise _Bad("bad_book", f"{name} level is not an object")
        levels.append((_price(level.get("price")), _size(level.get("size"))))
    return levels


def _number(raw: object, reason: str) -> float:
    if not isinstance(raw, str) or len(raw) > 32:
        raise _Bad(reason, repr(raw)[:32])
    try:
        value = float(raw)
    except ValueError:
        raise _Bad(reason, repr(raw)[:32]) from None
    if not math.isfinite(value):
        raise _Bad(reason, repr(raw)[:32])
    return value


def _price(raw: object) -> float:
    value = _number(raw, "bad_price")
    if not 0 <= value <= 1:
        raise _Bad("bad_price", repr(raw)[:32])
    return value


def _best(raw: object) -> float | None:
    """The server's best price in a ``price_change``; "0" (bid) and "1" (ask) mean an empty side."""
    value = _price(raw)
    return None if value in (0.0, 1.0) else value


def _size(raw: object) -> float:
    value = _number(raw, "bad_size")
    if value < 0:
        raise _Bad("bad_size", repr(raw)[:32])
    return value


def _ts(raw: object) -> int:
    if isinstance(raw, str) and raw.isdigit() and raw.isascii() and len(raw) <= 16:
        return int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 10**16:
        return raw
    raise _Bad("bad_timestamp", repr(raw)[:32])


def _token(raw: object) -> str:
    if isinstance(raw, str) and 0 < len(raw) <= 100:
        return raw
    raise _Bad("bad_asset_id", repr(raw)[:32])
