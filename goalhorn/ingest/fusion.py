"""Fusion: the model's fair price against the market's ask, as edge signals.

The engine keeps the latest state of every mapped game and the latest top of book of every mapped
token. Each new state re-evaluates that game's tokens; each book update re-evaluates its token. A
signal is emitted when the fair value of the token's side exceeds the best ask by at least
``min_edge_cents``, and only when both inputs are fresh (the book no older than ``max_book_age_s``,
the game state no older than ``max_state_age_s``) and the game is live; everything skipped is
counted in ``goalhorn_fusion_skipped_total{reason}``. The same edge is not signalled twice in a
row: a token signals again only once its ask or fair value has moved by a cent or more from the last
signal its caller reported :meth:`EdgeEngine.sent` (published and confirmed), so a signal whose
publish failed is made again at the next evaluation instead of being taken as already sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from prometheus_client import REGISTRY, Counter

from goalhorn.ingest.live import game_key
from goalhorn.ingest.markets import Market, MarketMap
from goalhorn.ingest.winprob import WinModel
from goalhorn.models import BookUpdate, EdgeSignal, GameState, GameStatus, utcnow

SKIPPED = Counter("goalhorn_fusion_skipped", "Edge evaluations skipped, by reason.", ["reason"])
SIGNALS = Counter("goalhorn_fusion_signals", "Edge signals emitted.")
_MOVE = 0.01


def skipped_count(reason: str) -> float:
    return REGISTRY.get_sample_value("goalhorn_fusion_skipped_total", {"reason": reason}) or 0.0


@dataclass(frozen=True, slots=True)
class EdgeOptions:
    min_edge_cents: float = 3.0
    max_book_age_s: float = 5.0
    max_state_age_s: float = 30.0


class EdgeEngine:
    def __init__(self, markets: MarketMap, model: WinModel, options: EdgeOptions | None = None) -> None:
        self.markets = markets
        self.model = model
        self.options = options or EdgeOptions()
        self._states: dict[str, GameState] = {}
        self._books: dict[str, BookUpdate] = {}
        self._last: dict[str, tuple[float, float]] = {}
        self.skipped: dict[str, int] = {}

    def state(self, key: str) -> GameState | None:
        return self._states.get(key)

    def on_state(self, state: GameState, now: datetime | None = None) -> list[EdgeSignal]:
        key = game_key(state)
        markets = self.markets.by_game.get(key)
        if not markets:
            return []
        known = self._states.get(key)
        if known is not None and known.observed_at > state.observed_at:
            return []
        self._states[key] = state
        moment = now or utcnow()
        return [s for m in markets if (s := self._evaluate(m, moment)) is not None]

    def on_book(self, update: BookUpdate, now: datetime | None = None) -> list[EdgeSignal]:
        market = self.markets.by_token.get(update.token_id)
        if market is None:
            return []
        self._books[update.token_id] = update
        signal = self._evaluate(market, now or utcnow())
        return [] if signal is None else [signal]

    def sent(self, signal: EdgeSignal) -> None:
        """``signal`` went out (its intents were confirmed): the same edge is not signalled again."""
        self._last[signal.token_id] = (signal.fair, signal.ask)

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        SKIPPED.labels(reason).inc()

    def _evaluate(self, market: Market, now: datetime) -> EdgeSignal | None:
        state, book = self._states.get(market.game), self._books.get(market.token_id)
        if state is None:
            self._skip("no_state")
            return None
        if book is None:
            self._skip("no_book")
            return None
        if state.status is not GameStatus.LIVE:
            self._skip("not_live")
            return None
        book_age = max(0.0, (now - book.received_at).total_seconds())
        state_age = max(0.0, (now - state.observed_at).total_seconds())
        if book_age > self.options.max_book_age_s:
            self._skip("stale_book")
            return None
        if state_age > self.options.max_state_age_s:
            self._skip("stale_state")
            return None
        if book.best_ask is None:
            self._skip("no_ask")
            return None
        wp = self.model.for_state(state, prior=market.prior)
        fair = {"home": wp.home, "away": wp.away, "draw": wp.draw}[market.side]
        edge_cents = (fair - book.best_ask) * 100
        if edge_cents < self.options.min_edge_cents:
            self._skip("below_min_edge")
            return None
        last = self._last.get(market.token_id)
        if last is not None and abs(last[0] - fair) < _MOVE and abs(last[1] - book.best_ask) < _MOVE:
            self._skip("unchanged")
            return None
        SIGNALS.inc()
        return EdgeSignal(
            token_id=market.token_id,
            game_id=market.game,
            side=market.side,
            fair=min(1.0, max(0.0, fair)),
            ask=book.best_ask,
            edge_cents=round(edge_cents, 3),
            book_age_s=book_age,
            state_age_s=state_age,
            created_at=now,
        )
