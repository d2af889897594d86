"""``goalhorn dlq``: list, show and replay goalhorn's dead letters (the Redis stream)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from goalhorn.admin.dlq import Filter, ReplayReport, list_groups, replay, show
from goalhorn.admin.documents import entries_json, listing_json, replay_json
from goalhorn.errors import GoalhornError
from goalhorn.keys import Keys
from goalhorn.models import DeadLetterCode
from goalhorn.ops.queues import fail, run, settings_or_fail
from goalhorn.ops.remote import API, AdminApi
from goalhorn.redis_client import Redis, make_redis
from goalhorn.settings import Settings

app = typer.Typer(help="List, show and replay the dead letters (batches and devices no try delivered).")
T = TypeVar("T")
CODES = ", ".join(code.value for code in DeadLetterCode)
PROVIDER = typer.Option(None, "--provider", help="fcm, apns or webhook.")
REASON = typer.Option(None, "--reason", help=f"A dead-letter code: {CODES}.")
SINCE = typer.Option(None, "--since", help="From this long ago (30m, 2h, 1d) or an ISO time with its zone.")
JSON = typer.Option(False, "--json", help="Print JSON.")


def _checked(provider: str | None, reason: str | None, since: str | None) -> dict[str, str | None]:
    """The filters for the sidecar, refused here as they would be there."""
    try:
        Filter.parse(provider, reason, since)
    except GoalhornError as exc:
        fail(str(exc))
    return {"provider": provider, "reason": reason, "since": since}


def _setup(provider: str | None, reason: str | None, since: str | None) -> tuple[Settings, Filter]:
    settings = settings_or_fail()
    if settings.redis_url is None:
        fail("GOALHORN_REDIS_URL is not set: the dead letters live in Redis")
    try:
        return settings, Filter.parse(provider, reason, since)
    except GoalhornError as exc:
        fail(str(exc))


def _with_redis(settings: Settings, call: Callable[[Redis], Awaitable[T]]) -> T:
    async def go() -> T:
        redis = make_redis(settings)
        try:
            return await call(redis)
        finally:
            await redis.aclose()

    return run(go())


@app.command("list")
def list_command(
    provider: str | None = PROVIDER,
    reason: str | None = REASON,
    since: str | None = SINCE,
    as_json: bool = JSON,
    api: str | None = API,
) -> None:
    """Dead letters grouped by code and provider: entries, devices, first and last."""
    remote = AdminApi.chosen(api)
    if remote is not None:
        listing = remote.call("GET", "dlq", _checked(provider, reason, since))
        of = remote.url
    else:
        settings, where = _setup(provider, reason, since)
        found = _with_redis(settings, lambda redis: list_groups(redis, Keys(settings.namespace), where))
        listing, of = listing_json(found), f"namespace {settings.namespace}"
    if as_json:
        typer.echo(json.dumps(listing))
        return
    table = Table(title=f"dead letters of {of}")
    for column in ("code", "provider", "entries", "devices", "first", "last", "e.g."):
        table.add_column(column, justify="right" if column in ("entries", "devices") else "left")
    for g in listing["groups"]:
        first, last = _hm(g["first"]), _hm(g["last"])
        table.add_row(
            g["code"], g["platform"], f"{g['entries']:,}", f"{g['devices']:,}", first, last, g["example"][:60]
        )
    console = Console()
    console.print(table)
    if listing["unreadable"]:
        console.print(f"{len(listing['unreadable'])} entries of an older version (not listed)", markup=False)


@app.command("show")
def show_command(
    provider: str | None = PROVIDER,
    reason: str | None = REASON,
    since: str | None = SINCE,
    limit: int = typer.Option(20, "--limit", min=1, help="The newest N entries."),
    as_json: bool = JSON,
) -> None:
    """The matching entries one by one, with their reason and payload."""
    settings, where = _setup(provider, reason, since)
    found = _with_redis(settings, lambda redis: show(redis, Keys(settings.namespace), where, limit))
    if as_json:
        typer.echo(json.dumps(entries_json(found)))
        return
    console = Console()
    for entry in found:
        console.print(
            f"[bold]{entry.entry_id}[/] {_iso(entry.at)} {entry.code} {entry.platform} "
            f"intent={entry.intent_id or '?'} batch={entry.batch_id or '?'} devices={entry.devices}",
            highlight=False,
        )
        console.print(f"  {entry.detail}", markup=False, highlight=False)
        console.print(f"  {entry.kind}: {entry.payload[:300]}", markup=False, highlight=False)


@app.command("replay")
def replay_command(
    provider: str | None = PROVIDER,
    reason: str | None = REASON,
    since: str | None = SINCE,
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be replayed, replay nothing."),
    as_json: bool = JSON,
    api: str | None = API,
) -> None:
    """Put the matching batches back on their delivery queues (markers skip devices already sent)."""
    remote = AdminApi.chosen(api)
    if remote is not None:
        report = remote.call("POST", "dlq/replay", {**_checked(provider, reason, since), "dry_run": dry_run})
    else:
        settings, where = _setup(provider, reason, since)
        done: ReplayReport = _with_redis(settings, lambda redis: replay(settings, redis, where, dry_run=dry_run))
        report = replay_json(done)
    if as_json:
        typer.echo(json.dumps(report))
        return
    verb = "would replay" if dry_run else "replayed"
    typer.echo(f"{verb} {report['replayed']:,} entries ({report['devices']:,} devices)")
    if report["expired"]:
        typer.echo(f"{report['expired']:,} of them carry an expired intent: the workers drop them, sending nothing")
    for entry_id, why in report["skipped"]:
        typer.echo(f"left {entry_id}: {why}")


def _iso(when: Any) -> str:
    return when.isoformat() if when is not None else ""


def _hm(when: str) -> str:
    return datetime.fromisoformat(when).strftime("%Y-%m-%d %H:%M:%S") if when else ""
