"""The slow-send guard of the streams: a client that stops reading is cut off.

When a client does not read, the server's socket buffers fill and sending blocks; a stream whose send
has blocked for ``SEND_TIMEOUT_S`` is ended there (the connection closed), so a stalled client holds
no task, no queue and no buffers beyond that, and its hub stops feeding it (see
``goalhorn.sidecar.streams``).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)
SEND_TIMEOUT_S = 10.0


class SlowClient(Exception):
    """A stream's client stopped reading."""


class SlowClientGuard:
    def __init__(self, app: ASGIApp, *, send_timeout_s: float | None = None) -> None:
        self.app = app
        self.send_timeout_s = send_timeout_s if send_timeout_s is not None else SEND_TIMEOUT_S

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").endswith("/stream"):
            await self.app(scope, receive, send)
            return

        async def guarded(message: Message) -> None:
            try:
                async with asyncio.timeout(self.send_timeout_s):
                    await send(message)
            except TimeoutError:
                raise SlowClient from None

        try:
            await self.app(scope, receive, guarded)
        except (SlowClient, BaseExceptionGroup) as exc:
            # FastAPI's SSE runs the stream in a task group: the guard's error comes wrapped, with the
            # task group's own fallout (a broken memory stream) beside it.
            if isinstance(exc, BaseExceptionGroup) and exc.subgroup(SlowClient) is None:
                raise
            log.info("dropped a stream client that stopped reading (%s)", scope.get("client"))
