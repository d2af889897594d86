"""Replay the recorded game night through the whole pipeline: what ``goalhorn demo`` runs.

The audience is generated and loaded first; phones get the console provider (a dry run) or, with
``sandbox``, the real FCM and APNs providers talking to local sandbox servers; bots' webhooks go,
signed, to a local receiver that verifies them. Snapshots are fed in their recorded order, time
compressed to ``duration_s``; the summary is read from the shared pipeline counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from goalhorn.app.pipeline import Pipeline
from goalhorn.catalog.templates import Renderer
from goalhorn.counters import CounterSnapshot
from goalhorn.demo.audience import Audience, generate_audience
from goalhorn.demo.gamenight import Snapshot, load_gamenight
from goalhorn.errors import GoalhornError
from goalhorn.ingest.espn import parse_scoreboard
from goalhorn.keys import Keys, Platform
from goalhorn.models import utcnow
from goalhorn.preferences.bloom import PreferenceBloom
from goalhorn.preferences.layout import check_layout
from goalhorn.preferences.store import PreferenceStore
from goalhorn.providers import Provider
from goalhorn.providers.factory import make_provider
from goalhorn.redis_client import Redis, make_redis
from goalhorn.sandbox.servers import SandboxServers
from goalhorn.sandbox.webhook_receiver import WebhookReceiver
from goalhorn.settings import Settings


@dataclass(frozen=True, slots=True)
class NightReport:
    snapshots: int
    games: int
    users: int
    devices: int
    webhooks_received: int
    elapsed_s: float
    counters: CounterSnapshot
    pushes_received: int | None = None
    """Pushes the sandbox FCM and APNs servers accepted; None when phones went to the console."""


def teams_of(snapshots: list[Snapshot]) -> list[str]:
    """Every team id playing in the night."""
    teams: set[str] = set()
    for snap in snapshots:
        for state in parse_scoreboard(snap.body, observed_at=utcnow()).states:
            teams.update((state.home_team_id, state.away_team_id))
    return sorted(teams)


def game_ids_of(snapshots: list[Snapshot]) -> list[str]:
    return sorted({s.game_id for snap in snapshots for s in parse_scoreboard(snap.body, observed_at=utcnow()).states})


def games_of(snapshots: list[Snapshot]) -> int:
    return len(game_ids_of(snapshots))


DEMO_SUFFIX = "-demo"
DEMO_MARK = "demo-namespace"
"""A key the demo writes into its namespace, so a rerun knows the data there is the demo's own."""


class NotADemoNamespace(GoalhornError):
    """The demo's namespace holds data the demo did not write; it is left alone."""


def demo_namespace(namespace: str) -> str:
    """The namespace the demo runs in for ``GOALHORN_NAMESPACE=namespace``: its own, beside it."""
    return namespace if namespace.endswith(DEMO_SUFFIX) else namespace + DEMO_SUFFIX


async def clear_namespace(redis: Redis, namespace: str) -> None:
    """Delete every key of the demo's namespace, so a rerun starts from nothing; refuse (without deleting
    anything) when the namespace holds keys but not the demo's mark."""
    keys = Keys(namespace)
    mark = f"{namespace}:{DEMO_MARK}"
    if not await redis.exists(mark):
        async for _ in redis.scan_iter(match=keys.pattern(), count=1000):
            raise NotADemoNamespace(
                f"namespace {namespace!r} holds data the demo did not write; set GOALHORN_NAMESPACE to another name"
            )
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=Keys(namespace).pattern(), count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await redis.delete(*batch)
            batch.clear()
    if batch:
        await redis.delete(*batch)
    await redis.set(mark, "1")


async def run_night(
    settings: Settings,
    *,
    users: int = 10_000,
    duration_s: float = 8.0,
    out: TextIO | None = None,
    seed: int = 7,
    on_audience: Callable[[Audience], None] | None = None,
    sandbox: bool = False,
) -> NightReport:
    """Replay the night over ``settings``' backends; the replay itself takes about ``duration_s``.

    Phones get the console provider, or with ``sandbox`` the real FCM and APNs providers talking to
    sandbox servers in this process."""
    snapshots = load_gamenight()
    secrets: dict[str, str] = {}
    async with WebhookReceiver(secret_for=secrets.get) as receiver, contextlib.AsyncExitStack() as stack:
        audience = generate_audience(
            teams_of(snapshots), users=users, webhook_base_url=receiver.url, seed=seed, game_ids=game_ids_of(snapshots)
        )
        secrets.update(audience.webhook_secrets)
        if on_audience is not None:
            on_audience(audience)
        settings = settings.model_copy(update={"webhook_allowlist": "127.0.0.1"})
        redis = make_redis(settings)
        try:
            await clear_namespace(redis, settings.namespace)
            keys = Keys(settings.namespace)
            await check_layout(redis, keys, settings)
            buckets = settings.preference_buckets
            await audience.load(
                PreferenceStore(redis, keys, buckets=buckets),
                PreferenceBloom(redis, keys, buckets=buckets, error_rate=settings.bloom_error_rate),
            )
        finally:
            await redis.aclose()

        phones = None
        if sandbox:
            credentials_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="goalhorn-demo-")))
            phones = await stack.enter_async_context(SandboxServers(credentials_dir))

        def provider(platform: Platform, render: Renderer) -> Provider:
            return make_provider(phones.apply(settings) if phones else settings, platform, render, out)

        started = time.monotonic()
        async with Pipeline(settings, provider) as pipeline:
            span = max(snapshots[-1].t - snapshots[0].t, 1e-9)
            for snap in snapshots:
                due = started + (snap.t - snapshots[0].t) / span * duration_s
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await pipeline.ingest_scoreboard(snap.body)
            counters = await pipeline.wait_idle(timeout_s=120)
        elapsed = time.monotonic() - started
        return NightReport(
            snapshots=len(snapshots),
            games=games_of(snapshots),
            users=audience.user_count,
            devices=len(audience.devices),
            webhooks_received=len(receiver.deliveries),
            pushes_received=phones.fcm.delivered + phones.apns.delivered if phones else None,
            elapsed_s=elapsed,
            counters=counters,
        )
