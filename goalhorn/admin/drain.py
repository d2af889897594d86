"""Moving messages out of a queue into a JSONL file and back, losing none and loading none twice.

**Drain** takes messages in chunks (up to ``CHUNK``), writes each chunk's records, flushes and
fsyncs the file, and only then acks the chunk (one ``basic.ack`` with ``multiple``). A drain that is
interrupted or killed at any point leaves every message either fsynced in the file or unacked,
which RabbitMQ puts back in the queue. Each record names its *run*, and a run that ends normally
writes a closing line. Run again on the same file, a drain first drops a torn last line, then acks
without writing again a *redelivered* message whose id a run that never closed (a killed one)
wrote: that message was written, but the kill cut off its ack. Any other message is written, even
with an id the file has (it is another copy: loaded back and redelivered, say). A run that took
everything its queue held closes the killed runs before it too. A drain stops at ``limit``
records, once it has seen as many messages as the queue held when it started (publishers may go on
publishing), or when no message came for ``idle_s``. Messages a ``--where`` filter leaves out are
published back to the queue (confirmed) before the chunk is acked.

**Load** publishes each record to a queue with publisher confirms and ``mandatory``, keeping its
priority, headers, id and properties, and records what it loaded in Redis
(``Keys.ops_loaded``): a record is known by its id and the time it was drained, so loading the same
file twice loads nothing twice, while a message drained again later is a new record. A dramatiq message
names its queue (and so its lane and provider): it loads only into that queue or its ``.DQ``/``.XQ``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import DeliveryError
from dramatiq.common import q_name

from goalhorn.admin.queues import amqp_channel, resolve
from goalhorn.admin.where import Where
from goalhorn.errors import AdminError, ConfigError
from goalhorn.keys import Keys
from goalhorn.redis_client import make_redis
from goalhorn.settings import Settings

CHUNK = 200
LOADED_TTL_S = 30 * 24 * 3600
Progress = Callable[[int, int], None]
"""Called after each chunk with (records so far, the total expected)."""

_PROPERTIES = ("content_type", "content_encoding", "correlation_id", "reply_to", "expiration", "type", "app_id")


@dataclass(slots=True)
class DrainReport:
    queue: str
    written: int = 0
    already_in_file: int = 0
    """Redelivered messages the file already held (a drain killed between fsync and ack)."""
    put_back: int = 0
    """Messages the ``--where`` filter left out, published back to the queue."""
    seen: int = 0
    stopped: str = ""
    """Why it stopped: ``limit``, ``snapshot`` (as many seen as the queue held), ``empty``, ``interrupted``."""


@dataclass(slots=True)
class LoadReport:
    queue: str
    records: int = 0
    loaded: int = 0
    already_loaded: int = 0


def message_id(message: AbstractIncomingMessage) -> str:
    """The AMQP message id, else dramatiq's (in the body), else a digest of the body."""
    if message.message_id:
        return message.message_id
    try:
        found = json.loads(message.body).get("message_id")
    except (ValueError, AttributeError):
        found = None
    return str(found) if found else "sha256:" + hashlib.sha256(message.body).hexdigest()


def record_of(message: AbstractIncomingMessage, queue: str, drained_at: datetime, run: str = "") -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": message_id(message),
        "run": run,
        "drained_at": drained_at.isoformat(),
        "queue": queue,
        "priority": message.priority or 0,
        "message_id": message.message_id,
        "headers": _jsonable(dict(message.headers or {})),
        "properties": {name: getattr(message, name) for name in _PROPERTIES if getattr(message, name, None)},
    }
    if message.timestamp is not None:
        record["timestamp"] = message.timestamp.isoformat()
    try:
        record["body"] = message.body.decode()
    except UnicodeDecodeError:
        record["body_b64"] = base64.b64encode(message.body).decode()
    return record


def view_of(record: dict[str, Any]) -> dict[str, Any]:
    """What ``--where`` sees: the record, and the intent or batch it carries as ``payload``."""
    payload: Any = None
    try:
        body = json.loads(record.get("body", ""))
        args = body.get("args") if isinstance(body, dict) else None
        payload = json.loads(args[0]) if isinstance(args, list) and args and isinstance(args[0], str) else body
    except (ValueError, TypeError):
        payload = None
    return {**record, "payload": payload}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def _prepare(path: Path) -> tuple[set[str], list[str]]:
    """The ids written by runs that never closed, and those runs, after cutting a torn last line;
    creates the file (and fsyncs its directory) when it does not exist."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return set(), []
    with path.open("rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line cut short by a kill: its message was never acked
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    by_run: dict[str, set[str]] = {}
    closed: set[str] = set()
    for number, record in _records(path):
        if _is_closing(record):
            closed.update([record["run"], *record.get("closes", [])])
            continue
        by_run.setdefault(str(record.get("run", "")), set()).add(_record_id(record, path, number))
    open_runs = [run for run in by_run if run not in closed]
    return set().union(*(by_run[run] for run in open_runs)), open_runs


def _closing_line(out: BinaryIO, run: str, closes: list[str]) -> None:
    out.write(json.dumps({"run": run, "complete": True, "closes": closes}).encode() + b"\n")
    out.flush()
    os.fsync(out.fileno())


def _close_runs(path: Path, run: str, closes: list[str]) -> None:
    with path.open("ab") as out:
        _closing_line(out, run, closes)


def _is_closing(record: dict[str, Any]) -> bool:
    return record.get("complete") is True and isinstance(record.get("run"), str) and "id" not in record


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise AdminError(f"{path}:{number}: not a JSON line of a queue drain") from None
            if not isinstance(record, dict):
                raise AdminError(f"{path}:{number}: not a record of a queue drain")
            yield number, record


def _record_id(record: dict[str, Any], path: Path, number: int) -> str:
    found = record.get("id")
    if not isinstance(found, str) or not found or not ("body" in record or "body_b64" in record):
        raise AdminError(f"{path}:{number}: not a record of a queue drain (needs an id and a body)")
    return found


async def drain(
    settings: Settings,
    name: str,
    path: Path,
    *,
    limit: int | None = None,
    where: Where | None = None,
    stop: asyncio.Event | None = None,
    on_progress: Progress | None = None,
    idle_s: float = 1.0,
) -> DrainReport:
    """Move messages of one goalhorn queue into ``path`` (see the module)."""
    if limit is not None and limit < 1:
        raise AdminError("--limit must be at least 1")
    queue_name = resolve(Keys(settings.namespace), name).name
    where = where or Where(())
    report = DrainReport(queue_name)
    async with amqp_channel(settings, confirms=True) as channel:
        try:
            queue = await channel.declare_queue(queue_name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise AdminError(f"queue {queue_name!r} does not exist (nothing declared it yet)") from None
        in_file, open_runs = await asyncio.to_thread(_prepare, path)
        run = uuid.uuid4().hex[:12]
        held = queue.declaration_result.message_count or 0
        expected = min(held, limit) if limit is not None else held
        if held == 0:
            report.stopped = "empty"
            if open_runs:
                await asyncio.to_thread(_close_runs, path, run, open_runs)
            return report
        await channel.set_qos(prefetch_count=CHUNK)
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        tag = await queue.consume(inbox.put, no_ack=False)
        with path.open("ab") as out:
            while not report.stopped:
                budget = min(CHUNK, held - report.seen)
                if limit is not None:
                    budget = min(budget, limit - report.written)
                try:
                    chunk = [await asyncio.wait_for(inbox.get(), idle_s)]
                except TimeoutError:
                    report.stopped = "empty"
                    break
                while len(chunk) < budget and not inbox.empty():
                    chunk.append(inbox.get_nowait())
                lines: list[bytes] = []
                now = datetime.now(UTC)
                for message in chunk:
                    record = record_of(message, queue_name, now, run)
                    if not where.matches(view_of(record)):
                        await _put_back(channel, queue_name, message)
                        report.put_back += 1
                    elif message.redelivered and record["id"] in in_file:
                        report.already_in_file += 1
                    else:
                        lines.append(json.dumps(record, separators=(",", ":")).encode() + b"\n")
                        in_file.add(record["id"])
                if lines:
                    out.write(b"".join(lines))
                    out.flush()
                    os.fsync(out.fileno())
                await chunk[-1].ack(multiple=True)
                report.seen += len(chunk)
                report.written += len(lines)
                if on_progress is not None:
                    on_progress(report.written, expected)
                if limit is not None and report.written >= limit:
                    report.stopped = "limit"
                elif report.seen >= held:
                    report.stopped = "snapshot"
                elif stop is not None and stop.is_set():
                    report.stopped = "interrupted"
            # Everything written was acked. Having seen all the queue held, the messages of a killed
            # run that were never acked came back and were handled: that run is closed too.
            closes = open_runs if report.stopped in ("snapshot", "empty") else []
            _closing_line(out, run, closes)
        await queue.cancel(tag)
    # Messages prefetched but not taken were never acked: closing the channel gave them back.
    return report


async def _put_back(channel: aio_pika.abc.AbstractChannel, queue: str, message: AbstractIncomingMessage) -> None:
    copy = aio_pika.Message(
        message.body,
        headers=dict(message.headers or {}),
        priority=message.priority,
        message_id=message.message_id,
        timestamp=message.timestamp,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        **{name: getattr(message, name) for name in _PROPERTIES if getattr(message, name, None)},
    )
    await channel.default_exchange.publish(copy, routing_key=queue, mandatory=True)


def _message_of(record: dict[str, Any]) -> aio_pika.Message:
    body = base64.b64decode(record["body_b64"]) if "body_b64" in record else str(record["body"]).encode()
    timestamp = datetime.fromisoformat(record["timestamp"]) if record.get("timestamp") else None
    properties = {k: v for k, v in dict(record.get("properties") or {}).items() if k in _PROPERTIES}
    return aio_pika.Message(
        body,
        headers=dict(record.get("headers") or {}),
        priority=int(record.get("priority") or 0),
        message_id=record.get("message_id") or None,
        timestamp=timestamp,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        **properties,
    )


def _loadable(path: Path, queue: str) -> list[tuple[str, dict[str, Any]]]:
    """Every record of a drain file with the key a load knows it by; the whole file is checked
    before anything is published into ``queue``."""
    if not path.is_file():
        raise AdminError(f"{path}: no such file")
    records: list[tuple[str, dict[str, Any]]] = []
    for number, record in _records(path):
        if _is_closing(record):
            continue
        record_id = _record_id(record, path, number)
        try:
            _message_of(record)
        except (ValueError, TypeError, KeyError) as exc:
            raise AdminError(f"{path}:{number}: cannot be published ({exc})") from None
        named = _named_queue(record)
        if named is not None and q_name(named) != q_name(queue):
            raise AdminError(
                f"{path}:{number}: a message of {named}: its worker takes it only from that queue "
                f"(or its .DQ or .XQ), not from {queue}"
            )
        records.append((f"{record_id}@{record.get('drained_at', '')}", record))
    return records


def _named_queue(record: dict[str, Any]) -> str | None:
    """The queue a dramatiq message names in its body; None for any other message."""
    try:
        body = json.loads(record.get("body", ""))
    except (ValueError, TypeError):
        return None
    named = body.get("queue_name") if isinstance(body, dict) and "actor_name" in body else None
    return named if isinstance(named, str) else None


async def load(settings: Settings, path: Path, name: str, *, on_progress: Progress | None = None) -> LoadReport:
    """Publish the records of a drain file to one goalhorn queue (see the module)."""
    if not settings.redis_url:
        raise ConfigError(
            "GOALHORN_REDIS_URL is not set: a load records what it loaded in Redis, to load nothing twice"
        )
    keys = Keys(settings.namespace)
    queue_name = resolve(keys, name).name
    records = await asyncio.to_thread(_loadable, path, queue_name)
    report = LoadReport(queue_name, records=len(records))
    loaded_key = keys.ops_loaded(queue_name)
    redis = make_redis(settings)
    try:
        async with amqp_channel(settings, confirms=True) as channel:
            try:
                await channel.declare_queue(queue_name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                raise AdminError(f"queue {queue_name!r} does not exist (nothing declared it yet)") from None
            for start in range(0, len(records), CHUNK):
                chunk = records[start : start + CHUNK]
                done = await redis.smismember(loaded_key, [key for key, _ in chunk])
                todo = [(key, record) for (key, record), seen in zip(chunk, done, strict=True) if not seen]
                report.already_loaded += len(chunk) - len(todo)
                results = await asyncio.gather(
                    *(
                        channel.default_exchange.publish(_message_of(record), routing_key=queue_name, mandatory=True)
                        for _, record in todo
                    ),
                    return_exceptions=True,
                )
                confirmed = [
                    key for (key, _), result in zip(todo, results, strict=True) if not isinstance(result, BaseException)
                ]
                if confirmed:
                    await redis.sadd(loaded_key, *confirmed)
                    await redis.expire(loaded_key, LOADED_TTL_S)
                report.loaded += len(confirmed)
                failed = [r for r in results if isinstance(r, BaseException)]
                if failed:
                    why = failed[0]
                    kind = "not confirmed" if isinstance(why, DeliveryError) else type(why).__name__
                    raise AdminError(
                        f"{len(failed)} records were {kind} by RabbitMQ ({why}); {report.loaded} loaded so far. "
                        "Run the load again: what was loaded is skipped"
                    )
                if on_progress is not None:
                    on_progress(report.loaded + report.already_loaded, report.records)
    finally:
        await redis.aclose()
    return report
