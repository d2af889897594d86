"""Per-team FCM topic membership: the FCM devices of a team's followers who have no preferences.

A user with no preference record (the users the Bloom prefilter rules out) can never be excluded
from a rule's alerts that needs no opt-in: no mute, opt-out, quiet hours or cap applies to them. So
their FCM devices can share one push per team and locale (messages are rendered per locale): topic
``<prefix><namespace>.<team>.<locale>.<generation>``. Everyone else is sent per token.

What is known to be subscribed is kept in Redis (``Keys.topic_members``, ``Keys.topic_user``),
written only after FCM accepted the (un)subscription. A team's topics are **in sync** when

1. a full reconcile (:meth:`TopicMembership.sync_team`) finished without leftovers under the current
   subscriber epoch (``Keys.topic_state`` ``synced`` equals ``Keys.subscriber_epoch``; a reconcile
   clears it first, so one that dies half-way leaves the team out of sync, and Redis that lost its
   data has another epoch or none), and
2. no follower of the team has a change not yet applied: every write of follows, devices or
   preferences marks its users (``goalhorn.preferences.changes``), and :meth:`apply_changes`
   removes a mark only once the user's subscriptions match their data.

Then the known members are exactly the team followers' FCM devices without preferences, and the
planner may send one topic message per locale for them (:meth:`TopicMembership.plan`). A user who
becomes excludable (a mute, an opt-out...), unfollows, or whose token dies is unsubscribed at once by
:meth:`apply_changes`; until that is done the team is out of sync and everyone gets per-token sends.

Never both to one device: a planned topic send leases the team's topics until the intent expires
(``Keys.topic_leases``), and tokens are added to a team's topics (or moved between its locales)
only while no lease is live. The planner writes its lease before it checks the state, the applier
marks a user before it looks for leases, so one of them always sees the other. Removals need no
wait: they only take pushes from devices that must not get them. A new generation (a reconcile that
finds no state: Redis lost it) starts topics no one is subscribed to, so subscriptions goalhorn no
longer knows of reach nobody.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import urllib.parse
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol, cast

from goalhorn.backoff import Backoff
from goalhorn.errors import StoreError
from goalhorn.keys import Keys
from goalhorn.models import Device
from goalhorn.preferences.changes import SubscriberChanges
from goalhorn.preferences.epoch import SubscriberEpoch
from goalhorn.preferences.model import decode_devices
from goalhorn.preferences.reader import group_by_bucket
from goalhorn.redis_client import Redis
from goalhorn.settings import Settings
from goalhorn.topics.fcm_admin import TopicOutcome

log = logging.getLogger(__name__)

CHUNK = 500
MAX_MARKED_CHECKED = 5000
"""More marked users than this: teams are taken as out of sync without looking at who they are."""
LOCK_S = 120
ATTEMPTS = 6
RETRY_BASE_S = 0.5
RETRY_CAP_S = 8.0
SENT_GRACE_S = 30.0
"""How long a planned topic send still holds its team's additions after FCM accepted it."""
TOPIC_DEVICE = "topic:"
"""The device id of a planned topic send is this and the topic (``goalhorn.segmenter.expander``)."""
SENT_MARKER = b"sent"


class Subscriptions(Protocol):
    """What membership needs of FCM (``goalhorn.topics.fcm_admin.TopicAdmin``)."""

    async def subscribe(self, tokens: Sequence[str], topic: str) -> TopicOutcome: ...

    async def unsubscribe(self, tokens: Sequence[str], topic: str) -> TopicOutcome: ...


class DeviceRemover(Protocol):
    async def remove_device(self, user_id: str, device_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Member:
    user_id: str
    device_id: str
    topic: str

    def encode(self) -> str:
        return f"{self.user_id}\t{self.device_id}\t{self.topic}"

    @classmethod
    def decode(cls, raw: bytes | str) -> Member:
        user_id, device_id, topic = _text(raw).split("\t")
        return cls(user_id, device_id, topic)


@dataclass(slots=True)
class SyncReport:
    team_id: str
    generation: str = ""
    subscribed: int = 0
    unsubscribed: int = 0
    dead_tokens: int = 0
    left: int = 0
    """(Un)subscriptions still failing after every attempt: the team stays out of sync."""
    deferred: bool = False
    """Topic sends were still pending: nothing was added, the team stays out of sync."""
    in_sync: bool = False
    members: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class ApplyReport:
    users: int = 0
    applied: int = 0
    subscribed: int = 0
    unsubscribed: int = 0
    dead_tokens: int = 0
    deferred: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class TopicPlan:
    """A team's topics in sync for one intent: topic name per locale, with its known members."""

    team_id: str
    topics: dict[str, tuple[str, int]]
    """locale -> (topic, members)."""

    @property
    def members(self) -> int:
        return sum(n for _, n in self.topics.values())


@dataclass(slots=True)
class TeamStatus:
    team_id: str
    generation: str | None
    synced: bool
    """A full reconcile finished under the current subscriber epoch."""
    marked_followers: int | None
    """Followers with changes not applied yet (None: too many marked users to look)."""
    leases: int
    members: dict[str, int]
    synced_at: float | None

    @property
    def in_sync(self) -> bool:
        return self.synced and self.marked_followers == 0


class TopicMembership:
    """Keeps the FCM topic membership of teams in Redis and at FCM."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        fcm: Subscriptions | None,
        devices: DeviceRemover | None = None,
        *,
        buckets: int,
        prefix: str = "goalhorn-",
        lease_wait_s: float = 30.0,
        attempts: int = ATTEMPTS,
        sent_grace_s: float = SENT_GRACE_S,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._fcm = fcm
        self._devices = devices
        self._buckets = buckets
        self._prefix = prefix
        self._lease_wait_s = lease_wait_s
        self._attempts = attempts
        self._sent_grace_s = sent_grace_s
        self.changes = SubscriberChanges(redis, keys)
        self._epoch = SubscriberEpoch(redis, keys)

    def topic(self, team_id: str, locale: str, generation: str) -> str:
        name = f"{self._keys.namespace}.{team_id}.{locale}.{generation}"
        return self._prefix + urllib.parse.quote(name, safe="-_.~")

    # --- planning (the fanout) --------------------------------------------------------------
    async def plan(self, team_id: str, intent_id: str, until_ms: int) -> TopicPlan | None:
        """The team's topics if in sync, leased for ``intent_id`` until ``until_ms``; None (and no
        lease) when not in sync or empty. The plan is kept with the intent: a redelivered intent
        gets the same one (its lease still holds, so no token was added meanwhile)."""
        leases, kept = self._keys.topic_leases(team_id), self._keys.topic_plan(intent_id)
        ttl_ms = max(1, until_ms - int(time.time() * 1000))
        stored = await self._redis.get(kept)
        if stored is None:
            await self._redis.zadd(leases, {intent_id: until_ms})
            plan = await self._plan_now(team_id)
            encoded = b"-" if plan is None else json.dumps(plan.topics).encode()
            if not await self._redis.set(kept, encoded, nx=True, px=ttl_ms):
                stored = await self._redis.get(kept)  # another process planned it first: its plan holds
            elif plan is None:
                await self._redis.zrem(leases, intent_id)
                return None
            else:
                return plan
        if stored is None or _text(stored) == "-":
            return None
        await self._redis.zadd(leases, {intent_id: until_ms})
        topics = {locale: (topic, int(n)) for locale, (topic, n) in json.loads(stored).items()}
        return TopicPlan(team_id, topics)

    async def _plan_now(self, team_id: str) -> TopicPlan | None:
        status = await self.status_of(team_id)
        if not status.in_sync or status.generation is None:
            return None
        topics = {}
        for topic, count in status.members.items():
            if count > 0:
                locale = self._locale_of(topic, team_id, status.generation)
                if locale is not None:
                    topics[locale] = (topic, count)
        return TopicPlan(team_id, topics) if topics else None

    async def covered(self, team_id: str, tokens: Sequence[str]) -> list[str | None]:
        """The topic each token is known to be subscribed to in the team's topics (None: not)."""
        if not tokens:
            return []
        raws = await self._redis.hmget(self._keys.topic_members(team_id), list(tokens))
        return [Member.decode(raw).topic if raw else None for raw in raws]

    def _locale_of(self, topic: str, team_id: str, generation: str) -> str | None:
        head = self.topic(team_id, "", generation)
        before, after = head.split("..", 1)
        if not (topic.startswith(before + ".") and topic.endswith("." + after)):
            return None
        return urllib.parse.unquote(topic[len(before) + 1 : len(topic) - len(after) - 1])

    async def status_of(self, team_id: str) -> TeamStatus:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(self._keys.topic_state(team_id))
        pipe.get(self._keys.subscriber_epoch())
        pipe.hlen(self._keys.topics_changed())
        pipe.zremrangebyscore(self._keys.topic_leases(team_id), 0, int(time.time() * 1000))
        pipe.zcard(self._keys.topic_leases(team_id))
        raw_state, epoch, marked, _, leases = await pipe.execute()
        state = {_text(k): _text(v) for k, v in cast(dict[bytes, bytes], raw_state).items()}
        synced = bool(state.get("synced")) and epoch is not None and state.get("synced") == _text(epoch)
        marked_followers: int | None = 0
        if marked > MAX_MARKED_CHECKED:
            marked_followers = None
        elif marked:
            users = list((await self.changes.pending(MAX_MARKED_CHECKED)).keys())
            if users:
                hits = await self._redis.smismember(self._keys.team_followers(team_id), users)
                marked_followers = sum(1 for hit in hits if hit)
        members = {key[2:]: int(value) for key, value in state.items() if key.startswith("n:")}
        synced_at = float(state["synced_at"]) if state.get("synced_at") else None
        return TeamStatus(team_id, state.get("generation"), synced, marked_followers, int(leases), members, synced_at)

    async def teams(self) -> list[str]:
        return sorted(_text(t) for t in await self._redis.smembers(self._keys.topic_teams()))

    # --- keeping membership -----------------------------------------------------------------
    @asynccontextmanager
    async def locked(self, wait_s: float = 60.0) -> AsyncIterator[None]:
        """Hold the namespace's topic lock: one process changes membership at a time."""
        token = secrets.token_hex(8)
        key = self._keys.topics_lock()
        deadline = time.monotonic() + wait_s
        while not await self._redis.set(key, token, nx=True, ex=LOCK_S):
            if time.monotonic() > deadline:
                raise StoreError("another process holds the topic lock (goalhorn topics sync)")
            await asyncio.sleep(0.2)
        try:
            yield
        finally:
            if _text(await self._redis.get(key) or b"") == token:
                await self._redis.delete(key)

    async def _extend_lock(self) -> None:
        await self._redis.expire(self._keys.topics_lock(), LOCK_S)

    async def sync_team(self, team_id: str) -> SyncReport:
        """Reconcile a team's topics with its followers (call under :meth:`locked`)."""
        state = self._keys.topic_state(team_id)
        report = SyncReport(team_id)
        await self.changes.enable()
        pipe = self._redis.pipeline(transaction=False)
        pipe.hdel(state, "synced")
        pipe.hsetnx(state, "generation", secrets.token_hex(3))
        pipe.sadd(self._keys.topic_teams(), team_id)
        pipe.hget(state, "generation")
        *_, generation = await pipe.execute()
        report.generation = _text(generation)
        epoch = await self._epoch.read()
        desired: dict[str, Member] = {}
        cursor = 0
        while True:
            cursor, raw = await self._redis.sscan(self._keys.team_followers(team_id), cursor, count=CHUNK)
            users = [_text(u) for u in raw]
            for user_id, (plain, devices) in (await self._read_users(users)).items():
                if plain:
                    for device in devices:
                        if device.platform == "fcm":
                            topic = self.topic(team_id, device.locale, report.generation)
                            desired[device.address] = Member(user_id, device.device_id, topic)
            if cursor == 0:
                break
        known = await self._known(team_id)
        removes = {token: m for token, m in known.items() if desired.get(token) != m}
        adds = {token: m for token, m in desired.items() if known.get(token) != m}
        if adds and not await self._leases_clear(team_id):
            report.deferred = True
            removes = {t: m for t, m in removes.items() if t not in adds}  # a locale move waits whole
            adds = {}
        outcome = await self._apply(team_id, removes, adds)
        report.subscribed, report.unsubscribed = outcome.subscribed, outcome.unsubscribed
        report.dead_tokens, report.left = outcome.dead_tokens, outcome.failed
        members = await self._recount(team_id)
        report.members = members
        if not report.deferred and not report.left and await self._epoch.read() == epoch and epoch is not None:
            await self._redis.hset(state, mapping={"synced": epoch.value, "synced_at": str(time.time())})
            report.in_sync = (await self.status_of(team_id)).in_sync
        return report

    async def apply_changes(self, limit: int = 5000) -> ApplyReport:
        """Bring the topics of the users marked as changed up to date with their data (call under
        :meth:`locked`); marks of users fully applied are removed."""
        report = ApplyReport()
        marks = await self.changes.pending(limit)
        teams = await self.teams()
        report.users = len(marks)
        if not marks:
            return report
        generations = {}
        for team_id in teams:
            generation = await self._redis.hget(self._keys.topic_state(team_id), "generation")
            if generation is not None:
                generations[team_id] = _text(generation)
        users = list(marks)
        for start in range(0, len(users), CHUNK):
            chunk = users[start : start + CHUNK]
            await self._extend_lock()
            data = await self._read_users(chunk)
            follows = await self._follows(list(generations), chunk)
            known = await self._known_of_users(chunk)
            per_team_adds: dict[str, dict[str, Member]] = defaultdict(dict)
            per_team_removes: dict[str, dict[str, Member]] = defaultdict(dict)
            adding_users: dict[str, set[str]] = defaultdict(set)
            for user_id in chunk:
                plain, devices = data[user_id]
                for team_id, generation in generations.items():
                    want: dict[str, Member] = {}
                    if plain and user_id in follows[team_id]:
                        for device in devices:
                            if device.platform == "fcm":
                                topic = self.topic(team_id, device.locale, generation)
                                want[device.address] = Member(user_id, device.device_id, topic)
                    have = known[user_id].get(team_id, {})
                    for token, member in have.items():
                        if want.get(token) != member:
                            per_team_removes[team_id][token] = member
                    for token, member in want.items():
                        if have.get(token) != member:
                            per_team_adds[team_id][token] = member
                            adding_users[team_id].add(user_id)
            deferred: set[str] = set()
            for team_id, adders in adding_users.items():
                if not await self._leases_clear(team_id, wait=False):
                    # No additions (nor locale moves) while a topic send is pending; removals go on.
                    deferred |= adders
                    adds = per_team_adds.pop(team_id)
                    per_team_removes[team_id] = {t: m for t, m in per_team_removes[team_id].items() if t not in adds}
            failed: set[str] = set()
            for team_id in set(per_team_adds) | set(per_team_removes):
                removes = per_team_removes[team_id]
                adds = per_team_adds.get(team_id, {})
                outcome = await self._apply(team_id, removes, adds)
                failed |= outcome.failed_users
                report.subscribed += outcome.subscribed
                report.unsubscribed += outcome.unsubscribed
                report.dead_tokens += outcome.dead_tokens
                await self._recount(team_id)
            report.deferred += len(deferred)
            report.failed += len(failed - deferred)
            done = {u: marks[u] for u in chunk if u not in deferred and u not in failed}
            report.applied += await self.changes.clear(done)
        return report

    # --- FCM and the record of it -----------------------------------------------------------
    async def _apply(self, team_id: str, removes: dict[str, Member], adds: dict[str, Member]) -> _Applied:
        """Unsubscribe ``removes`` then subscribe ``adds`` (tokens -> member), recording what FCM
        accepted; retried with backoff while FCM refuses for quota or fails."""
        applied = _Applied()
        if self._fcm is None:
            raise StoreError("topic membership needs FCM credentials (GOALHORN_FCM_CREDENTIALS_FILE)")
        for subscribe, wanted in ((False, removes), (True, adds)):
            by_topic: dict[str, list[str]] = defaultdict(list)
            for token, member in wanted.items():
                by_topic[member.topic].append(token)
            for topic, tokens in by_topic.items():
                backoff = Backoff(RETRY_BASE_S, RETRY_CAP_S)
                left = tokens
                for attempt in range(self._attempts):
                    if attempt:
                        await asyncio.sleep(backoff.next_delay())
                    call = self._fcm.subscribe if subscribe else self._fcm.unsubscribe
                    outcome = await call(left, topic)
                    await self._record(team_id, subscribe, topic, outcome.done, wanted)
                    if subscribe:
                        applied.subscribed += len(outcome.done)
                        applied.dead_tokens += len(outcome.dead)
                        for token in outcome.dead:
                            await self._drop_dead(wanted[token])
                    else:
                        applied.unsubscribed += len(outcome.done)
                    left = outcome.retry
                    if not left:
                        break
                    await self._extend_lock()
                    log.warning(
                        "team %s: %d tokens not %s %s yet (%s); retrying",
                        team_id,
                        len(left),
                        "subscribed to" if subscribe else "unsubscribed from",
                        topic,
                        "quota" if outcome.quota_refused else "provider error",
                    )
                applied.failed += len(left)
                applied.failed_users |= {wanted[token].user_id for token in left}
        return applied

    async def _record(
        self, team_id: str, subscribed: bool, topic: str, tokens: Iterable[str], members: dict[str, Member]
    ) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for token in tokens:
            member = members[token]
            field_name = f"{team_id}\t{token}"
            if subscribed:
                pipe.hset(self._keys.topic_members(team_id), token, member.encode())
                pipe.hset(self._keys.topic_user(member.user_id), field_name, topic)
            else:
                pipe.hdel(self._keys.topic_members(team_id), token)
                pipe.hdel(self._keys.topic_user(member.user_id), field_name)
        await pipe.execute()

    async def _drop_dead(self, member: Member) -> None:
        """A token FCM says is dead: the device goes (which marks its user again)."""
        if self._devices is not None:
            await self._devices.remove_device(member.user_id, member.device_id)

    async def _recount(self, team_id: str) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for member in (await self._known(team_id)).values():
            counts[member.topic] += 1
        state = self._keys.topic_state(team_id)
        stale = [k for k in map(_text, await self._redis.hkeys(state)) if k.startswith("n:") and k[2:] not in counts]
        pipe = self._redis.pipeline(transaction=True)
        if stale:
            pipe.hdel(state, *stale)
        if counts:
            pipe.hset(state, mapping={f"n:{topic}": n for topic, n in counts.items()})
        await pipe.execute()
        return dict(counts)

    async def _leases_clear(self, team_id: str, *, wait: bool = True) -> bool:
        """Whether no topic send of the team is pending (waiting up to ``lease_wait_s`` if ``wait``)."""
        key = self._keys.topic_leases(team_id)
        deadline = time.monotonic() + (self._lease_wait_s if wait else 0.0)
        while True:
            await self._release_sent(key)
            if not await self._redis.zcard(key):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.5)

    async def _release_sent(self, key: str) -> None:
        """Drop expired leases, and end a lease ``sent_grace_s`` after FCM accepted every topic
        message of its intent (their delivery markers say ``sent``), not only when the intent
        expires: the grace covers FCM's own fan-out, which goes on after it accepted the message."""
        now_ms = int(time.time() * 1000)
        grace_ms = int(self._sent_grace_s * 1000)
        await self._redis.zremrangebyscore(key, 0, now_ms)
        leases = cast(list[tuple[bytes, float]], await self._redis.zrange(key, 0, -1, withscores=True))
        for raw_intent, until in leases:
            intent_id = _text(raw_intent)
            if until <= now_ms + grace_ms:
                continue
            stored = await self._redis.get(self._keys.topic_plan(intent_id))
            if stored is None or _text(stored) == "-":
                continue
            topics = [topic for topic, _ in json.loads(stored).values()]
            markers = [self._keys.delivery_marker(intent_id, f"{TOPIC_DEVICE}{topic}") for topic in topics]
            if all(state == SENT_MARKER for state in await self._redis.mget(markers)):
                await self._redis.zadd(key, {intent_id: now_ms + grace_ms}, xx=True)

    # --- reading ----------------------------------------------------------------------------
    async def _read_users(self, users: Sequence[str]) -> dict[str, tuple[bool, list[Device]]]:
        """Per user: whether they have no preference record, and their devices."""
        grouped = group_by_bucket(users, self._buckets)
        pipe = self._redis.pipeline(transaction=False)
        order: list[list[str]] = []
        for bucket, members in grouped.items():
            pipe.hmget(self._keys.preference_bucket(bucket), members)
            pipe.hmget(self._keys.device_bucket(bucket), members)
            order.append(members)
        rows = await pipe.execute()
        out: dict[str, tuple[bool, list[Device]]] = {}
        for n, members in enumerate(order):
            prefs, devices = rows[2 * n], rows[2 * n + 1]
            for user_id, raw_prefs, raw_devices in zip(members, prefs, devices, strict=True):
                try:
                    parsed = decode_devices(raw_devices) if raw_devices else []
                except ValueError:
                    log.error("user %r: unreadable device record; left out of topics", user_id)
                    parsed = []
                out[user_id] = (raw_prefs is None, parsed)
        return out

    async def _follows(self, teams: Sequence[str], users: Sequence[str]) -> dict[str, set[str]]:
        if not teams or not users:
            return {team: set() for team in teams}
        pipe = self._redis.pipeline(transaction=False)
        for team_id in teams:
            pipe.smismember(self._keys.team_followers(team_id), list(users))
        rows = await pipe.execute()
        out: dict[str, set[str]] = {}
        for team, row in zip(teams, rows, strict=True):
            out[team] = {u for u, hit in zip(users, row, strict=True) if hit}
        return out

    async def _known(self, team_id: str) -> dict[str, Member]:
        out: dict[str, Member] = {}
        async for token, raw in self._redis.hscan_iter(self._keys.topic_members(team_id), count=1000):
            out[_text(token)] = Member.decode(raw)
        return out

    async def _known_of_users(self, users: Sequence[str]) -> dict[str, dict[str, dict[str, Member]]]:
        """Per user, per team: their tokens known to be subscribed."""
        pipe = self._redis.pipeline(transaction=False)
        for user_id in users:
            pipe.hgetall(self._keys.topic_user(user_id))
        rows = await pipe.execute()
        out: dict[str, dict[str, dict[str, Member]]] = {}
        for user_id, row in zip(users, rows, strict=True):
            teams: dict[str, dict[str, Member]] = defaultdict(dict)
            for raw_field, raw_topic in cast(dict[bytes, bytes], row).items():
                team_id, token = _text(raw_field).split("\t", 1)
                member = await self._redis.hget(self._keys.topic_members(team_id), token)
                device_id = Member.decode(member).device_id if member else ""
                teams[team_id][token] = Member(user_id, device_id, _text(raw_topic))
            out[user_id] = teams
        return out


@dataclass(slots=True)
class _Applied:
    subscribed: int = 0
    unsubscribed: int = 0
    dead_tokens: int = 0
    failed: int = 0
    failed_users: set[str] = field(default_factory=set)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def topic_planner(settings: Settings, redis: Redis) -> TopicMembership | None:
    """What the fanout plans topic sends with (``GOALHORN_FCM_TOPICS``; it needs no FCM client)."""
    if not settings.fcm_topics:
        return None
    keys = Keys(settings.namespace)
    return TopicMembership(redis, keys, None, buckets=settings.preference_buckets, prefix=settings.fcm_topic_prefix)
