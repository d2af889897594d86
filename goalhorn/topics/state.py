"""What is known of a team's FCM topics, whether they are in sync, and the topic plan of an intent.

What is known to be subscribed is kept in Redis (``Keys.topic_members``, ``Keys.topic_user``),
written only after FCM accepted the (un)subscription. A team's topics are **in sync** when

1. a full reconcile (:meth:`TopicMembership.sync_team`) finished without leftovers under the current
   subscriber epoch (``Keys.topic_state`` ``synced`` equals ``Keys.subscriber_epoch``; a reconcile
   clears it first, so one that dies half-way leaves the team out of sync, and Redis that lost its
   data has another epoch or none), and
2. no follower of the team, nor a user still subscribed to its topics (one who unfollowed), has a
   change not yet applied: every write of follows, devices or preferences marks its users
   (``goalhorn.preferences.changes``), and
   :meth:`TopicMembership.apply_changes` removes a mark only once the user's subscriptions match
   their data.

Then the known members are exactly the team followers' FCM devices without preferences, and the
planner may send one topic message per locale for them (:meth:`TopicState.plan`). A user who
becomes excludable (a mute, an opt-out...), unfollows, or whose token dies is unsubscribed at once
by :meth:`TopicMembership.apply_changes`; until that is done the team is out of sync and everyone
gets per-token sends.

Never both to one device: a planned topic send leases the team's topics (``Keys.topic_leases``)
until :data:`SENT_GRACE_S` after FCM accepted its messages (their delivery markers say ``sent``), or
until the intent expires, and tokens are added to a team's topics (or moved between its locales)
only while no lease is live. The planner writes its lease before it checks the state, the applier
marks a user before it looks for leases, so one of them always sees the other. Removals need no
wait: they only take pushes from devices that must not get them. A new generation (a reconcile that
finds no state: Redis lost it) starts topics no one is subscribed to, so subscriptions goalhorn no
longer knows of reach nobody.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from goalhorn.keys import Keys
from goalhorn.preferences.changes import SubscriberChanges
from goalhorn.redis_client import Redis
from goalhorn.settings import Settings

MAX_MARKED_CHECKED = 5000
"""More marked users than this: teams are taken as out of sync without looking at who they are."""
SENT_GRACE_S = 30.0
"""How long a planned topic send still holds its team's additions after FCM accepted it."""
TOPIC_DEVICE = "topic:"
"""The device id of a planned topic send is this and the topic (``goalhorn.segmenter.expander``)."""
SENT_MARKER = b"sent"


@dataclass(frozen=True, slots=True)
class Member:
    user_id: str
    device_id: str
    topic: str

    def encode(self) -> str:
        return f"{self.user_id}\t{self.device_id}\t{self.topic}"

    @classmethod
    def decode(cls, raw: bytes | str) -> Member:
        user_id, device_id, topic = as_text(raw).split("\t")
        return cls(user_id, device_id, topic)


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
    """Followers, and users still subscribed to the team's topics, with changes not applied yet (None:
    too many marked users to look)."""
    leases: int
    members: dict[str, int]
    synced_at: float | None

    @property
    def in_sync(self) -> bool:
        return self.synced and self.marked_followers == 0


class TopicState:
    """Reads a team's topic state (and leases it for a planned send): what the fanout needs."""

    def __init__(
        self, redis: Redis, keys: Keys, *, prefix: str = "goalhorn-", sent_grace_s: float = SENT_GRACE_S
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._prefix = prefix
        self.sent_grace_s = sent_grace_s
        self.changes = SubscriberChanges(redis, keys)

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
        if stored is None or as_text(stored) == "-":
            return None
        await self._redis.zadd(leases, {intent_id: until_ms})
        topics = {locale: (topic, int(n)) for locale, (topic, n) in json.loads(stored).items()}
        return TopicPlan(team_id, topics)

    async def planned(self, intent_id: str) -> bool:
        """Whether an intent was planned with topics (its plan is kept while it lives)."""
        stored = await self._redis.get(self._keys.topic_plan(intent_id))
        return stored is not None and as_text(stored) != "-"

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

    async def covered(self, team_id: str, tokens: Sequence[str | bytes]) -> list[str | None]:
        """The topic each token is known to be subscribed to in the team's topics (None: not)."""
        if not tokens:
            return []
        raws = await self._redis.hmget(self._keys.topic_members(team_id), list(tokens))
        return [as_text(raw).rpartition("\t")[2] if raw else None for raw in raws]

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
        state = {as_text(k): as_text(v) for k, v in cast(dict[bytes, bytes], raw_state).items()}
        synced = bool(state.get("synced")) and epoch is not None and state.get("synced") == as_text(epoch)
        marked_followers: int | None = 0
        if marked > MAX_MARKED_CHECKED:
            marked_followers = None
        elif marked:
            users = list((await self.changes.pending(MAX_MARKED_CHECKED)).keys())
            if users:
                hits = await self._redis.smismember(self._keys.team_followers(team_id), users)
                marked_followers = sum(1 for hit in hits if hit)
                # A user who unfollowed is no follower any more, but still subscribed until the change
                # is applied: the team is out of sync as long as such a member is marked.
                others = [user for user, hit in zip(users, hits, strict=True) if not hit]
                if others:
                    pipe = self._redis.pipeline(transaction=False)
                    for user in others:
                        pipe.hkeys(self._keys.topic_user(as_text(user)))
                    member = f"{team_id}\t"
                    for fields in await pipe.execute():
                        marked_followers += any(as_text(field).startswith(member) for field in fields)
        members = {key[2:]: int(value) for key, value in state.items() if key.startswith("n:")}
        synced_at = float(state["synced_at"]) if state.get("synced_at") else None
        return TeamStatus(team_id, state.get("generation"), synced, marked_followers, int(leases), members, synced_at)

    async def teams(self) -> list[str]:
        return sorted(as_text(t) for t in await self._redis.smembers(self._keys.topic_teams()))

    async def leases_clear(self, team_id: str, wait_s: float = 0.0) -> bool:
        """Whether no topic send of the team is pending (waiting up to ``wait_s``)."""
        key = self._keys.topic_leases(team_id)
        deadline = time.monotonic() + wait_s
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
        grace_ms = int(self.sent_grace_s * 1000)
        await self._redis.zremrangebyscore(key, 0, now_ms)
        leases = cast(list[tuple[bytes, float]], await self._redis.zrange(key, 0, -1, withscores=True))
        for raw_intent, until in leases:
            intent_id = as_text(raw_intent)
            if until <= now_ms + grace_ms:
                continue
            stored = await self._redis.get(self._keys.topic_plan(intent_id))
            if stored is None or as_text(stored) == "-":
                continue
            topics = [topic for topic, _ in json.loads(stored).values()]
            markers = [self._keys.delivery_marker(intent_id, f"{TOPIC_DEVICE}{topic}") for topic in topics]
            if all(state == SENT_MARKER for state in await self._redis.mget(markers)):
                await self._redis.zadd(key, {intent_id: now_ms + grace_ms}, xx=True)

    async def known(self, team_id: str) -> dict[str, Member]:
        out: dict[str, Member] = {}
        async for token, raw in self._redis.hscan_iter(self._keys.topic_members(team_id), count=1000):
            out[as_text(token)] = Member.decode(raw)
        return out


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def topic_planner(settings: Settings, redis: Redis) -> TopicState | None:
    """What the fanout plans topic sends with (``GOALHORN_FCM_TOPICS``; it needs no FCM client)."""
    if not settings.fcm_topics:
        return None
    keys = Keys(settings.namespace)
    return TopicState(redis, keys, prefix=settings.fcm_topic_prefix)
