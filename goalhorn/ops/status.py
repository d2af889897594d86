"""``goalhorn status [--watch]``: one screen for a match night."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import redis.exceptions
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from goalhorn.admin.documents import status_json
from goalhorn.admin.status import STAGES, status
from goalhorn.errors import GoalhornError
from goalhorn.ops.queues import on_ctrl_c, queue_rows, run, settings_or_fail, stats_table
from goalhorn.ops.remote import API, AdminApi
from goalhorn.settings import Settings


def status_command(
    watch: bool = typer.Option(False, "--watch", help="Refresh until Ctrl-C."),
    every: float = typer.Option(2.0, "--every", min=0.5, help="Seconds between refreshes with --watch."),
    interval: float = typer.Option(1.0, "--interval", min=0.2, max=60, help="Seconds throughput is measured over."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (once)."),
    api: str | None = API,
) -> None:
    """One screen for a match night: throughput, latency, queues, pauses, breakers, dead letters, games."""
    remote = AdminApi.chosen(api)
    if remote is not None:
        if as_json or not watch:
            _show(remote.call("GET", "status", {"interval": interval}), as_json)
            return
        with contextlib.suppress(KeyboardInterrupt), Live(Text("measuring..."), auto_refresh=False) as live:
            while True:
                live.update(render(remote.call("GET", "status", {"interval": interval})), refresh=True)
                time.sleep(max(0.0, every - interval))
        return
    settings = settings_or_fail()
    if as_json or not watch:
        _show(status_json(run(status(settings, interval))), as_json)
        return
    run(_watch(settings, interval, every))


def _show(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        Console().print(render(doc))


async def _watch(settings: Settings, interval: float, every: float) -> None:
    stop = asyncio.Event()
    on_ctrl_c(stop)
    with Live(Text("measuring..."), auto_refresh=False) as live:
        while not stop.is_set():
            try:
                live.update(render(status_json(await status(settings, interval))), refresh=True)
            except (GoalhornError, redis.exceptions.RedisError) as exc:  # shown, and tried again
                live.update(Text(f"error: {type(exc).__name__}: {exc}", style="red"), refresh=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, every - interval))


def render(s: dict[str, Any]) -> Group:
    """The screen of a status document (``status_json``, or the sidecar's answer)."""
    parts: list[Any] = []
    flow = Table(title=f"goalhorn status - namespace {s['namespace']} (rates over {s['interval_s']:.1f} s)")
    for column in ("stage", "per second", "total"):
        flow.add_column(column, justify="left" if column == "stage" else "right")
    for label in [*STAGES, *(k for k in s["rates"] if k.startswith("sent:"))]:
        flow.add_row(label, f"{s['rates'][label]:,.1f}", f"{s['totals'][label]:,}")
    parts.append(flow)
    labels = {
        "ingest": "score change to intent",
        "fanout": "intent to expansion",
        "delivery": "score change to delivery",
    }
    for stage, label in labels.items():
        p50, p99 = s["latency_ms"][stage]["p50"], s["latency_ms"][stage]["p99"]
        latency = f"p50 {p50:,.0f} ms, p99 {p99:,.0f} ms" if p50 is not None and p99 is not None else "no samples yet"
        parts.append(Text(f"latency {stage} ({label}): {latency}"))
    if s["queues"] is None:
        parts.append(Text("queues: GOALHORN_AMQP_URL is not set", style="dim"))
    else:
        parts.append(stats_table(s["namespace"], [q for q in queue_rows(s["queues"]) if q.exists]))
    if s["paused"]:
        for platform, flag in s["paused"].items():
            why = f" ({flag.get('reason')})" if flag.get("reason") else ""
            parts.append(Text(f"PAUSED {platform} since {flag.get('since')} by {flag.get('by')}{why}", style="yellow"))
    else:
        parts.append(Text("paused providers: none"))
    if s["breakers"]:
        for b in s["breakers"]:
            probe = f", next probe in {b['probe_in_s']:.0f} s" if b["probe_in_s"] else ""
            parts.append(Text(f"breaker {b['circuit']} {b['state']} ({b['failures']} failures{probe})", style="red"))
    else:
        parts.append(Text("open breakers: none"))
    if s["dead_letters_last_hour"]:
        summary = ", ".join(
            f"{g['code']} {g['platform']} {g['devices']:,} devices" for g in s["dead_letters_last_hour"]
        )
        parts.append(Text(f"dead letters in the last hour: {summary}", style="red"))
    else:
        parts.append(Text("dead letters in the last hour: none"))
    if s["oldest_live_state_s"] is not None:
        age, game = s["oldest_live_state_s"], s["oldest_live_game"]
        parts.append(Text(f"live games: {s['live_games']}, oldest state {age:,.0f} s old ({game})"))
    else:
        parts.append(Text("live games: none"))
    return Group(*parts)


def register(app: typer.Typer) -> None:
    app.command("status")(status_command)
