"""The dead letters as ops see them: grouped by code and provider, one by one, and replayed.

A replay puts an entry's batch back on its provider's delivery queue of its lane (by its intent's
priority, as the fanout would) as a first attempt, through the normal path: the delivery markers
skip every device already sent, so replaying an entry twice (or one whose devices went out some
other way) sends nobody twice. An entry is removed from the
stream once RabbitMQ confirmed its batch. Entries of kind ``device`` (an invalid device) and of code
``invalid_batch`` hold nothing deliverable and are never replayed; nor is an entry whose payload
no longer reads as a batch.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aio_pika
import aiormq.exceptions
from aio_pika.exceptions import DeliveryError
from pydantic import ValidationError

from goalhorn.admin.queues import amqp_channel
from goalhorn.counters import PipelineCounters, dispatch_counts
from goalhorn.dispatch import deadletters
from goalhorn.dispatch.stage import delivery_message
from goalhorn.errors import AdminError
from goalhorn.keys import PLATFORMS, Keys
from goalhorn.models import DeadLetter, DeadLetterCode, DeadLetterKind, DeliveryBatch, utcnow
from goalhorn.redis_client import Redis
from goalhorn.settings import Settings

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class Filter:
    """Which entries a command takes: by provider, by code, and from when on."""

    provider: str | None = None
    code: DeadLetterCode | None = None
    since: datetime | None = None

    @classmethod
    def parse(cls, provider: str | None, reason: str | None, since: str | None) -> Filter:
        if provider is not None and provider not in PLATFORMS:
            raise AdminError(f"--provider: {provider!r} is not one of {', '.join(PLATFORMS)}")
        code = None
        if reason is not None:
            try:
                code = DeadLetterCode(reason)
            except ValueError:
                codes = ", ".join(c.value for c in DeadLetterCode)
                raise AdminError(f"--reason: {reason!r} is not a dead-letter code; one of {codes}") from None
        return cls(provider, code, parse_since(since) if since is not None else None)

    def matches(self, entry: DeadLetter) -> bool:
        return (
            (self.provider is None or entry.platform == self.provider)
            and (self.code is None or entry.code is self.code)
            and (self.since is None or (entry.at is not None and entry.at >= self.since))
        )


def parse_since(text: str) -> datetime:
    """``30m``, ``2h``, ``1d`` ago, or an ISO 8601 time with its zone."""
    found = _DURATION.match(text.strip())
    if found:
        return utcnow() - timedelta(seconds=float(found.group(1)) * _UNITS[found.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AdminError(f"--since: {text!r} is neither a duration (30m, 2h, 1d) nor an ISO time") from None
    if when.tzinfo is None:
        raise AdminError(f"--since: {text!r} needs a time zone (e.g. 2026-11-29T21:00:00+00:00)")
    return when


@dataclass(slots=True)
class Group:
    code: DeadLetterCode
    platform: str
    entries: int = 0
    devices: int = 0
    first: datetime | None = None
    last: datetime | None = None
    example: str = ""


@dataclass(slots=True)
class Listing:
    groups: list[Group] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    """Entries not of this version (written before dead letters had kinds), with why."""


async def entries(redis: Redis, keys: Keys, where: Filter) -> AsyncIterator[DeadLetter | str]:
    since_ms = int(where.since.timestamp() * 1000) if where.since is not None else None
    async for _, entry in deadletters.read(redis, keys, since_ms=since_ms):
        if isinstance(entry, str) or where.matches(entry):
            yield entry


async def list_groups(redis: Redis, keys: Keys, where: Filter) -> Listing:
    """The matching entries grouped by (code, provider), the biggest group first."""
    groups: dict[tuple[DeadLetterCode, str], Group] = {}
    listing = Listing()
    async for entry in entries(redis, keys, where):
        if isinstance(entry, str):
            listing.unreadable.append(entry)
            continue
        group = groups.setdefault((entry.code, entry.platform), Group(entry.code, entry.platform))
        group.entries += 1
        group.devices += entry.devices
        group.first = group.first or entry.at
        group.last = entry.at
        group.example = group.example or entry.detail
    listing.groups = sorted(groups.values(), key=lambda g: (-g.devices, -g.entries, g.code, g.platform))
    return listing


async def show(redis: Redis, keys: Keys, where: Filter, limit: int) -> list[DeadLetter]:
    """Up to ``limit`` matching entries, the newest last."""
    found: list[DeadLetter] = []
    async for entry in entries(redis, keys, where):
        if not isinstance(entry, str):
            found.append(entry)
            if len(found) > limit:
                found.pop(0)
    return found


def replayable(entry: DeadLetter) -> DeliveryBatch | str:
    """The batch to put back for ``entry`` (a first attempt), or why there is none."""
    if entry.kind is DeadLetterKind.DEVICE:
        return "an invalid device: fix it in the preference store, it is not replayed"
    if entry.code is DeadLetterCode.INVALID_BATCH:
        return "an unreadable message: nothing in it can be delivered"
    try:
        batch = DeliveryBatch.from_json(entry.payload)
    except ValidationError as exc:
        return f"its payload is not a delivery batch ({exc.error_count()} errors)"
    if batch.platform != entry.platform:
        return f"a {batch.platform} batch in a {entry.platform} entry"
    return batch.model_copy(update={"attempt": 1})


@dataclass(slots=True)
class ReplayReport:
    replayed: int = 0
    devices: int = 0
    expired: int = 0
    """Replayed batches whose intent had expired: the worker drops and counts them, sends nothing."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """Entries left in place: (entry id, why)."""


async def replay(settings: Settings, redis: Redis, where: Filter, *, dry_run: bool = False) -> ReplayReport:
    """Put every matching, replayable entry's batch back on its delivery queue (see the module)."""
    keys = Keys(settings.namespace)
    report = ReplayReport()
    todo: list[tuple[DeadLetter, DeliveryBatch]] = []
    async for entry in entries(redis, keys, where):
        if isinstance(entry, str):
            report.skipped.append((entry.split(":", 1)[0], entry.split(": ", 1)[-1]))
            continue
        batch = replayable(entry)
        if isinstance(batch, str):
            report.skipped.append((entry.entry_id or "", batch))
        else:
            todo.append((entry, batch))
    if dry_run or not todo:
        report.replayed = len(todo)
        report.devices = sum(len(b.devices) for _, b in todo)
        report.expired = sum(b.intent.expired() for _, b in todo)
        return report
    counters = PipelineCounters(redis, keys)
    messages = [
        (entry, batch, delivery_message(keys, batch.encode(), settings.critical_priority)) for entry, batch in todo
    ]
    async with amqp_channel(settings, confirms=True) as channel:
        for queue in sorted({message.queue_name for _, _, message in messages}):
            try:
                await channel.declare_queue(queue, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                raise AdminError(
                    f"queue {queue!r} does not exist: start a delivery worker "
                    "(goalhorn run deliver) first, it declares the queues"
                ) from None
        for entry, batch, message in messages:
            try:
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        message.encode(),
                        priority=batch.intent.priority,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=message.queue_name,
                    mandatory=True,
                )
            except DeliveryError as exc:
                raise AdminError(
                    f"RabbitMQ did not confirm the batch of entry {entry.entry_id} ({exc}); {report.replayed} "
                    "replayed before it. Run the replay again: replayed entries are gone from the dead letters"
                ) from None
            # Published again: the pipeline's idle check counts it until a worker counts it done.
            await counters.add(dispatch_counts({"batches_published": 1, "dlq_replayed": len(batch.devices)}))
            await deadletters.delete(redis, keys, [entry.entry_id or ""])
            report.replayed += 1
            report.devices += len(batch.devices)
            report.expired += batch.intent.expired()
    return report
