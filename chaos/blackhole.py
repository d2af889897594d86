"""A TCP proxy that can turn into a black hole: bytes stop flowing both ways, connections stay open
(no reset, no FIN), as when a network path drops every packet; :meth:`BlackHoleProxy.restore` lets
them flow again. Built on :class:`tests.tcpproxy.TCPProxy` (which cuts connections instead)."""

from __future__ import annotations

import asyncio
import contextlib

from tests.tcpproxy import TCPProxy


class BlackHoleProxy(TCPProxy):
    def __init__(self, upstream_host: str = "127.0.0.1", upstream_port: int = 5672) -> None:
        super().__init__(upstream_host, upstream_port)
        self._flowing = asyncio.Event()
        self._flowing.set()

    def swallow(self) -> None:
        """From now on nothing is forwarded, and nothing read, until :meth:`restore`."""
        self._flowing.clear()

    def restore(self) -> None:
        self._flowing.set()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            client_writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self.accepted += 1
        self._links.add(task)
        self._transports[task] = [client_writer.transport, upstream_writer.transport]
        try:
            pipes = [
                asyncio.create_task(self._pipe(client_reader, upstream_writer)),
                asyncio.create_task(self._pipe(upstream_reader, client_writer)),
            ]
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for writer in (client_writer, upstream_writer):
                writer.transport.abort()
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._links.discard(task)
            del self._transports[task]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                await self._flowing.wait()
                data = await reader.read(65536)
                if not data:
                    return
                await self._flowing.wait()  # read just before the hole opened: held, not delivered
                writer.write(data)
                await writer.drain()
