"""The one contract every feed adapter follows.

An adapter is fed bytes as they arrive (a whole scoreboard body from a poll, a chunk of a push
stream, one WebSocket frame) and returns what they held: game states, typed events, top-of-book
changes, and the parts it had to reject. Adapters do no I/O. The base class makes sure that no
exception escapes ``feed``: a payload the adapter rejects, or one that trips a bug in it, comes back
as a :class:`PayloadRejected` that has been counted and quarantined, and the good data around it is
still returned.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

from goalhorn.errors import PayloadRejected
from goalhorn.ingest.events import Incident
from goalhorn.ingest.quarantine import Quarantine
from goalhorn.models import BookUpdate, GameEvent, GameState

log = logging.getLogger(__name__)

ADAPTER_ERROR = "adapter_error"
"""The reason given to a payload that made an adapter raise something it should not have."""


@dataclass(slots=True)
class Parsed:
    """What one ``feed`` call found."""

    states: list[GameState] = field(default_factory=list)
    events: list[GameEvent] = field(default_factory=list)
    books: list[BookUpdate] = field(default_factory=list)
    rejected: list[PayloadRejected] = field(default_factory=list)
    incidents: dict[str, tuple[Incident, ...]] = field(default_factory=dict)

    def extend(self, other: Parsed) -> None:
        self.states += other.states
        self.events += other.events
        self.books += other.books
        self.rejected += other.rejected
        self.incidents.update(other.incidents)


class FeedAdapter(abc.ABC):
    """Bytes in, canonical models out; rejections counted in ``goalhorn_ingest_rejected_total``."""

    source: ClassVar[str]

    def __init__(self, quarantine: Quarantine | None = None) -> None:
        self.quarantine = quarantine if quarantine is not None else Quarantine()

    def feed(self, data: bytes, *, received_at: datetime) -> Parsed:
        """Parse ``data`` (received at ``received_at``, timezone-aware); never raises for bad input."""
        if received_at.tzinfo is None:
            raise ValueError("received_at must be timezone-aware")
        try:
            parsed = self._parse(data, received_at)
        except PayloadRejected as exc:
            parsed = Parsed(rejected=[exc])
        except Exception as exc:
            log.exception("%s adapter failed on a payload", self.source)
            parsed = Parsed(rejected=[PayloadRejected(self.source, ADAPTER_ERROR, type(exc).__name__)])
        for rejected in parsed.rejected:
            self.quarantine.record(rejected, rejected.payload or data)
        return parsed

    def close(self) -> Parsed:
        """End of input: whatever was buffered and never completed is rejected (and counted)."""
        parsed = self._close()
        for rejected in parsed.rejected:
            self.quarantine.record(rejected, rejected.payload)
        return parsed

    @abc.abstractmethod
    def _parse(self, data: bytes, received_at: datetime) -> Parsed:
        """Parse one chunk; raise ``PayloadRejected`` when the whole chunk is unusable."""

    def _close(self) -> Parsed:
        return Parsed()

    def checkpoint(self) -> object:
        """What ``rollback`` needs to forget the payloads fed after this point (stateless: nothing)."""
        return None

    def rollback(self, checkpoint: object) -> None:
        """Forget what was fed since ``checkpoint``, so that the same payloads parse the same way again
        (a pushed payload whose hand-on failed is sent again by its provider)."""
        return None
