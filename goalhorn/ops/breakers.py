"""``goalhorn breakers [reset ID]``: every circuit breaker the workers share, and closing one."""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime

import typer
from rich.console import Console
from rich.table import Table

from goalhorn.admin.breakers import BreakerView, read_board, reset
from goalhorn.admin.documents import breakers_json
from goalhorn.keys import Keys
from goalhorn.ops.queues import fail, run, settings_or_fail
from goalhorn.ops.remote import API, AdminApi
from goalhorn.redis_client import make_redis
from goalhorn.settings import Settings

app = typer.Typer(
    help="Every circuit breaker (provider credential, webhook endpoint) across all workers; "
    "'goalhorn breakers reset ID' closes one.",
    invoke_without_command=True,
)


def _redis_settings() -> Settings:
    settings = settings_or_fail()
    if settings.redis_url is None:
        fail("GOALHORN_REDIS_URL is not set: the workers share their breakers through Redis")
    return settings


async def _board(settings: Settings) -> list[BreakerView]:
    redis = make_redis(settings)
    try:
        return await read_board(redis, Keys(settings.namespace))
    finally:
        await redis.aclose()


@app.callback()
def breakers(
    ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON."), api: str | None = API
) -> None:
    """List every circuit: state, consecutive failures, seconds until the next probe, last change."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = api
        return
    remote = AdminApi.chosen(api)
    if remote is not None:
        views, where = remote.call("GET", "breakers"), remote.url
    else:
        settings = _redis_settings()
        views, where = breakers_json(run(_board(settings))), f"namespace {settings.namespace}"
    if as_json:
        typer.echo(json.dumps(views))
        return
    table = Table(title=f"circuit breakers of {where}")
    for column in ("circuit", "state", "failures", "next probe", "changed", "by"):
        table.add_column(column, justify="right" if column in ("failures", "next probe") else "left")
    for v in views:
        style = {"open": "red", "half_open": "yellow"}.get(v["state"])
        probe = f"{v['probe_in_s']:.1f}s" if v["state"] == "open" else ""
        changed = datetime.fromtimestamp(v["changed_at"], UTC).strftime("%H:%M:%S") if v["changed_at"] else ""
        table.add_row(v["circuit"], v["state"], str(v["failures"]), probe, changed, v["by"], style=style)
    Console().print(table)
    if not views:
        typer.echo("no circuit has been used yet")


@app.command("reset")
def reset_command(
    ctx: typer.Context,
    circuit: str = typer.Argument(..., metavar="ID", help="A circuit as listed, e.g. fcm:my-project."),
    api: str | None = API,
) -> None:
    """Close one circuit on every worker (each takes it at its next sync, within about a second)."""
    remote = AdminApi.chosen(api or ctx.obj)
    if remote is not None:
        path = "breakers/" + urllib.parse.quote(circuit, safe="") + "/reset"
        if remote.call("POST", path, missing=True) is None:
            fail(f"no circuit {circuit!r} behind {remote.url}: 'goalhorn breakers' lists them")
        typer.echo(f"closed {circuit}")
        return
    settings = _redis_settings()

    async def go() -> bool:
        redis = make_redis(settings)
        try:
            return await reset(redis, Keys(settings.namespace), circuit)
        finally:
            await redis.aclose()

    if not run(go()):
        fail(f"no circuit {circuit!r} in namespace {settings.namespace!r}: 'goalhorn breakers' lists them")
    typer.echo(f"closed {circuit}")
