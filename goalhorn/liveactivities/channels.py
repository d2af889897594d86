"""The lifecycle of games' APNs broadcast channels: made before kickoff, deleted after full time.

A pass (``ChannelLifecycle.run_once``, every ``GOALHORN_LIVE_CHANNEL_INTERVAL_S`` in the fanout stage)

1. takes the lease (``Keys.la_channels_lease``): one process acts at a time, the others skip;
2. deletes the channel of every game seen final ``keep_s`` ago once the game's ``end`` went out on
   it: a deliver worker claimed it for the channel (the channel's newest claimed update,
   ``Keys.newest_intent``, is the end ingest recorded in the game's ticker, ``Keys.la_ticker``), or
   ``END_TTL_S`` passed (the end may wait that long to be sent, and a broadcast on a deleted channel
   is refused: every activity started on it would go on showing the game live); a channel's game
   that is no longer in the live state at all is treated alike once ``ORPHAN_S`` old; it is then
   forgotten: APNs answering that it no longer knows a channel is no error;
3. creates a channel (No Message Storage, Apple's advice for sports scores) for every game starting
   within ``lead_s`` (or already live) whose teams have at least ``min_followers`` followers together,
   the busiest first, while fewer than ``max_channels`` are held (Apple's limit is 10,000 per app;
   ``ChannelLimitReached`` from APNs stops the pass's creations too): past it a game goes per-token.
   The lease is renewed before each creation (a pass that lost it stops), and a channel is kept only
   if the game has none yet: one made by a pass that lost a race is deleted at APNs at once; a stop
   (the task cancelled) waits for a creation under way to be kept, so APNs never holds a channel
   goalhorn does not know (Apple's 10,000 are per app; a process killed mid-request can still leave
   one, which ``goalhorn live channels`` does not list);
4. every ``RECONCILE_EVERY`` passes, forgets the channels APNs no longer lists (the game goes
   per-token; deleting channels APNs holds that goalhorn does not know is left to an operator: another
   deployment may share the app).

A pass is skipped while the subscriber epoch (``goalhorn.preferences.epoch``) is missing, marked lost,
or replaced by one that is no operator's restore since the process first saw it, as the fanout holds
its intents then (``goalhorn.segmenter.epoch_watch``): Redis that lost its data lost the channels
goalhorn held too, while APNs still holds them (in the app's 10,000): once the subscribers are imported
again, a pass would make a second channel beside each game's first and never delete the first. Logged
once; passes resume when an operator runs ``goalhorn subscribers restored`` (then compare Apple's
``all-channels`` with ``goalhorn live channels`` and delete what the lost Redis held), or, for a missing
epoch, once subscriber data is first written (a new namespace).

The games come from the live state, which this layer may not read (``goalhorn.ingest``): the
fanout stage passes a :data:`GameSource`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, cast

from goalhorn.errors import ChannelLimitReached, ProviderError
from goalhorn.keys import Keys
from goalhorn.liveactivities.audience import CHANNEL_DEVICE, LIVE_PREFIX
from goalhorn.liveactivities.registry import Channel, LiveRegistry, text
from goalhorn.preferences.epoch import Epoch, SubscriberEpoch
from goalhorn.redis_client import Redis

log = logging.getLogger(__name__)

ORPHAN_S = 12 * 3600
"""A channel whose game left the live state is deleted once this old (the longest a Live Activity lives)."""
RECONCILE_EVERY = 20
LEASE_S = 120
END_TTL_S = 1800
"""How long a game's ``end`` intent may wait to be sent (``goalhorn.intents.liveactivity.TTL_S["end"]``,
a layer above this one): a channel the end was not seen going out on is kept this long after the game
was seen final."""

# KEYS[1] lease; ARGV: holder, lease ms. Takes the lease if free, extends it if ours.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


Status = Literal["scheduled", "live", "final"]


@dataclass(frozen=True, slots=True)
class GameSlot:
    """What the lifecycle needs of one game of the live state."""

    game_id: str
    """The game key, ``<source>:<feed's game id>`` (the Live Activity intents' and the sidecar's)."""
    home_team_id: str
    away_team_id: str
    status: Status
    starts_at: float | None
    """Scheduled start, epoch seconds."""


GameSource = Callable[[Collection[str]], Awaitable[Sequence[GameSlot]]]
"""The scheduled and live games, and those of the given game keys (the channels held) whatever
their status (a game no longer in the live state is left out)."""


class ChannelClient(Protocol):
    """What the lifecycle calls of ``goalhorn.providers.apns_channels.ApnsChannels``."""

    async def create(self, *, storage: Literal[0, 1] = 0) -> str: ...

    async def delete(self, channel_id: str) -> bool: ...

    async def list(self) -> list[str]: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class PassReport:
    """What one pass did (``held_by_other``: another process holds the lease; nothing done)."""

    held_by_other: bool = False
    subscribers_lost: bool = False
    """The subscriber epoch is missing or marked lost: Redis lost its data (the channels it held with
    it); nothing done."""
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    """Channels APNs no longer knew, forgotten."""
    over_limit: list[str] = field(default_factory=list)
    """Games that qualified for a channel but go per-token: the limit is reached."""
    failed: list[str] = field(default_factory=list)
    """``<game>: <error>`` of the requests APNs failed (tried again next pass)."""


class ChannelLifecycle:
    """Creates and deletes games' broadcast channels, one process at a time."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        registry: LiveRegistry,
        client: ChannelClient,
        games: GameSource,
        *,
        lead_s: int,
        min_followers: int,
        keep_s: int,
        max_channels: int,
        holder: str | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.registry = registry
        self._client = client
        self._games = games
        self._lead_s = lead_s
        self._min_followers = min_followers
        self._keep_s = keep_s
        self._max = max_channels
        self.holder = holder or uuid.uuid4().hex
        self._lease = redis.register_script(_LEASE)
        self._release = redis.register_script(_RELEASE)
        self._passes = 0
        self._epoch = SubscriberEpoch(redis, keys)
        self._seen: Epoch | None = None
        """The subscriber epoch this process's passes ran under."""
        self._told_lost = False

    async def run_once(self, now: float | None = None) -> PassReport:
        """One pass (see the module's docstring)."""
        now = time.time() if now is None else now
        report = PassReport()
        if not await self._hold():
            report.held_by_other = True
            return report
        if await self._subscribers_lost():
            report.subscribers_lost = True
            return report
        held = {c.game_id: c for c in await self.registry.channels()}
        games = {g.game_id: g for g in await self._games(list(held))}
        self._passes += 1
        if self._passes % RECONCILE_EVERY == 1:
            await self._reconcile(held, report)
        for channel in list(held.values()):
            game = games.get(channel.game_id)
            if game is not None and game.status == "final" and channel.final_at is None:
                channel = replace(channel, final_at=now)
                await self.registry.keep_channel(channel)
                held[channel.game_id] = channel
            done = (
                channel.final_at is not None
                and now >= channel.final_at + self._keep_s
                and (now >= channel.final_at + END_TTL_S or await self._end_went_out(channel.game_id))
            )
            orphan = game is None and now >= channel.created_at + ORPHAN_S
            if (done or orphan) and await self._delete(channel, report):
                del held[channel.game_id]
        await self._create(games, held, report, now)
        return report

    async def _end_went_out(self, game_id: str) -> bool:
        """Whether a deliver worker claimed the game's end for its channel (sent, or being sent): the
        end ingest published (the ticker's ``ended``, at ``observed_ms``) against the event time of the
        newest update claimed for the channel device (µs; kept while that update could be sent)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(self._keys.la_ticker(game_id), "ended", "observed_ms")
        pipe.get(self._keys.newest_intent(f"{LIVE_PREFIX}{game_id}", f"{CHANNEL_DEVICE}{game_id}"))
        (ended, observed_ms), newest = await pipe.execute()
        if ended is None or text(ended) != "1" or observed_ms is None or newest is None:
            return False
        return int(text(newest)) >= int(text(observed_ms)) * 1000

    async def _subscribers_lost(self) -> bool:
        """Whether the subscriber epoch is missing, marked lost, or replaced since this process saw it
        without an operator's restore (logged once, and once when it is back)."""
        epoch = await self._epoch.read()
        if epoch is None:
            why = "missing (no subscribers yet, or Redis lost its data)"
        elif epoch.lost:
            why = f"marked lost ({epoch})"
        elif self._seen is not None and epoch != self._seen and not epoch.restored:
            why = f"replaced ({self._seen} -> {epoch}): Redis lost its data and subscribers were written anew"
        else:
            why = ""
            self._seen = epoch
        lost = bool(why)
        if lost and not self._told_lost:
            log.log(
                logging.WARNING if epoch is None else logging.ERROR,
                "broadcast channels: the subscriber epoch is %s; no channel is made or deleted until it is back "
                "(`goalhorn subscribers restored`; Redis that lost its data lost the channels goalhorn held, which "
                "APNs may still hold: compare Apple's all-channels with `goalhorn live channels`)",
                why,
            )
        elif not lost and self._told_lost:
            log.warning("broadcast channels: the subscriber epoch is back (%s); passes resume", epoch)
        self._told_lost = lost
        return lost

    async def _hold(self) -> bool:
        """Take or extend the lease; False when another process holds it."""
        return bool(await self._lease(keys=[self._keys.la_channels_lease()], args=[self.holder, LEASE_S * 1000]))

    async def aclose(self) -> None:
        """Close the channel client (the lifecycle owns it)."""
        await self._client.aclose()

    async def release(self) -> None:
        """Let another process take over at once (this one stops)."""
        await self._release(keys=[self._keys.la_channels_lease()], args=[self.holder])

    async def _delete(self, channel: Channel, report: PassReport) -> bool:
        try:
            known = await self._client.delete(channel.channel_id)
        except ProviderError as exc:
            report.failed.append(f"{channel.game_id}: {exc}")
            log.warning("game %s: deleting channel %s failed (%s)", channel.game_id, channel.channel_id, exc)
            return False
        await self.registry.forget_channel(channel.game_id)
        (report.deleted if known else report.forgotten).append(channel.game_id)
        log.info("game %s: channel %s deleted", channel.game_id, channel.channel_id)
        return True

    async def _create(
        self, games: dict[str, GameSlot], held: dict[str, Channel], report: PassReport, now: float
    ) -> None:
        due = [
            g
            for g in games.values()
            if g.game_id not in held
            and (
                g.status == "live"
                or (g.status == "scheduled" and g.starts_at is not None and g.starts_at - now <= self._lead_s)
            )
        ]
        if not due:
            return
        counts = await self._followers(due)
        busy = [(n, g) for g, n in zip(due, counts, strict=True) if n >= self._min_followers]
        ranked = [g for _, g in sorted(busy, key=lambda pair: -pair[0])]
        for n, game in enumerate(ranked):
            if len(held) >= self._max:
                report.over_limit += [g.game_id for g in ranked[n:]]
                log.warning(
                    "%d games go without a channel: %d channels held, the most kept", len(ranked) - n, len(held)
                )
                return
            if not await self._hold():  # this pass outlived its lease: another process acts now
                report.held_by_other = True
                return
            if await self._subscribers_lost():  # Redis lost its data during the pass
                report.subscribers_lost = True
                return
            making = asyncio.ensure_future(self._make(game.game_id, now, report))
            try:
                channel = await asyncio.shield(making)
            except asyncio.CancelledError:  # stopping: what APNs made is stored (or deleted) first
                await making
                raise
            except ChannelLimitReached:
                report.over_limit += [g.game_id for g in ranked[n:]]
                log.warning("APNs holds the app's 10,000 channels: %d games go per-token", len(ranked) - n)
                return
            except ProviderError as exc:
                report.failed.append(f"{game.game_id}: {exc}")
                log.warning("game %s: creating a channel failed (%s)", game.game_id, exc)
                return  # APNs is failing: the next pass tries again
            if channel is not None:
                held[game.game_id] = channel

    async def _make(self, game_id: str, now: float, report: PassReport) -> Channel | None:
        """Create the game's channel at APNs and keep it (None: another process kept one first). Run
        shielded from a stop's cancel: a channel APNs made and goalhorn forgot would never be deleted."""
        channel = Channel(game_id, await self._client.create(storage=0), 0, now)
        if not await self.registry.keep_new_channel(channel):
            await self._drop_unkept(game_id, channel.channel_id, report)
            return None
        report.created.append(game_id)
        log.info("game %s: channel %s created", game_id, channel.channel_id)
        return channel

    async def _drop_unkept(self, game_id: str, channel_id: str, report: PassReport) -> None:
        """Another process gave the game a channel meanwhile: delete the one this pass made."""
        log.warning("game %s: another process made its channel first; deleting %s", game_id, channel_id)
        try:
            await self._client.delete(channel_id)
        except ProviderError as exc:
            report.failed.append(f"{game_id}: {exc}")
            log.error("game %s: channel %s is held at APNs and unknown to goalhorn (%s)", game_id, channel_id, exc)

    async def _followers(self, games: Sequence[GameSlot]) -> list[int]:
        """Followers of each game's two teams together (a user following both counted twice: an upper bound)."""
        pipe = self._redis.pipeline(transaction=False)
        for game in games:
            pipe.scard(self._keys.team_followers(game.home_team_id))
            pipe.scard(self._keys.team_followers(game.away_team_id))
        sizes = cast(list[int], await pipe.execute())
        return [sizes[2 * n] + sizes[2 * n + 1] for n in range(len(games))]

    async def _reconcile(self, held: dict[str, Channel], report: PassReport) -> None:
        if not held:
            return
        try:
            known = set(await self._client.list())
        except ProviderError as exc:
            report.failed.append(f"list: {exc}")
            return
        for game_id, channel in list(held.items()):
            if channel.channel_id not in known:
                await self.registry.forget_channel(game_id)
                del held[game_id]
                report.forgotten.append(game_id)
                log.warning(
                    "game %s: APNs no longer knows channel %s; the game goes per-token", game_id, channel.channel_id
                )
