"""``goalhorn pause PROVIDER`` / ``goalhorn resume PROVIDER``: hold one provider's batches in RabbitMQ."""

from __future__ import annotations

import getpass
import json
import socket
from typing import Any

import typer

from goalhorn.admin.documents import pause_json, resume_json
from goalhorn.admin.pause import POLL_S, pause, resume
from goalhorn.keys import PLATFORMS, Keys, Platform
from goalhorn.ops.queues import fail, run, settings_or_fail
from goalhorn.ops.remote import API, AdminApi
from goalhorn.redis_client import make_redis
from goalhorn.settings import Settings

BOUND = f"every worker within {POLL_S:.0f} s, after the batches it has already started"


def _provider(provider: str) -> Platform:
    if provider not in PLATFORMS:
        fail(f"{provider!r} is not a provider: one of {', '.join(PLATFORMS)}")
    return provider


def _target(provider: str) -> tuple[Settings, Platform]:
    platform = _provider(provider)
    settings = settings_or_fail()
    if settings.redis_url is None:
        fail("GOALHORN_REDIS_URL is not set: workers read the pause flags from Redis")
    return settings, platform


def pause_command(
    provider: str = typer.Argument(..., metavar="PROVIDER", help="fcm, apns or webhook."),
    reason: str = typer.Option("", "--reason", help="Why, for whoever looks at 'goalhorn status'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    api: str | None = API,
) -> None:
    """Stop every worker taking PROVIDER's batches; they stay queued until 'goalhorn resume'."""
    remote = AdminApi.chosen(api)
    if remote is not None:
        _show_pause(remote.call("POST", f"pause/{_provider(provider)}", {"reason": reason or None}), as_json)
        return
    settings, platform = _target(provider)
    by = f"{getpass.getuser()}@{socket.gethostname()}"

    async def go() -> None:
        redis = make_redis(settings)
        try:
            await pause(redis, Keys(settings.namespace), platform, by, reason)
        finally:
            await redis.aclose()

    run(go())
    _show_pause(pause_json(platform, by, POLL_S), as_json)


def _show_pause(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(doc))
        return
    typer.echo(f"paused {doc['provider']}: {BOUND}; its batches wait in RabbitMQ")


def resume_command(
    provider: str = typer.Argument(..., metavar="PROVIDER", help="fcm, apns or webhook."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    api: str | None = API,
) -> None:
    """Let workers take PROVIDER's batches again."""
    remote = AdminApi.chosen(api)
    if remote is not None:
        _show_resume(remote.call("POST", f"resume/{_provider(provider)}"), as_json)
        return
    settings, platform = _target(provider)

    async def go() -> bool:
        redis = make_redis(settings)
        try:
            return await resume(redis, Keys(settings.namespace), platform)
        finally:
            await redis.aclose()

    _show_resume(resume_json(platform, run(go()), POLL_S), as_json)


def _show_resume(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(doc))
        return
    platform = doc["provider"]
    typer.echo(
        f"resumed {platform}: every worker within {POLL_S:.0f} s" if doc["was_paused"] else f"{platform} was not paused"
    )


def register(app: typer.Typer) -> None:
    app.command("pause")(pause_command)
    app.command("resume")(resume_command)
