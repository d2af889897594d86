"""``goalhorn model``: the win-probability model from the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from goalhorn.errors import ConfigError, PayloadRejected
from goalhorn.ingest.calibration import GameRecord, calibrate, parse_summary
from goalhorn.ingest.espn import sport_of
from goalhorn.ingest.winprob import ParamTable, WinModel
from goalhorn.models import GameStatus

app = typer.Typer(help="Win-probability model: evaluate and calibrate.", no_args_is_help=True, add_completion=False)

_CLOCK = re.compile(r"^(\d{1,3}):(\d{2})$")
ParamsOption = Annotated[
    Path | None,
    typer.Option("--params", exists=True, dir_okay=False, help="League parameters YAML (default: packaged)."),
]


def _clock(text: str | None) -> float | None:
    if text is None:
        return None
    if found := _CLOCK.match(text):
        return int(found[1]) * 60.0 + int(found[2])
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither seconds nor M:SS") from None
    if value < 0:
        raise typer.BadParameter("the clock cannot be negative")
    return value


@app.command()
def wp(
    sport: Annotated[str, typer.Option("--sport", help="League slug (nba, nfl, nhl, usa.1, ...) or sport name.")],
    home_score: Annotated[int, typer.Option("--home-score", min=0)],
    away_score: Annotated[int, typer.Option("--away-score", min=0)],
    period: Annotated[int, typer.Option("--period", min=0, help="Quarter, half, period or inning.")],
    clock: Annotated[
        str | None,
        typer.Option("--clock", help="As the feed reads it: seconds (or M:SS) left in the period; soccer: elapsed."),
    ] = None,
    prior: Annotated[
        float | None, typer.Option("--prior", min=0.0, max=1.0, help="Pre-game home win probability.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print home, draw and away as JSON.")] = False,
    params: ParamsOption = None,
) -> None:
    """Print the home side's win probability for a live score."""
    try:
        model = WinModel(ParamTable.load(params))
        league = model.table.lookup(sport, sport_of(sport))
        seconds = _clock(clock)
        result = model.predict(league, home_score, away_score, period, seconds, status=GameStatus.LIVE, prior=prior)
    except (ConfigError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({"home": result.home, "draw": result.draw, "away": result.away}))
    else:
        typer.echo(f"{result.home:.4f}")


@app.command("calibrate")
def calibrate_cmd(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="ESPN summary JSON files.")],
    league: Annotated[str | None, typer.Option("--league", help="League slug when the files do not name it.")] = None,
    bins: Annotated[int, typer.Option("--bins", min=2, max=50)] = 10,
    params: ParamsOption = None,
) -> None:
    """Print the Brier score and a reliability table of the model over ESPN play-by-play files."""
    model = WinModel(ParamTable.load(params))
    records: list[GameRecord] = []
    for path in files:
        try:
            records.append(parse_summary(path.read_bytes(), league))
        except PayloadRejected as exc:
            typer.echo(f"skipped {path}: {exc.reason} {exc.detail}".rstrip(), err=True)
    try:
        result = calibrate(records, model, bins)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if result.brier is None:
        typer.echo("no snapshots to score", err=True)
        raise typer.Exit(1)
    typer.echo(f"games: {result.games}  snapshots: {result.n}")
    typer.echo(f"brier: {result.brier:.4f}")
    typer.echo(f"{'predicted':>11} {'snapshots':>9} {'mean p':>7} {'home won':>8}")
    for low, high, count, mean, rate in result.table():
        typer.echo(f"{low:4.2f}-{high:4.2f}  {count:9d} {mean:7.3f} {rate:8.3f}")
