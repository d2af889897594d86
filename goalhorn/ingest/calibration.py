"""How well the win-probability model is calibrated, measured on ESPN summary play-by-play files.

An ESPN game summary (``/apis/site/v2/sports/{sport}/{league}/summary?event=<id>``) carries
``header.competitions[0].competitors`` (``homeAway``, ``winner``, ``score``) and the plays, either
top-level ``plays[]`` (basketball, hockey, soccer) or inside ``drives.previous[].plays`` and
``drives.current.plays`` (American football); each play has ``homeScore``, ``awayScore``,
``period.number`` and ``clock`` (``value`` in seconds, or ``displayValue`` "M:SS"). Every play is
one snapshot: the model's home win probability from that state is scored against whether the home
side won, by the Brier score (mean squared error, 0 is perfect, 0.25 is a coin flip) and a
reliability table (in each band of predicted probability, how often the home side really won).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from goalhorn.errors import PayloadRejected
from goalhorn.ingest.espn import sport_of
from goalhorn.ingest.winprob import WinModel

SOURCE = "espn-summary"
_CLOCK = re.compile(r"^(\d{1,3}):(\d{2})(?:\.\d+)?$")
_MINUTE = re.compile(r"^(\d{1,3})'(?:\+(\d{1,2})')?$")


@dataclass(frozen=True, slots=True)
class Snapshot:
    home_score: int
    away_score: int
    period: int
    clock_s: float | None


@dataclass(frozen=True, slots=True)
class GameRecord:
    game_id: str
    league: str
    home_won: bool
    snapshots: list[Snapshot]


@dataclass(slots=True)
class Calibration:
    bins: int = 10
    total: float = 0.0
    n: int = 0
    games: int = 0
    counts: list[int] = field(default_factory=list)
    predicted: list[float] = field(default_factory=list)
    observed: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.counts = [0] * self.bins
        self.predicted = [0.0] * self.bins
        self.observed = [0] * self.bins

    def add(self, p: float, outcome: bool) -> None:
        self.total += (p - outcome) ** 2
        self.n += 1
        b = min(int(p * self.bins), self.bins - 1)
        self.counts[b] += 1
        self.predicted[b] += p
        self.observed[b] += outcome

    @property
    def brier(self) -> float | None:
        return self.total / self.n if self.n else None

    def table(self) -> Iterator[tuple[float, float, int, float, float]]:
        """Per non-empty band: (low, high, snapshots, mean predicted, observed home-win rate)."""
        for b, count in enumerate(self.counts):
            if count:
                yield b / self.bins, (b + 1) / self.bins, count, self.predicted[b] / count, self.observed[b] / count


def parse_summary(body: bytes, league: str | None = None) -> GameRecord:
    """One finished game's snapshots and result from an ESPN summary body."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise PayloadRejected(SOURCE, "not_json", type(exc).__name__) from exc
    header = data.get("header") if isinstance(data, dict) else None
    competitions = header.get("competitions") if isinstance(header, dict) else None
    competition = competitions[0] if isinstance(competitions, list) and competitions else None
    competitors = competition.get("competitors") if isinstance(competition, dict) else None
    if not isinstance(competitors, list) or not isinstance(header, dict):
        raise PayloadRejected(SOURCE, "not_a_summary", "no header.competitions[0].competitors")
    slug = league or _league(header)
    if slug is None:
        raise PayloadRejected(SOURCE, "missing_league", "pass --league")
    snapshots = list(_snapshots(_plays(data)))
    if not snapshots:
        raise PayloadRejected(SOURCE, "no_plays")
    home_won = _home_won(competitors, snapshots[-1])
    if home_won is None:
        raise PayloadRejected(SOURCE, "no_result", "no winner flag and no final score")
    return GameRecord(str(header.get("id", "")), slug, home_won, snapshots)


def calibrate(records: Iterable[GameRecord], model: WinModel, bins: int = 10) -> Calibration:
    result = Calibration(bins=bins)
    for record in records:
        params = model.table.lookup(record.league, sport_of(record.league))
        result.games += 1
        for snap in record.snapshots:
            p = model.predict(params, snap.home_score, snap.away_score, snap.period, snap.clock_s).home
            result.add(p, record.home_won)
    return result


def _league(header: dict[str, Any]) -> str | None:
    league = header.get("league")
    slug = league.get("slug") if isinstance(league, dict) else None
    return slug if isinstance(slug, str) and slug else None


def _plays(data: dict[str, Any]) -> list[Any]:
    plays = data.get("plays")
    if isinstance(plays, list):
        return plays
    drives = data.get("drives")
    found: list[Any] = []
    if isinstance(drives, dict):
        previous = drives.get("previous")
        for drive in [*(previous if isinstance(previous, list) else []), drives.get("current")]:
            inner = drive.get("plays") if isinstance(drive, dict) else None
            found += inner if isinstance(inner, list) else []
    return found


def _snapshots(plays: list[Any]) -> Iterator[Snapshot]:
    for play in plays:
        if not isinstance(play, dict):
            continue
        period = play.get("period")
        home, away = _count(play.get("homeScore")), _count(play.get("awayScore"))
        number = _count(period.get("number")) if isinstance(period, dict) else None
        if home is not None and away is not None and number is not None:
            yield Snapshot(home, away, number, _clock(play.get("clock")))


def _count(raw: object) -> int | None:
    """A score or period: ESPN writes ints here, and strings in other places."""
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 1000:
        return raw
    if isinstance(raw, str) and raw.isdigit() and len(raw) <= 3:
        return int(raw)
    return None


def _clock(raw: object) -> float | None:
    if not isinstance(raw, dict):
        return None
    value = raw.get("value")
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    shown = raw.get("displayValue")
    if isinstance(shown, str):
        if found := _CLOCK.match(shown):
            return int(found[1]) * 60.0 + int(found[2])
        if found := _MINUTE.match(shown):
            return (int(found[1]) + int(found[2] or 0)) * 60.0
    return None


def _home_won(competitors: list[Any], last: Snapshot) -> bool | None:
    for competitor in competitors:
        if isinstance(competitor, dict) and competitor.get("homeAway") == "home":
            winner = competitor.get("winner")
            if isinstance(winner, bool):
                return winner
    if last.home_score == last.away_score:
        return None
    return last.home_score > last.away_score
