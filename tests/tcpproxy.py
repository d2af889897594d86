"""An asyncio TCP proxy for fault tests: sits between a client and a server and can cut them apart.

``drop()`` aborts every proxied connection on both sides (the client sees a reset, the server a closed
peer, so RabbitMQ requeues what the client had unacked); ``drop(refuse=True)`` also turns away new
connections, as a broker that is down would, until ``accept()``.
"""

from __future__ import annotations

import asyncio
import contextlib


class TCPProxy:
    """Listens on 127.0.0.1 on an ephemeral port and forwards to ``upstream_host:upstream_port``."""

    def __init__(self, upstream_host: str = "127.0.0.1", upstream_port: int = 5672) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        self.refusing = False
        self.accepted = 0  # connections forwarded so far
        self.refused = 0  # connections turned away while refusing
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._transports: dict[asyncio.Task[None], list[asyncio.WriteTransport]] = {}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, user: str = "guest", password: str = "guest") -> str:
        """An AMQP URL pointing at the proxy."""
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/"

    async def drop(self, *, refuse: bool = False) -> None:
        """Abort every current connection; with ``refuse``, turn new ones away until :meth:`accept`."""
        self.refusing = refuse
        for transports in self._transports.values():
            for transport in transports:
                transport.abort()
        if self._links:
            await asyncio.wait(self._links, timeout=5)

    def accept(self) -> None:
        """Forward new connections again."""
        self.refusing = False

    async def aclose(self) -> None:
        await self.drop(refuse=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            client_writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            client_writer.transport.abort()
            return
        except BaseException:  # cancelled (the test's loop ends): the accepted socket must not outlive it
            client_writer.transport.abort()
            raise
        task = asyncio.current_task()
        assert task is not None
        self.accepted += 1
        self._links.add(task)
        self._transports[task] = [client_writer.transport, upstream_writer.transport]
        try:
            pipes = [
                asyncio.create_task(_pipe(client_reader, upstream_writer)),
                asyncio.create_task(_pipe(upstream_reader, client_writer)),
            ]
            # Either side closing ends the pair: AMQP has no use for a half-open connection.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for writer in (client_writer, upstream_writer):
                writer.transport.abort()
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            for writer in (client_writer, upstream_writer):  # cancelled mid-link too (abort is idempotent)
                writer.transport.abort()
            self._links.discard(task)
            del self._transports[task]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
