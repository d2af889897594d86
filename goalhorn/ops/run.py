"""``goalhorn run ingest|fanout|deliver|api|all``: one deployable process (``goalhorn worker`` is ``run deliver``)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from enum import StrEnum
from typing import Annotated

import typer

from goalhorn.app.health import HealthServer
from goalhorn.app.process import STAGES, serve_stages
from goalhorn.settings import load_settings

log = logging.getLogger(__name__)


GC_THRESHOLDS = (10_000, 10, 10)
"""The cyclic collector's thresholds in a stage process (CPython's own: 700, 10, 10). A worker makes and
drops some objects per push (tasks, futures, results, frames of the HTTP clients): at 700 a 100k goal
ran some 7,000 collections, 58 of them over the whole heap, 11 s of a worker's 85 s of CPU (timed by
``gc.callbacks``). At 10,000, with what the process built while starting frozen out of the collections
(``gc.freeze`` once it runs), the collector took under 1 s and the worker 62-75 s of CPU for the same
pushes. Cycles are still found: a full collection comes every 100 young ones."""


def _tune_collector() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


def _freeze_startup() -> None:
    """What the process has built so far (modules, settings, clients) lives until it exits: keep it out
    of every collection."""
    gc.collect()
    gc.freeze()


class StageName(StrEnum):
    ingest = "ingest"
    fanout = "fanout"
    deliver = "deliver"
    api = "api"
    all = "all"


MetricsPort = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=0,
        max=65535,
        help="Serve /healthz, /readyz and Prometheus /metrics on this port (0: any free port).",
    ),
]
MetricsHost = Annotated[str, typer.Option("--metrics-host", help="Address the health and metrics endpoints listen on.")]


def run(
    stage: Annotated[
        StageName,
        typer.Argument(help="ingest, fanout, deliver, all of those in one process, or api (the HTTP API)."),
    ],
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1",
    host: Annotated[str, typer.Option("--host", help="api: the address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="api: the port to listen on.")] = 8480,
) -> None:
    """Run a stage on RabbitMQ and Redis (GOALHORN_AMQP_URL, GOALHORN_REDIS_URL) until SIGTERM or Ctrl-C.

    Checks both services first (exit 2 naming the setting when one cannot be used); on SIGTERM stops
    taking work and finishes or requeues what it holds, within 60 s. `run api` serves the HTTP API
    (with /healthz, /readyz, /metrics) on --host/--port and needs GOALHORN_API_KEY_SECRET."""
    if stage is StageName.api:
        if metrics_port is not None:
            typer.echo("error: --metrics-port: the api serves /healthz, /readyz and /metrics on --port", err=True)
            raise typer.Exit(2)
        serve_api(host, port)
        return
    names = STAGES if stage is StageName.all else (stage.value,)
    serve(names, metrics_port, metrics_host)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            # At once: SystemExit would still wait for the worker threads and executors that hold
            # batches. What is unacked goes back to RabbitMQ with the connection, as after a kill.
            log.warning("second signal: exiting without waiting")
            logging.shutdown()
            sys.stdout.flush()
            os._exit(1)
        log.info("stopping: finishing what is in hand")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


def serve_api(host: str, port: int) -> None:
    from goalhorn.app import api  # FastAPI and uvicorn: only the api process holds them

    settings = load_settings()
    logging.getLogger("goalhorn").setLevel(logging.INFO)

    def ready(bound: int) -> None:
        typer.echo(f"goalhorn api running (namespace {settings.namespace}) on http://{host}:{bound}")
        sys.stdout.flush()

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        await api.serve(settings, stop, host=host, port=port, on_ready=ready)

    asyncio.run(main())
    typer.echo("goalhorn api stopped")


def serve(names: tuple[str, ...], metrics_port: int | None, metrics_host: str) -> None:
    settings = load_settings()
    logging.getLogger("goalhorn").setLevel(logging.INFO)
    _tune_collector()

    def ready(health: HealthServer | None) -> None:
        _freeze_startup()
        where = f", health and metrics on http://{metrics_host}:{health.port}" if health is not None else ""
        typer.echo(f"goalhorn {'+'.join(names)} running (namespace {settings.namespace}{where})")
        sys.stdout.flush()

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        await serve_stages(settings, names, stop, metrics_port=metrics_port, metrics_host=metrics_host, on_ready=ready)

    asyncio.run(main())
    typer.echo(f"goalhorn {'+'.join(names)} stopped")


def worker(metrics_port: MetricsPort = None, metrics_host: MetricsHost = "127.0.0.1") -> None:
    """Run a delivery worker: the same as `goalhorn run deliver`."""
    serve(("deliver",), metrics_port, metrics_host)
