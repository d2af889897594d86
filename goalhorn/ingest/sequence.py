"""Ordering by a feed's sequence numbers: what arrives late or twice is dropped and counted.

Push feeds (Sportradar) resend an event when they amend it and may deliver an older one after a
newer one. A :class:`SequenceGate` keeps the highest ordering key admitted per game and admits only
keys above it, counting the rest in ``goalhorn_ingest_dropped_total{source,reason}`` with reason
``duplicate`` (equal key) or ``late`` (lower key).
"""

from __future__ import annotations

from collections import OrderedDict

from prometheus_client import REGISTRY, Counter

DROPPED = Counter(
    "goalhorn_ingest_dropped",
    "Feed messages dropped because their sequence was already passed (late) or seen (duplicate).",
    ["source", "reason"],
)

OrderKey = tuple[int, ...]


class SequenceGate:
    """Admits messages of a game in increasing key order; remembers at most ``max_games`` games."""

    def __init__(self, source: str, *, max_games: int = 10_000) -> None:
        self.source = source
        self._high: OrderedDict[str, OrderKey] = OrderedDict()
        self._max_games = max_games
        self.dropped = {"late": 0, "duplicate": 0}

    def admit(self, game_id: str, key: OrderKey) -> bool:
        """True if ``key`` is beyond every key admitted for the game so far (and remember it)."""
        high = self._high.get(game_id)
        if high is not None and key <= high:
            reason = "duplicate" if key == high else "late"
            self.dropped[reason] += 1
            DROPPED.labels(self.source, reason).inc()
            return False
        self._high[game_id] = key
        self._high.move_to_end(game_id)
        if len(self._high) > self._max_games:
            self._high.popitem(last=False)
        return True

    def forget(self, game_id: str) -> None:
        self._high.pop(game_id, None)

    def snapshot(self) -> OrderedDict[str, OrderKey]:
        return OrderedDict(self._high)

    def restore(self, snapshot: OrderedDict[str, OrderKey]) -> None:
        self._high = OrderedDict(snapshot)


def dropped_count(source: str, reason: str) -> float:
    value = REGISTRY.get_sample_value("goalhorn_ingest_dropped_total", {"source": source, "reason": reason})
    return value or 0.0
