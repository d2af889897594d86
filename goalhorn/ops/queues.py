"""``goalhorn queues``: stats, drain, load and purge goalhorn's RabbitMQ queues."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections.abc import Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import aiormq.exceptions
import redis.exceptions
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from goalhorn.admin.documents import queues_json
from goalhorn.admin.drain import DrainReport, drain, load
from goalhorn.admin.queues import QueueKind, QueueStats, purge, queue_stats
from goalhorn.admin.where import Where
from goalhorn.errors import GoalhornError
from goalhorn.settings import Settings, load_settings

app = typer.Typer(
    help="See, drain, load and purge goalhorn's RabbitMQ queues (intents, delivery, .DQ delay, .XQ dead).",
    no_args_is_help=True,
)
T = TypeVar("T")


def fail(message: str) -> NoReturn:
    for line in message.splitlines():
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(2)


def settings_or_fail() -> Settings:
    try:
        return load_settings()
    except GoalhornError as exc:
        fail(str(exc))


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a library call; its errors (bad input, services that do not answer) exit 2 with the message."""
    try:
        return asyncio.run(coroutine)
    except GoalhornError as exc:
        fail(str(exc))
    except redis.exceptions.RedisError as exc:
        fail(f"Redis does not answer or refused ({type(exc).__name__}: {exc}); check GOALHORN_REDIS_URL")
    except aiormq.exceptions.AMQPError as exc:
        fail(f"RabbitMQ failed ({type(exc).__name__}: {exc}); check GOALHORN_AMQP_URL and run the command again")
    except OSError as exc:
        fail(f"{exc.filename or ''}: {exc.strerror or exc}" if exc.filename else str(exc))


def on_ctrl_c(stop: asyncio.Event) -> None:
    """Ctrl-C sets ``stop`` instead of raising, so the work in hand finishes (only the main thread
    can take signals: elsewhere, as when called in-process by tests, Ctrl-C keeps its default)."""
    if threading.current_thread() is threading.main_thread():
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


@app.command("stats")
def stats(
    peek: bool = typer.Option(
        False, "--peek", help="Read each head message's age: take it and put it straight back (marked redelivered)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per queue."),
    api: str | None = typer.Option(
        None, "--api", metavar="URL", help="Through the sidecar at URL (GOALHORN_ADMIN_API_URL), with an admin key."
    ),
) -> None:
    """Every queue of the namespace: ready, unacked, consumers, head message age (? = unknown here)."""
    from goalhorn.ops.remote import AdminApi  # it uses this module's fail()

    remote = AdminApi.chosen(api)
    if remote is not None:
        if peek:
            fail("--peek needs direct RabbitMQ access (not --api)")
        docs = remote.call("GET", "queues")
        namespace = str(docs[0]["name"]).split(".")[0] if docs else ""  # a namespace has no dots
    else:
        settings = settings_or_fail()
        docs = queues_json(run(queue_stats(settings, peek=peek)))
        namespace = settings.namespace
    if as_json:
        typer.echo(json.dumps(docs))
        return
    Console().print(stats_table(namespace, queue_rows(docs)))


def queue_rows(docs: list[dict[str, Any]]) -> list[QueueStats]:
    """The rows of a queues document (``queues_json``, or the sidecar's answer)."""
    return [QueueStats(**{**d, "kind": QueueKind(d["kind"])}) for d in docs]


def stats_table(namespace: str, rows: list[QueueStats]) -> Table:
    table = Table(title=f"queues of namespace {namespace}")
    for column in ("queue", "kind", "ready", "unacked", "consumers", "head age", "paused"):
        table.add_column(column, justify="left" if column in ("queue", "kind") else "right", no_wrap=True)
    for row in rows:
        name = row.name.removeprefix(namespace + ".")
        if not row.exists:
            table.add_row(name, str(row.kind), "-", "-", "-", "not declared", _paused(row), style="dim")
            continue
        unacked = "?" if row.unacked is None else f"{row.unacked:,}"
        style = "red" if row.kind in ("dead", "dead letters") and row.ready else None
        table.add_row(
            name,
            str(row.kind),
            f"{row.ready:,}",
            unacked,
            str(row.consumers),
            _age(row.head_age_s),
            _paused(row),
            style=style,
        )
    return table


def _paused(row: QueueStats) -> str:
    return "PAUSED" if row.paused else ""


@app.command("drain")
def drain_command(
    queue: str = typer.Argument(..., help="Queue name, full or after '<namespace>.' (e.g. delivery.fcm.XQ)."),
    to: str = typer.Option(..., "--to", metavar="FILE.jsonl", help="Appended to; a re-run resumes it."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Stop after N messages written."),
    where: str = typer.Option(
        "", "--where", metavar="EXPR", help="Only messages matching, e.g. 'payload.intent.kind=GOAL and priority>=9'."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Move messages into FILE, each fsynced before it is acked: an interrupted drain loses nothing."""
    settings = settings_or_fail()
    try:
        parsed = Where.parse(where)
    except GoalhornError as exc:
        fail(str(exc))
    err = Console(stderr=True)
    progress = Progress(
        TextColumn("draining"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=as_json or not err.is_terminal,
    )

    async def go() -> DrainReport:
        stop = asyncio.Event()
        on_ctrl_c(stop)
        task = progress.add_task("drain", total=None)
        return await drain(
            settings,
            queue,
            Path(to),
            limit=limit,
            where=parsed,
            stop=stop,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )

    with progress:
        report = run(go())
    if as_json:
        typer.echo(json.dumps(asdict(report)))
        return
    extra = f", {report.put_back:,} not matching put back" if report.put_back else ""
    again = f", {report.already_in_file:,} already in the file" if report.already_in_file else ""
    typer.echo(f"drained {report.written:,} messages from {report.queue} to {to}{extra}{again} ({report.stopped})")


@app.command("load")
def load_command(
    file: str = typer.Argument(..., metavar="FILE.jsonl", help="A file written by 'goalhorn queues drain'."),
    to: str = typer.Option(..., "--to", metavar="QUEUE", help="Queue name, full or after '<namespace>.'."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Publish FILE's messages to QUEUE with confirms, keeping priority, headers and ids; never twice."""
    settings = settings_or_fail()
    err = Console(stderr=True)
    progress = Progress(
        TextColumn("loading"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
        disable=as_json or not err.is_terminal,
    )
    with progress:
        task = progress.add_task("load", total=None)
        report = run(
            load(
                settings,
                Path(file),
                to,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        )
    if as_json:
        typer.echo(json.dumps(asdict(report)))
        return
    skipped = f", {report.already_loaded:,} loaded before (skipped)" if report.already_loaded else ""
    typer.echo(f"loaded {report.loaded:,} of {report.records:,} messages to {report.queue}{skipped}")


@app.command("purge")
def purge_command(
    queue: str = typer.Argument(..., help="Queue name, full or after '<namespace>.'."),
    yes: bool = typer.Option(False, "--yes", help="Really drop its messages (they are not kept anywhere)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Drop every ready message of QUEUE (drain it first to keep them)."""
    if not yes:
        fail(f"purging {queue} drops its messages for good: add --yes (or drain it to a file first)")
    settings = settings_or_fail()
    count = run(purge(settings, queue))
    if as_json:
        typer.echo(json.dumps({"queue": queue, "purged": count}))
        return
    typer.echo(f"purged {count:,} messages from {queue}")
