"""Console provider: "delivers" by rendering each message and printing one line per device.

It lets the demo and dry runs show exactly what every device would get without any vendor
account. Lines have the shape ``{platform} {device_id} {intent_id} | {title} | {body}``; a Live
Activity update (``goalhorn.intents.liveactivity``: never rendered from a template) shows its event and
ticker instead: ``{platform} {device_id} {intent_id} | live {event} | {home} 1-0 {away} {clock} | {last event}``.
"""

from __future__ import annotations

import itertools
import json
from typing import TextIO

from goalhorn.catalog import default_catalog
from goalhorn.catalog.templates import Renderer, RenderFailed
from goalhorn.keys import Platform
from goalhorn.models import DeliveryBatch, DeliveryResult, Device, Intent
from goalhorn.providers import Provider, Send, accepted, render_failed


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def _ticker(intent: Intent) -> str:
    """A Live Activity update as one line: its event, the score and clock, and the last event."""
    aps = json.loads(intent.data["liveactivity"])
    state = aps.get("content-state", {})
    home, away = state.get("home", "?"), state.get("away", "?")
    score = f"{home} {state.get('home_score', '?')}-{state.get('away_score', '?')} {away}"
    clock = f" {state['clock']}" if state.get("clock") else ""
    return f"live {aps.get('event', '?')} | {score}{clock} | {state.get('last_event', '')}"


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
                    if "liveactivity" in intent.data:
                        line = _ticker(intent)
                    else:
                        message = self._render(intent, device.locale)
                        line = f"{_one_line(message.title)} | {_one_line(message.body)}"
                except RenderFailed as exc:
                    return render_failed(device, exc)
                except (ValueError, AttributeError) as exc:  # a Live Activity document that is not one
                    return render_failed(device, ValueError(f"unreadable liveactivity document: {exc}"))
                text = texts[device.locale] = f" {intent.intent_id} | {_one_line(line)}\n"
            if self._out is not None:
                self._out.write(f"{self.platform} {device.device_id}{text}")
                self._out.flush()
            return accepted(device, f"console-{self.platform}-{next(self._sequence)}")

        return send
