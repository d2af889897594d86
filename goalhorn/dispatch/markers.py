"""Delivery markers: one Redis key per (intent, device), in-flight while a worker holds it, then final.

A worker *claims* devices in small windows just before sending them (``SET NX GET`` with a short
lease, one script call per window), renews the leases of the claims it still holds while it works
(``renew``), and *finishes* each device with its final state once it knows it: ``sent`` when the
provider accepted it, ``failed`` for a provider's definite refusal, ``superseded`` for a
push a newer one made stale, ``expired`` for one that came too late (``invalid_token`` for a dead
token). A final marker lives
``sent_marker_ttl_s`` (longer than any redelivery window), so a redelivered or replayed batch skips
every device that already ended. A device whose send definitely did not happen (a retryable failure,
a deferral, a message that cannot be built) is *released* instead, so its next attempt, or a replay
from the dead letters, claims it at once. A claim whose worker died is held only until its lease runs
out, then it is claimed and sent again, so a crash never loses a push for good.

Counting is done from these transitions: ``settle`` says which markers it moved from in-flight (or
nothing) to a final state, so a device is counted once however many times its batch is delivered.

Writes after a send (final states, releases) are retried while Redis is unreachable, for up to
``OUTAGE_HOLD_S`` (minutes, far longer than a lease): a push the provider accepted must be recorded
before its batch can give up, or the batch is put back whole and, its claims having run out during
the outage (renewals cannot reach Redis either), its copy sends those devices again. The batch is held
meanwhile; when Redis answers the held marks land first (a final state is written over a claim that
ran out), then the batch goes on. A batch's first claim is not retried: nothing was sent yet, so the
batch can simply wait (``goalhorn.dispatch.failures``). Its later windows' claims are (``patient``),
for as long: the batch has sent devices whose marks and counts it still holds, and giving up would
cancel sends in flight, whose claims lapse unrecorded. The claims of devices not sent yet may lapse
during an outage: nothing was sent for them, so a copy claiming them is no duplicate. (Should the
reply of a claim be lost, the retry finds its own claims held, and those devices wait out the lease
like any held device.)

Superseding (``newest``): with a collapse key, a second key per (collapse key, device) holds the event
time of the newest intent claimed for that device, checked and raised in one script per window. It
carries the collapse key as its hash tag (all devices of a window share it, so the script is valid
on Redis Cluster), not the intent's, so it is a separate script from the claim, run just before it
in the same round trip (both sent in one write on one connection). The claim then takes every
device; those the newest check found stale are moved from in-flight to ``superseded`` by one more
call, made only when there are any.

Round trips are what the markers cost a worker (each is a write to a socket, and the client's
bookkeeping around it): the scripts go out through :meth:`DeliveryMarkers._eval_many`, one write and
the replies read off the connection, not redis-py's ``Pipeline`` (which asks ``SCRIPT EXISTS`` first,
one more round trip per call).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from goalhorn.dispatch.failures import redis_unavailable
from goalhorn.keys import Keys
from goalhorn.models import Device, Intent, utcnow
from goalhorn.redis_client import Redis

log = logging.getLogger(__name__)

IN_FLIGHT = b"inflight"
Final = Literal["sent", "failed", "invalid_token", "superseded", "expired"]
"""The final states of a marker (anything but in-flight), named as the ``delivery:<platform>:<count>``
counter a device that ends so is counted under."""
WRITE_RETRY_FIRST_S = 0.05
WRITE_RETRY_MAX_S = 1.0
OUTAGE_HOLD_S = 300.0
"""How long the marker writes after a send, and a started batch's later claims, are retried while Redis
is unreachable before the batch gives up (and is put back whole, its unmarked sends then going out
again once their claims run out)."""


@dataclass(slots=True)
class Claims:
    claimed: list[Device] = field(default_factory=list)
    already_done: list[Device] = field(default_factory=list)
    """Ended before (a redelivery, a replay, a duplicate batch): sent, failed, superseded..."""
    held: list[Device] = field(default_factory=list)
    """Claimed by another attempt (live, or dead with its lease still running)."""
    held_for_s: float = 0.0
    """The longest remaining lease among ``held``."""
    ended: list[Device] = field(default_factory=list)
    """Ended by this call: with ``final``, in that state; else superseded (a strictly newer intent with
    the same collapse key was claimed for them)."""


# One round trip and one command per window, whatever its size: per-key SETs cost the client
# ~25 us each to pack. All keys of an intent share the {intent_id} hash tag, so the scripts are valid
# on Redis Cluster. The first ARGV[5] keys are claimed (ARGV[1] for ARGV[2] s), the others are set to
# the final ARGV[3] (for ARGV[4] s) unless they hold something already. 0: done now; -1: ended before;
# else the claim's remaining lease in ms (held by another attempt).
_CLAIM = """
local claims = tonumber(ARGV[5])
local out = {}
for i, key in ipairs(KEYS) do
  local old
  if i <= claims then
    old = redis.call('SET', key, ARGV[1], 'NX', 'GET', 'EX', ARGV[2])
  else
    old = redis.call('SET', key, ARGV[3], 'NX', 'GET', 'EX', ARGV[4])
  end
  if not old then
    out[i] = 0
  elseif old == 'inflight' then
    out[i] = redis.call('PTTL', key)
  else
    out[i] = -1
  end
end
return out
"""

# Final state ARGV[1] for ARGV[2] s, on markers that are in flight (or gone: a lease that ran out
# under a slow send); per key 1 if it moved (what the counters take), else 0.
_FINISH = """
local out = {}
for i, key in ipairs(KEYS) do
  local old = redis.call('GET', key)
  if (not old) or old == 'inflight' then
    redis.call('SET', key, ARGV[1], 'EX', ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# Deletes the claims of sends that definitely did not happen, whatever they hold (0, unused).
_RELEASE = """
for _, key in ipairs(KEYS) do
  redis.call('DEL', key)
end
return 0
"""

_RENEW = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == 'inflight' then
    redis.call('EXPIRE', key, ARGV[1])
  end
end
return #KEYS
"""

# 1 for a device a strictly newer intent (event time ARGV[1], microseconds) was claimed for; else
# the key is raised to ARGV[1] (for ARGV[2] s) and 0.
_NEWEST = """
local mine = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local cur = tonumber(redis.call('GET', key) or '0')
  if cur > mine then
    out[i] = 1
  else
    if cur < mine then
      redis.call('SET', key, ARGV[1], 'EX', ARGV[2])
    end
    out[i] = 0
  end
end
return out
"""


_Call = tuple[AsyncScript, Sequence[str], Sequence[bytes | str | int]]
"""A script call: the script, its keys, its arguments."""


def event_us(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


class DeliveryMarkers:
    def __init__(self, redis: Redis, keys: Keys, *, lease_s: int, sent_ttl_s: int) -> None:
        self._keys = keys
        self._redis = redis
        self.lease_s = lease_s
        self._sent_ttl_s = sent_ttl_s
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH)
        self._renew = redis.register_script(_RENEW)
        self._newest = redis.register_script(_NEWEST)
        self._release = redis.register_script(_RELEASE)

    async def claim(
        self, intent: Intent, devices: Sequence[Device], *, final: Final | None = None, patient: bool = False
    ) -> Claims:
        """Claim every device that has not ended and is not held (or, with ``final``, end it so), in
        one round trip (with a collapse key, the check for newer intents goes in the same one; one
        more call ends the devices it found stale). ``patient``: retried while Redis is unreachable,
        for up to ``OUTAGE_HOLD_S``."""
        if patient:
            out: list[Claims] = []

            async def attempt() -> None:
                out.append(await self.claim(intent, devices, final=final))

            await self._persist(attempt, len(devices))
            return out[-1]
        keys = [self._keys.delivery_marker(intent.intent_id, d.device_id) for d in devices]
        claiming = len(devices) if final is None else 0
        args: list[bytes | str | int] = [IN_FLIGHT, self.lease_s, final or "superseded", self._sent_ttl_s, claiming]
        calls: list[_Call] = []
        if final is None and intent.collapse_key:
            calls.append(self._newer_call(intent, intent.collapse_key, devices))
        calls.append((self._claim, keys, args))
        *newest, states = await self._eval_many(calls)
        stale: list[int] = newest[0] if newest else []
        claims = Claims()
        superseded: list[Device] = []
        for n, (device, state) in enumerate(zip(devices, states, strict=True)):
            if state == -1:
                claims.already_done.append(device)
            elif state != 0:
                claims.held.append(device)
                claims.held_for_s = max(claims.held_for_s, max(state, 0) / 1000)
            elif n >= claiming:
                claims.ended.append(device)
            elif stale and stale[n]:
                superseded.append(device)
            else:
                claims.claimed.append(device)
        if superseded:  # claimed just now, but a strictly newer intent was claimed for them: ended, not sent
            stale_keys = [self._keys.delivery_marker(intent.intent_id, d.device_id) for d in superseded]
            moved = await self._finish(keys=stale_keys, args=["superseded", self._sent_ttl_s])
            for device, flag in zip(superseded, moved, strict=True):
                (claims.ended if flag else claims.already_done).append(device)
        return claims

    def _newer_call(self, intent: Intent, collapse_key: str, devices: Sequence[Device]) -> _Call:
        """The script call that flags each device a strictly newer intent with the collapse key was
        claimed for (1), and raises the others' newest event time to the intent's (0). Kept while the
        intent could still be sent."""
        keys = [self._keys.newest_intent(collapse_key, d.device_id) for d in devices]
        ttl_s = max(60, int((intent.expires_at - utcnow()).total_seconds()) + 60)
        return self._newest, keys, [event_us(intent.event_at), ttl_s]

    async def _eval_many(self, calls: Sequence[_Call]) -> list[Any]:
        """Each script call's reply, in order: the calls go out in one write on one connection and
        their replies are read off it, one round trip for all. A call whose script Redis does not know
        (restarted, flushed: ``NOSCRIPT``, nothing ran) is made again through redis-py, which loads it."""
        pool = self._redis.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        replies: list[Any] = []
        try:
            commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]
            await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
            for _ in calls:
                try:
                    replies.append(await connection.read_response())
                except NoScriptError as exc:  # its reply was read whole: the next one follows
                    replies.append(exc)
        except BaseException:
            await connection.disconnect(nowait=True)  # replies may be left unread: never reuse it
            raise
        finally:
            await pool.release(connection)
        for n, ((script, keys, args), reply) in enumerate(zip(calls, replies, strict=True)):
            if isinstance(reply, NoScriptError):
                replies[n] = await script(keys=keys, args=args)
        return replies

    async def settle(self, groups: Sequence[tuple[str, Final | None, Sequence[str]]]) -> list[list[int]]:
        """End claimed devices, each group in its final state (``None``: release the claims, for sends
        that definitely did not happen, so a retry can claim them at once), in one round trip for all
        groups (one script call per group: a group is one intent's, so one hash slot). Returns, per
        group, a 1 for each device whose marker moved (what to count; nothing for releases)."""
        out: list[list[Any]] = []

        async def write() -> None:
            calls: list[_Call] = []
            for intent_id, state, device_ids in groups:
                keys = [self._keys.delivery_marker(intent_id, d) for d in device_ids]
                # A release deletes the claims (its reply is not used).
                calls.append((self._release if state is None else self._finish, keys, [state or "", self._sent_ttl_s]))
            out.append(await self._eval_many(calls))

        await self._persist(write, sum(len(ids) for _, _, ids in groups))
        return [
            [int(flag) for flag in moved] if state is not None else []
            for (_, state, _), moved in zip(groups, out[-1], strict=True)
        ]

    async def renew(self, intent_id: str, device_ids: Sequence[str]) -> None:
        """Extend the leases of claims this worker still holds (not of markers that ended meanwhile)."""
        if device_ids:
            keys = [self._keys.delivery_marker(intent_id, d) for d in device_ids]
            await self._renew(keys=keys, args=[self.lease_s])

    async def _persist(self, write: Callable[[], Awaitable[object]], size: int) -> None:
        """Run ``write``, again while Redis is unreachable, for up to ``OUTAGE_HOLD_S``: what it records
        happened already, and must land before the batch can be put back."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        give_up_at = started + OUTAGE_HOLD_S
        delay = WRITE_RETRY_FIRST_S
        while True:
            try:
                await write()
                if delay > WRITE_RETRY_FIRST_S:
                    log.warning("Redis back: %d marker operations written after %.1fs", size, loop.time() - started)
                return
            except Exception as exc:
                left = give_up_at - loop.time()
                if not redis_unavailable(exc) or left <= 0:
                    raise
                if delay == WRITE_RETRY_FIRST_S:
                    log.warning("Redis unavailable (%s): holding %d marker operations", type(exc).__name__, size)
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, WRITE_RETRY_MAX_S)
