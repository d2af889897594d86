"""Users as a tenant sees them: every tenant has its own user ids, and sees only its own users.

A user ``u42`` created with tenant ``acme``'s key is stored, followed and delivered to as
``acme/u42`` (the *stored id*), so two tenants may both have a ``u42`` and neither can reach the
other's: a route looks a user up in its tenant's user hash and answers 404 for anything else, and
what it writes is always under the stored id. The user record holds what the preference store does
not: the locale new devices get, and when the user was created. Follows made through the API are
also remembered per user, so deleting a user leaves every follower set it joined; those of users
that came in through ``POST /v1/users:import`` are in the import's profile record, which is read too.
Follower sets, devices and preferences are written through the preference store (which keeps the
subscriber epoch with them, ``goalhorn.preferences.epoch``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from goalhorn.admin.subscriber_lines import Follows
from goalhorn.admin.subscribers import profile_bucket
from goalhorn.keys import Keys
from goalhorn.models import Sport
from goalhorn.preferences.reader import bucket_of
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import Redis

FollowKind = Literal["teams", "matches", "markets", "sports"]
FOLLOW_KINDS: tuple[FollowKind, ...] = get_args(FollowKind)
SPORTS = frozenset(s.value for s in Sport)


def stored_id(tenant: str, user_id: str) -> str:
    return f"{tenant}/{user_id}"


@dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: str
    locale: str
    created_at: float


class TenantUsers:
    def __init__(self, redis: Redis, keys: Keys, store: PreferenceStore) -> None:
        self._redis = redis
        self._keys = keys
        self._store = store
        self._follow_sets: dict[FollowKind, Callable[[str], str]] = {
            "teams": keys.team_followers,
            "matches": keys.match_watchers,
            "markets": keys.market_watchers,
            "sports": keys.sport_fans,
        }
        self._joins: dict[FollowKind, Callable[[Iterable[tuple[str, str]]], Awaitable[None]]] = {
            "teams": store.follow_teams,
            "matches": store.watch_matches,
            "markets": store.watch_markets,
            "sports": store.follow_sports,
        }

    async def get(self, tenant: str, user_id: str) -> UserRecord | None:
        raw = await self._redis.hget(self._keys.tenant_users(tenant), user_id)
        if raw is None:
            return None
        data = json.loads(raw)
        return UserRecord(user_id, data["locale"], data["created_at"])

    async def put(self, tenant: str, user_id: str, locale: str) -> tuple[UserRecord, bool]:
        """Create or update a user's record; True when this call created it (HSETNX: of concurrent
        creations exactly one is)."""
        key = self._keys.tenant_users(tenant)
        now = time.time()
        fresh = json.dumps({"locale": locale, "created_at": now}, separators=(",", ":"))
        if await self._redis.hsetnx(key, user_id, fresh):
            return UserRecord(user_id, locale, now), True
        existing = await self.get(tenant, user_id)
        created_at = existing.created_at if existing is not None else now
        raw = json.dumps({"locale": locale, "created_at": created_at}, separators=(",", ":"))
        await self._redis.hset(key, user_id, raw)
        return UserRecord(user_id, locale, created_at), False

    async def register(self, tenant: str, users: dict[str, str]) -> None:
        """Records for imported users (user id -> locale) not yet known to the tenant."""
        now = time.time()
        key = self._keys.tenant_users(tenant)
        pipe = self._redis.pipeline(transaction=False)
        for user_id, locale in users.items():
            pipe.hsetnx(key, user_id, json.dumps({"locale": locale, "created_at": now}, separators=(",", ":")))
        await pipe.execute()

    async def _imported(self, user: str) -> Follows:
        raw = await self._redis.hget(profile_bucket(self._keys, bucket_of(user, self._store.buckets)), user)
        try:
            record = json.loads(raw) if raw is not None else {}
        except ValueError:
            record = {}
        return Follows.from_record(record) if isinstance(record, dict) else Follows()

    async def follows(self, tenant: str, user_id: str) -> dict[FollowKind, list[str]]:
        """What the user follows: through the API and through an import."""
        user = stored_id(tenant, user_id)
        imported = await self._imported(user)
        out: dict[FollowKind, set[str]] = {kind: set(getattr(imported, kind)) for kind in FOLLOW_KINDS}
        for member in await self._redis.smembers(self._keys.user_follows(user)):
            kind, _, target = (member.decode() if isinstance(member, bytes) else member).partition(":")
            if kind in out:
                out[kind].add(target)
        return {kind: sorted(targets) for kind, targets in out.items()}

    async def follow(self, tenant: str, user_id: str, kind: FollowKind, target: str) -> None:
        user = stored_id(tenant, user_id)
        # The user's own list first: a delete that runs in between still finds the set to leave.
        await self._redis.sadd(self._keys.user_follows(user), f"{kind}:{target}")
        await self._joins[kind]([(user, target)])

    async def unfollow(self, tenant: str, user_id: str, kind: FollowKind, target: str) -> None:
        user = stored_id(tenant, user_id)
        await self._store.leave([(self._follow_sets[kind](target), user)])
        await self._redis.srem(self._keys.user_follows(user), f"{kind}:{target}")

    async def delete(self, tenant: str, user_id: str) -> bool:
        """Remove a user: record first (the user answers 404 from then on), then follows, devices and
        preferences; False if the tenant has no such user."""
        if not await self._redis.hdel(self._keys.tenant_users(tenant), user_id):
            return False
        user = stored_id(tenant, user_id)
        follows = await self.follows(tenant, user_id)
        await self._store.leave(
            (self._follow_sets[kind](target), user) for kind, targets in follows.items() for target in targets
        )
        await self._redis.delete(self._keys.user_follows(user))
        await self._redis.hdel(profile_bucket(self._keys, bucket_of(user, self._store.buckets)), user)
        await self._store.remove_user(user)
        return True
