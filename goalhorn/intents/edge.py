"""Edge signals as intents for the bots watching a market.

An ``EdgeSignal`` becomes one ``EDGE`` intent per catalog rule that takes ``EDGE`` events (the
default rule: priority 8 to ``market_watchers``, collapsed per token so a newer edge replaces an
undelivered older one, short-lived since a price is stale within seconds). Its id is derived from
the token and the moment the signal was made, so a republish after a crash is recognised downstream.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from goalhorn.catalog.rules import Rule
from goalhorn.intents.rules import intent_of
from goalhorn.models import EdgeSignal, EventKind, GameState, Intent


def edge_intents(signal: EdgeSignal, state: GameState, rules: Iterable[Rule], now: datetime) -> list[Intent]:
    """The intents of one signal under the rules that take ``EDGE`` events."""
    event_id = f"edge:{signal.token_id}:{int(signal.created_at.timestamp() * 1000)}"
    data = {
        "token_id": signal.token_id,
        "game": signal.game_id,
        "side": signal.side,
        "fair": f"{signal.fair:.4f}",
        "ask": f"{signal.ask:.4f}",
        "edge_cents": f"{signal.edge_cents:.2f}",
        "book_age_s": f"{signal.book_age_s:.3f}",
        "state_age_s": f"{signal.state_age_s:.3f}",
        "home_team": state.home_team,
        "away_team": state.away_team,
        "home_score": str(state.home_score),
        "away_score": str(state.away_score),
        "league": state.league,
    }
    fields = {"token_id": signal.token_id, "game_id": state.game_id, "sport": state.sport.value}
    return [
        intent_of(
            rule,
            event_id=event_id,
            kind=EventKind.EDGE,
            sport=state.sport,
            game_id=state.game_id,
            team_id=None,
            data=data,
            fields=fields,
            event_at=signal.created_at,
            now=now,
        )
        for rule in rules
        if EventKind.EDGE in rule.kinds
    ]
