"""Win probability from the score, the period and the clock (docs/win-probability.md).

Two families, chosen per sport and parameterised per league in ``leagues.yaml``:

- **brownian** (basketball, American football): the home margin is Brownian motion (Stern 1994),
  so with lead ``L``, a fraction ``tau`` of regulation left, per-game standard deviation ``sigma``
  and drift ``mu``, ``P(home) = Phi((L + mu * tau) / (sigma * sqrt(tau)))``;
- **poisson** (soccer, hockey, baseball): each side scores as a Poisson process at its rate, so the
  remaining goals are two independent Poisson counts and the result follows from their difference
  (a Skellam distribution); a level score is a draw where the sport has draws, and otherwise goes to
  a sudden-death extra time the home side wins with probability ``rate_home / (rate_home + rate_away)``.

With no prior both sides are equal (``mu = 0``, equal rates), so the probability grows with the lead
and, for the side that leads, with the time elapsed. A pre-game prior (the home side's win
probability before kick-off, e.g. a market's opening price) sets ``mu = sigma * Phi^-1(p)``, or the
split of the goal rate that reproduces it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal

import yaml

from goalhorn.errors import ConfigError
from goalhorn.models import GameState, GameStatus, Sport

_NORMAL = NormalDist()
_PRIOR_BOUND = 1e-6


@dataclass(frozen=True, slots=True)
class LeagueParams:
    sport: Sport
    family: Literal["brownian", "poisson"]
    periods: int
    period_s: float
    clock: Literal["remaining", "elapsed", "none"]
    sigma: float = 13.5
    rate: float = 1.35
    draws: bool = False
    floor_s: float = 0.0

    @property
    def regulation_s(self) -> float:
        return self.periods * self.period_s


@dataclass(frozen=True, slots=True)
class WinProbability:
    """Probabilities of the three results; ``draw`` is 0 where the sport has none."""

    home: float
    draw: float
    away: float


class ParamTable:
    """League parameters, with the sport's defaults for a league not listed."""

    def __init__(self, sports: Mapping[Sport, LeagueParams], leagues: Mapping[str, LeagueParams]) -> None:
        self.sports = dict(sports)
        self.leagues = dict(leagues)

    def lookup(self, league: str, sport: Sport | None = None) -> LeagueParams:
        found = self.leagues.get(league)
        if found is not None:
            return found
        if sport is None:
            try:
                sport = Sport(league)
            except ValueError:
                raise ConfigError(f"unknown league {league!r}: add it to the win-probability parameters") from None
        if sport not in self.sports:
            raise ConfigError(f"no win-probability parameters for {sport.value}")
        return self.sports[sport]

    @classmethod
    def load(cls, path: Path | None = None) -> ParamTable:
        """The packaged ``leagues.yaml``, or another file of the same shape."""
        if path is None:
            text = resources.files("goalhorn.ingest").joinpath("leagues.yaml").read_text()
        else:
            text = path.read_text()
        try:
            raw = yaml.safe_load(text)
            sports = {Sport(name): _params(Sport(name), body) for name, body in raw["sports"].items()}
            leagues = {}
            for name, body in (raw.get("leagues") or {}).items():
                sport = Sport(body["sport"])
                base = sports[sport]
                extra = {k: v for k, v in body.items() if k != "sport"}
                leagues[str(name)] = _params(sport, {**_as_dict(base), **extra})
        except (yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"win-probability parameters: {exc}") from exc
        return cls(sports, leagues)


def _as_dict(params: LeagueParams) -> dict[str, Any]:
    return {f: getattr(params, f) for f in LeagueParams.__dataclass_fields__ if f != "sport"}


def _params(sport: Sport, body: Mapping[str, Any]) -> LeagueParams:
    params = LeagueParams(sport=sport, **body)
    if params.family not in ("brownian", "poisson") or params.clock not in ("remaining", "elapsed", "none"):
        raise ValueError(f"{sport.value}: bad family or clock")
    if params.periods < 1 or params.period_s <= 0 or params.sigma <= 0 or params.rate <= 0:
        raise ValueError(f"{sport.value}: periods, period_s, sigma and rate must be positive")
    return params


def remaining_fraction(params: LeagueParams, period: int, clock_s: float | None, live: bool = True) -> float:
    """The fraction of regulation time left; in overtime, the overtime left over regulation length."""
    total = params.regulation_s
    if params.clock == "none":
        left = (params.periods - period + 0.5) * params.period_s if period >= 1 else total
    elif params.clock == "elapsed":
        if clock_s is None:
            clock_s = (min(period, params.periods) - 0.5) * params.period_s if period >= 1 else 0.0
        left = total - clock_s
    else:
        if period < 1:
            return 1.0
        in_period = params.period_s / 2 if clock_s is None else min(clock_s, params.period_s)
        left = max(0, params.periods - period) * params.period_s + in_period
    if live:
        left = max(left, params.floor_s)
    return min(1.0, max(0.0, left / total))


class WinModel:
    def __init__(self, table: ParamTable | None = None) -> None:
        self.table = table or ParamTable.load()

    def for_state(self, state: GameState, prior: float | None = None) -> WinProbability:
        params = self.table.lookup(state.league, state.sport)
        return self.predict(
            params, state.home_score, state.away_score, state.period, state.clock_s, status=state.status, prior=prior
        )

    def predict(
        self,
        params: LeagueParams,
        home_score: int,
        away_score: int,
        period: int,
        clock_s: float | None,
        *,
        status: GameStatus = GameStatus.LIVE,
        prior: float | None = None,
    ) -> WinProbability:
        """Probability of each result from this score with the time that is left."""
        lead = home_score - away_score
        if status is GameStatus.FINAL:
            tau = 0.0
        elif status is GameStatus.SCHEDULED:
            tau = 1.0
        else:
            tau = remaining_fraction(params, period, clock_s)
        if prior is not None and not 0 < prior < 1:
            raise ValueError("prior must be a probability strictly between 0 and 1")
        if params.family == "brownian":
            return _brownian(params, lead, tau, prior)
        return _poisson(params, lead, tau, prior)


def _settled(lead: int, draws: bool, tie_home: float) -> WinProbability:
    if lead > 0:
        return WinProbability(1.0, 0.0, 0.0)
    if lead < 0:
        return WinProbability(0.0, 0.0, 1.0)
    if draws:
        return WinProbability(0.0, 1.0, 0.0)
    return WinProbability(tie_home, 0.0, 1.0 - tie_home)


def _brownian(params: LeagueParams, lead: int, tau: float, prior: float | None) -> WinProbability:
    mu = 0.0 if prior is None else params.sigma * _NORMAL.inv_cdf(min(max(prior, _PRIOR_BOUND), 1 - _PRIOR_BOUND))
    if tau <= 0:
        return _settled(lead, False, 0.5)
    home = _NORMAL.cdf((lead + mu * tau) / (params.sigma * math.sqrt(tau)))
    return WinProbability(home, 0.0, 1.0 - home)


def _pmf(mean: float) -> list[float]:
    """Poisson probabilities of 0, 1, 2, ... goals, far enough into the tail to sum to ~1."""
    if mean <= 0:
        return [1.0]
    probs = [math.exp(-mean)]
    k = 0
    while (k < mean or probs[-1] > 1e-12) and k < 200:
        k += 1
        probs.append(probs[-1] * mean / k)
    return probs


def _race(lead: int, home_mean: float, away_mean: float) -> tuple[float, float, float]:
    """P(home ahead), P(level), P(away ahead) at the end, with ``lead`` now and these goals to come."""
    home_goals, away_goals = _pmf(home_mean), _pmf(away_mean)
    cdf, total = [], 0.0
    for p in away_goals:
        total += p
        cdf.append(total)
    win = draw = 0.0
    for h, p in enumerate(home_goals):
        ahead_by = lead + h  # the home side wins when the away side scores fewer than this
        if ahead_by > 0:
            win += p * cdf[min(ahead_by - 1, len(cdf) - 1)]
        if 0 <= ahead_by < len(away_goals):
            draw += p * away_goals[ahead_by]
    win, draw = min(win, 1.0), min(draw, 1.0)
    return win, draw, max(0.0, 1.0 - win - draw)


def _poisson(params: LeagueParams, lead: int, tau: float, prior: float | None) -> WinProbability:
    share = 0.5 if prior is None else _share_for(params, prior)
    home_rate, away_rate = 2 * params.rate * share, 2 * params.rate * (1 - share)
    tie_home = home_rate / (home_rate + away_rate)
    if tau <= 0:
        return _settled(lead, params.draws, tie_home)
    win, draw, loss = _race(lead, home_rate * tau, away_rate * tau)
    if params.draws:
        return WinProbability(win, draw, loss)
    return WinProbability(win + draw * tie_home, 0.0, loss + draw * (1 - tie_home))


def _share_for(params: LeagueParams, prior: float) -> float:
    """The home side's share of the goals that makes its pre-game win probability ``prior``."""
    low, high = 0.01, 0.99
    for _ in range(50):
        mid = (low + high) / 2
        home = _pregame(params, mid)
        if home < prior:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _pregame(params: LeagueParams, share: float) -> float:
    home_rate, away_rate = 2 * params.rate * share, 2 * params.rate * (1 - share)
    win, draw, _ = _race(0, home_rate, away_rate)
    return win if params.draws else win + draw * home_rate / (home_rate + away_rate)
