"""A generated audience for the demo, tests and benchmarks: users, their follows and devices.

Deterministic for a seed. Most users have one phone (FCM or APNs), some have both, a few are bots
with a signed webhook endpoint, and some follow teams without any device (they must get nothing).
"""

from __future__ import annotations

import base64
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from goalhorn.models import Device
from goalhorn.preferences.store import PreferenceStore

LOCALES = ("en", "en", "en", "es", "pt-BR", "fr", "de")


@dataclass(frozen=True, slots=True)
class Audience:
    devices: list[Device] = field(default_factory=list)
    follows: list[tuple[str, str]] = field(default_factory=list)
    webhook_secrets: dict[str, str] = field(default_factory=dict)

    @property
    def user_count(self) -> int:
        return len({user for user, _ in self.follows} | {d.user_id for d in self.devices})

    async def load(self, store: PreferenceStore, chunk: int = 5000) -> None:
        """Write the audience through the preference store, in pipelined chunks."""
        for start in range(0, len(self.devices), chunk):
            await store.add_devices(self.devices[start : start + chunk])
        for start in range(0, len(self.follows), chunk):
            await store.follow_teams(self.follows[start : start + chunk])


def generate_audience(
    team_ids: Sequence[str],
    *,
    users: int = 10_000,
    webhook_base_url: str,
    seed: int = 7,
) -> Audience:
    """Users following 1-3 of ``team_ids`` each; bots' webhooks point under ``webhook_base_url``."""
    if not team_ids:
        raise ValueError("an audience needs at least one team to follow")
    rng = random.Random(seed)
    teams = sorted(team_ids)
    devices: list[Device] = []
    follows: list[tuple[str, str]] = []
    secrets: dict[str, str] = {}
    for n in range(users):
        user_id = f"u{n:07d}"
        for team_id in rng.sample(teams, k=min(len(teams), rng.choice((1, 1, 1, 2, 2, 3)))):
            follows.append((user_id, team_id))
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
    return Audience(devices=devices, follows=follows, webhook_secrets=secrets)
