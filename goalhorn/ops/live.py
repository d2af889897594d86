"""``goalhorn live``: the games' APNs broadcast channels and Live Activity registrations, as Redis holds them."""

from __future__ import annotations

import json
import re
import time

import typer
from rich.console import Console
from rich.table import Table

from goalhorn.keys import GAME_KEY_PATTERN, Keys
from goalhorn.liveactivities.registry import Channel, LiveRegistry
from goalhorn.ops.queues import fail, run, settings_or_fail
from goalhorn.redis_client import Redis, make_redis
from goalhorn.settings import Settings

app = typer.Typer(
    help="Live Activities (iOS) and Android live updates: games' broadcast channels and registrations.",
    no_args_is_help=True,
)
console = Console()
STORAGE = {0: "none kept", 1: "most recent"}


def _settings() -> Settings:
    """The settings, with the Redis the stages use (the registry is there, never in a process's own memory)."""
    settings = settings_or_fail()
    if settings.redis_url is None:
        fail("GOALHORN_REDIS_URL is not set: the channels and registrations live in the Redis the stages use")
    return settings


def _registry(settings: Settings, redis: Redis) -> LiveRegistry:
    return LiveRegistry(redis, Keys(settings.namespace), buckets=settings.preference_buckets)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


@app.command()
def channels(as_json: bool = typer.Option(False, "--json", help="A JSON list instead of a table.")) -> None:
    """The broadcast channels goalhorn holds, oldest first: game, channel id, storage policy, age, and
    how long ago the game was seen final (its channel is deleted GOALHORN_LIVE_CHANNEL_KEEP_S after, once
    the game's end update went out on it; else 30 minutes after, the life of the end update)."""
    settings = _settings()
    held = run(_channels(settings))
    now = time.time()
    if as_json:
        typer.echo(json.dumps([_row(c, now) for c in held], sort_keys=True))
        return
    table = Table("game", "channel", "storage", "age", "final since")
    for c in held:
        final = _age(now - c.final_at) if c.final_at is not None else "-"
        table.add_row(c.game_id, c.channel_id, STORAGE.get(c.storage, str(c.storage)), _age(now - c.created_at), final)
    console.print(table)
    typer.echo(f"{len(held)} of at most {settings.live_channel_max} channels")


def _row(channel: Channel, now: float) -> dict[str, object]:
    return {
        "game_id": channel.game_id,
        "channel_id": channel.channel_id,
        "storage": channel.storage,
        "age_s": round(now - channel.created_at, 1),
        "final_s": round(now - channel.final_at, 1) if channel.final_at is not None else None,
    }


async def _channels(settings: Settings) -> list[Channel]:
    redis = make_redis(settings)
    try:
        return await _registry(settings, redis).channels()
    finally:
        await redis.aclose()


@app.command()
def game(
    game_id: str = typer.Argument(..., help="The game's key, <source>:<game id> (espn:401461455)."),
    as_json: bool = typer.Option(False, "--json", help="A JSON object instead of text."),
    devices: bool = typer.Option(
        False, "--devices", help="Also list each registration: user, device (the app's install id) and kind."
    ),
) -> None:
    """Who a game's Live Activity updates reach now: its channel, and how many activities (update tokens)
    and Android live updates are registered for it (one per device: a fan's iPhone and iPad count two)."""
    if re.match(GAME_KEY_PATTERN, game_id) is None:
        fail(f"{game_id!r} is no game key: <source>:<game id>, as in espn:401461455")
    settings = _settings()
    channel, updates, android = run(_game(settings, game_id))
    out: dict[str, object] = {
        "game_id": game_id,
        "channel_id": channel.channel_id if channel else None,
        "update_tokens": sum(len(d) for d in updates.values()),
        "android_registrations": sum(len(d) for d in android.values()),
    }
    rows = [
        {"user": user, "device": device, "kind": kind}
        for kind, registered in (("update", updates), ("android", android))
        for user, by_device in sorted(registered.items())
        for device in by_device
    ]
    if devices:
        out["devices"] = rows
    if as_json:
        typer.echo(json.dumps(out, sort_keys=True))
        return
    for name, value in out.items():
        if name != "devices":
            typer.echo(f"{name}: {'-' if value is None else value}")
    if devices:
        table = Table("user", "device", "kind")
        for row in rows:
            table.add_row(row["user"], row["device"] or "-", row["kind"])
        console.print(table)


async def _game(
    settings: Settings, game_id: str
) -> tuple[Channel | None, dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    redis = make_redis(settings)
    registry = _registry(settings, redis)
    try:
        return (
            await registry.channel(game_id),
            await registry.update_devices(game_id),
            await registry.android_devices(game_id),
        )
    finally:
        await redis.aclose()
