"""A generated audience for the demo, tests and benchmarks: users, their follows, devices and preferences.

Deterministic for a seed. Most users have one phone (FCM or APNs), some have both, a few are bots
with a signed webhook endpoint, and some follow teams without any device (they must get nothing).
Some watch a match; some mute a team they follow, opt out of goal alerts, have a cap of one alert per
match per 10 minutes, or have quiet hours in their own time zone that cover ``now`` (and some whose
quiet hours do not), so the same audience exercises every suppression reason.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from goalhorn.models import Device, utcnow
from goalhorn.preferences.bloom import PreferenceBloom
from goalhorn.preferences.model import Cap, Preferences, QuietHours
from goalhorn.preferences.quiet_hours import local_minute
from goalhorn.preferences.store import PreferenceStore

LOCALES = ("en", "en", "en", "es", "pt-BR", "fr", "de")
TIME_ZONES = ("America/New_York", "Europe/London", "Asia/Kolkata", "Australia/Sydney", "America/Sao_Paulo")


@dataclass(frozen=True, slots=True)
class Audience:
    devices: list[Device] = field(default_factory=list)
    follows: list[tuple[str, str]] = field(default_factory=list)
    webhook_secrets: dict[str, str] = field(default_factory=dict)
    watches: list[tuple[str, str]] = field(default_factory=list)
    preferences: dict[str, Preferences] = field(default_factory=dict)

    @property
    def user_count(self) -> int:
        return len({user for user, _ in self.follows} | {d.user_id for d in self.devices})

    async def load(self, store: PreferenceStore, bloom: PreferenceBloom | None = None, chunk: int = 5000) -> None:
        """Write the audience through the preference store, in pipelined chunks, then build the Bloom
        filter (if given) from the preferences written."""
        for start in range(0, len(self.devices), chunk):
            await store.add_devices(self.devices[start : start + chunk])
        for start in range(0, len(self.follows), chunk):
            await store.follow_teams(self.follows[start : start + chunk])
        await store.watch_matches(self.watches)
        await store.set_preferences(self.preferences)
        if bloom is not None:
            await bloom.rebuild()


def generate_audience(
    team_ids: Sequence[str],
    *,
    users: int = 10_000,
    webhook_base_url: str,
    seed: int = 7,
    game_ids: Sequence[str] = (),
    now: datetime | None = None,
) -> Audience:
    """Users following 1-3 of ``team_ids`` each (and some watching one of ``game_ids``); bots' webhooks
    point under ``webhook_base_url``; quiet hours are placed around ``now`` (default: the current time)."""
    if not team_ids:
        raise ValueError("an audience needs at least one team to follow")
    rng = random.Random(seed)
    now = now or utcnow()
    teams = sorted(team_ids)
    games = sorted(game_ids)
    devices: list[Device] = []
    follows: list[tuple[str, str]] = []
    watches: list[tuple[str, str]] = []
    secrets: dict[str, str] = {}
    preferences: dict[str, Preferences] = {}
    for n in range(users):
        user_id = f"u{n:07d}"
        followed = rng.sample(teams, k=min(len(teams), rng.choice((1, 1, 1, 2, 2, 3))))
        for team_id in followed:
            follows.append((user_id, team_id))
        if games and rng.random() < 0.08:
            watches.append((user_id, rng.choice(games)))
        prefs = _preferences(rng, followed, now)
        if not prefs.is_default():
            preferences[user_id] = prefs
        locale = rng.choice(LOCALES)
        roll = rng.random()
        if roll < 0.03:
            continue  # follows, but no device
        if roll < 0.05:
            device_id = f"{user_id}-wh"
            secret = "whsec_" + base64.b64encode(rng.randbytes(24)).decode()
            secrets[device_id] = secret
            url = f"{webhook_base_url.rstrip('/')}/hooks/{device_id}"
            devices.append(
                Device(
                    device_id=device_id,
                    user_id=user_id,
                    platform="webhook",
                    address=url,
                    secret=secret,
                    locale="en",
                )
            )
            continue
        if roll < 0.60 or roll >= 0.90:
            token = base64.urlsafe_b64encode(rng.randbytes(96)).decode().rstrip("=")
            devices.append(
                Device(device_id=f"{user_id}-a", user_id=user_id, platform="fcm", address=token, locale=locale)
            )
        if roll >= 0.60:
            devices.append(
                Device(
                    device_id=f"{user_id}-i",
                    user_id=user_id,
                    platform="apns",
                    address=rng.randbytes(32).hex(),
                    locale=locale,
                )
            )
    return Audience(devices=devices, follows=follows, webhook_secrets=secrets, watches=watches, preferences=preferences)


def _preferences(rng: random.Random, followed: Sequence[str], now: datetime) -> Preferences:
    prefs = Preferences()
    roll = rng.random()
    if roll < 0.10:
        prefs = prefs.with_changes(muted_teams=frozenset({rng.choice(followed)}))
    elif roll < 0.13:
        prefs = prefs.with_changes(opted_out=frozenset({"GOAL"}))
    elif roll < 0.15:
        prefs = prefs.with_changes(cap=Cap(max_alerts=1, window_s=600))
    elif roll < 0.22:
        zone = rng.choice(TIME_ZONES)
        quiet = rng.random() < 0.7  # the others have quiet hours that do not cover now
        offset = timedelta(hours=-3) if quiet else timedelta(hours=3)
        start = local_minute(now + offset, zone)
        end = local_minute(now + offset + timedelta(hours=6 if quiet else 2), zone)
        prefs = prefs.with_changes(time_zone=zone, quiet_hours=QuietHours(start, end))
    elif roll < 0.25:
        prefs = prefs.with_changes(opted_in=frozenset({"GAME_END"}), time_zone=rng.choice(TIME_ZONES))
    return prefs
