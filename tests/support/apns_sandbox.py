"""Settings pointing the APNs provider and the channel client at an in-process APNs sandbox, and the
Live Activity intents and devices the deliver side is given (as LA-INGEST and LA-AUDIENCE build them)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from goalhorn.models import DeliveryBatch, Device, EventKind, Intent, Sport, utcnow
from goalhorn.sandbox.apns_server import ApnsSandbox
from goalhorn.settings import Settings


def apns_settings(sandbox: ApnsSandbox, key_id: str = "KEY1", *, trusted: bool = True, **overrides: Any) -> Settings:
    """The provider and the channel client aimed at ``sandbox`` with a fresh key it trusts (or not)."""
    fields: dict[str, Any] = {
        "apns_key_file": str(sandbox.signing_key(key_id, trusted=trusted)),
        "apns_key_id": key_id,
        "apns_team_id": sandbox.team_id,
        "apns_topic": sandbox.topic,
        "apns_host": sandbox.host,
        "apns_port": sandbox.port,
        "apns_channels_host": sandbox.host,
        "apns_channels_port": sandbox.channels_port,
        "apns_ca_file": str(sandbox.cert_path),
        "apns_timeout_s": 2.0,
    }
    return Settings(**(fields | overrides))


def token(i: int) -> str:
    return f"{i:064x}"


def live_aps(event: str = "update", **extra: Any) -> dict[str, Any]:
    """A Live Activity ``aps`` as the contract has it (content-state of a soccer match)."""
    now = int(time.time())
    aps: dict[str, Any] = {
        "event": event,
        "timestamp": now,
        "content-state": {
            "home": "NYC",
            "away": "NY",
            "home_score": 1,
            "away_score": 0,
            "period": 1,
            "clock": "12'",
            "status": "live",
            "detail": "1st half",
            "last_event": "GOAL Martinez 12'",
            "updated_at": now,
        },
        "stale-date": now + 120,
    }
    if event == "start":
        aps |= {"attributes-type": "GameActivityAttributes", "attributes": {"game_id": "g1", "league": "mls"}}
    if event == "end":
        aps["dismissal-date"] = now + 900
    return aps | extra


def live_intent(event: str = "update", *, priority: int = 9, aps: dict[str, Any] | None = None, **data: str) -> Intent:
    """A Live Activity intent of game g1 carrying ``aps`` (compact JSON) and the Android live update."""
    now = utcnow()
    body = aps if aps is not None else live_aps(event)
    live_update = {"activity_id": "g1", "event": event, "timestamp": str(body.get("timestamp", 0)), "home_score": "1"}
    return Intent(
        intent_id=f"la-{event}-{time.monotonic_ns()}",
        event_id=f"live:g1:{time.monotonic_ns()}",
        kind=EventKind.GOAL,
        sport=Sport.SOCCER,
        game_id="g1",
        team_id="t1",
        priority=priority,
        segments=("live:g1",),
        template="liveactivity",
        collapse_key="live:g1",
        data={
            "apns_push_type": "liveactivity",
            "liveactivity": json.dumps(body, separators=(",", ":")),
            "live_update": json.dumps(live_update, separators=(",", ":")),
            "activity_id": "g1",
            "live_event": event,
            **data,
        },
        event_at=now,
        created_at=now,
        expires_at=now + timedelta(seconds=600),
    )


def channel_device(channel_id: str) -> Device:
    return Device(device_id="channel:g1", user_id="channel:g1", platform="apns", address=f"channel:{channel_id}")


def token_device(i: int, kind: str = "update") -> Device:
    return Device(device_id=f"la:{kind}:u{i}:g1", user_id=f"u{i}", platform="apns", address=token(i))


def batch_of(intent: Intent, *devices: Device) -> DeliveryBatch:
    return DeliveryBatch(batch_id="b-la", platform=devices[0].platform, intent=intent, devices=devices)
