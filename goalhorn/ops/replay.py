"""``goalhorn replay``: the recorded game night as a local ESPN-format feed."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Annotated

import typer
from aiohttp import web


def replay(
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port on 127.0.0.1.")] = 8473,
    duration: Annotated[
        float, typer.Option("--duration", min=0.0, help="Seconds the night is replayed over; then it holds its end.")
    ] = 120.0,
) -> None:
    """Serve the recorded game night as ESPN's scoreboard API until Ctrl-C (point GOALHORN_ESPN_BASE_URL at it)."""
    from goalhorn.demo.espn_feed import NightFeed
    from goalhorn.demo.gamenight import load_gamenight

    feed = NightFeed(load_gamenight(), duration)

    async def serve() -> None:
        runner = web.AppRunner(feed.app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        except OSError as exc:
            typer.echo(f"error: --port {port}: {exc.strerror}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"ESPN-format feed of the recorded night on http://127.0.0.1:{port} ({duration:g} s)")
        typer.echo(f"export GOALHORN_ESPN_BASE_URL=http://127.0.0.1:{port}")
        typer.echo(f"export GOALHORN_ESPN_LEAGUES={','.join(feed.leagues)}")
        sys.stdout.flush()
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
