"""``goalhorn segments``: validate rules files and preview the audience a rule would reach."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from goalhorn.catalog import Catalog, load_catalog
from goalhorn.catalog.located import CatalogInvalid
from goalhorn.intents.rules import intents_for
from goalhorn.keys import PLATFORMS
from goalhorn.models import GameEvent, utcnow
from goalhorn.preferences.eligibility import REASONS
from goalhorn.redis_client import make_redis
from goalhorn.settings import Settings, load_settings

app = typer.Typer(help="Validate and preview alert rules and segments.", no_args_is_help=True)


@app.command()
def validate(files: Annotated[list[Path], typer.Argument(help="Rules files (YAML) to check.")]) -> None:
    """Check rules files; print FILE:LINE: problem for each problem and exit 1 if there are any."""
    bad = False
    for path in files:
        try:
            load_catalog(path)
        except CatalogInvalid as exc:
            bad = True
            for line in exc.problems:
                typer.echo(line, err=True)
        else:
            typer.echo(f"{path}: ok")
    raise typer.Exit(1 if bad else 0)


@app.command()
def preview(
    file: Annotated[Path, typer.Argument(help="Rules file (YAML).")],
    event: str = typer.Option(..., "--event", help="A GameEvent as JSON, or @PATH of a file holding one."),
    real: bool = typer.Option(False, "--real", help="Read the audience from Redis on 127.0.0.1."),
) -> None:
    """Print the audience each rule would reach for an event, without sending or counting anything."""
    try:
        catalog = load_catalog(file)
    except CatalogInvalid as exc:
        for line in exc.problems:
            typer.echo(line, err=True)
        raise typer.Exit(1) from None
    body = Path(event[1:]).read_text() if event.startswith("@") else event
    try:
        parsed = GameEvent.model_validate_json(body)
    except ValidationError as exc:
        typer.echo(f"--event is not a valid GameEvent: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}", err=True)
        raise typer.Exit(2) from None
    settings = load_settings()
    if real:
        settings = settings.with_real_services()
    asyncio.run(_preview(settings, catalog, parsed, Console()))


async def _preview(settings: Settings, catalog: Catalog, event: GameEvent, console: Console) -> None:
    from goalhorn.app.fanout import make_expander  # the expander and numpy: not in every command's process
    from goalhorn.segmenter.expander import ExpansionStats

    redis = make_redis(settings)
    try:
        expander = make_expander(settings, redis, lambda: catalog)
        intents = intents_for(event, catalog.rules, utcnow())
        if not intents:
            console.print(f"no rule matches a {event.kind} event")
            return
        for intent in intents:
            stats = ExpansionStats()
            per_platform: Counter[str] = Counter()
            async for batch in expander.expand(intent, stats, dry_run=True):
                per_platform[batch.platform] += batch.size
            console.print(f"[bold]{intent.template}[/] priority {intent.priority} -> {', '.join(intent.segments)}")
            console.print("  recipients: " + ", ".join(f"{p} {per_platform[p]:,}" for p in PLATFORMS))
            console.print(f"  users: {stats.users:,} ({stats.users_without_devices:,} without a device)")
            console.print("  suppressed: " + ", ".join(f"{r} {stats.suppressed[r]:,}" for r in REASONS))
    finally:
        await redis.aclose()
