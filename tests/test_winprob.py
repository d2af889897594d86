from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from goalhorn.errors import ConfigError
from goalhorn.ingest.calibration import calibrate, parse_summary
from goalhorn.ingest.winprob import ParamTable, WinModel, remaining_fraction
from goalhorn.models import GameStatus, Sport
from goalhorn.ops.cli import app
from tests.feeds import FIXTURES, fixture

MODEL = WinModel()
LEAGUES = ["nba", "wnba", "mens-college-basketball", "nfl", "college-football", "nhl", "mlb", "usa.1", "soccer"]
runner = CliRunner()


def home(league: str, lead: int, period: int, clock: float | None, prior: float | None = None) -> float:
    params = MODEL.table.lookup(league)
    return MODEL.predict(params, 50 + max(lead, 0), 50 + max(-lead, 0), period, clock, prior=prior).home


def moment(league: str, step: int) -> tuple[int, float | None]:
    """The ``step``-th of 40 evenly spaced moments of regulation as (period, clock) in the feed's terms."""
    params = MODEL.table.lookup(league)
    elapsed = params.regulation_s * step / 40
    if params.clock == "elapsed":
        return min(params.periods, int(elapsed // params.period_s) + 1), elapsed
    period = min(params.periods, int(elapsed // params.period_s) + 1)
    if params.clock == "none":
        return period, None
    return period, params.period_s * period - elapsed


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(LEAGUES), st.integers(-30, 30), st.integers(0, 39))
def test_more_lead_never_lowers_the_home_win_probability(league: str, lead: int, step: int) -> None:
    period, clock = moment(league, step)
    assert home(league, lead + 1, period, clock) >= home(league, lead, period, clock) - 1e-12


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(LEAGUES), st.integers(1, 30), st.integers(0, 38))
def test_while_leading_time_running_out_never_lowers_the_win_probability(league: str, lead: int, step: int) -> None:
    earlier, later = moment(league, step), moment(league, step + 1)
    assert home(league, lead, *later) >= home(league, lead, *earlier) - 1e-12
    assert 1 - home(league, -lead, *later) >= 1 - home(league, -lead, *earlier) - 1e-12


def test_known_values_and_shapes() -> None:
    nba = MODEL.table.lookup("nba")
    assert MODEL.predict(nba, 50, 50, 2, 0.0).home == pytest.approx(0.5)
    assert MODEL.predict(nba, 100, 98, 4, 120.0).home == pytest.approx(0.766, abs=0.001)
    assert MODEL.predict(nba, 0, 0, 0, None, status=GameStatus.SCHEDULED, prior=0.7).home == pytest.approx(0.7)
    assert MODEL.predict(nba, 99, 98, 4, 0.0, status=GameStatus.FINAL).home == 1.0
    soccer = MODEL.table.lookup("usa.1")
    level = MODEL.predict(soccer, 0, 0, 1, 0.0)
    assert level.home == pytest.approx(level.away)
    assert 0.2 < level.draw < 0.35
    assert level.home + level.draw + level.away == pytest.approx(1.0)
    assert MODEL.predict(soccer, 1, 1, 2, 6000.0, status=GameStatus.FINAL).draw == 1.0
    nhl = MODEL.table.lookup("nhl")
    assert MODEL.predict(nhl, 2, 2, 3, 0.0).draw == 0.0
    assert MODEL.predict(nhl, 2, 2, 3, 0.0).home == pytest.approx(0.5)
    favoured = MODEL.predict(soccer, 0, 0, 0, None, status=GameStatus.SCHEDULED, prior=0.6)
    assert favoured.home == pytest.approx(0.6, abs=1e-3)


def test_overtime_and_stoppage_time_are_read_as_feeds_write_them() -> None:
    nhl, soccer = MODEL.table.lookup("nhl"), MODEL.table.lookup("usa.1")
    assert remaining_fraction(nhl, 4, 300.0) == pytest.approx(300 / 3600)
    assert remaining_fraction(soccer, 2, 95 * 60.0) == pytest.approx(60 / 5400)
    assert remaining_fraction(soccer, 1, 2700.0) == pytest.approx(0.5)


def test_unknown_leagues_fall_back_to_their_sport_or_fail_clearly(tmp_path) -> None:
    assert MODEL.table.lookup("ger.1", Sport.SOCCER).rate == 1.35
    with pytest.raises(ConfigError, match="unknown league"):
        MODEL.table.lookup("xfl")
    bad = tmp_path / "params.yaml"
    bad.write_text("sports:\n  basketball: {family: gaussian, periods: 4, period_s: 720, clock: remaining}\n")
    with pytest.raises(ConfigError):
        ParamTable.load(bad)


def test_wp_command_prints_the_home_probability() -> None:
    args = ["model", "wp", "--sport", "nba", "--home-score", "100", "--away-score", "98", "--period", "4"]
    result = runner.invoke(app, [*args, "--clock", "120"])
    assert result.exit_code == 0
    assert result.stdout.strip() == "0.7660"
    assert runner.invoke(app, [*args, "--clock", "2:00"]).stdout == result.stdout
    assert runner.invoke(app, ["model", "wp", "--sport", "xfl", *args[3:]]).exit_code == 2


def test_calibration_over_espn_summaries() -> None:
    records = [parse_summary(fixture(f"espn/summary_nba_{name}.json"), "nba") for name in ("home_win", "away_win")]
    assert [r.home_won for r in records] == [True, False]
    assert len(records[0].snapshots) == 10
    result = calibrate(records, MODEL)
    expected = []
    for record in records:
        for s in record.snapshots:
            p = MODEL.predict(MODEL.table.lookup("nba"), s.home_score, s.away_score, s.period, s.clock_s).home
            expected.append((p - record.home_won) ** 2)
    assert result.brier == pytest.approx(sum(expected) / len(expected))
    assert sum(count for _, _, count, _, _ in result.table()) == 19
    files = [str(FIXTURES / f"espn/summary_nba_{name}.json") for name in ("home_win", "away_win")]
    out = runner.invoke(app, ["model", "calibrate", "--league", "nba", *files])
    assert out.exit_code == 0
    assert f"brier: {result.brier:.4f}" in out.stdout
    assert "snapshots: 19" in out.stdout
