"""``goalhorn topics``: keep FCM topic membership per team, and say whether it is in sync."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from goalhorn.keys import Keys
from goalhorn.ops.queues import fail, run, settings_or_fail
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import Redis, make_redis
from goalhorn.settings import Settings

if TYPE_CHECKING:  # firebase-admin and google-auth (~25 MB): imported by these commands alone, not by every one
    from goalhorn.topics.fcm_admin import TopicAdmin
    from goalhorn.topics.membership import TopicMembership
from goalhorn.topics.state import TeamStatus

app = typer.Typer(help="FCM topics: per-team membership for followers without preferences.", no_args_is_help=True)
console = Console()


def _settings(*, fcm: bool) -> Settings:
    """The settings, with the Redis the stages use, and (to change membership) the FCM project's key."""
    settings = settings_or_fail()
    if settings.redis_url is None:
        fail("GOALHORN_REDIS_URL is not set: topic membership lives in the Redis the stages use")
    if fcm and not settings.fcm_credentials_file:
        fail(
            "GOALHORN_FCM_CREDENTIALS_FILE is not set: membership changes go through firebase-admin, as the FCM project"
        )
    if fcm and not settings.fcm_topics:
        typer.echo(
            "note: GOALHORN_FCM_TOPICS is off here; the fanout sends topic messages only where it is true", err=True
        )
    return settings


def _membership(settings: Settings, redis: Redis, *, fcm: bool) -> tuple[TopicMembership, TopicAdmin | None]:
    from goalhorn.topics.fcm_admin import TopicAdmin
    from goalhorn.topics.membership import TopicMembership

    keys = Keys(settings.namespace)
    admin = TopicAdmin(settings) if fcm else None
    store = PreferenceStore(redis, keys, buckets=settings.preference_buckets)
    membership = TopicMembership(
        redis, keys, admin, store, buckets=settings.preference_buckets, prefix=settings.fcm_topic_prefix
    )
    return membership, admin


@app.command()
def sync(
    teams: Annotated[list[str] | None, typer.Argument(help="Teams to reconcile (default: those already kept).")] = None,
    follow: bool = typer.Option(
        False,
        "--follow",
        help="Then keep applying changes (mutes, opt-outs, new or dead devices, follows) as they are written, "
        "until Ctrl-C or SIGTERM: what keeps topics in sync between reconciles.",
    ),
    interval: float = typer.Option(0.5, "--interval", min=0.05, help="Seconds between rounds with --follow."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table."),
) -> None:
    """Reconcile teams' FCM topics with their followers (subscribe through firebase-admin, <= 1,000
    tokens a call, backing off on 429), then apply the changes written meanwhile. A team is in sync
    once this finished without leftovers; the fanout then sends it one topic message per locale."""
    settings = _settings(fcm=True)
    run(_sync(settings, teams or [], follow, interval, as_json))


async def _sync(settings: Settings, teams: list[str], follow: bool, interval: float, as_json: bool) -> None:
    redis = make_redis(settings)
    membership, admin = _membership(settings, redis, fcm=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with membership.locked():
            for team_id in teams or await membership.teams():
                report = await membership.sync_team(team_id)
                _emit(as_json, "synced", dataclasses.asdict(report))
            applied = await membership.apply_changes()
            _emit(as_json, "applied", dataclasses.asdict(applied))
        if follow:
            typer.echo("following changes")
        while follow and not stop.is_set():
            async with membership.locked():
                applied = await membership.apply_changes()
            if applied.users:
                _emit(as_json, "applied", dataclasses.asdict(applied))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        if admin is not None:
            await admin.aclose()
        await redis.aclose()


def _emit(as_json: bool, what: str, fields: dict[str, object]) -> None:
    if as_json:
        typer.echo(json.dumps({"what": what, **fields}, sort_keys=True))
    else:
        typer.echo(f"{what}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))


@app.command()
def status(
    teams: Annotated[list[str] | None, typer.Argument(help="Teams to show (default: every kept team).")] = None,
    as_json: bool = typer.Option(False, "--json", help="A JSON list instead of a table."),
) -> None:
    """Whether each team's topics are in sync (a full reconcile under the current subscriber epoch, and
    no follower with a change not applied yet), their members per topic and pending topic sends."""
    settings = _settings(fcm=False)
    statuses = run(_status(settings, teams or []))
    if as_json:
        out = [{**dataclasses.asdict(s), "in_sync": s.in_sync} for s in statuses]
        typer.echo(json.dumps(out, sort_keys=True))
        return
    table = Table("team", "in sync", "reconciled", "marked followers", "pending sends", "members")
    for s in statuses:
        members = ", ".join(f"{topic}={n}" for topic, n in sorted(s.members.items())) or "-"
        marked = "many" if s.marked_followers is None else str(s.marked_followers)
        in_sync, synced = ("yes" if flag else "no" for flag in (s.in_sync, s.synced))
        table.add_row(s.team_id, in_sync, synced, marked, str(s.leases), members)
    console.print(table)


async def _status(settings: Settings, teams: list[str]) -> list[TeamStatus]:
    redis = make_redis(settings)
    try:
        membership, _ = _membership(settings, redis, fcm=False)
        out = []
        for team_id in teams or await membership.teams():
            # a topic send stops holding its team 30 s after FCM accepted it (not at the alert's expiry):
            # count what still holds it, as a sync would see it
            await membership.state.leases_clear(team_id)
            out.append(await membership.status_of(team_id))
        return out
    finally:
        await redis.aclose()
