"""``goalhorn run ingest|fanout|deliver|api|all``: one deployable process (``goalhorn worker`` is ``run deliver``)."""

from __future__ import annotations

import asyncio
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

    def ready(health: HealthServer | None) -> None:
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
