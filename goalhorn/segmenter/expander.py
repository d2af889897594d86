"""Streaming audience expansion: an intent's segments become delivery batches of at most
``batch_size`` devices of one platform, cut as they fill, so the first batch goes out before the last
member is read.

Per chunk of members (SSCAN ``COUNT chunk``) the expander makes a constant number of round trips:
membership in the intent's earlier segments (one SMISMEMBER per set); one read of HMGETs, one per
bucket and kind (``goalhorn.preferences.reader``); and, only when capped users remain, one Lua call
for the caps. SSCAN runs up to four chunks ahead and up to eight chunk reads are in flight while
earlier chunks are turned into batches.

Most members have no preference record and reach no earlier segment: the Bloom filter says so, and
their stored device records go into the batches as they are, in bulk (``goalhorn.segmenter.batches``).
Only the others are looked at one by one: their preference records are read and judged first
(``goalhorn.preferences.eligibility``), and the devices of those let through are read with a later
chunk; a member of an earlier segment, or any member when the segment filters by locale, has its
devices parsed and filtered. A device reached through two segments is sent once: a member of an earlier segment only
gets the devices that segment's filters left out. Unreadable stored records are counted and skipped,
never fatal to the expansion.

A Live Activity intent (its one audience ``live:<game key>``) names no catalog segment: the registry of
``goalhorn.liveactivities`` says who gets it (``LiveAudience``); this module only streams a start's team
followers to it, through the same set algebra.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from goalhorn.catalog import Catalog
from goalhorn.catalog.segments import Segment
from goalhorn.errors import ConfigError
from goalhorn.intents.rules import intent_fields
from goalhorn.keys import Keys
from goalhorn.liveactivities.audience import AudienceStats, LiveAudience, live_game
from goalhorn.models import DeliveryBatch, Device, EncodedBatch, Intent, utcnow
from goalhorn.preferences.bloom import PreferenceBloom, PreferenceFilter
from goalhorn.preferences.caps import CapCounter
from goalhorn.preferences.eligibility import REASONS, Eligibility, Reason
from goalhorn.preferences.hashing import user_hashes
from goalhorn.preferences.model import Cap
from goalhorn.preferences.reader import ChunkReader
from goalhorn.redis_client import Redis
from goalhorn.segmenter.algebra import SetAlgebra, overlapped, read_ahead
from goalhorn.segmenter.batches import BatchCutter
from goalhorn.segmenter.definitions import Op, Resolved, SetKey, resolve
from goalhorn.topics.state import TOPIC_DEVICE, TopicPlan, TopicState

log = logging.getLogger(__name__)

FCM_PREFIX = b'{"platform":"fcm"'
TOPIC_BATCH = ".fcm.topic."
_TARGET = re.compile(rb'"address":"([^"\\]+)"(?:,"secret":"(?:[^"\\]|\\.)*")?,"locale":"([^"\\]*)"')


def is_topic_batch(batch: EncodedBatch) -> bool:
    """Whether a batch is a planned FCM topic send (its one device the topic)."""
    return TOPIC_BATCH in batch.batch_id


SENT_MARKER = b"sent"
"""A delivery marker's value once the provider accepted the push (``goalhorn.dispatch.markers.SENT``)."""


@dataclass(slots=True)
class ExpansionStats:
    users: int = 0
    users_without_devices: int = 0
    devices: int = 0
    batches: int = 0
    suppressed: dict[Reason, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    preference_lookups: int = 0
    invalid_devices: int = 0
    invalid_preferences: int = 0
    topic_messages: int = 0
    """FCM topic messages planned (one per team topic and locale)."""
    topic_members: int = 0
    """FCM devices known to be subscribed to them, left out of the per-token batches."""
    live_broadcasts: int = 0
    """A Live Activity intent sent on its game's APNs broadcast channel (one request for its watchers)."""
    live_starts_over_budget: int = 0
    """Followers a Live Activity start skipped: past their push-to-start budget (``live_starts_per_user``)."""
    live_starts_repeated: int = 0
    """Followers a start skipped: they got one for the game already, or said their activity runs."""


@dataclass(slots=True)
class _Wanted:
    """A member looked at one by one whom its preferences let through."""

    user_id: bytes
    bucket: int
    before: list[Segment] | None
    """The earlier segments of the intent it is in, if any."""
    cap: Cap | None


@dataclass(slots=True)
class _Chunk:
    bulk: list[list[bytes | None]]
    wanted: list[_Wanted]
    devices: list[bytes | None]
    """The device records of ``wanted``, in order."""


@dataclass(slots=True)
class _Selection:
    """One chunk's outcome: stored device records to batch as they are, and capped users to ask about."""

    records: list[bytes] = field(default_factory=list)
    capped: list[tuple[bytes, Cap, bytes, bool]] = field(default_factory=list)


class Expander:
    """Expands intents into delivery batches."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        catalog: Callable[[], Catalog],
        *,
        chunk: int = 2000,
        batch_size: int = 500,
        buckets: int = 16,
        bloom: bool = True,
        bloom_error_rate: float = 0.01,
        bloom_rebuild_pending: int = 10_000,
        topics: TopicState | None = None,
        live: LiveAudience | None = None,
    ) -> None:
        self._catalog = catalog
        self._reader = ChunkReader(redis, keys, buckets=buckets)
        self._algebra = SetAlgebra(redis, chunk=chunk)
        self._caps = CapCounter(redis, keys)
        self._bloom = PreferenceBloom(redis, keys, buckets=buckets, error_rate=bloom_error_rate) if bloom else None
        self._keys = keys
        self._redis = redis
        self._batch_size = batch_size
        self._rebuild_pending = bloom_rebuild_pending
        self._topics = topics
        self._live = live
        self.rebuilding: asyncio.Task[bool] | None = None

    def segments_of(self, intent: Intent) -> list[tuple[Segment, Resolved]]:
        if live_game(intent) is not None:  # a Live Activity intent: its audience is no catalog segment
            if self._live is None:
                raise ConfigError(f"intent {intent.intent_id} is a Live Activity update, and Live Activities are off")
            return []
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
    ) -> AsyncGenerator[EncodedBatch, None]:
        """Yield the intent's batches; ``stats`` (if given) is filled in as it goes. ``dry_run`` checks
        caps without counting the alert against them (for previews); ``segments`` are the intent's,
        if already resolved with :meth:`segments_of`."""
        stats = stats if stats is not None else ExpansionStats()
        now = now or utcnow()
        if self._live is not None and live_game(intent) is not None:
            async with aclosing(self._expand_live(self._live, intent, stats, now, dry_run)) as batches:
                async for batch in batches:
                    yield batch
            return
        segments = segments if segments is not None else self.segments_of(intent)
        prefilter = await self._bloom.snapshot() if self._bloom else PreferenceFilter(0, None)
        self._rebuild_when_due(prefilter)
        sizes = await self._algebra.sizes([expr for _, expr in segments])
        cutter = BatchCutter(intent, self._batch_size)
        eligibility = Eligibility(intent, now)
        plan = await self._plan(intent, segments, eligibility, dry_run)
        if plan is not None:
            for batch in self._topic_batches(intent, plan, stats):
                yield batch
        for index, (segment, expr) in enumerate(segments):
            covering = plan if index == 0 else None
            members = read_ahead(self._algebra.stream(expr, sizes), depth=4)
            carry: list[_Wanted] = []  # let through by their preferences, devices not read yet
            reads = self._chunks(members, segment, segments[:index], prefilter, stats, eligibility, carry)
            # Closed in order when the expansion stops early (an error, or its reader gave up).
            async with aclosing(members), aclosing(reads), aclosing(overlapped(reads, depth=8)) as chunks:
                async for chunk in chunks:
                    for batch in await self._batches(
                        chunk, segment, intent, eligibility, cutter, stats, now, dry_run, covering
                    ):
                        yield batch
            if carry:
                taken, carry[:] = carry[:], []
                last = _Chunk([], taken, await self._reader.devices([w.user_id for w in taken]))
                for batch in await self._batches(
                    last, segment, intent, eligibility, cutter, stats, now, dry_run, covering
                ):
                    yield batch
        for batch in cutter.flush():
            yield batch
        stats.devices, stats.batches = cutter.devices, cutter.batches

    async def _expand_live(
        self, live: LiveAudience, intent: Intent, stats: ExpansionStats, now: datetime, dry_run: bool
    ) -> AsyncGenerator[EncodedBatch, None]:
        """A Live Activity intent's batches (``goalhorn.liveactivities.audience``); a start's followers are
        streamed here, team by team, each follower once (with the first team they follow)."""

        async def followers(teams: Sequence[str]) -> AsyncIterator[tuple[str, list[bytes]]]:
            sets = [SetKey(self._keys.team_followers(team)) for team in teams]
            sizes = await self._algebra.sizes(sets)
            for index, (team, key) in enumerate(zip(teams, sets, strict=True)):
                expr: Resolved = key if index == 0 else Op("difference", (key, *sets[:index]))
                async for chunk in self._algebra.stream(expr, sizes):
                    yield team, chunk

        found = AudienceStats()
        try:
            async with aclosing(live.expand(intent, followers, found, now=now, dry_run=dry_run)) as batches:
                async for batch in batches:
                    yield batch
        finally:
            if found.over_budget or found.started_before or found.duplicates:
                log.info(
                    "live intent %s: starts past the per-user budget %d, started before %d, repeated tokens %d",
                    intent.intent_id,
                    found.over_budget,
                    found.started_before,
                    found.duplicates,
                )
            stats.users += found.users
            stats.devices, stats.batches = found.devices, found.batches
            stats.live_broadcasts += found.channel
            stats.live_starts_over_budget += found.over_budget
            stats.live_starts_repeated += found.started_before
            stats.invalid_preferences += found.invalid_preferences
            for reason, n in found.suppressed.items():
                stats.suppressed[reason] += n

    async def _batches(
        self,
        chunk: _Chunk,
        segment: Segment,
        intent: Intent,
        eligibility: Eligibility,
        cutter: BatchCutter,
        stats: ExpansionStats,
        now: datetime,
        dry_run: bool,
        plan: TopicPlan | None = None,
    ) -> list[EncodedBatch]:
        """The batches a chunk fills (less the FCM devices ``plan``'s topics reach)."""
        chosen = self._select(chunk, segment, eligibility, stats)
        corrects = intent.data.get("corrects")
        if corrects:  # a correction reaches only the devices the alert it corrects was sent to
            chosen.records = await self._recipients_of(corrects, chosen.records)
            capped = [raw for _, _, raw, _ in chosen.capped]
            kept = await self._recipients_of(corrects, capped, keep_empty=True)
            chosen.capped = [
                (user, cap, raw, first) for (user, cap, _, first), raw in zip(chosen.capped, kept, strict=True) if raw
            ]
        if chosen.capped:
            chosen.records += await self._admit(intent, chosen.capped, stats, now, dry_run)
        if plan is not None:
            chosen.records = await self._uncovered(plan, chosen.records, stats)
        batches = list(cutter.add(chosen.records, segment.platforms))
        stats.devices, stats.batches = cutter.devices, cutter.batches
        stats.invalid_devices += cutter.take_invalid()
        return batches

    async def _chunks(
        self,
        chunks: AsyncIterator[list[bytes]],
        segment: Segment,
        earlier: list[tuple[Segment, Resolved]],
        prefilter: PreferenceFilter,
        stats: ExpansionStats,
        eligibility: Eligibility,
        carry: list[_Wanted],
    ) -> AsyncGenerator[Awaitable[_Chunk], None]:
        """Reads of chunks of members with their records, to be run (:func:`overlapped`): one by one
        for the Bloom filter's maybes, members of earlier segments, and everyone when the segment
        filters by locale; in bulk for the rest. Each read also fetches the devices of the users in
        ``carry`` so far, and adds the users its own preference checks let through."""
        async for members in chunks:
            seen: dict[bytes, list[Segment]] = {}
            if earlier:
                inside = await self._algebra.membership([expr for _, expr in earlier], members)
                for position, user_id in enumerate(members):
                    hits = [s for (s, _), row in zip(earlier, inside, strict=True) if row[position]]
                    if hits:
                        seen[user_id] = hits
            hashes = user_hashes(members)
            if segment.locales is not None:
                one_by_one = np.ones(len(members), dtype=np.bool_)
            else:
                one_by_one = prefilter.maybe_many(members, hashes)
                stats.preference_lookups += int(one_by_one.sum())
                if seen:
                    one_by_one |= np.fromiter((u in seen for u in members), dtype=np.bool_, count=len(members))
            taken, carry[:] = carry[:], []
            yield self._read(members, hashes, one_by_one, seen, eligibility, stats, taken, carry)

    async def _read(
        self,
        members: list[bytes],
        hashes: npt.NDArray[np.uint64],
        one_by_one: npt.NDArray[np.bool_],
        seen: dict[bytes, list[Segment]],
        eligibility: Eligibility,
        stats: ExpansionStats,
        taken: list[_Wanted],
        carry: list[_Wanted],
    ) -> _Chunk:
        """Read a chunk (bulk members' devices, the others' preferences) with the devices of the
        ``taken`` users; the chunk's users its preference checks let through go to ``carry``."""
        records = await self._reader.read(members, one_by_one, [(w.user_id, w.bucket) for w in taken], hashes)
        default_reason = eligibility.default
        for user_id, raw_prefs, bucket in zip(records.users, records.preferences, records.buckets, strict=True):
            before = seen.get(user_id)
            first = before is None
            stats.users += first
            cap: Cap | None = None
            try:
                if raw_prefs is None:
                    reason = default_reason
                else:
                    reason, cap = eligibility.judge(raw_prefs)
            except (ValueError, TypeError, LookupError, AttributeError, ConfigError) as exc:
                stats.invalid_preferences += 1
                log.error(
                    "user %r: unreadable preferences record, user skipped (%s)", user_id.decode("utf-8", "replace"), exc
                )
                continue
            if reason is not None:
                stats.suppressed[reason] += first
            else:
                carry.append(_Wanted(user_id, bucket, before, cap))
        return _Chunk(records.bulk, taken, records.carried)

    async def _plan(
        self, intent: Intent, segments: list[tuple[Segment, Resolved]], eligibility: Eligibility, dry_run: bool
    ) -> TopicPlan | None:
        """The team topics that may carry the intent to its first segment's plain followers: only for
        a first segment that is exactly the team's followers, on every platform and locale, an intent
        that needs no opt-in (and corrects only an alert that went out through topics), and a team
        whose topics are in sync."""
        if self._topics is None or dry_run or intent.team_id is None or not segments:
            return None
        segment, expr = segments[0]
        if expr != SetKey(self._keys.team_followers(intent.team_id)) or segment.locales is not None:
            return None
        if (segment.platforms is not None and "fcm" not in segment.platforms) or eligibility.default is not None:
            return None
        corrects = intent.data.get("corrects")
        if corrects and not await self._topics.planned(corrects):
            return None  # a correction goes where the alert it corrects went: per token only
        until_ms = int(intent.expires_at.timestamp() * 1000)
        return await self._topics.plan(intent.team_id, intent.intent_id, until_ms)

    @staticmethod
    def _topic_batches(intent: Intent, plan: TopicPlan, stats: ExpansionStats) -> list[EncodedBatch]:
        """One FCM batch per locale topic, its one "device" the topic (``goalhorn.providers.fcm``):
        it goes through the FCM provider, its breaker and retries, and its delivery marker keeps it
        to one send however often the intent is expanded."""
        out = []
        for locale, (topic, members) in sorted(plan.topics.items()):
            device = Device(
                platform="fcm",
                device_id=f"{TOPIC_DEVICE}{topic}",
                user_id=f"topic:{plan.team_id}",
                address=f"/topics/{topic}",
                locale=locale,
            )
            batch_id = f"{intent.intent_id}{TOPIC_BATCH}{locale}"
            out.append(DeliveryBatch(batch_id=batch_id, platform="fcm", intent=intent, devices=(device,)).encode())
            stats.topic_messages += 1
            stats.topic_members += members
        return out

    async def _uncovered(self, plan: TopicPlan, records: list[bytes], stats: ExpansionStats) -> list[bytes]:
        """``records`` without the FCM device lines whose token is known to be in the topic of the
        device's locale (the topic message reaches them); every other line is kept as it is. A line's
        token and locale are read with a pattern over the stored JSON (its fields come in the model's
        order), or parsed when the pattern does not match."""
        lines = [line for raw in records for line in raw.split(b"\n") if line]
        fcm: list[int] = []
        tokens: list[bytes] = []
        locales: list[str] = []
        for n, line in enumerate(lines):
            if not line.startswith(FCM_PREFIX):
                continue
            found = _TARGET.search(line)
            if found is not None:
                token, locale = found.group(1), found.group(2).decode()
            else:
                try:
                    device = json.loads(line)
                    token, locale = str(device["address"]).encode(), str(device.get("locale", "en"))
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # left for the batch's validation to quarantine
            fcm.append(n)
            tokens.append(token)
            locales.append(locale)
        if not fcm or self._topics is None:
            return records
        topics = await self._topics.covered(plan.team_id, tokens)
        covered = set()
        for n, locale, topic in zip(fcm, locales, topics, strict=True):
            wanted = plan.topics.get(locale)
            if wanted is not None and topic == wanted[0]:
                covered.add(n)
        if not covered:
            return records
        kept = [line for n, line in enumerate(lines) if n not in covered]
        return [b"\n".join(kept)] if kept else []

    def _rebuild_when_due(self, prefilter: PreferenceFilter) -> None:
        """Start a background rebuild of the Bloom filter when too many users are pending."""
        idle = self.rebuilding is None or self.rebuilding.done()
        if self._bloom is not None and idle and len(prefilter.pending) >= self._rebuild_pending:
            self.rebuilding = asyncio.create_task(self._bloom.rebuild_if_due(prefilter, self._rebuild_pending))

    def _select(self, chunk: _Chunk, segment: Segment, eligibility: Eligibility, stats: ExpansionStats) -> _Selection:
        """The device records a chunk contributes: those read in bulk as they are, the others' after a
        look at each (devices filtered for a member of an earlier segment or a locale filter; caps)."""
        out = _Selection()
        default_reason = eligibility.default
        for raws in chunk.bulk:
            without, empty = raws.count(None), raws.count(b"")
            stats.users += len(raws)
            stats.users_without_devices += without + empty
            stats.invalid_devices += empty
            if default_reason is None:
                out.records += filter(None, raws)
            else:
                stats.suppressed[default_reason] += len(raws) - without - empty
        filtering = segment.locales is not None
        for wanted, raw in zip(chunk.wanted, chunk.devices, strict=True):
            first = wanted.before is None
            if not raw:
                stats.users_without_devices += first
                stats.invalid_devices += first and raw == b""
                continue
            if wanted.before is not None or filtering:
                filtered = self._filter_devices(wanted.user_id, raw, segment, wanted.before or [], stats, first)
                if filtered is None:
                    continue
                raw = filtered
            if wanted.cap is not None:
                out.capped.append((wanted.user_id, wanted.cap, raw, first))
            else:
                out.records.append(raw)
        return out

    @staticmethod
    def _filter_devices(
        user_id: bytes, raw: bytes, segment: Segment, before: list[Segment], stats: ExpansionStats, first: bool
    ) -> bytes | None:
        """The user's device lines this segment admits and no earlier one did (None: none). A line that
        is not a valid device is skipped, and counted the first time the user is met."""
        kept: list[bytes] = []
        for line in raw.split(b"\n"):
            try:
                device = Device.model_validate_json(line)
            except ValidationError as exc:
                if first:
                    stats.invalid_devices += 1
                    log.error(
                        "user %r: unreadable device record line skipped (%s)",
                        user_id.decode("utf-8", "replace"),
                        exc.errors()[0]["msg"],
                    )
                continue
            admitted = segment.admits(device.platform, device.locale)
            if admitted and not any(s.admits(device.platform, device.locale) for s in before):
                kept.append(device.to_json())
        return b"\n".join(kept) if kept else None

    async def _recipients_of(self, intent_id: str, raws: list[bytes], *, keep_empty: bool = False) -> list[bytes]:
        """Of each record's device lines, those the intent was sent to (its delivery marker says so)."""
        lines = [[line for line in raw.split(b"\n") if line] for raw in raws]
        ids: list[str] = []
        for line in (line for group in lines for line in group):
            try:
                device_id = json.loads(line).get("device_id")
            except (ValueError, AttributeError):
                device_id = None
            ids.append(device_id if isinstance(device_id, str) else "")
        if not ids:
            return [b"" for _ in raws] if keep_empty else []
        states = await self._redis.mget([self._keys.delivery_marker(intent_id, device_id) for device_id in ids])
        sent = iter(state == SENT_MARKER for state in states)
        out = [b"\n".join(line for line in group if next(sent)) for group in lines]
        return out if keep_empty else [raw for raw in out if raw]

    async def _admit(
        self,
        intent: Intent,
        capped: list[tuple[bytes, Cap, bytes, bool]],
        stats: ExpansionStats,
        now: datetime,
        dry_run: bool,
    ) -> list[bytes]:
        """The device records of the capped users their caps still let through (one Lua call)."""
        asked = [(user_id.decode(), cap) for user_id, cap, _, _ in capped]
        admitted = await self._caps.admit(intent.game_id, intent.intent_id, asked, now, record=not dry_run)
        records: list[bytes] = []
        for (_, _, raw, first), ok in zip(capped, admitted, strict=True):
            if ok:
                records.append(raw)
            else:
                stats.suppressed["capped"] += first
        return records
