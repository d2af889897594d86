"""``goalhorn pause PROVIDER`` / ``goalhorn resume PROVIDER``: hold one provider's batches in RabbitMQ."""

from __future__ import annotations

import getpass
import json
import socket

import typer

from goalhorn.admin.documents import pause_json, resume_json
from goalhorn.admin.pause import POLL_S, pause, resume
from goalhorn.keys import PLATFORMS, Keys, Platform
from goalhorn.ops.queues import fail, run, settings_or_fail
from goalhorn.redis_client import make_redis
from goalhorn.settings import Settings

BOUND = f"every worker within {POLL_S:.0f} s, after the batches it has already started"


def _target(provider: str) -> tuple[Settings, Platform]:
    if provider not in PLATFORMS:
        fail(f"{provider!r} is not a provider: one of {', '.join(PLATFORMS)}")
    settings = settings_or_fail()
    if settings.redis_url is None:
        fail("GOALHORN_REDIS_URL is not set: workers read the pause flags from Redis")
    return settings, provider


def pause_command(
    provider: str = typer.Argument(..., metavar="PROVIDER", help="fcm, apns or webhook."),
    reason: str = typer.Option("", "--reason", help="Why, for whoever looks at 'goalhorn status'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Stop every worker taking PROVIDER's batches; they stay queued until 'goalhorn resume'."""
    settings, platform = _target(provider)
    by = f"{getpass.getuser()}@{socket.gethostname()}"

    async def go() -> None:
        redis = make_redis(settings)
        try:
            await pause(redis, Keys(settings.namespace), platform, by, reason)
        finally:
            await redis.aclose()

    run(go())
    if as_json:
        typer.echo(json.dumps(pause_json(platform, by, POLL_S)))
        return
    typer.echo(f"paused {platform}: {BOUND}; its batches wait in RabbitMQ")


def resume_command(
    provider: str = typer.Argument(..., metavar="PROVIDER", help="fcm, apns or webhook."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Let workers take PROVIDER's batches again."""
    settings, platform = _target(provider)

    async def go() -> bool:
        redis = make_redis(settings)
        try:
            return await resume(redis, Keys(settings.namespace), platform)
        finally:
            await redis.aclose()

    was = run(go())
    if as_json:
        typer.echo(json.dumps(resume_json(platform, was, POLL_S)))
        return
    typer.echo(f"resumed {platform}: every worker within {POLL_S:.0f} s" if was else f"{platform} was not paused")


def register(app: typer.Typer) -> None:
    app.command("pause")(pause_command)
    app.command("resume")(resume_command)
