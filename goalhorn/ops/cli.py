"""``goalhorn``: run, inspect and demo the pipeline."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import typer
from rich.console import Console

from goalhorn import __version__
from goalhorn.errors import ConfigError
from goalhorn.ops import delivery, feeds, keys, model, replay, run
from goalhorn.ops import pause as pause_commands
from goalhorn.ops import status as status_command
from goalhorn.ops import trace as trace_command
from goalhorn.ops.breakers import app as breakers_app
from goalhorn.ops.dlq import app as dlq_app
from goalhorn.ops.live import app as live_app
from goalhorn.ops.queues import app as queues_app
from goalhorn.ops.segments import app as segments_app
from goalhorn.ops.subscribers import app as subscribers_app
from goalhorn.ops.topics import app as topics_app
from goalhorn.settings import load_settings

app = typer.Typer(
    help="goalhorn: notification fan-out and alerting for live sports.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(feeds.app, name="feeds")
app.add_typer(segments_app, name="segments")
app.add_typer(model.app, name="model")
app.add_typer(subscribers_app, name="subscribers")
app.add_typer(keys.app, name="keys")
app.add_typer(queues_app, name="queues")
app.add_typer(dlq_app, name="dlq")
app.add_typer(breakers_app, name="breakers")
app.add_typer(topics_app, name="topics")
app.add_typer(live_app, name="live")
pause_commands.register(app)
trace_command.register(app)
status_command.register(app)
app.command("run")(run.run)
app.command("replay")(replay.replay)
app.command("worker")(run.worker)


@app.command()
def demo(
    real: bool = typer.Option(
        False, "--real", help="Use RabbitMQ and Redis on 127.0.0.1 instead of the embedded default."
    ),
    users: int = typer.Option(10_000, min=100, help="Size of the generated audience."),
    duration: float = typer.Option(8.0, min=0.0, help="Seconds the night's snapshots are spread over."),
    show_pushes: bool = typer.Option(False, "--show-pushes", help="Print every console push as it is sent."),
    sandbox: bool = typer.Option(
        False,
        "--sandbox",
        help="Send phone pushes through the real FCM and APNs providers to sandbox servers started in this "
        "process (they share its CPU, so latency includes their work); by default phones get the console.",
    ),
) -> None:
    """Replay the recorded game night through the whole pipeline and print a summary."""
    from goalhorn.demo.night import demo_namespace, run_night
    from goalhorn.ops.render import render_night

    settings = load_settings()
    if real:
        settings = settings.with_real_services()
    # The demo's own namespace: it replaces what an earlier demo left, never a deployment's data.
    settings = settings.model_copy(update={"namespace": demo_namespace(settings.namespace)})
    backend = "real (RabbitMQ + Redis)" if settings.uses_real_services else "embedded (in-process bus, fakeredis)"
    console = Console()
    console.print(f"[bold]goalhorn demo[/] - replaying the recorded game night on the {backend} backend")
    out = sys.stdout if show_pushes else None
    report = asyncio.run(run_night(settings, users=users, duration_s=duration, out=out, sandbox=sandbox))
    render_night(report, backend, console)


@app.command()
def version() -> None:
    """Print goalhorn's version."""
    typer.echo(__version__)


delivery.register(app)


PIPED_WIDTH = 160
"""Columns of output that goes to no terminal (a pipe, a file, a CI log): rich would cut it at 80."""


def main() -> None:
    if "COLUMNS" not in os.environ and not sys.stdout.isatty():
        os.environ["COLUMNS"] = str(PIPED_WIDTH)  # read by rich (tables, --help) each time it prints
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app()
    except ConfigError as exc:  # settings, rules files, unreachable services: what to fix, not a traceback
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
