"""goalhorn's RabbitMQ queues as ops see them: which they are, how full, and purging one.

A namespace has the intent queue (``<ns>.intents.expand``) and, per provider and lane, dramatiq's
delivery queue (``<ns>.delivery.<platform>``, ``<ns>.delivery.<platform>.critical``), its delay queue
(``.DQ``: retries, deferred and waiting batches) and its dead-letter queue (``.XQ``, see
docs/delivery.md). Ready messages and consumers
come from a passive declare over AMQP; unacked messages and the head message's timestamp only
RabbitMQ's own tools know, so they are read from ``rabbitmqctl`` when the broker is on this machine
and it is installed, and are otherwise unknown (``None``). With Redis, the stats also say which
providers are paused and how many entries goalhorn's dead-letter stream holds.
"""

from __future__ import annotations

import asyncio
import enum
import json
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection

from goalhorn.dispatch.pause import paused
from goalhorn.errors import AdminError, ConfigError
from goalhorn.keys import LANES, PLATFORMS, Keys, Lane, Platform
from goalhorn.redis_client import make_redis
from goalhorn.settings import Settings

NO_AMQP = "GOALHORN_AMQP_URL is not set: the queues live in RabbitMQ (e.g. amqp://guest:guest@127.0.0.1:5672/)"
RABBITMQCTL_TIMEOUT_S = 10.0


class QueueKind(enum.StrEnum):
    INTENTS = "intents"
    DELIVERY = "delivery"
    DELAY = "delay"
    DEAD = "dead"
    DEAD_LETTERS = "dead letters"
    """goalhorn's own dead letters: a Redis stream, not a queue (``goalhorn dlq``); ready = entries."""


@dataclass(frozen=True, slots=True)
class QueueName:
    name: str
    kind: QueueKind
    platform: Platform | None = None
    lane: Lane | None = None


def namespace_queues(keys: Keys) -> list[QueueName]:
    """Every queue goalhorn declares in ``keys``' namespace."""
    out = [QueueName(keys.intent_queue, QueueKind.INTENTS)]
    for platform in PLATFORMS:
        for lane in LANES:
            base = keys.delivery_queue(platform, lane)
            out.append(QueueName(base, QueueKind.DELIVERY, platform, lane))
            out.append(QueueName(base + ".DQ", QueueKind.DELAY, platform, lane))
            out.append(QueueName(base + ".XQ", QueueKind.DEAD, platform, lane))
    return out


def resolve(keys: Keys, name: str) -> QueueName:
    """A queue of the namespace by its full name or by the part after ``<ns>.`` (``delivery.fcm.XQ``)."""
    known = {q.name: q for q in namespace_queues(keys)}
    full = name if name in known else f"{keys.namespace}.{name}"
    if full not in known:
        short = ", ".join(q.name.removeprefix(keys.namespace + ".") for q in known.values())
        raise AdminError(f"{name!r} is not a goalhorn queue of namespace {keys.namespace!r}; one of: {short}")
    return known[full]


@dataclass(frozen=True, slots=True)
class QueueStats:
    name: str
    kind: QueueKind
    platform: Platform | None
    exists: bool
    ready: int = 0
    consumers: int = 0
    unacked: int | None = None
    """Delivered to a consumer, not yet acked; ``None``: unknown (no ``rabbitmqctl`` here)."""
    head_age_s: float | None = None
    """Age of the message at the head of the queue (the next one out, by priority), when known: from
    RabbitMQ for a message with an AMQP timestamp, else by peeking (``peek``)."""
    paused: bool | None = None
    """For a provider's queues: whether ``goalhorn pause`` holds it (None: no Redis to ask)."""
    lane: Lane | None = None
    """For a provider's queues: the lane (``normal``, ``critical``)."""

    def as_json(self) -> dict[str, object]:
        return asdict(self)


@asynccontextmanager
async def amqp_channel(settings: Settings, *, confirms: bool = False) -> AsyncIterator[AbstractChannel]:
    """One connection and channel to the settings' RabbitMQ, closed after the block."""
    if not settings.amqp_url:
        raise ConfigError(NO_AMQP)
    connection = await _connect(settings.amqp_url)
    try:
        yield await connection.channel(publisher_confirms=confirms)
    finally:
        await connection.close()


async def _connect(url: str) -> AbstractConnection:
    try:
        return await aio_pika.connect(url, timeout=10)
    except (OSError, aiormq.exceptions.AMQPError, TimeoutError) as exc:
        raise ConfigError(f"RabbitMQ at {_safe(url)} does not answer ({type(exc).__name__}: {exc})") from exc


def _safe(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 5672}{parts.path or '/'}"


async def queue_stats(settings: Settings, *, peek: bool = False) -> list[QueueStats]:
    """Every goalhorn queue of the namespace, absent ones included (``exists=False``). With ``peek``,
    the head message of each queue that has one is taken and put straight back (``basic.get`` then
    ``basic.nack`` with requeue: it keeps its place, marked redelivered) to read its age."""
    keys = Keys(settings.namespace)
    names = namespace_queues(keys)
    if not settings.amqp_url:
        raise ConfigError(NO_AMQP)
    extra = await _rabbitmqctl(settings)
    held, dead_letters = await _from_redis(settings)
    out: list[QueueStats] = []
    connection = await _connect(settings.amqp_url)
    try:
        for q in names:
            channel = await connection.channel()
            try:
                result = await channel.declare_queue(q.name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                out.append(
                    QueueStats(q.name, q.kind, q.platform, exists=False, paused=_held(held, q.platform), lane=q.lane)
                )
                continue
            count = result.declaration_result
            unacked, head_age = extra.get(q.name, (None, None))
            if peek and head_age is None and count.message_count:
                head_age = await _head_age(result)
            out.append(
                QueueStats(
                    q.name,
                    q.kind,
                    q.platform,
                    exists=True,
                    ready=count.message_count or 0,
                    consumers=count.consumer_count or 0,
                    unacked=unacked,
                    head_age_s=head_age,
                    paused=_held(held, q.platform),
                    lane=q.lane,
                )
            )
            await channel.close()
    finally:
        await connection.close()
    if dead_letters is not None:
        out.append(QueueStats(keys.dead_letters(), QueueKind.DEAD_LETTERS, None, exists=True, ready=dead_letters))
    return out


async def _head_age(queue: aio_pika.abc.AbstractQueue) -> float | None:
    """Age of the head message, from its AMQP timestamp, else dramatiq's ``message_timestamp``, else
    an intent's ``created_at``; None when it has none of them (or another consumer took it first)."""
    message = await queue.get(no_ack=False, fail=False)
    if message is None:
        return None
    try:
        return _age_of(message.timestamp, message.body)
    finally:
        await message.nack(requeue=True)


def _age_of(timestamp: datetime | None, body: bytes) -> float | None:
    now = time.time()
    if timestamp is not None:
        stamp = timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)
        return max(0.0, now - stamp.timestamp())
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("message_timestamp"), int | float):
        return max(0.0, now - float(data["message_timestamp"]) / 1000)
    try:
        created = datetime.fromisoformat(str(data["created_at"]))
    except (KeyError, ValueError):
        return None
    return max(0.0, now - created.timestamp()) if created.tzinfo else None


async def _from_redis(settings: Settings) -> tuple[frozenset[str] | None, int | None]:
    """The paused providers and the dead-letter stream's length; (None, None) without Redis."""
    if not settings.redis_url:
        return None, None
    redis = make_redis(settings)
    keys = Keys(settings.namespace)
    try:
        return frozenset(await paused(redis, keys)), int(await redis.xlen(keys.dead_letters()))
    finally:
        await redis.aclose()


def _held(held: frozenset[str] | None, platform: Platform | None) -> bool | None:
    return None if held is None or platform is None else platform in held


async def _rabbitmqctl(settings: Settings) -> dict[str, tuple[int | None, float | None]]:
    """``{queue: (unacked, head age)}`` from ``rabbitmqctl list_queues`` when the broker is local."""
    tool = shutil.which("rabbitmqctl")
    if tool is None or not settings.amqp_url:
        return {}
    url = urlsplit(settings.amqp_url)
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        return {}
    vhost = unquote(url.path[1:]) if len(url.path) > 1 else "/"
    columns = ["name", "messages_unacknowledged", "head_message_timestamp"]
    try:
        proc = await asyncio.create_subprocess_exec(
            tool, "list_queues", "-q", "-p", vhost, *columns, "--formatter", "json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), RABBITMQCTL_TIMEOUT_S)
        rows = json.loads(out or b"[]")
    except (OSError, ValueError, TimeoutError):
        return {}
    if not isinstance(rows, list):
        return {}
    prefix = Keys(settings.namespace).namespace + "."
    found: dict[str, tuple[int | None, float | None]] = {}
    for row in rows:
        if not isinstance(row, dict) or not str(row.get("name", "")).startswith(prefix):
            continue
        unacked = row.get("messages_unacknowledged")
        stamp = row.get("head_message_timestamp")
        age = time.time() - float(stamp) if isinstance(stamp, int | float) and stamp else None
        found[str(row["name"])] = (int(unacked) if isinstance(unacked, int) else None, age)
    return found


async def purge(settings: Settings, name: str) -> int:
    """Drop every ready message of one goalhorn queue; returns how many (unacked ones stay)."""
    queue = resolve(Keys(settings.namespace), name)
    async with amqp_channel(settings) as channel:
        try:
            declared_queue = await channel.declare_queue(queue.name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise AdminError(f"queue {queue.name!r} does not exist (nothing declared it yet)") from None
        result = await declared_queue.purge()
        return int(result.message_count or 0)
