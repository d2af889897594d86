"""The api stage: the sidecar (``goalhorn.sidecar``) served by uvicorn, as its own process.

``goalhorn run api`` runs it. Like every stage process it checks its settings, Redis, RabbitMQ and
the stored layout before it serves (a failure is a ConfigError naming the setting); it serves
``/healthz``, ``/readyz`` and ``/metrics`` on its own port beside the API. When ``stop`` is set it
stops accepting connections and finishes the requests in hand, for at most ``STOP_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Generator
from functools import partial

import uvicorn

from goalhorn.app.preflight import check_rabbitmq, check_services
from goalhorn.app.process import require_services
from goalhorn.errors import ConfigError
from goalhorn.keys import Keys
from goalhorn.preferences.layout import check_layout
from goalhorn.settings import Settings
from goalhorn.sidecar.app import create_app
from goalhorn.sidecar.deps import Services

NAME = "api"
STOP_TIMEOUT_S = 10.0
SWEEP_EVERY_S = 60.0
log = logging.getLogger(__name__)


async def _sweep(services: Services) -> None:
    """End webhook secret rotations whose window is over (every api process may; each end is atomic)."""
    while True:
        await asyncio.sleep(SWEEP_EVERY_S)
        try:
            await services.webhooks.expire_rotations()
        except Exception:  # a failed sweep is retried on the next; reads end due rotations meanwhile
            log.exception("webhook rotation sweep failed")


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``; ConfigError naming the options when it cannot."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:  # in use, not an address of this machine, not an address at all
        raise ConfigError(f"--host/--port: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the process's runner owns SIGTERM and sets ``stop``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    host: str = "127.0.0.1",
    port: int = 8480,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve the API on ``host:port`` until ``stop`` is set; ``on_ready`` gets the bound port."""
    require_services(settings)
    services = Services.build(settings)  # ConfigError first if the key secret is missing
    try:
        await check_services(settings)
        await check_layout(services.redis, Keys(settings.namespace), settings)
        app = create_app(settings, services, checks={"RabbitMQ": partial(check_rabbitmq, settings)})
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(STOP_TIMEOUT_S),
        )
        server = _Server(config)
        # Bound here, not by uvicorn: it exits the process (code 3, with a traceback) when it cannot bind.
        serving = asyncio.create_task(server.serve(sockets=[listening_socket(host, port)]))
        while not server.started:
            if serving.done():
                await serving
                raise ConfigError(f"--host/--port: the API did not start on {host}:{port}")
            await asyncio.sleep(0.05)
        bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
        log.info("api serving on %s:%s (namespace %s)", host, bound, settings.namespace)
        if on_ready is not None:
            on_ready(int(bound))
        stopping = asyncio.create_task(stop.wait())
        sweeping = asyncio.create_task(_sweep(services))
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        stopping.cancel()
        sweeping.cancel()
        await serving
    finally:
        await services.aclose()
