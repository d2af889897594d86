"""How far an alert got: an intent's trace (``goalhorn.counters.IntentTraces``) read back.

The fanout records what the expansion found (recipients, suppressed by reason, batches and devices
queued per provider, the FCM topic messages it planned and the phones subscribed to them) and when;
each delivered batch adds its devices' outcomes per provider (sent, failed, invalid token, expired,
dead-lettered by code, duplicates skipped, retries by reason, deferred by a breaker) and when. With
``devices=True`` the intent's delivery markers are read too: which devices are marked sent, and which
are still held by an attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from goalhorn.counters import IntentTraces
from goalhorn.dispatch.delivery import TRACED
from goalhorn.keys import PLATFORMS, Keys
from goalhorn.models import DELIVERY_COUNTS, DeadLetterCode
from goalhorn.preferences.eligibility import REASONS
from goalhorn.redis_client import Redis


@dataclass(slots=True)
class ProviderTrace:
    platform: str
    batches_queued: int = 0
    devices_queued: int = 0
    topic_messages_queued: int = 0
    """Topic messages queued (FCM), each one batch whose one "device" is the topic: not in the two above,
    and in ``outcomes`` as one device each (``sent`` once FCM accepted it)."""
    outcomes: dict[str, int] = field(default_factory=dict)
    """Devices by where they ended (``DeliveryCount``): sent, failed, invalid_token, expired, dead_lettered."""
    dead_lettered: dict[str, int] = field(default_factory=dict)
    """Dead-lettered devices by code."""
    retried: dict[str, int] = field(default_factory=dict)
    """Retries by reason (a device retried twice counts twice)."""
    other: dict[str, int] = field(default_factory=dict)
    """The batch counters a trace keeps (``TRACED``): duplicates_skipped, retries, breaker_deferred..."""
    first_at: datetime | None = None
    last_at: datetime | None = None

    @property
    def settled(self) -> int:
        return sum(self.outcomes.values())


@dataclass(slots=True)
class Trace:
    intent_id: str
    event_id: str = ""
    kind: str = ""
    priority: int | None = None
    expanded: bool = False
    expired_at_fanout: bool = False
    recipients: int = 0
    """Devices sent per token (FCM topic members are not among them)."""
    topic_messages: int = 0
    """FCM topic messages planned (one per team topic and locale; ``goalhorn.topics``)."""
    topic_members: int = 0
    """Phones known to be subscribed to those topics when planned: reached through FCM's fan-out of the
    topic messages, left out of the per-token batches."""
    followers: int = 0
    followers_without_devices: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)
    times: dict[str, datetime] = field(default_factory=dict)
    """event, intent_created, expand_started, expand_done."""
    providers: dict[str, ProviderTrace] = field(default_factory=dict)
    devices: dict[str, str] | None = None
    """With ``devices=True``: device id -> its marker (``sent`` or ``inflight``)."""

    @property
    def phones(self) -> int:
        """Phones (and endpoints) the intent was for: per-token devices and topic members."""
        return self.recipients + self.topic_members

    def timings_s(self) -> dict[str, float]:
        """Seconds from the score change to each stage's mark."""
        start = self.times.get("event")
        if start is None:
            return {}
        marks = dict(self.times)
        for platform, p in self.providers.items():
            if p.first_at is not None:
                marks[f"{platform}_first_delivered"] = p.first_at
            if p.last_at is not None:
                marks[f"{platform}_last_delivered"] = p.last_at
        return {name: (when - start).total_seconds() for name, when in marks.items() if name != "event"}


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def parse(intent_id: str, fields: dict[str, str]) -> Trace:
    trace = Trace(intent_id, event_id=fields.get("event_id", ""), kind=fields.get("kind", ""))
    if fields.get("priority", "").isdigit():
        trace.priority = int(fields["priority"])
    for name, key in (
        ("event", "event_at"),
        ("intent_created", "created_at"),
        ("expand_started", "expand_started_at"),
        ("expand_done", "expand_done_at"),
    ):
        when = _time(fields.get(key))
        if when is not None:
            trace.times[name] = when
    trace.expanded = "expand:recipients" in fields
    trace.expired_at_fanout = fields.get("expand:expired") == "1"

    def number(name: str) -> int:
        value = fields.get(name, "")
        return int(value) if value.lstrip("-").isdigit() else 0

    trace.recipients = number("expand:recipients")
    trace.topic_messages = number("expand:topic_messages")
    trace.topic_members = number("expand:topic_members")
    trace.followers = number("expand:followers")
    trace.followers_without_devices = number("expand:followers_without_devices")
    trace.suppressed = {reason: number(f"expand:suppressed:{reason}") for reason in REASONS}
    for platform in PLATFORMS:
        p = ProviderTrace(platform, number(f"expand:batches:{platform}"), number(f"expand:devices:{platform}"))
        p.topic_messages_queued = number(f"expand:topic_batches:{platform}")
        p.outcomes = {c: n for c in DELIVERY_COUNTS if (n := number(f"{platform}:{c}"))}
        p.dead_lettered = {c.value: n for c in DeadLetterCode if (n := number(f"{platform}:dead_lettered:{c}"))}
        p.other = {name: n for name in TRACED if (n := number(f"{platform}:{name}"))}
        retry = f"{platform}:retry:"  # the provider's own reason for each retry, as it gave it
        p.retried = {name.removeprefix(retry): number(name) for name in fields if name.startswith(retry)}
        p.first_at, p.last_at = _time(fields.get(f"{platform}:first_at")), _time(fields.get(f"{platform}:last_at"))
        if p.batches_queued or p.topic_messages_queued or p.outcomes or p.other or p.dead_lettered:
            trace.providers[platform] = p
    return trace


async def trace(redis: Redis, keys: Keys, intent_id: str, *, devices: bool = False) -> Trace | None:
    """The trace of one intent, or None when nothing is known of it (never seen, or expired)."""
    fields = await IntentTraces(redis, keys).read(intent_id)
    if not fields:
        return None
    found = parse(intent_id, fields)
    if devices:
        found.devices = await markers(redis, keys, intent_id)
    return found


async def intents_of_event(redis: Redis, keys: Keys, event_id: str) -> list[str]:
    return await IntentTraces(redis, keys).intents_of(event_id)


async def markers(redis: Redis, keys: Keys, intent_id: str) -> dict[str, str]:
    """Device id -> marker state of every device of the intent (a SCAN over the keyspace)."""
    prefix = keys.delivery_marker(intent_id, "")
    found: dict[str, str] = {}
    names = [name async for name in redis.scan_iter(match=_glob_escape(prefix) + "*", count=1000)]
    for start in range(0, len(names), 1000):
        chunk = names[start : start + 1000]
        for name, value in zip(chunk, await redis.mget(chunk), strict=True):
            if value is None:
                continue
            text = name.decode() if isinstance(name, bytes) else str(name)
            state = value.decode() if isinstance(value, bytes) else str(value)
            found[text.removeprefix(prefix)] = "sent" if state == "sent" else "inflight"
    return found


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
