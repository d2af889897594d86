"""Console provider: "delivers" by rendering each message and printing one line per device.

It lets the demo and dry runs show exactly what every device would get without any vendor
account. Lines have the shape ``{platform} {device_id} {intent_id} | {title} | {body}``.
"""

from __future__ import annotations

import itertools
from typing import TextIO

from goalhorn.catalog import default_catalog
from goalhorn.catalog.templates import Renderer, RenderFailed
from goalhorn.keys import Platform
from goalhorn.models import DeliveryBatch, DeliveryResult, Device
from goalhorn.providers import Provider, Send, accepted, render_failed


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


class ConsoleProvider(Provider):
    """Stands in for ``platform``; writes to ``out`` when given, else only returns results."""

    def __init__(self, platform: Platform, out: TextIO | None = None, *, render: Renderer | None = None) -> None:
        self.platform = platform
        self._render = render or default_catalog().render
        self._out = out
        self._sequence = itertools.count(1)

    async def prepare(self, batch: DeliveryBatch) -> Send:
        intent = batch.intent
        texts: dict[str, str] = {}  # per locale: what follows the device on its line

        async def send(device: Device) -> DeliveryResult:
            text = texts.get(device.locale)
            if text is None:
                try:
                    message = self._render(intent, device.locale)
                except RenderFailed as exc:
                    return render_failed(device, exc)
                text = texts[device.locale] = (
                    f" {intent.intent_id} | {_one_line(message.title)} | {_one_line(message.body)}\n"
                )
            if self._out is not None:
                self._out.write(f"{self.platform} {device.device_id}{text}")
                self._out.flush()
            return accepted(device, f"console-{self.platform}-{next(self._sequence)}")

        return send
