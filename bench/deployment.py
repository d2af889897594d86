"""A goalhorn deployment on one machine, as a user runs it, for the benches and the chaos suite.

Everything goes through goalhorn's public surface: the ``goalhorn sandbox --record`` and ``goalhorn run
fanout|deliver`` commands as subprocesses, subscribers written by ``goalhorn subscribers import``'s own
library, intents put on the intent queue the way ingest does, the sandbox's record of accepted pushes,
and each process's ``/metrics``. No goalhorn internals, so it measures whatever main holds.

API::

    with Deployment(work_dir) as d:            # starts the sandbox (its own process, --record)
        d.start_stages(fanout=1, deliver=2)    # "fanout", "deliver-1", "deliver-2"; waits until running
        d.start("deliver", name="deliver-3", env={"GOALHORN_WORKER_THREADS": "4"})
        audience = await d.load_audience("t1", 10_000)      # 60 % FCM, 35 % APNs, 5 % webhooks
        intent = goal_intent(d.namespace, "t1", n=1)        # a priority-9 goal, TTL 300 s
        sent_at = await d.publish_intent(intent)            # on <ns>.intents.expand, confirmed
        d.ledger.expect(intent, audience)                   # every device of the audience, once
        report = d.ledger.wait(timeout_s=60)                # until all arrived (or the timeout)
        report.intents[intent.intent_id].once / .lost / .duplicated / .first_at / .last_at
        d.kill("deliver-1"); d.restart("deliver-1"); d.terminate("fanout")
        d.peak_rss_mb("deliver-1"); d.cpu_s("deliver-1"); d.metrics("fanout")
    # on exit: every process stopped (SIGTERM, then SIGKILL), the namespace's Redis keys and
    # RabbitMQ queues deleted, the sandbox stopped.

- :class:`Deployment` ``(work_dir, *, redis_url, amqp_url, namespace, env, webhook_secret, control)``: a
  context manager (sync; its helpers that talk to Redis or RabbitMQ are coroutines). ``env`` is added to
  every process's environment (``GOALHORN_*`` of the caller's own environment are left out).
  ``processes`` maps names to :class:`tests.processes.Process` (``.proc.pid``, ``.log()``,
  ``.wait_for(regex)``). ``start(stage, name=, env=, wait=True)`` starts ``goalhorn run <stage>
  --metrics-port <free port>`` (stage ``fanout``, ``deliver``, ``ingest`` or ``all``);
  ``start_stages(fanout=, deliver=, env=)``; ``kill`` (SIGKILL), ``terminate`` (SIGTERM and wait;
  returns the exit code), ``restart(name, kill=True)``; ``delete_queues()`` (with the stages stopped:
  drops a backlog); ``peak_rss_mb`` (``VmHWM``, kept across restarts and after the process exits once
  :meth:`Deployment.sample` read it); ``cpu_s`` (user + system time of the current run); ``metrics``
  (``/metrics`` as ``{"name{labels}": value}``). ``env`` is what the processes get (sandbox exports
  included), ``record`` the sandbox's JSONL, ``settings()`` the same as
  :class:`goalhorn.settings.Settings`; with ``control=True`` the sandbox also serves its control
  endpoint (fault windows, counts) at ``control_url``.
- :meth:`Deployment.load_audience` ``(team, size, *, mix=MIX, chunk=..., preferences_every=0)`` ->
  :class:`Audience`: ``size`` followers of ``team``, one device each, written by :func:`store_audience`
  exactly as ``goalhorn subscribers import`` stores new users (the store's own writes); webhook devices
  point at the sandbox receiver with its secret; every ``preferences_every``-th follower has a
  preference record that excludes them from nothing (a mute of another team), so is no FCM topic member.
  Addresses encode the audience's tag and the follower's index, so a record maps back to its device
  without a table.
- :func:`goal_intent` ``(namespace, team, n, *, priority=9, ttl_s=300, collapse_key=..., kind=GOAL)``:
  an intent for the team's followers (the sandbox records its ``intent_id`` with each push; its
  rendered body is unique per ``n`` too, for a sandbox that records none).
  :meth:`Deployment.publish_intent` publishes it (priority, message id = intent id) and returns the
  wall-clock time it was confirmed.
- :class:`Ledger` (``deployment.ledger``): ``expect(intent, audience)``; ``intent(id)``; ``scan()`` reads the records
  that arrived since the last scan; ``report()`` -> :class:`LedgerReport` (per intent: ``once``,
  ``lost``, ``duplicated`` devices and ``extra`` copies, ``first_at``/``last_at``, per provider; and
  ``strays``, records matching no expectation); ``wait(timeout_s, settle_s, intents=, idle_s=)`` scans
  until every expected push (of ``intents``) arrived (then ``settle_s`` more, for duplicates), the
  timeout, or ``idle_s`` without any new record; ``pushes`` is the
  number of record lines so far (cheap: counts line ends). A tally's ``routes`` counts the records per
  route (``fcm``, ``apns``, ``webhook``, and ``fcm/topic`` for pushes the sandbox fanned out from an
  FCM topic message), each with its first and last stamp.
- With ``control=True``: ``control_json(path)`` (``/counts``, ``/topics``) and ``requests_received()``
  (push requests per provider so far).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

from goalhorn.catalog import default_catalog
from goalhorn.keys import Keys, Platform
from goalhorn.models import EventKind, Intent, Sport
from goalhorn.redis_client import Redis
from goalhorn.settings import LOCAL_AMQP_URL, LOCAL_REDIS_URL, Settings
from tests.processes import Process, clean_env, exports, free_port

MIX: tuple[tuple[Platform, int], ...] = (("fcm", 60), ("apns", 35), ("webhook", 5))
"""The realistic provider mix, in percent."""
OTHER_TEAM = "bench-other-team"
"""The preference a follower with preferences has (``Audience.preferences_every``): a mute of a team
they do not follow, a record that excludes them from none of the bench's alerts, yet keeps them out of
FCM topics (any mute is judged per token; a time zone alone would not: it excludes nothing)."""
STAGES = ("fanout", "deliver", "ingest", "all")
RUNNING = r"running \(namespace"
STOP_TIMEOUT_S = 70.0
_FCM_FILLER = "APA91b" + "Xy7_-Qz3" * 18  # an FCM token is ~150 URL-safe characters


T = TypeVar("T")


def _run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, whether or not an event loop runs in this thread."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return cast(T, box["value"])


# --- audience ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Audience:
    """``size`` followers of ``team``, one device each; device ``i``'s address encodes ``tag`` and ``i``."""

    team: str
    size: int
    tag: int
    webhook_base: str
    mix: tuple[tuple[Platform, int], ...] = MIX
    preferences_every: int = 0
    """Every n-th follower (``i % n == n - 1``) has a preference record (:data:`OTHER_TEAM` muted); 0: none."""

    def has_preferences(self, i: int) -> bool:
        return self.preferences_every > 0 and i % self.preferences_every == self.preferences_every - 1

    def platform(self, i: int) -> Platform:
        slot = i % 100
        for platform, share in self.mix:
            if slot < share:
                return platform
            slot -= share
        return self.mix[-1][0]

    def user(self, i: int) -> str:
        return f"{self.team}-u{i}"

    def address(self, i: int) -> str:
        platform = self.platform(i)
        if platform == "fcm":
            return f"{self.tag:08x}:{i:09d}:{_FCM_FILLER}"
        if platform == "apns":
            return f"{self.tag:08x}{i:056x}"
        return f"{self.webhook_base}/hooks/{self.tag:08x}-{i}"

    def counts(self) -> dict[Platform, int]:
        full, rest = divmod(self.size, 100)
        out: dict[Platform, int] = {}
        for i in range(100):
            platform = self.platform(i)
            out[platform] = out.get(platform, 0) + full + (1 if i < rest else 0)
        return out

    def lines(self, secret: str) -> Iterator[bytes]:
        """The audience as ``goalhorn subscribers import`` JSONL."""
        follows = {"teams": [self.team]}
        for i in range(self.size):
            platform = self.platform(i)
            device: dict[str, str] = {"platform": platform, "address": self.address(i)}
            if platform == "webhook":
                device["secret"] = secret
            row: dict[str, object] = {"user_id": self.user(i), "devices": [device], "follows": follows}
            if self.has_preferences(i):
                row["preferences"] = {"muted_teams": [OTHER_TEAM]}
            yield json.dumps(row, separators=(",", ":")).encode() + b"\n"


def locate(address: str) -> tuple[int, int] | None:
    """``(tag, index)`` of an address an :class:`Audience` made, or None."""
    try:
        if "/hooks/" in address:
            tag, _, index = address.rpartition("/hooks/")[2].partition("-")
            return int(tag, 16), int(index)
        if ":" in address:
            tag, index, _ = address.split(":", 2)
            return int(tag, 16), int(index)
        if len(address) == 64:
            return int(address[:8], 16), int(address[8:], 16)
    except ValueError:
        return None
    return None


class _LineStream:
    """Generated lines as the byte stream ``import_subscribers`` reads (it only calls ``readline``)."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines

    def readline(self, limit: int = -1) -> bytes:
        return next(self._lines, b"")


async def store_audience(
    redis: Redis, settings: Settings, audience: Audience, secret: str, *, chunk: int = 5000
) -> None:
    """Write ``audience`` as an import of its :meth:`Audience.lines` writes users new to the namespace:
    the import's layout check, then per chunk the store's own writes (``add_devices``, ``follow_teams``,
    which stamp the subscriber epoch) and the import's profile records, the devices built as
    ``parse_line`` builds them. It skips what makes the import slow on a fresh audience (generating and
    validating JSON lines, reading back the stored records to compare): ~3x faster; tests/test_bench_e2e.py
    checks it stores what an import of the same lines stores."""
    from goalhorn.admin.subscriber_lines import DEFAULT_LOCALE, Follows, device_id_for
    from goalhorn.admin.subscribers import profile_bucket
    from goalhorn.models import Device
    from goalhorn.preferences.layout import check_layout
    from goalhorn.preferences.model import Preferences
    from goalhorn.preferences.reader import group_by_bucket
    from goalhorn.preferences.store import PreferenceStore

    keys = Keys(settings.namespace)
    await check_layout(redis, keys, settings)
    store = PreferenceStore(redis, keys, buckets=settings.preference_buckets)
    with_preferences = Preferences(muted_teams=frozenset({OTHER_TEAM}))
    profile = json.dumps(Follows(teams=frozenset({audience.team})).record(), separators=(",", ":"), sort_keys=True)
    for start in range(0, audience.size, chunk):
        devices = []
        for i in range(start, min(audience.size, start + chunk)):
            platform, address = audience.platform(i), audience.address(i)
            devices.append(
                Device(
                    platform=platform,
                    device_id=device_id_for(platform, address),
                    user_id=audience.user(i),
                    address=address,
                    secret=secret if platform == "webhook" else None,
                    locale=DEFAULT_LOCALE,
                )
            )
        users = [d.user_id for d in devices]
        await store.add_devices(devices)
        await store.follow_teams([(user, audience.team) for user in users])
        end = min(audience.size, start + chunk)
        await store.set_preferences(
            {audience.user(i): with_preferences for i in range(start, end) if audience.has_preferences(i)}
        )
        pipe = redis.pipeline(transaction=False)
        for bucket, ids in group_by_bucket(users, settings.preference_buckets).items():
            pipe.hset(profile_bucket(keys, bucket), mapping=dict.fromkeys(ids, profile))
        await pipe.execute()
    if audience.preferences_every and audience.size >= audience.preferences_every:
        # as the import does after writing preferences: the Bloom filter folds the new users in
        from goalhorn.preferences.bloom import PreferenceBloom

        bloom = PreferenceBloom(redis, keys, buckets=settings.preference_buckets, error_rate=settings.bloom_error_rate)
        await bloom.rebuild_if_due(await bloom.snapshot(), 1)


# --- intents ----------------------------------------------------------------------------------------
def goal_intent(
    namespace: str,
    team: str,
    n: int,
    *,
    priority: int = 9,
    ttl_s: float = 300.0,
    collapse_key: str | None = None,
    kind: EventKind = EventKind.GOAL,
    game_id: str = "bench-game",
) -> Intent:
    """An intent for the followers of ``team`` with the packaged ``goal`` template; ``n`` makes the
    rendered body unique (the home score), so each record names its intent."""
    now = datetime.now(UTC)
    intent_id = f"{namespace}-{team}-{n}-{uuid.uuid4().hex[:8]}"
    return Intent(
        intent_id=intent_id,
        event_id=f"e-{intent_id}",
        kind=kind,
        sport=Sport.SOCCER,
        game_id=game_id,
        team_id=team,
        priority=priority,
        segments=("scoring_team_followers",),
        template="goal",
        data={
            "team": team,
            "home_team": team,
            "away_team": "AWAY",
            "home_score": str(n),
            "away_score": "0",
            "clock": f"{uuid.uuid4().hex[:6]}'",
        },
        collapse_key=collapse_key if collapse_key is not None else f"goal:{game_id}",
        event_at=now,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )


# --- ledger -----------------------------------------------------------------------------------------
@dataclass(slots=True)
class RouteTally:
    """The records of one route of an intent's pushes: ``fcm``, ``apns``, ``webhook``, or ``fcm/topic``
    (a phone reached through an FCM topic message, recorded by the sandbox's fan-out)."""

    records: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None


@dataclass(slots=True)
class IntentTally:
    """What the record shows of one intent's pushes."""

    intent_id: str
    expected: int
    once: int = 0
    lost: int = 0
    duplicated: int = 0
    """Devices that got more than one copy."""
    extra: int = 0
    """Copies beyond the first, over all devices."""
    first_at: datetime | None = None
    last_at: datetime | None = None
    per_provider: dict[str, int] = field(default_factory=dict)
    routes: dict[str, RouteTally] = field(default_factory=dict)

    @property
    def exactly_once(self) -> bool:
        return self.once == self.expected and not self.lost and not self.duplicated


@dataclass(slots=True)
class LedgerReport:
    intents: dict[str, IntentTally]
    strays: int
    """Records matching no expected (intent, device): a push to someone who should get nothing."""
    pushes: int

    @property
    def expected(self) -> int:
        return sum(t.expected for t in self.intents.values())

    @property
    def once(self) -> int:
        return sum(t.once for t in self.intents.values())

    @property
    def lost(self) -> int:
        return sum(t.lost for t in self.intents.values())

    @property
    def duplicated(self) -> int:
        return sum(t.duplicated for t in self.intents.values())

    @property
    def exactly_once(self) -> bool:
        return not self.strays and all(t.exactly_once for t in self.intents.values())

    def first_at(self) -> datetime | None:
        stamps = [t.first_at for t in self.intents.values() if t.first_at is not None]
        return min(stamps) if stamps else None

    def last_at(self) -> datetime | None:
        stamps = [t.last_at for t in self.intents.values() if t.last_at is not None]
        return max(stamps) if stamps else None


@dataclass(slots=True)
class _Expectation:
    intent: Intent
    audience: Audience
    copies: bytearray
    first_at: str | None = None
    last_at: str | None = None
    per_provider: dict[str, int] = field(default_factory=dict)
    routes: dict[str, list[Any]] = field(default_factory=dict)
    """route -> [records, first_at, last_at] (ISO stamps, as recorded)."""


class Ledger:
    """Expected (intent, device) pairs against the sandbox's record of accepted pushes.

    A push is matched to its intent by the ``intent_id`` the sandbox records (or, from a sandbox that
    records none, by its rendered title and body, unique per intent: see :func:`goal_intent`), and to
    its device by its token or URL (which encodes the audience and the follower)."""

    def __init__(self, record: Path) -> None:
        self.record = record
        self._by_text: dict[tuple[str, str], _Expectation] = {}
        self._by_id: dict[str, _Expectation] = {}
        self._offset = 0
        self._partial = b""
        self._counted_offset = 0
        self._lines = 0
        self.strays = 0
        self.stray_samples: list[str] = []

    def expect(self, intent: Intent, audience: Audience, locale: str = "en") -> None:
        rendered = default_catalog().render(intent, locale)
        expectation = _Expectation(intent, audience, bytearray(audience.size))
        self._by_text[(rendered.title, rendered.body)] = expectation
        self._by_id[intent.intent_id] = expectation

    def intent(self, intent_id: str) -> Intent:
        """An expected intent, by id."""
        return self._by_id[intent_id].intent

    @property
    def pushes(self) -> int:
        """Record lines so far (counted without parsing)."""
        if self.record.exists():
            with self.record.open("rb") as f:
                f.seek(self._counted_offset)
                while chunk := f.read(1 << 20):
                    self._lines += chunk.count(b"\n")
                    self._counted_offset += len(chunk)
        return self._lines

    def scan(self) -> int:
        """Read the records that arrived since the last scan; returns how many."""
        if not self.record.exists():
            return 0
        with self.record.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        n = 0
        for line in data[:cut].splitlines():
            n += 1
            self._take(json.loads(line))
        return n

    def _take(self, record: dict[str, Any]) -> None:
        address = record.get("token") or record.get("url") or ""
        if "intent_id" in record:
            expectation = self._by_id.get(record["intent_id"])
        else:  # a sandbox that does not record intent ids: the rendered text names the intent
            expectation = self._by_text.get((record.get("title") or "", record.get("body") or ""))
        where = locate(address)
        if expectation is None or where is None or where[0] != expectation.audience.tag:
            self._stray(record)
            return
        index = where[1]
        if not 0 <= index < expectation.audience.size:
            self._stray(record)
            return
        copies = expectation.copies
        copies[index] = min(255, copies[index] + 1)
        at = record["at"]
        if expectation.first_at is None or at < expectation.first_at:
            expectation.first_at = at
        if expectation.last_at is None or at > expectation.last_at:
            expectation.last_at = at
        provider = record["provider"]
        expectation.per_provider[provider] = expectation.per_provider.get(provider, 0) + 1
        route = f"{provider}/topic" if record.get("via") == "topic" else provider
        tally = expectation.routes.get(route)
        if tally is None:
            expectation.routes[route] = [1, at, at]
        else:
            tally[0] += 1
            tally[1] = min(tally[1], at)
            tally[2] = max(tally[2], at)

    def _stray(self, record: dict[str, Any]) -> None:
        self.strays += 1
        if len(self.stray_samples) < 5:
            self.stray_samples.append(json.dumps(record))

    def report(self) -> LedgerReport:
        intents = {}
        for intent_id, e in self._by_id.items():
            size = e.audience.size
            zero = e.copies.count(0)
            one = e.copies.count(1)
            extra = sum(e.copies) - (size - zero) if size - zero - one else 0
            intents[intent_id] = IntentTally(
                intent_id=intent_id,
                expected=size,
                once=one,
                lost=zero,
                duplicated=size - zero - one,
                extra=extra,
                first_at=datetime.fromisoformat(e.first_at) if e.first_at else None,
                last_at=datetime.fromisoformat(e.last_at) if e.last_at else None,
                per_provider=dict(e.per_provider),
                routes={
                    route: RouteTally(n, datetime.fromisoformat(first), datetime.fromisoformat(last))
                    for route, (n, first, last) in e.routes.items()
                },
            )
        return LedgerReport(intents, self.strays, self._lines_scanned())

    def _lines_scanned(self) -> int:
        return sum(sum(e.per_provider.values()) for e in self._by_id.values()) + self.strays

    def wait(
        self,
        timeout_s: float,
        settle_s: float = 2.0,
        *,
        intents: Iterable[str] | None = None,
        idle_s: float | None = None,
        poll_s: float = 0.5,
    ) -> LedgerReport:
        """Scan until every expected push of ``intents`` (default: all expected) arrived, then
        ``settle_s`` more (for late duplicates); or until ``timeout_s``, or until no push at all was
        recorded for ``idle_s``. Returns the report either way."""
        waited = [self._by_id[i] for i in intents] if intents is not None else list(self._by_id.values())
        deadline = time.monotonic() + timeout_s
        lines, moved = self.pushes, time.monotonic()
        while time.monotonic() < deadline:
            self.scan()
            if all(0 not in e.copies for e in waited):
                time.sleep(settle_s)
                break
            now_lines = self.pushes
            if now_lines != lines:
                lines, moved = now_lines, time.monotonic()
            elif idle_s is not None and time.monotonic() - moved > idle_s:
                break
            time.sleep(poll_s)
        self.scan()
        return self.report()


# --- the deployment ---------------------------------------------------------------------------------
def proc_status(pid: int, field_name: str) -> float:
    """A ``kB`` field of /proc/<pid>/status (VmHWM, VmRSS) in MB; 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return 0.0
    return 0.0


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (its threads included); 0 when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as ``{"name{labels}": value}``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        found = _SAMPLE.match(line)
        if found:
            try:
                out[found.group(1)] = float(found.group(2))
            except ValueError:
                continue
    return out


class Deployment:
    """The sandbox and goalhorn's stage processes in one namespace; see the module docstring."""

    def __init__(
        self,
        work_dir: Path,
        *,
        redis_url: str = LOCAL_REDIS_URL,
        amqp_url: str = LOCAL_AMQP_URL,
        namespace: str | None = None,
        env: Mapping[str, str] | None = None,
        webhook_secret: str | None = None,
        control: bool = False,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace or f"bench{uuid.uuid4().hex[:10]}"
        self.keys = Keys(self.namespace)
        self.record = self.work_dir / "pushes.jsonl"
        self.webhook_secret = webhook_secret or "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        self.env = clean_env(
            GOALHORN_REDIS_URL=redis_url,
            GOALHORN_AMQP_URL=amqp_url,
            GOALHORN_NAMESPACE=self.namespace,
            **dict(env or {}),
        )
        self.processes: dict[str, Process] = {}
        self.metrics_ports: dict[str, int] = {}
        self.webhook_base = ""
        self.control_url: str | None = None
        """With ``control=True``: the sandbox's control endpoint (``goalhorn sandbox --control-port``)."""
        self._control = control
        self.ledger = Ledger(self.record)
        self._peaks: dict[str, float] = {}
        self._tags = 0
        self._bus: Any = None

    # --- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        try:
            self._start_sandbox()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start_sandbox(self) -> None:
        self.record.unlink(missing_ok=True)  # a work dir used before: the ledger reads from the start
        ports = ["--fcm-port", str(free_port()), "--apns-port", str(free_port()), "--webhook-port", str(free_port())]
        args = ["sandbox", "--dir", str(self.work_dir / "sandbox"), "--record", str(self.record), *ports]
        if self._control:
            args += ["--control-port", str(free_port())]
        sandbox = Process("sandbox", [*args, "--webhook-secret", self.webhook_secret], self.env, self.work_dir)
        self.processes["sandbox"] = sandbox.start()
        sandbox.wait_for(r"^export GOALHORN_WEBHOOK_ALLOWLIST=")
        self.env.update(exports(sandbox.lines))
        self.webhook_base = sandbox.wait_for(r"^webhooks\s+(\S+)/hooks/").group(1)
        if self._control:
            self.control_url = sandbox.wait_for(r"^control\s+(\S+)/counts").group(1)

    def close(self) -> None:
        """Stop every process (sandbox last), then delete the namespace's keys and queues."""
        for name in [n for n in self.processes if n != "sandbox"] + ["sandbox"]:
            process = self.processes.get(name)
            if process is not None and process.proc is not None and process.proc.poll() is None:
                process.proc.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            if process.proc is not None:
                try:
                    process.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.stop_quietly()
        _run_async(self._cleanup)

    def delete_queues(self) -> None:
        """Delete the namespace's queues and what they hold (stop the stage processes first): a
        backlog left by one scenario does not slow the next."""
        _run_async(self._delete_queues)

    async def _delete_queues(self) -> None:
        from goalhorn.admin.queues import namespace_queues

        names = [q.name for q in namespace_queues(self.keys)] + _listed_queues(self.namespace)
        await _delete_queues(self.settings(), list(dict.fromkeys(names)), self.keys.intent_exchange)

    async def _cleanup(self) -> None:
        from goalhorn.redis_client import make_redis

        if self._bus is not None:
            await self._bus.aclose()
            self._bus = None
        settings = self.settings()
        redis = make_redis(settings)
        try:
            doomed = [key async for key in redis.scan_iter(match=self.keys.pattern(), count=5000)]
            for start in range(0, len(doomed), 1000):
                await redis.unlink(*doomed[start : start + 1000])
        finally:
            await redis.aclose()
        await self._delete_queues()

    def settings(self, **overrides: Any) -> Settings:
        """The processes' settings (sandbox included) as :class:`Settings`."""
        fields = {k.removeprefix("GOALHORN_").lower(): v for k, v in self.env.items() if k.startswith("GOALHORN_")}
        return Settings.model_validate({**fields, **overrides})

    # --- processes ------------------------------------------------------------------------------
    def start(
        self, stage: str, *, name: str | None = None, env: Mapping[str, str] | None = None, wait: bool = True
    ) -> Process:
        """``goalhorn run <stage> --metrics-port <free port>`` as ``name`` (default: the stage)."""
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r}: one of {', '.join(STAGES)}")
        name = name or stage
        if name in self.processes:
            raise ValueError(f"a process named {name!r} exists; restart() it")
        port = free_port()
        self.metrics_ports[name] = port
        process = Process(name, ["run", stage, "--metrics-port", str(port)], self.env | dict(env or {}), self.work_dir)
        self.processes[name] = process.start()
        if wait:
            process.wait_for(RUNNING)
        return process

    def start_stages(self, *, fanout: int = 1, deliver: int = 1, env: Mapping[str, str] | None = None) -> list[str]:
        """Deliver processes first (``deliver-1``...), then fanout (``fanout``, ``fanout-2``...); waits
        until each runs. Returns their names."""
        names = [f"deliver-{n}" for n in range(1, deliver + 1)]
        names += ["fanout" if n == 1 else f"fanout-{n}" for n in range(1, fanout + 1)]
        for name in names:
            self.start(name.partition("-")[0], name=name, env=env, wait=False)
        for name in names:
            self.processes[name].wait_for(RUNNING)
        return names

    def pid(self, name: str) -> int:
        proc = self.processes[name].proc
        assert proc is not None
        return proc.pid

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` and wait for it."""
        self.sample(name)
        self.processes[name].kill()

    def terminate(self, name: str, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM ``name``; its exit code (AssertionError if it outlives ``timeout_s``)."""
        self.sample(name)
        return self.processes[name].terminate(timeout_s)

    def restart(self, name: str, *, kill: bool = True, wait: bool = True) -> Process:
        """Stop ``name`` (SIGKILL, or SIGTERM with ``kill=False``) and start it again, same port."""
        if kill:
            self.kill(name)
        else:
            self.terminate(name)
        process = self.processes[name].start()
        if wait and name != "sandbox":
            process.wait_for(RUNNING)
        return process

    def sample(self, name: str) -> float:
        """Read ``name``'s peak RSS now (kept: :meth:`peak_rss_mb` still knows it after the process exits)."""
        peak = proc_status(self.pid(name), "VmHWM")
        self._peaks[name] = max(self._peaks.get(name, 0.0), peak)
        return self._peaks[name]

    def peak_rss_mb(self, name: str) -> float:
        """Peak resident memory (VmHWM) of ``name`` in MB, over every run of it sampled."""
        return self.sample(name)

    def cpu_s(self, name: str) -> float:
        """CPU seconds (user + system) the current run of ``name`` used so far."""
        return proc_cpu_s(self.pid(name))

    def metrics(self, name: str, timeout_s: float = 5.0) -> dict[str, float]:
        """``name``'s ``/metrics``, parsed."""
        url = f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return parse_metrics(response.read().decode())

    def control_json(self, path: str, timeout_s: float = 10.0) -> Any:
        """The sandbox control endpoint's answer to ``GET path`` (``/counts``, ``/topics``), parsed;
        needs ``control=True``."""
        if self.control_url is None:
            raise ValueError("the sandbox runs without its control endpoint: Deployment(..., control=True)")
        with urllib.request.urlopen(self.control_url + path, timeout=timeout_s) as response:
            return json.loads(response.read())

    def requests_received(self) -> dict[str, int]:
        """Push requests the sandbox received so far, per provider (``fcm``: ``messages:send`` alone,
        topic management apart); empty without the control endpoint."""
        if self.control_url is None:
            return {}
        return {name: int(counts["received"]) for name, counts in self.control_json("/counts").items()}

    # --- data -----------------------------------------------------------------------------------
    async def load_audience(
        self,
        team: str,
        size: int,
        *,
        mix: tuple[tuple[Platform, int], ...] = MIX,
        chunk: int = 5000,
        preferences_every: int = 0,
    ) -> Audience:
        """``size`` followers of ``team``, stored as ``goalhorn subscribers import`` stores new users
        (every ``preferences_every``-th with a harmless preference record)."""
        from goalhorn.redis_client import make_redis

        self._tags += 1
        tag = int(self.namespace.encode().hex()[-4:], 16) << 16 | self._tags
        audience = Audience(
            team=team,
            size=size,
            tag=tag & 0xFFFFFFFF,
            webhook_base=self.webhook_base,
            mix=mix,
            preferences_every=preferences_every,
        )
        settings = self.settings()
        redis = make_redis(settings)
        try:
            await store_audience(redis, settings, audience, self.webhook_secret, chunk=chunk)
        finally:
            await redis.aclose()
        return audience

    async def publish_intent(self, intent: Intent) -> datetime:
        """Put ``intent`` on the intent queue as ingest does (priority, message id); returns when the
        broker confirmed it (UTC)."""
        from goalhorn.bus.rabbitmq import RabbitBus

        if self._bus is None:
            self._bus = RabbitBus(self.settings())
            await self._bus.start([self.keys.intent_queue])
        await self._bus.publish(
            self.keys.intent_queue, intent.to_json(), priority=intent.priority, message_id=intent.intent_id
        )
        return datetime.now(UTC)

    async def close_bus(self) -> None:
        """Close the publishing connection (when the caller's event loop ends before the deployment)."""
        if self._bus is not None:
            await self._bus.aclose()
            self._bus = None


def _listed_queues(namespace: str) -> list[str]:
    """The namespace's queues RabbitMQ lists (any goalhorn added since), if ``rabbitmqctl`` is here."""
    try:
        done = subprocess.run(
            ["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip().startswith(namespace + ".")]


async def _delete_queues(settings: Settings, names: list[str], exchange: str) -> None:
    import aio_pika
    import aiormq.exceptions

    assert settings.amqp_url is not None
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in names:
            try:
                await channel.queue_delete(name)
            except aiormq.exceptions.ChannelClosed:
                channel = await connection.channel()
        try:
            await channel.exchange_delete(exchange)
        except aiormq.exceptions.ChannelClosed:
            return
