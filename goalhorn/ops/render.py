"""Rendering pipeline figures for people: the demo summary table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from goalhorn.demo.night import NightReport
from goalhorn.preferences.eligibility import REASONS

OUTCOMES = ("sent", "invalid_token", "failed", "expired", "suppressed", "dead_lettered")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def render_night(report: NightReport, backend: str, console: Console) -> None:
    c = report.counters
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column(justify="right")
    rows = [
        ("backend", backend),
        ("snapshots replayed", f"{report.snapshots:,} ({report.games} games)"),
        ("audience", f"{report.users:,} users, {report.devices:,} devices"),
        ("events", f"{c.get('events'):,} (+{c.get('events_duplicate'):,} duplicates dropped)"),
        ("intents", f"{c.get('intents'):,}"),
        (
            "recipients",
            f"{c.get('recipients'):,} devices of {c.get('followers'):,} followers"
            f" ({c.get('followers_without_devices'):,} without a device)",
        ),
        ("batches", f"{c.get('batches_published'):,} ({c.get('retries'):,} device retries)"),
        ("duplicates skipped", f"{c.get('duplicates_skipped'):,} (already delivered)"),
        (
            "suppressed by preferences",
            ", ".join(f"{c.get('suppressed:' + reason):,} {reason.replace('_', ' ')}" for reason in REASONS),
        ),
        ("dead letters", f"{c.get('dead_letters'):,}"),
        ("webhooks verified by receiver", f"{report.webhooks_received:,}"),
        (
            "phone pushes",
            "console (dry run)"
            if report.pushes_received is None
            else f"{report.pushes_received:,} accepted by the sandbox FCM/APNs servers",
        ),
        ("latency score change -> delivery", f"p50 {_ms(c.percentile(50))}, p99 {_ms(c.percentile(99))}"),
        ("wall time", f"{report.elapsed_s:.1f} s"),
    ]
    for name, value in rows:
        head.add_row(name, value)
    console.print(head)

    table = Table(title="deliveries by provider and outcome")
    table.add_column("provider")
    for outcome in OUTCOMES:
        table.add_column(outcome, justify="right")
    by = c.deliveries()
    for platform in sorted({p for p, _ in by}):
        table.add_row(platform, *(f"{by.get((platform, o), 0):,}" for o in OUTCOMES))
    console.print(table)
