"""The market map: which prediction-market token pays out on which result of which game.

YAML, one entry per token::

    markets:
      - token_id: "4833104333..."      # Polymarket CLOB token (asset) id
        game: "espn:401736810"         # game key: <source>:<game id>
        side: home                     # home, away or draw
        prior: 0.62                    # optional: the home side's pre-game win probability

A token listed twice, an unknown side or a prior outside (0, 1) is a ``ConfigError`` naming the
entry.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from goalhorn.errors import ConfigError

Side = Literal["home", "away", "draw"]
_SIDES: tuple[Side, ...] = ("home", "away", "draw")


@dataclass(frozen=True, slots=True)
class Market:
    token_id: str
    game: str
    side: Side
    prior: float | None = None


class MarketMap:
    def __init__(self, markets: Iterable[Market]) -> None:
        self.by_token: dict[str, Market] = {}
        self.by_game: dict[str, list[Market]] = defaultdict(list)
        for market in markets:
            if market.token_id in self.by_token:
                raise ConfigError(f"market map: token {market.token_id} is listed twice")
            self.by_token[market.token_id] = market
            self.by_game[market.game].append(market)

    def __len__(self) -> int:
        return len(self.by_token)

    @property
    def tokens(self) -> list[str]:
        return list(self.by_token)

    @classmethod
    def from_yaml(cls, text: str) -> MarketMap:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"market map is not valid YAML: {exc}") from exc
        entries = raw.get("markets") if isinstance(raw, dict) else None
        if not isinstance(entries, list):
            raise ConfigError("market map: expected a top-level 'markets' list")
        return cls(_market(entry, n) for n, entry in enumerate(entries))

    @classmethod
    def load(cls, path: Path) -> MarketMap:
        try:
            return cls.from_yaml(path.read_text())
        except OSError as exc:
            raise ConfigError(f"market map {path}: {exc.strerror}") from exc


def _market(entry: object, n: int) -> Market:
    where = f"market map entry {n}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping")
    token, game, side, prior = entry.get("token_id"), entry.get("game"), entry.get("side"), entry.get("prior")
    if not isinstance(token, str | int) or not str(token):
        raise ConfigError(f"{where}: token_id is missing")
    if not isinstance(game, str) or ":" not in game:
        raise ConfigError(f"{where}: game must be a game key '<source>:<game id>', got {game!r}")
    if side not in _SIDES:
        raise ConfigError(f"{where}: side must be one of {', '.join(_SIDES)}, got {side!r}")
    if prior is not None and (not isinstance(prior, int | float) or not 0 < prior < 1):
        raise ConfigError(f"{where}: prior must be a probability strictly between 0 and 1")
    extra = set(entry) - {"token_id", "game", "side", "prior"}
    if extra:
        raise ConfigError(f"{where}: unknown keys {sorted(extra)}")
    return Market(str(token), game, side, None if prior is None else float(prior))
