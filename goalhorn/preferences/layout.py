"""The stored layout: parameters that decide where data lives in Redis, recorded with the data.

Users' devices and preferences are spread over ``GOALHORN_PREFERENCE_BUCKETS`` hashes by a hash of
their id, in the device-line format of :data:`FORMAT_VERSION`. A process that read them with another
bucket count would look in the wrong hash and see users "without a device"; so the first writer
records the parameters in ``<namespace>:layout`` and every process compares its settings with them
before it takes work, refusing to start on a mismatch.
"""

from __future__ import annotations

from goalhorn.errors import ConfigError
from goalhorn.keys import Keys
from goalhorn.redis_client import Redis
from goalhorn.settings import Settings

FORMAT_VERSION = 2
"""Version of the stored preference and device format (2: one device line per device, xxh3 buckets)."""


class LayoutMismatch(ConfigError):
    """The settings disagree with how the namespace's data was written."""


def expected(settings: Settings) -> dict[str, str]:
    return {"format": str(FORMAT_VERSION), "preference_buckets": str(settings.preference_buckets)}


async def check_layout(redis: Redis, keys: Keys, settings: Settings) -> None:
    """Record the layout if the namespace has none yet; raise :class:`LayoutMismatch` if it differs."""
    wanted = expected(settings)
    key = keys.layout()
    for field, value in wanted.items():
        await redis.hsetnx(key, field, value)
    raw = await redis.hgetall(key)
    stored = {_text(k): _text(v) for k, v in raw.items()}
    if stored.get("format") != wanted["format"]:
        raise LayoutMismatch(
            f"namespace {keys.namespace!r} holds data in storage format {stored.get('format')}, this goalhorn "
            f"reads format {FORMAT_VERSION}: re-import the subscribers into a new GOALHORN_NAMESPACE"
        )
    if stored.get("preference_buckets") != wanted["preference_buckets"]:
        raise LayoutMismatch(
            f"GOALHORN_PREFERENCE_BUCKETS is {settings.preference_buckets} but namespace {keys.namespace!r} was "
            f"written with {stored.get('preference_buckets')} buckets: set GOALHORN_PREFERENCE_BUCKETS="
            f"{stored.get('preference_buckets')} (or re-import the subscribers into a new GOALHORN_NAMESPACE)"
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
