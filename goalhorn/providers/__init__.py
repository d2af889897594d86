"""The provider contract: send a batch, get one result per device.

A provider knows one wire format and maps its vendor's answers into ``DeliveryResult`` values
(per-token outcomes) or ``ProviderError`` subclasses (whole-batch failures). It decides nothing
about retries, breakers or idempotency: the dispatch stage does.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self

from goalhorn.keys import Platform
from goalhorn.models import DeliveryBatch, DeliveryResult, Device


class Provider(abc.ABC):
    """One way out: FCM, APNs, webhooks, or the console."""

    platform: Platform

    @abc.abstractmethod
    async def send(self, batch: DeliveryBatch) -> list[DeliveryResult]:
        """Deliver to every device of the batch; exactly one result per device, in batch order."""

    def circuit(self, device: Device) -> str:
        """The circuit breaker a device's sends count against: per provider and credential by default,
        per endpoint where one endpoint can fail alone (webhooks)."""
        return self.platform

    async def aclose(self) -> None:
        """Release connections; the default has none."""
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def render_failed(device: Device, exc: Exception) -> DeliveryResult:
    """The result of a device whose message could not be rendered (``RenderFailed`` from the renderer):
    a message error, which the dispatch stage dead-letters without counting it against the provider."""
    reason = f"render_failed: {exc}"
    return DeliveryResult(device_id=device.device_id, outcome="failed", reason=reason, message_error=True)
