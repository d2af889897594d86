"""Streaming audience expansion: an intent's segments become delivery batches of at most
``batch_size`` devices of one platform, cut as they fill, so the first batch goes out before the last
member is read.

Per chunk of members (SSCAN ``COUNT chunk``) the expander makes a constant number of round trips:
membership in the intent's earlier segments (one SMISMEMBER per set), the devices of every member
plus the preference records of the members the Bloom filter cannot rule out (one HMGET per bucket),
and, only when capped users remain, one Lua call for the caps. A device reached through two segments
is sent once: a member of an earlier segment only gets the devices that segment's filters left out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime

from goalhorn.errors import ConfigError
from goalhorn.intents.catalog import Catalog
from goalhorn.intents.rules import intent_fields
from goalhorn.keys import PLATFORMS, Keys, Platform
from goalhorn.models import DeliveryBatch, Device, Intent, utcnow
from goalhorn.preferences.bloom import PreferenceBloom, PreferenceFilter
from goalhorn.preferences.caps import CapCounter
from goalhorn.preferences.eligibility import REASONS, Reason, suppression
from goalhorn.preferences.model import DEFAULT_PREFERENCES, Cap, Preferences
from goalhorn.preferences.reader import ChunkReader
from goalhorn.redis_client import Redis
from goalhorn.segmenter.algebra import SetAlgebra, read_ahead
from goalhorn.segmenter.definitions import Resolved, Segment, resolve


@dataclass(slots=True)
class ExpansionStats:
    users: int = 0
    users_without_devices: int = 0
    devices: int = 0
    batches: int = 0
    suppressed: dict[Reason, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    preference_lookups: int = 0


class Expander:
    """Expands intents into delivery batches."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        catalog: Callable[[], Catalog],
        *,
        chunk: int = 1000,
        batch_size: int = 500,
        buckets: int = 16,
        bloom: bool = True,
        bloom_error_rate: float = 0.01,
        bloom_rebuild_pending: int = 10_000,
    ) -> None:
        self._catalog = catalog
        self._reader = ChunkReader(redis, keys, buckets=buckets)
        self._algebra = SetAlgebra(redis, chunk=chunk)
        self._caps = CapCounter(redis, keys)
        self._bloom = PreferenceBloom(redis, keys, buckets=buckets, error_rate=bloom_error_rate) if bloom else None
        self._keys = keys
        self._batch_size = batch_size
        self._rebuild_pending = bloom_rebuild_pending
        self.rebuilding: asyncio.Task[bool] | None = None

    def segments_of(self, intent: Intent) -> list[tuple[Segment, Resolved]]:
        catalog = self._catalog()
        fields = intent_fields(intent)
        out = []
        for name in intent.segments:
            segment = catalog.segments.get(name)
            if segment is None:
                raise ConfigError(f"intent {intent.intent_id} names unknown segment {name!r}")
            out.append((segment, resolve(segment, catalog.segments, fields, self._keys)))
        return out

    async def expand(
        self,
        intent: Intent,
        stats: ExpansionStats | None = None,
        *,
        now: datetime | None = None,
        dry_run: bool = False,
        segments: list[tuple[Segment, Resolved]] | None = None,
    ) -> AsyncIterator[DeliveryBatch]:
        """Yield the intent's batches; ``stats`` (if given) is filled in as it goes. ``dry_run`` checks
        caps without counting the alert against them (for previews); ``segments`` are the intent's,
        if already resolved with :meth:`segments_of`."""
        stats = stats if stats is not None else ExpansionStats()
        now = now or utcnow()
        segments = segments if segments is not None else self.segments_of(intent)
        prefilter = await self._bloom.snapshot() if self._bloom else PreferenceFilter(0, None)
        self._rebuild_when_due(prefilter)
        sizes = await self._algebra.sizes([expr for _, expr in segments])
        buffers: dict[Platform, list[Device]] = {platform: [] for platform in PLATFORMS}

        def cut(platform: Platform) -> DeliveryBatch:
            devices, buffers[platform] = buffers[platform], []
            stats.batches += 1
            return DeliveryBatch(
                batch_id=f"{intent.intent_id}.{platform}.{stats.batches}",
                platform=platform,
                intent=intent,
                devices=tuple(devices),
            )

        for index, (segment, expr) in enumerate(segments):
            earlier = [s for s, _ in segments[:index]]
            earlier_exprs = [e for _, e in segments[:index]]
            async for users in read_ahead(self._algebra.stream(expr, sizes)):
                inside = await self._algebra.membership(earlier_exprs, users) if earlier_exprs else []
                chosen = await self._chunk(intent, segment, earlier, inside, users, prefilter, stats, now, dry_run)
                for device in chosen:
                    buffer = buffers[device.platform]
                    buffer.append(device)
                    if len(buffer) >= self._batch_size:
                        yield cut(device.platform)
        for platform in PLATFORMS:
            if buffers[platform]:
                yield cut(platform)

    def _rebuild_when_due(self, prefilter: PreferenceFilter) -> None:
        """Start a background rebuild of the Bloom filter when too many users are pending."""
        idle = self.rebuilding is None or self.rebuilding.done()
        if self._bloom is not None and idle and len(prefilter.pending) >= self._rebuild_pending:
            self.rebuilding = asyncio.create_task(self._bloom.rebuild_if_due(prefilter, self._rebuild_pending))

    async def _chunk(
        self,
        intent: Intent,
        segment: Segment,
        earlier: list[Segment],
        inside: list[list[bool]],
        users: list[str],
        prefilter: PreferenceFilter,
        stats: ExpansionStats,
        now: datetime,
        dry_run: bool,
    ) -> list[Device]:
        default_reason = suppression(DEFAULT_PREFERENCES, intent, now)  # an opt-in the defaults lack
        maybes = prefilter.maybes(users)
        records = await self._reader.read(users, maybes)
        stats.preference_lookups += len(maybes)
        # 1. preferences, for every member with devices
        candidates: list[tuple[str, list[Device], list[Segment], Cap | None]] = []
        for position, user_id in enumerate(users):
            seen_before = [s for s, hits in zip(earlier, inside, strict=True) if hits[position]] if earlier else []
            first = not seen_before
            stats.users += first
            user_devices = records.devices.get(user_id)
            if user_devices is None:
                stats.users_without_devices += first
                continue
            raw_prefs = records.preferences.get(user_id)
            if raw_prefs is None:
                reason, cap = default_reason, None
            else:
                prefs = Preferences.decode(raw_prefs)
                reason, cap = suppression(prefs, intent, now), prefs.cap
            if reason is not None:
                stats.suppressed[reason] += first
                continue
            candidates.append((user_id, user_devices, seen_before, cap))
        # 2. the candidates' devices through the segment's filters
        filtering = segment.platforms is not None or segment.locales is not None
        picked: list[tuple[str, list[Device], bool]] = []
        capped: list[tuple[str, Cap]] = []
        for user_id, devices, seen_before, cap in candidates:
            if filtering or seen_before:
                devices = [
                    d
                    for d in devices
                    if segment.admits(d.platform, d.locale)
                    and not any(s.admits(d.platform, d.locale) for s in seen_before)
                ]
                if not devices:
                    continue
            if cap is not None:
                capped.append((user_id, cap))
            picked.append((user_id, devices, not seen_before))
        # 3. caps, for the capped users still in, in one call
        refused: set[str] = set()
        if capped:
            admitted = await self._caps.admit(intent.game_id, intent.intent_id, capped, now, record=not dry_run)
            refused = {user_id for (user_id, _), ok in zip(capped, admitted, strict=True) if not ok}
        chosen: list[Device] = []
        for user_id, devices, first in picked:
            if user_id in refused:
                stats.suppressed["capped"] += first
                continue
            chosen.extend(devices)
        stats.devices += len(chosen)
        return chosen
