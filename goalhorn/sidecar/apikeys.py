"""API keys: made here, shown once, stored only as an HMAC-SHA-256 under the server secret.

A key is ``ghk_`` followed by 43 base62 characters of 256 random bits and 6 base62 characters of
their CRC32, like GitHub's tokens: the prefix makes a leaked key recognisable to secret scanners,
the checksum lets them (and us, before any Redis lookup) tell a key from a random string. Redis
holds ``HMAC-SHA-256(GOALHORN_API_KEY_SECRET, key)`` -> the key's record, so a dump of Redis gives
no usable key; the stored digest is compared with the computed one in constant time. Each key
belongs to one tenant, has a tier (its rate limit) and scopes, can be revoked, and records when it
was last used (at most once a minute per process, not a write per request). A process trusts a key
it verified for 5 s before asking Redis again, so a revocation reaches every process within 5 s.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

from goalhorn.errors import ConfigError
from goalhorn.keys import Keys
from goalhorn.redis_client import Redis
from goalhorn.settings import Settings

PREFIX = "ghk_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_CHARS = 43  # 62**43 > 2**256
_CHECK_CHARS = 6  # 62**6 > 2**32
KEY_PATTERN = re.compile(rf"{PREFIX}[0-9A-Za-z]{{{_BODY_CHARS + _CHECK_CHARS}}}")
TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
LAST_USED_EVERY_S = 60.0
VERIFIED_FOR_S = 5.0
"""How long a process trusts a key it verified without asking Redis again: a revocation takes effect
in every process within this (at once in the process that revoked)."""
MAX_CACHED = 10_000

Tier = Literal["community", "starter", "pro", "enterprise"]
TIERS: tuple[Tier, ...] = get_args(Tier)
Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)


def _base62(number: int, width: int) -> str:
    out = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_CHARS)


def new_key() -> str:
    """A fresh key: prefix, 256 random bits in base62, CRC32 checksum."""
    body = _base62(secrets.randbits(256), _BODY_CHARS)
    return PREFIX + body + _checksum(body)


def well_formed(key: str) -> bool:
    """Whether ``key`` has a key's shape and a matching checksum (no lookup, no secret needed)."""
    if not KEY_PATTERN.fullmatch(key):
        return False
    body = key[len(PREFIX) : len(PREFIX) + _BODY_CHARS]
    return hmac.compare_digest(key[-_CHECK_CHARS:], _checksum(body))


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What is stored about a key (never the key itself)."""

    id: str
    tenant: str
    tier: Tier
    scopes: tuple[Scope, ...]
    digest: str
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = field(default=None, compare=False)

    def record(self) -> bytes:
        out = asdict(self)
        out.pop("last_used_at")
        return json.dumps(out, separators=(",", ":")).encode()

    @classmethod
    def from_record(cls, raw: bytes | str, last_used_at: float | None = None) -> ApiKey:
        data = json.loads(raw)
        data["scopes"] = tuple(data["scopes"])
        return cls(**data, last_used_at=last_used_at)

    def public(self) -> dict[str, object]:
        """The key's description for ``keys list`` (no digest)."""
        out = asdict(self)
        out.pop("digest")
        out["scopes"] = list(self.scopes)
        return out


def check_tenant(tenant: str) -> str:
    if not TENANT_PATTERN.fullmatch(tenant):
        raise ConfigError(f"invalid tenant {tenant!r}: 1-40 of a-z 0-9 _ -, starting with a letter or digit")
    return tenant


def parse_scopes(text: str) -> tuple[Scope, ...]:
    """``read,write`` -> ("read", "write"); ConfigError for an unknown or missing scope."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCOPES]
    if unknown or not names:
        raise ConfigError(f"invalid scopes {text!r}: a comma-separated list of {', '.join(SCOPES)}")
    return tuple(name for name in SCOPES if name in names)


class KeyStore:
    """API keys of one namespace in Redis, stored under the server secret."""

    def __init__(self, redis: Redis, keys: Keys, secret: bytes) -> None:
        if len(secret) < 32:
            raise ConfigError("GOALHORN_API_KEY_SECRET: at least 32 characters are needed to store API keys")
        self._redis = redis
        self._keys = keys
        self._secret = secret
        self._touched: dict[str, float] = {}
        self._verified: dict[str, tuple[float, ApiKey]] = {}

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> KeyStore:
        if settings.api_key_secret is None:
            raise ConfigError(
                "GOALHORN_API_KEY_SECRET not set: API keys are stored as HMACs under it "
                '(e.g. export GOALHORN_API_KEY_SECRET="$(openssl rand -base64 48)")'
            )
        return cls(redis, Keys(settings.namespace), settings.api_key_secret.get_secret_value().encode())

    def digest(self, key: str) -> str:
        return hmac.new(self._secret, key.encode(), hashlib.sha256).hexdigest()

    async def create(self, tenant: str, tier: Tier, scopes: tuple[Scope, ...]) -> tuple[str, ApiKey]:
        """A new key and its record; the key itself is returned once and stored nowhere."""
        check_tenant(tenant)
        if tier not in TIERS:
            raise ConfigError(f"invalid tier {tier!r}: one of {', '.join(TIERS)}")
        key = new_key()
        record = ApiKey(
            id="key_" + secrets.token_hex(8),
            tenant=tenant,
            tier=tier,
            scopes=scopes,
            digest=self.digest(key),
            created_at=time.time(),
        )
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._keys.api_keys(), record.digest, record.record())
        pipe.hset(self._keys.api_key_ids(), record.id, record.digest)
        await pipe.execute()
        return key, record

    async def verify(self, key: str) -> ApiKey | None:
        """The record of a valid, unrevoked key, or None."""
        if not well_formed(key):
            return None
        digest = self.digest(key)
        now = time.monotonic()
        cached = self._verified.get(digest)
        if cached is not None and cached[0] > now:
            await self._touch(cached[1].id)
            return cached[1]
        raw = await self._redis.hget(self._keys.api_keys(), digest)
        if raw is None:
            return None
        record = ApiKey.from_record(raw)
        if not hmac.compare_digest(record.digest, digest) or record.revoked_at is not None:
            self._verified.pop(digest, None)
            return None
        if len(self._verified) >= MAX_CACHED:
            self._verified.clear()
        self._verified[digest] = (now + VERIFIED_FOR_S, record)
        await self._touch(record.id)
        return record

    async def _touch(self, key_id: str) -> None:
        now = time.time()
        if now - self._touched.get(key_id, 0.0) >= LAST_USED_EVERY_S:
            self._touched[key_id] = now
            await self._redis.hset(self._keys.api_key_last_used(), key_id, str(int(now * 1000)))

    async def list(self, tenant: str | None = None) -> list[ApiKey]:
        records = await self._redis.hgetall(self._keys.api_keys())
        used = {
            (k.decode() if isinstance(k, bytes) else k): int(v) / 1000
            for k, v in (await self._redis.hgetall(self._keys.api_key_last_used())).items()
        }
        out = []
        for raw in records.values():
            record = ApiKey.from_record(raw)
            if tenant is None or record.tenant == tenant:
                out.append(ApiKey.from_record(raw, used.get(record.id)))
        return sorted(out, key=lambda r: r.created_at)

    async def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke a key by id (it answers 401 from the next request on); None if there is no such key."""
        digest = await self._redis.hget(self._keys.api_key_ids(), key_id)
        if digest is None:
            return None
        raw = await self._redis.hget(self._keys.api_keys(), digest)
        if raw is None:
            return None
        record = ApiKey.from_record(raw)
        self._verified.pop(record.digest, None)
        if record.revoked_at is None:
            data = json.loads(raw)
            data["revoked_at"] = time.time()
            await self._redis.hset(self._keys.api_keys(), digest, json.dumps(data, separators=(",", ":")))
            record = ApiKey.from_record(json.dumps(data))
        return record
