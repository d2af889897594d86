"""Delivery batches written straight from stored device records.

A user's devices are stored as compact ``Device`` JSON lines that start with their platform
(``goalhorn.preferences.model``), so the expander never parses the devices of the users it selects:
it splits their records into lines, sorts the lines by that prefix into one buffer per platform, and
writes each full buffer as the JSON of a ``DeliveryBatch`` around them. The delivery worker validates
the batch when it takes it, and quarantines a device that does not validate without losing the rest
of its batch (``goalhorn.dispatch.stage.salvage``): each device is on its own line of the message
(JSON allows the newlines; a device's JSON has none), so even a device whose JSON is cut short is
cut out on its own. A line with no known platform prefix (an empty one too) is counted and skipped
here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterator, Sequence

from goalhorn.keys import PLATFORMS, Platform
from goalhorn.models import EncodedBatch, Intent

log = logging.getLogger(__name__)

PREFIX_LENGTH = len(b'{"platform":"') + 4
"""Bytes of a device line that name its platform: ``{"platform":"`` and the platform's first four
letters (``fcm"``, ``apns``, ``webh``), enough to tell the platforms apart."""


def platform_prefix(platform: Platform) -> bytes:
    return (b'{"platform":"' + platform.encode() + b'"')[:PREFIX_LENGTH]


PREFIXES: dict[bytes, Platform] = {platform_prefix(p): p for p in PLATFORMS}


class BatchCutter:
    """Buffers device lines per platform and cuts ``EncodedBatch``es of at most ``size`` of them."""

    def __init__(self, intent: Intent, size: int) -> None:
        self._intent = intent
        self._size = size
        self._intent_json = intent.to_json()
        self._buffers: dict[bytes, list[bytes]] = {prefix: [] for prefix in PREFIXES}
        self.batches = 0
        self.devices = 0
        self.invalid_lines = 0

    def add(self, records: Sequence[bytes], platforms: Collection[str] | None = None) -> Iterator[EncodedBatch]:
        """Add the device lines of stored ``records`` (only those of ``platforms``, if given) and yield
        every batch that fills."""
        if not records:
            return
        lines = b"\n".join(records).split(b"\n")
        dropped: list[bytes] = []
        targets = self._buffers
        if platforms is not None:
            targets = {
                prefix: buffer if PREFIXES[prefix] in platforms else dropped for prefix, buffer in targets.items()
            }
        unknown: list[bytes] = []
        route = targets.get
        for line in lines:
            route(line[:PREFIX_LENGTH], unknown).append(line)
        if unknown:
            self.invalid_lines += len(unknown)
            log.error(
                "intent %s: %d stored device records without a known platform prefix skipped (first starts %r)",
                self._intent.intent_id,
                len(unknown),
                unknown[0][:PREFIX_LENGTH],
            )
        self.devices += len(lines) - len(unknown) - len(dropped)
        for prefix, buffer in self._buffers.items():
            while len(buffer) >= self._size:
                yield self._cut(prefix, self._size)

    def take_invalid(self) -> int:
        """Lines without a known platform prefix since the last call."""
        invalid, self.invalid_lines = self.invalid_lines, 0
        return invalid

    def flush(self) -> Iterator[EncodedBatch]:
        """The batches of what is left in the buffers."""
        for prefix, buffer in self._buffers.items():
            while buffer:
                yield self._cut(prefix, self._size)

    def _cut(self, prefix: bytes, size: int) -> EncodedBatch:
        buffer = self._buffers[prefix]
        lines = buffer[:size]
        del buffer[:size]
        platform = PREFIXES[prefix]
        self.batches += 1
        batch_id = f"{self._intent.intent_id}.{platform}.{self.batches}"
        payload = b"".join(
            (
                b'{"batch_id":',
                json.dumps(batch_id).encode(),
                b',"platform":"',
                platform.encode(),
                b'","intent":',
                self._intent_json,
                b',"devices":[\n',
                b",\n".join(lines),
                b"\n]}",
            )
        )
        return EncodedBatch(batch_id, platform, self._intent.priority, len(lines), payload)
