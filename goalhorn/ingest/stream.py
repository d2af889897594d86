"""Splitting a stream of concatenated JSON objects (``{...}{...}``) into whole objects.

Reads end anywhere — inside a string, between the bytes of one UTF-8 character — so the splitter
buffers the incomplete tail until the rest arrives. It tracks brace depth outside strings, hands
out each balanced ``{...}`` as text, and reports everything else between objects as garbage. A
partial object that grows past ``max_bytes`` is given up, so a stream that never closes a brace
cannot eat memory; a ``resync`` pattern marks where the next top-level object may start, so one
broken object does not swallow the good ones after it.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_SPECIAL = re.compile(r'[{}"\\]')
_OBJECT_START = re.compile(r"\S")


@dataclass(frozen=True, slots=True)
class Piece:
    """A balanced object (``ok``) or a run of text that could not be one."""

    text: str
    ok: bool
    reason: str = ""


class ObjectSplitter:
    def __init__(self, *, max_bytes: int = 4 << 20, resync: re.Pattern[str] | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._buf = ""
        self._scan = 0
        self._depth = 0
        self._in_string = False
        self._max = max_bytes
        self._resync = resync

    @property
    def pending(self) -> int:
        """Characters buffered in an unfinished object."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Piece]:
        self._buf += self._decoder.decode(data)
        pieces: list[Piece] = []
        while True:
            if self._depth == 0 and not self._start(pieces):
                break
            end = self._close_at()
            if end is None:
                if len(self._buf) > self._max:
                    self._give_up(pieces, "oversized")
                    continue
                break
            if end < 0:
                pieces.append(Piece(self._buf[:-end].rstrip(), ok=False, reason="unbalanced"))
                self._buf = self._buf[-end:]
                self._depth = 0
                continue
            pieces.append(Piece(self._buf[:end], ok=True))
            self._buf = self._buf[end:]
            self._scan = 0
        return pieces

    def rescan(self, text: str) -> list[Piece]:
        """Put ``text`` back in front of what is buffered and split again (after a bad object)."""
        self._buf = text + self._buf
        self._scan, self._depth, self._in_string = 0, 0, False
        return self.feed(b"")

    def close(self) -> list[Piece]:
        """End of stream: an unfinished object is reported as truncated."""
        self._buf += self._decoder.decode(b"", final=True)
        rest = self._buf.strip()
        self._buf, self._scan, self._depth, self._in_string = "", 0, 0, False
        return [Piece(rest, ok=False, reason="truncated")] if rest else []

    def resync_after(self, text: str) -> int | None:
        """Where in ``text`` (after its first character) the next top-level object may start."""
        if self._resync is None:
            return None
        found = self._resync.search(text, 1)
        return found.start() if found else None

    def _start(self, pieces: list[Piece]) -> bool:
        """Skip whitespace and garbage up to the next ``{``; False when the buffer has none yet."""
        found = _OBJECT_START.search(self._buf)
        if found is None:
            self._buf = ""
            return False
        at = found.start()
        if self._buf[at] != "{":
            brace = self._buf.find("{", at)
            stop = len(self._buf) if brace < 0 else brace
            pieces.append(Piece(self._buf[at:stop].strip(), ok=False, reason="garbage"))
            self._buf = self._buf[stop:]
            if brace < 0:
                return False
            at = 0
        self._buf = self._buf[at:]
        self._scan, self._depth, self._in_string = 1, 1, False
        return True

    def _close_at(self) -> int | None:
        """Index just past the ``}`` that balances the object at the buffer's start, if it is here.

        A negative index ``-i`` means the object never closed before a new top-level object began
        at ``i`` (where the ``resync`` pattern matched inside it).
        """
        buf, i = self._buf, self._scan
        while True:
            found = _SPECIAL.search(buf, i)
            if found is None:
                self._scan = len(buf)
                return None
            i = found.start()
            char = buf[i]
            if char == "{" and self._resync is not None and self._resync.match(buf, i):
                # A valid string cannot hold this (its quote would be escaped): a new object starts.
                self._in_string = False
                return -i
            if self._in_string:
                if char == "\\":
                    if i + 1 >= len(buf):
                        self._scan = i
                        return None
                    i += 2
                    continue
                if char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char == "{":
                self._depth += 1
            elif char == "}":
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
            i += 1

    def _give_up(self, pieces: list[Piece], reason: str) -> None:
        cut = self.resync_after(self._buf)
        stop = cut if cut is not None else len(self._buf)
        pieces.append(Piece(self._buf[:stop], ok=False, reason=reason))
        self._buf = self._buf[stop:]
        self._scan, self._depth, self._in_string = 0, 0, False
