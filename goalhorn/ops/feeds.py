"""``goalhorn feeds``: run a recorded feed payload through its adapter and print what it held.

The output is a contract (scripts depend on the exact keys): one JSON object per line, per game
(ESPN), per message that changes a top of book (Polymarket), or per typed event (Sportradar, Stats
Perform). Rejections go to stderr with their reason; the exit status is 1 when the file yielded
nothing but rejections. Feed text is untrusted: none of it reaches a terminal unescaped
(``json.dumps``, ASCII only, escapes every control character; stderr lines go through
:func:`printable`).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from goalhorn.ingest.adapter import FeedAdapter, Parsed
from goalhorn.models import utcnow

app = typer.Typer(help="Inspect feed payloads.", no_args_is_help=True, add_completion=False)

STREAM_CHUNK = 64 * 1024


class Format(enum.StrEnum):
    ESPN = "espn"
    POLYMARKET = "polymarket"
    SPORTRADAR = "sportradar"
    STATSPERFORM = "statsperform"


def adapter_for(fmt: Format) -> FeedAdapter:
    if fmt is Format.ESPN:
        from goalhorn.ingest.espn import EspnAdapter

        return EspnAdapter()
    if fmt is Format.POLYMARKET:
        from goalhorn.ingest.polymarket import PolymarketAdapter

        return PolymarketAdapter()
    if fmt is Format.SPORTRADAR:
        from goalhorn.ingest.sportradar import SportradarAdapter

        return SportradarAdapter()
    from goalhorn.ingest.statsperform import StatsPerformAdapter

    return StatsPerformAdapter()


def frames(fmt: Format, body: bytes) -> Iterator[bytes]:
    """How a recorded file is cut into what the live feed would deliver one at a time.

    ESPN and Stats Perform: the file is one response. Sportradar: the stream, in reads of 64 KiB.
    Polymarket: one JSON document is one message (an array, one per element); anything else is
    taken as one frame per line (``PONG`` included).
    """
    if fmt in (Format.ESPN, Format.STATSPERFORM):
        yield body
    elif fmt is Format.SPORTRADAR:
        for start in range(0, len(body), STREAM_CHUNK):
            yield body[start : start + STREAM_CHUNK]
    else:
        try:
            whole = json.loads(body)
        except ValueError:
            yield from (line for line in body.splitlines() if line.strip())
            return
        for message in whole if isinstance(whole, list) else [whole]:
            yield json.dumps(message).encode()


def rows(fmt: Format, parsed: Parsed) -> Iterator[dict[str, Any]]:
    if fmt is Format.ESPN:
        for state in parsed.states:
            yield {
                "game_id": state.game_id,
                "sport": state.sport.value,
                "league": state.league,
                "status": state.status.value,
                "home_team": state.home_team,
                "away_team": state.away_team,
                "home_team_id": state.home_team_id,
                "away_team_id": state.away_team_id,
                "home_score": state.home_score,
                "away_score": state.away_score,
                "period": state.period,
                "clock_s": state.clock_s,
                "display_clock": state.display_clock,
            }
    elif fmt is Format.POLYMARKET:
        for book in parsed.books:
            yield {"token_id": book.token_id, "best_bid": book.best_bid, "best_ask": book.best_ask, "ts_ms": book.ts_ms}
    else:
        for event in parsed.events:
            yield {
                "event_id": event.event_id,
                "game_id": event.game_id,
                "type": event.kind.value,
                "team": event.team,
                "home_score": event.home_score,
                "away_score": event.away_score,
                "period": event.period,
                "sequence": event.sequence,
            }


@app.command()
def parse(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A recorded payload.")],
    fmt: Annotated[Format, typer.Option("--format", "-f", help="The feed the file came from.")],
) -> None:
    """Print what a recorded feed payload holds, one JSON object per line."""
    adapter = adapter_for(fmt)
    printed = rejected = 0
    for frame in frames(fmt, path.read_bytes()):
        parsed = adapter.feed(frame, received_at=utcnow())
        for row in rows(fmt, parsed):
            typer.echo(json.dumps(row))
            printed += 1
        rejected += _report(parsed)
    rejected += _report(adapter.close())
    if rejected and not printed:
        raise typer.Exit(1)


def printable(text: str) -> str:
    r"""``text`` with every character a terminal could act on escaped as in a Python literal.

    Control characters (C0, DEL, C1: ``\x1b[2J`` clears a screen, ``\x1b]0;...\x07`` retitles a
    window), bidi overrides and anything else not printable become ``\x1b``, ``\u202e``...;
    backslashes are doubled so the escaped form cannot be confused with text that looks like it.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(
        "\\\\" if ch == "\\" else ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def _report(parsed: Parsed) -> int:
    for rejection in parsed.rejected:
        typer.echo(f"rejected: {printable(str(rejection))}", err=True)
    return len(parsed.rejected)


@app.command()
def quarantine(
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="How many, newest first.")] = 20,
    real: Annotated[
        bool, typer.Option("--real", help="Read Redis on 127.0.0.1 when GOALHORN_REDIS_URL is unset.")
    ] = False,
) -> None:
    """Print the newest payloads `goalhorn ingest` rejected: source, reason, detail, time, payload."""
    import asyncio

    from goalhorn.ingest.quarantine import QuarantineStore
    from goalhorn.keys import Keys
    from goalhorn.redis_client import make_redis
    from goalhorn.settings import load_settings

    settings = load_settings()
    if real:
        settings = settings.with_real_services()

    async def read() -> list[dict[str, Any]]:
        redis = make_redis(settings)
        try:
            return await QuarantineStore(redis, Keys(settings.namespace)).recent(limit)
        finally:
            await redis.aclose()

    for item in asyncio.run(read()):
        payload = item.pop("payload")
        item["payload"] = payload.decode("utf-8", "replace")
        typer.echo(json.dumps(item))
