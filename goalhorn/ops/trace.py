"""``goalhorn trace INTENT_ID`` / ``goalhorn trace --event EVENT_ID``: how far an alert got."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from goalhorn.admin.documents import trace_json
from goalhorn.admin.trace import Trace, intents_of_event, trace
from goalhorn.keys import Keys
from goalhorn.ops.queues import fail, run, settings_or_fail
from goalhorn.ops.remote import API, AdminApi
from goalhorn.redis_client import make_redis
from goalhorn.settings import Settings


def trace_command(
    intent_id: str | None = typer.Argument(None, metavar="[INTENT_ID]", help="The intent to trace."),
    event: str | None = typer.Option(None, "--event", metavar="EVENT_ID", help="Trace every intent of this event."),
    devices: bool = typer.Option(
        False, "--devices", help="Also list each device's delivery marker (scans the Redis keyspace)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    api: str | None = API,
) -> None:
    """How far an alert got: recipients, suppressed, queued, delivered, failed, dead-lettered, timings."""
    if (intent_id is None) == (event is None):
        fail("give an INTENT_ID or --event EVENT_ID (one of them)")
    remote = AdminApi.chosen(api)
    if remote is not None:
        if intent_id is None:
            fail("--event needs direct Redis access (not --api): trace its intents one by one")
        answer = remote.call(
            "GET", "trace/" + urllib.parse.quote(intent_id, safe=""), {"devices": devices}, missing=True
        )
        found, where = answer or [], remote.url
    else:
        settings = settings_or_fail()
        if settings.redis_url is None:
            fail("GOALHORN_REDIS_URL is not set: traces live in Redis")
        found = [trace_json(t) for t in run(_traces(settings, intent_id, event, devices))]
        where = f"namespace {settings.namespace!r}"
    if not found:
        what = f"intent {intent_id!r}" if intent_id else f"event {event!r}"
        typer.echo(f"nothing known of {what} in {where} (traces are kept 72 h)", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(found))
        return
    console = Console()
    for t in found:
        _render(console, t)


async def _traces(settings: Settings, intent_id: str | None, event: str | None, devices: bool) -> list[Trace]:
    redis = make_redis(settings)
    keys = Keys(settings.namespace)
    try:
        ids = [intent_id] if intent_id is not None else await intents_of_event(redis, keys, event or "")
        found = [await trace(redis, keys, i, devices=devices) for i in ids]
        return [t for t in found if t is not None]
    finally:
        await redis.aclose()


def _render(console: Console, t: dict[str, Any]) -> None:
    """A trace document (``trace_json``, or the sidecar's answer) for people."""
    head = f"[bold]intent {t['intent_id']}[/] event {t['event_id']} {t['kind']}"
    if t["priority"] is not None:
        head += f" priority {t['priority']}"
    console.print(head, highlight=False)
    if t["expired_at_fanout"]:
        console.print("  expired before the fanout took it: nobody was sent anything")
    elif t["expanded"]:
        suppressed = ", ".join(f"{r} {n:,}" for r, n in sorted(t["suppressed"].items()) if n) or "none"
        console.print(
            f"  expanded: {t['followers']:,} followers, {t['recipients']:,} devices; suppressed: {suppressed}",
            highlight=False,
        )
        if t.get("topic_messages"):
            console.print(
                f"  FCM topics: {t['topic_messages']:,} topic message(s) for {t['topic_members']:,} subscribed phones, "
                f"{t['recipients']:,} devices per token ({t['topic_members'] + t['recipients']:,} in all)",
                highlight=False,
            )
    else:
        console.print("  not expanded yet (or its expansion was not recorded)")
    table = Table(show_edge=False)
    columns = (
        "provider",
        "batches",
        "queued",
        "topic msgs",
        "sent",
        "failed",
        "invalid",
        "expired",
        "dead",
        "skipped dup.",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "provider" else "right")
    for p in t["providers"].values():
        o = p["outcomes"]
        table.add_row(
            p["platform"],
            str(p["batches_queued"]),
            str(p["devices_queued"]),
            str(p.get("topic_messages_queued", 0)),
            str(o.get("sent", 0)),
            str(o.get("failed", 0)),
            str(o.get("invalid_token", 0)),
            str(o.get("expired", 0)),
            str(o.get("dead_lettered", 0)),
            str(p["other"].get("duplicates_skipped", 0)),
        )
    console.print(table)
    for p in t["providers"].values():
        if p["dead_lettered"]:
            console.print(f"  {p['platform']} dead letters: {_pairs(p['dead_lettered'])}", highlight=False)
        if p["retried"]:
            console.print(f"  {p['platform']} retries: {_pairs(p['retried'])}", highlight=False)
    timings = t["timings_s"]
    if timings:
        console.print("  since the score change: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    if t["devices"] is not None:
        states = {s: sum(1 for v in t["devices"].values() if v == s) for s in ("sent", "inflight")}
        console.print(f"  devices marked: {states['sent']:,} sent, {states['inflight']:,} in flight")


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))


def register(app: typer.Typer) -> None:
    app.command("trace")(trace_command)
