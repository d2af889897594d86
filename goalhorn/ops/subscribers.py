"""``goalhorn subscribers``: import and export users, devices, follows and preferences as JSONL."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from goalhorn.admin.subscriber_lines import Subscriber, format_line
from goalhorn.errors import ConfigError, GoalhornError
from goalhorn.preferences.epoch import Epoch
from goalhorn.redis_client import make_redis
from goalhorn.settings import Settings, load_settings

if TYPE_CHECKING:  # goalhorn.admin.subscribers (the Bloom filter's numpy) is imported by these commands alone
    from goalhorn.admin.subscribers import ImportReport, Rejection

app = typer.Typer(
    help="Import and export subscribers (users, devices, follows, preferences) as JSON lines.",
    no_args_is_help=True,
)

NO_REDIS = (
    "GOALHORN_REDIS_URL is not set: subscribers live in Redis, and the embedded one exists only inside "
    "this one command, so an import there would be lost (set e.g. GOALHORN_REDIS_URL=redis://127.0.0.1:6379/0)"
)


def _fail(message: str) -> NoReturn:
    for line in message.splitlines():
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(2)


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc))
    if settings.redis_url is None:
        _fail(NO_REDIS)
    return settings


@app.command("import")
def import_(
    file: str = typer.Argument(..., metavar="FILE.jsonl", help="One subscriber per line; - reads stdin."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (rejections included)."),
) -> None:
    """Add or replace the subscribers of FILE (exit 1 if any line was rejected, 2 if FILE is unreadable)."""
    settings = _settings()
    try:
        source: IO[bytes] = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115  # closed below
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror or exc}")
    err = Console(stderr=True)
    info = os.fstat(source.fileno()) if file != "-" else None
    size = info.st_size if info is not None and stat.S_ISREG(info.st_mode) else None
    progress = Progress(
        TextColumn("importing"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=size is None or not err.is_terminal,
    )

    def rejected(rejection: Rejection) -> None:
        if not as_json:
            err.print(f"line {rejection.line}: {rejection.reason}", markup=False, highlight=False, soft_wrap=True)

    started = time.monotonic()
    with source, progress:
        task = progress.add_task("import", total=size)
        try:
            report = asyncio.run(
                _import(settings, source, lambda done: progress.update(task, completed=done), rejected)
            )
        except OSError as exc:
            _fail(f"cannot read {file}: {exc.strerror or exc}")
        except GoalhornError as exc:
            _fail(str(exc))
    elapsed = time.monotonic() - started
    if as_json:
        typer.echo(json.dumps({**report.as_dict(), "seconds": round(elapsed, 3)}))
    else:
        _render(report, elapsed)
    raise typer.Exit(1 if report.rejected else 0)


async def _import(
    settings: Settings, source: IO[bytes], on_progress: Callable[[int], None], on_rejected: Callable[[Rejection], None]
) -> ImportReport:
    redis = make_redis(settings)
    try:
        from goalhorn.admin.subscribers import import_subscribers

        return await import_subscribers(redis, settings, source, on_progress=on_progress, on_rejected=on_rejected)
    finally:
        await redis.aclose()


def _render(report: ImportReport, elapsed: float) -> None:
    rate = f" ({report.imported / elapsed:,.0f} lines/s)" if elapsed > 0 and report.imported else ""
    typer.echo(
        f"imported {report.imported:,} lines ({report.changed:,} new or changed, {report.unchanged:,} unchanged) "
        f"in {elapsed:.2f} s{rate}"
    )
    if report.rejected:
        typer.echo(f"rejected {report.rejected:,} lines (reasons above)")
    bloom = "; Bloom filter rebuilt" if report.bloom_rebuilt else ""
    typer.echo(
        f"devices written {report.devices_written:,}, removed {report.devices_removed:,}; "
        f"follows added {report.follows_added:,}, removed {report.follows_removed:,}; "
        f"preferences written {report.preferences_written:,}{bloom}"
    )


@app.command("export")
def export(
    file: str = typer.Argument("-", metavar="[FILE|-]", help="Where to write the JSON lines; - (default) is stdout."),
) -> None:
    """Write every stored subscriber as JSON lines, in the format import reads."""
    settings = _settings()
    try:
        subscribers = asyncio.run(_export(settings))
    except GoalhornError as exc:
        _fail(str(exc))
    if file == "-":
        out = sys.stdout.buffer
        for subscriber in subscribers:
            out.write(format_line(subscriber))
        out.flush()
    else:
        try:
            _write_atomically(Path(file), subscribers)
        except OSError as exc:
            _fail(f"cannot write {file}: {exc.strerror or exc}")
    typer.echo(f"exported {len(subscribers):,} subscribers", err=True)


@app.command("restored")
def restored() -> None:
    """Declare the subscribers whole again after Redis lost them and they were re-imported: fanout
    processes holding intents (goalhorn_redis_data_lost) expand them again."""
    settings = _settings()
    try:
        before, after = asyncio.run(_restored(settings))
    except GoalhornError as exc:
        _fail(str(exc))
    typer.echo(f"subscriber epoch {before or '(none)'} -> {after}: fanout processes expand held intents again")


async def _restored(settings: Settings) -> tuple[Epoch | None, Epoch]:
    redis = make_redis(settings)
    try:
        from goalhorn.admin.subscribers import declare_restored

        return await declare_restored(redis, settings)
    finally:
        await redis.aclose()


async def _export(settings: Settings) -> list[Subscriber]:
    redis = make_redis(settings)
    try:
        from goalhorn.admin.subscribers import export_subscribers

        return await export_subscribers(redis, settings)
    finally:
        await redis.aclose()


def _write_atomically(path: Path, subscribers: list[Subscriber]) -> None:
    """Write beside ``path`` and rename over it, so a failed export never leaves half a file."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for subscriber in subscribers:
                out.write(format_line(subscriber))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
