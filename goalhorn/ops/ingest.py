"""``goalhorn ingest``: run the ESPN pollers and the market stream from settings."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from goalhorn.errors import ConfigError
from goalhorn.settings import load_settings


def ingest(
    duration: Annotated[
        float | None, typer.Option("--duration", min=0.0, help="Stop after this many seconds (default: run until ^C).")
    ] = None,
    real: Annotated[
        bool, typer.Option("--real", help="Use RabbitMQ and Redis on 127.0.0.1 where no URL is configured.")
    ] = False,
) -> None:
    """Poll ESPN scoreboards (GOALHORN_ESPN_LEAGUES) and stream the market book (GOALHORN_MARKET_MAP_PATH)."""
    from goalhorn.app.ingest import run_ingest

    settings = load_settings()
    if real:
        settings = settings.with_real_services()
    try:
        summary = asyncio.run(run_ingest(settings, duration_s=duration))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        return
    typer.echo(
        f"polls: {summary.polls} (failed: {sum(summary.poll_failures.values())})  "
        f"market connections: {summary.connections}  states: {summary.states_written}  "
        f"events: {summary.events}  edge signals: {summary.signals}  intents: {summary.intents}  "
        f"rejected: {summary.rejected}"
    )
