"""Rejected feed payloads: counted in Prometheus and kept, bounded, for inspection.

Every adapter reports a malformed payload as a :class:`PayloadRejected`; :meth:`Quarantine.record`
increments ``goalhorn_ingest_rejected_total{source,reason}`` and keeps the newest ``capacity``
rejections with the first ``max_bytes`` of their payload, so an operator can see what was wrong
without the quarantine growing with a broken feed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import REGISTRY, Counter

from goalhorn.errors import PayloadRejected
from goalhorn.models import utcnow

REJECTED = Counter(
    "goalhorn_ingest_rejected",
    "Feed payloads (or parts of one) rejected by an adapter.",
    ["source", "reason"],
)

DEFAULT_CAPACITY = 1000
DEFAULT_MAX_BYTES = 4096


@dataclass(frozen=True, slots=True)
class QuarantinedPayload:
    source: str
    reason: str
    detail: str
    payload: bytes
    truncated: bool
    at: datetime


class Quarantine:
    """The newest rejections of one process, oldest dropped first."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if capacity < 1 or max_bytes < 1:
            raise ValueError("capacity and max_bytes must be positive")
        self._items: deque[QuarantinedPayload] = deque(maxlen=capacity)
        self._max_bytes = max_bytes
        self.total = 0

    def record(self, rejected: PayloadRejected, payload: bytes = b"") -> None:
        """Count one rejection and keep it with (the start of) the payload it came from."""
        REJECTED.labels(rejected.source, rejected.reason).inc()
        self.total += 1
        self._items.append(
            QuarantinedPayload(
                source=rejected.source,
                reason=rejected.reason,
                detail=rejected.detail,
                payload=payload[: self._max_bytes],
                truncated=len(payload) > self._max_bytes,
                at=utcnow(),
            )
        )

    def items(self) -> list[QuarantinedPayload]:
        """What is kept, oldest first."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


def rejected_count(source: str, reason: str) -> float:
    """The process-wide count of one (source, reason), as Prometheus would scrape it."""
    value = REGISTRY.get_sample_value("goalhorn_ingest_rejected_total", {"source": source, "reason": reason})
    return value or 0.0
