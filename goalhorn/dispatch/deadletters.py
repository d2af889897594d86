"""Writing and reading goalhorn's dead letters: a Redis stream of typed entries (``DeadLetter``).

Every writer (the delivery of a batch, the stage reading a message, ``ActorFailures`` giving up)
goes through :func:`write`, so each entry has a kind, a closed code and the fields ops tools filter
on; ``goalhorn dlq`` reads them back with :func:`read`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from goalhorn.keys import Keys
from goalhorn.models import DeadLetter
from goalhorn.redis_client import Redis

MAX_ENTRIES = 100_000
"""The stream is trimmed to about this many entries (oldest first)."""
READ_CHUNK = 500


async def write(redis: Redis, keys: Keys, entry: DeadLetter) -> str:
    """Append ``entry``; returns its stream id."""
    entry_id = await redis.xadd(keys.dead_letters(), entry.fields(), maxlen=MAX_ENTRIES, approximate=True)  # type: ignore[arg-type]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def decode(entry_id: bytes | str, raw: Mapping[bytes | str, bytes | str]) -> DeadLetter | str:
    """An entry as read from the stream, or why it cannot be read (an entry from an older version)."""
    sid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    fields = {_text(k): _text(v) for k, v in raw.items()}
    try:
        return DeadLetter.from_fields(sid, fields)
    except (ValueError, KeyError) as exc:
        return f"{sid}: not a dead letter of this version ({type(exc).__name__})"


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


async def read(redis: Redis, keys: Keys, *, since_ms: int | None = None) -> AsyncIterator[tuple[str, DeadLetter | str]]:
    """Every entry from ``since_ms`` on (the oldest first), in chunks: ``(id, entry or why not)``."""
    start = f"{since_ms}-0" if since_ms is not None else "-"
    while True:
        chunk = await redis.xrange(keys.dead_letters(), min=start, max="+", count=READ_CHUNK)
        if not chunk:
            return
        for entry_id, raw in chunk:
            sid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            yield sid, decode(sid, raw or {})
        last = chunk[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else str(last))


async def delete(redis: Redis, keys: Keys, entry_ids: list[str]) -> int:
    """Remove entries (once replayed); returns how many were there."""
    if not entry_ids:
        return 0
    return int(await redis.xdel(keys.dead_letters(), *entry_ids))
