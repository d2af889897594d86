"""Edge signals as intents for the bots watching a market.

An ``EdgeSignal`` becomes one ``EDGE`` intent at priority 8 for the segment
``market:<token id>:watchers``, collapsed per token (a newer edge replaces an undelivered older
one) and short-lived, since a price is stale within seconds. Its id is derived from the token and
the moment the signal was made, so a republish after a crash is recognised downstream.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from goalhorn.models import EdgeSignal, EventKind, GameState, Intent

EDGE_PRIORITY = 8
EDGE_TTL_S = 30


def edge_intent(signal: EdgeSignal, state: GameState, now: datetime, ttl_s: int = EDGE_TTL_S) -> Intent:
    event_id = f"edge:{signal.token_id}:{int(signal.created_at.timestamp() * 1000)}"
    return Intent(
        intent_id=hashlib.blake2b(f"{event_id}|edge".encode(), digest_size=12).hexdigest(),
        event_id=event_id,
        kind=EventKind.EDGE,
        sport=state.sport,
        game_id=state.game_id,
        priority=EDGE_PRIORITY,
        segments=(f"market:{signal.token_id}:watchers",),
        template="edge",
        data={
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
        },
        collapse_key=f"edge:{signal.token_id}",
        event_at=signal.created_at,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )
