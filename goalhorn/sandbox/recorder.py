"""The sandbox's record of what a phone (or a bot) would have shown: one JSON line per accepted push.

``{"provider": "fcm", "token": "...", "title": "GOAL!", "body": "...", "intent_id": "...",
"at": "2026-05-02T23:41:07.123+00:00"}`` (``url`` instead of ``token`` for a webhook; ``intent_id``
is the one goalhorn put in the push, left out when there is none). An FCM message sent to a topic or
a condition is not a line of its own: each token it is fanned out to gets one, with ``"via":
"topic"`` and the ``topic`` or ``condition``, so the record stays one line per push a phone shows.
Each line goes to the file in one ``write(2)`` on a descriptor opened with ``O_APPEND``, so it is on
disk for a reader as soon as the push is answered, and lines from several threads or processes
recording into one file never interleave.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

Provider = Literal["fcm", "apns", "webhook"]


class PushRecorder:
    """Appends accepted pushes to a JSONL file; :meth:`close` when done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        self.recorded = 0

    def record(
        self,
        provider: Provider,
        target: dict[str, str],
        title: str | None,
        body: str | None,
        intent_id: Any = None,
        route: dict[str, str] | None = None,
    ) -> None:
        """One accepted push to ``target`` (``{"token": ...}``, ``{"url": ...}``...) of ``intent_id``;
        ``route`` says how it got there when not directly (``{"via": "topic", "topic": ...}``)."""
        entry: dict[str, Any] = {"provider": provider, **target, "title": title, "body": body}
        if isinstance(intent_id, str):
            entry["intent_id"] = intent_id
        if route:
            entry.update(route)
        entry["at"] = datetime.now(UTC).isoformat(timespec="milliseconds")
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if self._fd is None:
                raise ValueError(f"push recorder of {self.path} is closed")
            view = memoryview(line)
            while view:  # a regular file takes the whole line at once; a short write is finished here
                view = view[os.write(self._fd, view) :]
            self.recorded += 1

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def alert_text(alert: Any) -> tuple[str | None, str | None]:
    """Title and body of an APNs ``aps.alert`` (a dictionary, or a plain string shown as the body)."""
    if isinstance(alert, str):
        return None, alert
    if isinstance(alert, dict):
        title, body = alert.get("title"), alert.get("body")
        return (title if isinstance(title, str) else None), (body if isinstance(body, str) else None)
    return None, None
