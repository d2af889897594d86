"""Per-team FCM topic membership: the FCM devices of a team's followers whose preferences exclude nothing.

A user with no preference record (the users the Bloom prefilter rules out), or one that holds only a
time zone and opt-ins (``goalhorn.preferences.model.can_exclude``), can never be excluded from a
rule's alerts that needs no opt-in: no mute, opt-out, quiet hours or cap applies to them. So
their FCM devices can share one push per team and locale (messages are rendered per locale): topic
``<prefix><namespace>.<team>.<locale>.<generation>``. Everyone else is sent per token.

Membership is changed here, through FCM, and recorded in Redis only once FCM accepted it: a full
reconcile per team (:meth:`TopicMembership.sync_team`), and the changes written since, user by
user (:meth:`TopicMembership.apply_changes`). What "in sync" means and how the planner uses it:
``goalhorn.topics.state``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol, cast

from goalhorn.backoff import Backoff
from goalhorn.errors import StoreError
from goalhorn.keys import Keys
from goalhorn.models import Device
from goalhorn.preferences.epoch import SubscriberEpoch
from goalhorn.preferences.model import can_exclude, decode_devices
from goalhorn.preferences.reader import group_by_bucket
from goalhorn.redis_client import Redis
from goalhorn.topics.fcm_admin import TopicOutcome
from goalhorn.topics.state import SENT_GRACE_S, Member, TopicState, as_text

log = logging.getLogger(__name__)

CHUNK = 500
SCAN_COUNT = 2000
"""Followers asked for per SSCAN of a full reconcile (and read in one round trip)."""
APPLY_CHUNK = 10_000
"""Tokens (un)subscribed and recorded at a time: FCM's answers are written as they come (a sync that
dies half-way keeps what FCM accepted) and the topic lock is extended between slices."""
FCM_MARK = b'"fcm"'
"""In a stored device record that holds an FCM device (its platform); one without it is not decoded."""
RECORD_CHUNK = 2_000
"""Tokens recorded in Redis per pipeline (two commands each): a 540k-token team in one pipeline was
more than redis-py could write within its socket timeout."""
LOCK_S = 120
ATTEMPTS = 6
RETRY_BASE_S = 0.5
RETRY_CAP_S = 8.0


class Subscriptions(Protocol):
    """What membership needs of FCM (``goalhorn.topics.fcm_admin.TopicAdmin``)."""

    async def subscribe(self, tokens: Sequence[str], topic: str) -> TopicOutcome: ...

    async def unsubscribe(self, tokens: Sequence[str], topic: str) -> TopicOutcome: ...


class DeviceRemover(Protocol):
    async def remove_device(self, user_id: str, device_id: str) -> bool: ...


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
        self.state = TopicState(redis, keys, prefix=prefix, sent_grace_s=sent_grace_s)
        self.changes = self.state.changes
        self._epoch = SubscriberEpoch(redis, keys)
        self.topic = self.state.topic
        self.plan = self.state.plan
        self.status_of = self.state.status_of
        self.teams = self.state.teams

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
            if as_text(await self._redis.get(key) or b"") == token:
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
        report.generation = as_text(generation)
        epoch = await self._epoch.read()
        desired: dict[str, Member] = {}
        cursor = 0
        while True:
            cursor, raw = await self._redis.sscan(self._keys.team_followers(team_id), cursor, count=SCAN_COUNT)
            await self._extend_lock()
            users = [as_text(u) for u in raw]
            for user_id, (plain, devices) in (await self._read_users(users)).items():
                if plain:
                    for device in devices:
                        if device.platform == "fcm":
                            topic = self.topic(team_id, device.locale, report.generation)
                            desired[device.address] = Member(user_id, device.device_id, topic)
            if cursor == 0:
                break
        known = await self.state.known(team_id)
        removes = {token: m for token, m in known.items() if desired.get(token) != m}
        adds = {token: m for token, m in desired.items() if known.get(token) != m}
        if adds and not await self.state.leases_clear(team_id, self._lease_wait_s):
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
                generations[team_id] = as_text(generation)
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
                if not await self.state.leases_clear(team_id):
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
            slices = [
                (topic, tokens[start : start + APPLY_CHUNK])
                for topic, tokens in by_topic.items()
                for start in range(0, len(tokens), APPLY_CHUNK)
            ]
            for topic, part in slices:
                await self._extend_lock()
                backoff = Backoff(RETRY_BASE_S, RETRY_CAP_S)
                left = part
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
        listed = list(tokens)
        for start in range(0, len(listed), RECORD_CHUNK):
            part = listed[start : start + RECORD_CHUNK]
            if not part:
                continue
            pipe = self._redis.pipeline(transaction=False)
            # the team's hash in one command per slice; a user's hash is a key (and slot) of its own
            if subscribed:
                pipe.hset(self._keys.topic_members(team_id), mapping={t: members[t].encode() for t in part})
            else:
                pipe.hdel(self._keys.topic_members(team_id), *part)
            for token in part:
                field_name = f"{team_id}\t{token}"
                if subscribed:
                    pipe.hset(self._keys.topic_user(members[token].user_id), field_name, topic)
                else:
                    pipe.hdel(self._keys.topic_user(members[token].user_id), field_name)
            await pipe.execute()

    async def _drop_dead(self, member: Member) -> None:
        """A token FCM says is dead: the device goes (which marks its user again)."""
        if self._devices is not None:
            await self._devices.remove_device(member.user_id, member.device_id)

    async def _recount(self, team_id: str) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for member in (await self.state.known(team_id)).values():
            counts[member.topic] += 1
        state = self._keys.topic_state(team_id)
        stale = [k for k in map(as_text, await self._redis.hkeys(state)) if k.startswith("n:") and k[2:] not in counts]
        pipe = self._redis.pipeline(transaction=True)
        if stale:
            pipe.hdel(state, *stale)
        if counts:
            pipe.hset(state, mapping={f"n:{topic}": n for topic, n in counts.items()})
        await pipe.execute()
        return dict(counts)

    # --- reading ----------------------------------------------------------------------------
    async def _read_users(self, users: Sequence[str]) -> dict[str, tuple[bool, list[Device]]]:
        """Per user: whether their preferences exclude nothing (``can_exclude``), and their devices (only
        read for those, and only when the record names an FCM device: the others are in no topic)."""
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
                plain = not can_exclude(raw_prefs)
                if not plain or not raw_devices or FCM_MARK not in raw_devices:
                    out[user_id] = (plain, [])
                    continue
                try:
                    parsed = decode_devices(raw_devices)
                except ValueError:
                    log.error("user %r: unreadable device record; left out of topics", user_id)
                    parsed = []
                out[user_id] = (plain, parsed)
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
                team_id, token = as_text(raw_field).split("\t", 1)
                member = await self._redis.hget(self._keys.topic_members(team_id), token)
                device_id = Member.decode(member).device_id if member else ""
                teams[team_id][token] = Member(user_id, device_id, as_text(raw_topic))
            out[user_id] = teams
        return out


@dataclass(slots=True)
class _Applied:
    subscribed: int = 0
    unsubscribed: int = 0
    dead_tokens: int = 0
    failed: int = 0
    failed_users: set[str] = field(default_factory=set)
