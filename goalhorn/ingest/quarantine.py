"""Rejected feed payloads: counted in Prometheus and kept, bounded, for inspection.

Every adapter reports a malformed payload as a :class:`PayloadRejected`; :meth:`Quarantine.record`
increments ``goalhorn_ingest_rejected_total{source,reason}`` and keeps the newest ``capacity``
rejections with the first ``max_bytes`` of their payload, so an operator can see what was wrong
without the quarantine growing with a broken feed.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, Counter

from goalhorn.errors import PayloadRejected
from goalhorn.keys import Keys
from goalhorn.models import utcnow
from goalhorn.redis_client import Redis

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

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_record: Callable[[QuarantinedPayload], None] | None = None,
    ) -> None:
        """``on_record`` sees every rejection as it is kept (``goalhorn run ingest`` mirrors them to Redis)."""
        if capacity < 1 or max_bytes < 1:
            raise ValueError("capacity and max_bytes must be positive")
        self._items: deque[QuarantinedPayload] = deque(maxlen=capacity)
        self._max_bytes = max_bytes
        self._on_record = on_record
        self.total = 0

    def record(self, rejected: PayloadRejected, payload: bytes = b"") -> None:
        """Count one rejection and keep it with (the start of) the payload it came from."""
        REJECTED.labels(rejected.source, rejected.reason).inc()
        self.total += 1
        item = QuarantinedPayload(
            source=rejected.source,
            reason=rejected.reason,
            detail=rejected.detail,
            payload=payload[: self._max_bytes],
            truncated=len(payload) > self._max_bytes,
            at=utcnow(),
        )
        self._items.append(item)
        if self._on_record is not None:
            self._on_record(item)

    def items(self) -> list[QuarantinedPayload]:
        """What is kept, oldest first."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


def rejected_count(source: str, reason: str) -> float:
    """The process-wide count of one (source, reason), as Prometheus would scrape it."""
    value = REGISTRY.get_sample_value("goalhorn_ingest_rejected_total", {"source": source, "reason": reason})
    return value or 0.0


class QuarantineStore:
    """The newest rejections of every ingest process, in one capped Redis list, for ``goalhorn feeds
    quarantine``. Payload bytes are kept base64-encoded: a rejected payload may not be text."""

    def __init__(self, redis: Redis, keys: Keys, capacity: int = DEFAULT_CAPACITY) -> None:
        self._redis = redis
        self._key = keys.ingest_quarantine()
        self._capacity = capacity

    async def push(self, items: Iterable[QuarantinedPayload]) -> None:
        encoded = [
            json.dumps(
                {
                    "source": i.source,
                    "reason": i.reason,
                    "detail": i.detail,
                    "at": i.at.isoformat(),
                    "truncated": i.truncated,
                    "payload_b64": base64.b64encode(i.payload).decode(),
                }
            )
            for i in items
        ]
        if encoded:
            pipe = self._redis.pipeline(transaction=False)
            pipe.lpush(self._key, *encoded)
            pipe.ltrim(self._key, 0, self._capacity - 1)
            await pipe.execute()

    async def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first; each with its ``payload`` decoded back to bytes."""
        raw = await self._redis.lrange(self._key, 0, max(0, limit - 1))
        found = []
        for entry in raw:
            item = json.loads(entry)
            item["payload"] = base64.b64decode(item.pop("payload_b64"))
            found.append(item)
        return found
