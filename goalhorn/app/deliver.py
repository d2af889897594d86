"""The deliver stage: a dramatiq worker draining the per-provider delivery queues of both lanes, with
threads of its own for the critical one (``goalhorn.dispatch.lanes``).

``goalhorn run deliver`` runs it. Batches are claimed, sent through the providers (built from settings,
rendering with this process's catalog) and their devices marked, retried or dead-lettered by
``goalhorn.dispatch``. On stop the worker takes no new batch and waits for those in hand up to
``STOP_TIMEOUT_S``; anything it still holds is unacked and RabbitMQ hands it to another worker.
"""

from __future__ import annotations

import asyncio

from goalhorn.app.parts import Parts
from goalhorn.dispatch.stage import DeliveryWorker
from goalhorn.settings import Settings

NAME = "deliver"
STOP_TIMEOUT_S = 30.0
"""How long a stopping worker waits for the batches it is delivering (a batch's sends time out sooner)."""


class DeliverStage:
    name = NAME

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self._worker = DeliveryWorker(parts.delivery)
        self._running = False

    async def start(self) -> None:
        await asyncio.to_thread(self._worker.start)
        self._running = True

    def ready(self) -> bool:
        return self._running

    async def stop(self) -> None:
        if self._running:
            self._running = False
            await asyncio.to_thread(self._worker.stop, STOP_TIMEOUT_S)


def build(settings: Settings, parts: Parts | None = None) -> DeliverStage:
    return DeliverStage(parts or Parts.build(settings))


async def serve(settings: Settings, stop: asyncio.Event, *, metrics_port: int | None = None) -> None:
    """Run the deliver stage alone until ``stop`` is set."""
    from goalhorn.app.process import serve_stages

    await serve_stages(settings, (NAME,), stop, metrics_port=metrics_port)
