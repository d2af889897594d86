"""A full order book of one market token, with the best bid and ask kept current.

Levels are keyed by price as a float: the feed writes one price as ``".48"``, ``"0.48"`` or
``"0.480"``, and all three parse to the same double. The best price is cached and only searched
for again when the level holding it goes away, so an update costs O(1) except when it removes the
top of book.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

Side = Literal["bid", "ask"]


class OrderBook:
    __slots__ = ("_asks", "_best_ask", "_best_bid", "_bids", "ts_ms")

    def __init__(self) -> None:
        self._bids: dict[float, float] = {}
        self._asks: dict[float, float] = {}
        self._best_bid: float | None = None
        self._best_ask: float | None = None
        self.ts_ms = 0

    def replace(self, bids: Iterable[tuple[float, float]], asks: Iterable[tuple[float, float]], ts_ms: int) -> None:
        """Load a snapshot: every level not in it is gone."""
        self._bids = {price: size for price, size in bids if size > 0}
        self._asks = {price: size for price, size in asks if size > 0}
        self._best_bid = max(self._bids) if self._bids else None
        self._best_ask = min(self._asks) if self._asks else None
        self.ts_ms = ts_ms

    def set(self, side: Side, price: float, size: float, ts_ms: int) -> None:
        """Set one level's size; a size of 0 removes the level."""
        self.ts_ms = max(self.ts_ms, ts_ms)
        if side == "bid":
            levels, best = self._bids, self._best_bid
        else:
            levels, best = self._asks, self._best_ask
        if size > 0:
            levels[price] = size
            if best is None or (price > best if side == "bid" else price < best):
                best = price
        elif levels.pop(price, None) is not None and price == best:
            best = (max(levels) if side == "bid" else min(levels)) if levels else None
        if side == "bid":
            self._best_bid = best
        else:
            self._best_ask = best

    @property
    def best_bid(self) -> float | None:
        return self._best_bid

    @property
    def best_ask(self) -> float | None:
        return self._best_ask

    def top(self) -> tuple[float | None, float | None]:
        return self._best_bid, self._best_ask

    def depth(self, side: Side) -> dict[float, float]:
        """A copy of one side's levels."""
        return dict(self._bids if side == "bid" else self._asks)
