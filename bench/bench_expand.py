"""Audience expansion on real Redis: a large follower segment with preferences, expanded into batches.

Loads N followers (default 500,000) of one team in a fresh namespace with bulk writes: devices
(most users one phone, some two), 10 % muting the team, 5 % in quiet hours now, 3 % with a
non-default opt-in; builds the Bloom filter; then measures, in the same run:

- a bare SSCAN iteration of the follower set (the baseline: members/s);
- the expander (Bloom on, and off) turning the segment into <=500-device batches: members/s against
  the baseline's members/s (like for like; recipients/s is printed beside it, a member having one or
  two devices), time to the first batch, peak traced memory of the expansion.
  Each mode runs ``--rounds`` warm expansions, each right after an SSCAN of the baseline; the best
  expansion is compared with the best of those SSCANs, and each round's ratio with its own SSCAN is
  printed too (the machine's speed drifts between rounds);
- the time from the start of an expansion to its first batch published to RabbitMQ through the
  delivery stage and confirmed (so this bench needs RabbitMQ too);
- the naive approach (per member, one round trip for its devices and its preferences), on a sample.

Everything it wrote is deleted afterwards. ``python -m bench expand`` or ``python -m bench.bench_expand
--users 200000``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import statistics
import sys
import threading
import time
import tracemalloc
import uuid
from collections import defaultdict
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import cast

from bench.figures import Figure, Results
from goalhorn.catalog import default_catalog
from goalhorn.dispatch.stage import DeliveryStage, make_broker
from goalhorn.intents.rules import intent_id_for
from goalhorn.keys import Keys
from goalhorn.models import DeliveryBatch, Device, EventKind, Intent, Sport
from goalhorn.preferences.bloom import PreferenceBloom
from goalhorn.preferences.model import Preferences, QuietHours, decode_devices, encode_devices
from goalhorn.preferences.quiet_hours import local_minute
from goalhorn.preferences.reader import bucket_of
from goalhorn.providers.console import ConsoleProvider
from goalhorn.redis_client import Redis, make_redis
from goalhorn.segmenter.expander import Expander, ExpansionStats
from goalhorn.settings import LOCAL_AMQP_URL, LOCAL_REDIS_URL, Settings
from tests.queues import delete_delivery_queues

TEAM, GAME = "bench-team", "bench-game"
WRITE_SLICE = 5000


ZONES = ("Europe/Paris", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "America/Sao_Paulo", "UTC")
OTHER_TEAMS = tuple(f"team-{n}" for n in range(40))
KINDS = ("GAME_END", "PERIOD_END", "RED_CARD", "EDGE")


def user_records(n: int, now: datetime, rng: random.Random) -> tuple[str, bytes, bytes | None]:
    """One follower: a phone (30 % also an iPhone), stored by the store's own encoder; and, for 18 %,
    a preference record varied like real ones (other muted teams, zones, windows, opt-in sets)."""
    user = f"u{n:07d}"
    added = datetime(2026, 1, 1, tzinfo=UTC)
    devices = [
        Device(device_id=f"{user}-a", user_id=user, platform="fcm", address=rng.randbytes(48).hex(), added_at=added)
    ]
    if rng.random() < 0.3:
        devices.append(
            Device(
                device_id=f"{user}-i",
                user_id=user,
                platform="apns",
                address=rng.randbytes(32).hex(),
                locale="es",
                added_at=added,
            )
        )
    roll = rng.random()
    prefs: Preferences | None = None
    if roll < 0.10:
        prefs = Preferences(muted_teams=frozenset({TEAM, *rng.sample(OTHER_TEAMS, rng.randrange(4))}))
    elif roll < 0.15:
        zone = rng.choice(ZONES)
        before, after = rng.randrange(5, 240), rng.randrange(5, 240)
        prefs = Preferences(
            time_zone=zone,
            quiet_hours=QuietHours(
                local_minute(now - timedelta(minutes=before), zone), local_minute(now + timedelta(minutes=after), zone)
            ),
        )
    elif roll < 0.18:
        prefs = Preferences(opted_in=frozenset(rng.sample(KINDS, rng.randrange(1, 4))))
    return user, encode_devices(devices), None if prefs is None else prefs.encode()


async def load(redis: Redis, keys: Keys, users: int, buckets: int, now: datetime) -> dict[str, int]:
    """Bulk writes: one SADD and one HSET per bucket per slice of users, pipelined."""
    rng = random.Random(42)
    counts: dict[str, int] = defaultdict(int)
    for start in range(0, users, WRITE_SLICE):
        members: list[str] = []
        devices: dict[int, dict[str, bytes]] = defaultdict(dict)
        prefs: dict[int, dict[str, bytes]] = defaultdict(dict)
        for n in range(start, min(users, start + WRITE_SLICE)):
            user, device_row, pref_row = user_records(n, now, rng)
            members.append(user)
            bucket = bucket_of(user, buckets)
            devices[bucket][user] = device_row
            if pref_row is not None:
                prefs[bucket][user] = pref_row
                counts["with_preferences"] += 1
        pipe = redis.pipeline(transaction=False)
        pipe.sadd(keys.team_followers(TEAM), *members)
        for bucket, mapping in devices.items():
            pipe.hset(keys.device_bucket(bucket), mapping=mapping)  # type: ignore[arg-type]
        for bucket, mapping in prefs.items():
            pipe.hset(keys.preference_bucket(bucket), mapping=mapping)  # type: ignore[arg-type]
        await pipe.execute()
    return counts


async def bare_sscan(redis: Redis, key: str, chunk: int) -> tuple[int, float]:
    started = time.perf_counter()
    cursor, seen = 0, 0
    while True:
        cursor, raw = await redis.sscan(key, cursor, count=chunk)
        seen += len([m.decode() for m in cast(list[bytes], raw)])
        if cursor == 0:
            return seen, time.perf_counter() - started


async def naive(redis: Redis, keys: Keys, key: str, sample: int, buckets: int) -> tuple[int, float]:
    """Per member: SISMEMBER of the set, then one round trip for its devices and preferences."""
    _, raw = await redis.sscan(key, 0, count=sample)
    members = [m.decode() for m in cast(list[bytes], raw)][:sample]
    started = time.perf_counter()
    devices = 0
    for user in members:
        if not await redis.sismember(key, user):
            continue
        bucket = bucket_of(user, buckets)
        pipe = redis.pipeline(transaction=False)
        pipe.hget(keys.device_bucket(bucket), user)
        pipe.hget(keys.preference_bucket(bucket), user)
        raw_devices, raw_prefs = await pipe.execute()
        if raw_prefs is not None and TEAM in Preferences.decode(raw_prefs).muted_teams:
            continue
        devices += len(decode_devices(raw_devices)) if raw_devices else 0
    return len(members), time.perf_counter() - started


def goal_intent(now: datetime) -> Intent:
    return Intent(
        intent_id=intent_id_for(uuid.uuid4().hex, "goal"),
        event_id="bench",
        kind=EventKind.GOAL,
        sport=Sport.SOCCER,
        game_id=GAME,
        team_id=TEAM,
        priority=9,
        segments=("scoring_team_followers",),
        template="goal",
        data={"team": "Bench FC"},
        event_at=now,
        created_at=now,
        expires_at=now + timedelta(minutes=5),
    )


async def expand(expander: Expander, intent: Intent, *, trace: bool = False) -> dict[str, float]:
    stats = ExpansionStats()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    first = None
    async for batch in expander.expand(intent, stats):
        if first is None:
            first = time.perf_counter() - started
        assert batch.size <= 500
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] if trace else 0
    if trace:
        tracemalloc.stop()
    return {
        "elapsed": elapsed,
        "first": first or elapsed,
        "members": stats.users,
        "recipients": stats.devices,
        "batches": stats.batches,
        "muted": stats.suppressed["muted"],
        "quiet": stats.suppressed["quiet_hours"],
        "lookups": stats.preference_lookups,
        "peak": peak,
    }


async def first_published(expander: Expander, namespace: str, now: datetime) -> float:
    """Seconds from the start of an expansion to its first batch confirmed by RabbitMQ, through the
    delivery stage (publisher confirms), its connection already open as a running consumer's is."""
    settings = Settings(redis_url=LOCAL_REDIS_URL, amqp_url=LOCAL_AMQP_URL, namespace=namespace)
    stage = DeliveryStage(
        settings,
        make_broker(settings),
        lambda platform, render: ConsoleProvider(platform, io.StringIO()),
        default_catalog().render,
    )
    try:
        warm_up = Device(device_id="warm-up", user_id="warm-up", platform="fcm", address="tok")
        await stage.enqueue(
            DeliveryBatch(batch_id="warm-up", platform="fcm", intent=goal_intent(now), devices=(warm_up,)).encode()
        )
        started = time.perf_counter()
        async with aclosing(expander.expand(goal_intent(now))) as batches:
            async for batch in batches:
                await stage.enqueue(batch)
                return time.perf_counter() - started
        raise RuntimeError("the expansion published no batch")
    finally:
        stage.close()
        stage.broker.close()
        await delete_delivery_queues(settings)


HANG_S = 20.0
"""A first publish not done by then has hung (it takes ~1 s): see :func:`published_or_hung`."""


def published_or_hung(namespace: str, chunk: int, buckets: int, now: datetime) -> float | None:
    """:func:`first_published` on a thread of its own (its own event loop and Redis client); None if it
    hung, after printing the stack of each of its tasks.

    Open problem: it hung in some suite runs (after api or e2e in the same process at first, then in a
    process of its own: python -m bench --quick, 2026-11-30 05:52 and 06:01), every task of the loop
    waiting, no timer left (epoll_wait without a timeout), deaf to SIGINT. The stacks (06:01): the
    expansion, closed after its first batch, waits in ``read_ahead``'s ``finally`` for its pump task;
    the pump task is "cancelling" yet waits in ``queue.put`` at algebra.py:36, on a queue full and no
    longer read: the cancellation was apparently taken in the member stream's ``async for`` (redis-py's
    SSCAN) and the pump went on to put one more chunk. A fix belongs in goalhorn (``read_ahead`` not
    relying on its pump honouring the cancel, e.g. draining the queue while it waits for it). A hung
    one is left behind on its daemon thread so the bench carries on."""
    box: dict[str, object] = {}
    catalog = default_catalog()

    async def go() -> float:
        box["loop"] = asyncio.get_running_loop()
        redis = make_redis(Settings(redis_url=LOCAL_REDIS_URL, namespace=namespace))
        try:
            expander = Expander(redis, Keys(namespace), lambda: catalog, chunk=chunk, buckets=buckets)
            return await first_published(expander, namespace, now)
        finally:
            await redis.aclose()

    def target() -> None:
        box["value"] = asyncio.run(go())

    thread = threading.Thread(target=target, name="first-published", daemon=True)
    thread.start()
    thread.join(HANG_S)
    if not thread.is_alive():
        return cast(float, box["value"]) if "value" in box else None
    loop = cast(asyncio.AbstractEventLoop, box["loop"])
    dumped = threading.Event()

    def dump() -> None:
        print(f"first publish: no batch confirmed in {HANG_S:.0f} s; the stack of each of its tasks:", flush=True)
        for task in asyncio.all_tasks(loop):
            print(f"--- {task!r}", flush=True)
            task.print_stack(limit=40, file=sys.stdout)
        sys.stdout.flush()
        dumped.set()

    loop.call_soon_threadsafe(dump)
    dumped.wait(10)
    return None


async def run(users: int, chunk: int, buckets: int, sample: int, rounds: int, namespace: str, own: Results) -> int:
    settings = Settings(redis_url=LOCAL_REDIS_URL, namespace=namespace)
    keys = Keys(settings.namespace)
    redis = make_redis(settings)
    now = datetime.now(UTC)
    try:
        started = time.perf_counter()
        counts = await load(redis, keys, users, buckets, now)
        bloom_started = time.perf_counter()
        await PreferenceBloom(redis, keys, buckets=buckets).rebuild()
        print(
            f"loaded {users:,} followers ({counts['with_preferences']:,} with preferences) in "
            f"{bloom_started - started:.1f} s; Bloom filter built in {time.perf_counter() - bloom_started:.1f} s"
        )
        key = keys.team_followers(TEAM)
        catalog = default_catalog()
        naive_rates = []
        for _ in range(rounds):
            naive_members, naive_s = await naive(redis, keys, key, sample, buckets)
            naive_rates.append(naive_members / naive_s)
        naive_rate = statistics.median(naive_rates)
        print(f"naive per-member round trips: {naive_rate:,.0f} members/s (sample of {naive_members:,})")
        for bloom in (True, False):
            name = "bloom" if bloom else "no-bloom"
            expander = Expander(redis, keys, lambda: catalog, chunk=chunk, buckets=buckets, bloom=bloom)
            cold = await expand(expander, goal_intent(now))
            warm, scans = [], []
            for _ in range(rounds):  # alternate with the baseline, so both see the same machine
                scan_members, scan_s = await bare_sscan(redis, key, chunk)
                scans.append(scan_members / scan_s)
                r = await expand(expander, goal_intent(now))
                warm.append(r)
                member_rate = r["members"] / r["elapsed"]
                print(
                    f"expander, {name}: {int(r['members']):,} members -> {int(r['recipients']):,} recipients in "
                    f"{int(r['batches']):,} batches in {r['elapsed']:.2f} s; {member_rate:,.0f} members/s "
                    f"({member_rate / scans[-1]:.2f}x this round's bare SSCAN (COUNT {chunk}), "
                    f"{member_rate / naive_rate:.1f}x naive); first batch after {r['first'] * 1000:.1f} ms; "
                    f"suppressed {int(r['muted']):,} muted, {int(r['quiet']):,} quiet; "
                    f"{int(r['lookups']):,} preference lookups",
                    flush=True,
                )
            scan_rate = statistics.median(scans)
            mode = "Bloom filter on" if bloom else "Bloom filter off"
            rates = [r["members"] / r["elapsed"] for r in warm]
            own.add(
                Figure(
                    f"expander, {mode}: members/s",
                    rates,
                    "members/s",
                    baseline=("bare SSCAN of the same set", scan_rate),
                    target=">= 0.4x" if bloom else None,
                )
            )
            own.add(
                Figure(
                    f"expander, {mode}: each round against its own SSCAN",
                    [rate / scan for rate, scan in zip(rates, scans, strict=True)],
                    "x",
                )
            )
            if bloom:
                own.add(
                    Figure(
                        f"expander, {mode}: members/s against naive",
                        rates,
                        "members/s",
                        baseline=("naive per-member round trips", naive_rate),
                        target=">= 10x",
                    )
                )
                own.add(
                    Figure(
                        f"expander, {mode}: recipients/s",
                        [r["recipients"] / r["elapsed"] for r in warm],
                        "recipients/s",
                    )
                )
                own.add(Figure("time to the first batch, warm", [r["first"] * 1000 for r in warm], "ms", target="< 50"))
                own.add(Figure("time to the first batch, cold expander", [cold["first"] * 1000], "ms", target="< 50"))
        published: list[float] = []
        hung = 0
        while len(published) < rounds and hung < 3:  # a hung one is tried again: the figure wants its runs
            seconds = await asyncio.to_thread(published_or_hung, namespace, chunk, buckets, now)
            if seconds is None:
                hung += 1
                await delete_delivery_queues(Settings(amqp_url=LOCAL_AMQP_URL, namespace=namespace))
            else:
                published.append(seconds)
        if hung:
            own.note(
                f"first batch published to RabbitMQ: {hung} of {hung + len(published)} hung (nothing confirmed "
                f"within {HANG_S:.0f} s; its tasks' stacks are in the bench's output; tried again): the expansion's "
                "early close waits forever for read_ahead's pump task, which took its cancellation and then "
                "blocked on the full queue (goalhorn/segmenter/algebra.py; see published_or_hung)"
            )
        own.add(
            Figure(
                "first batch published to RabbitMQ and confirmed, cold expander",
                [p * 1000 for p in published] or [float("nan")],
                "ms",
                target="< 50",
            )
        )
        traced = await expand(
            Expander(redis, keys, lambda: catalog, chunk=chunk, buckets=buckets), goal_intent(now), trace=True
        )
        own.add(Figure("peak traced memory of one expansion", [traced["peak"] / 2**20], "MiB"))
        own.note(
            f"{users:,} followers ({counts['with_preferences']:,} with preferences), SSCAN COUNT {chunk} on both "
            "sides; the cold first batch and the traced memory are one run each (tracing slows the expansion)"
        )
        return 0
    finally:
        await cleanup(redis, keys)
        await redis.aclose()


USERS = 500_000
"""The default audience: an expansion of it takes seconds, long enough for a steady members/s, and
the whole bench half the time of 1,000,000 (``--users 1000000``: the size of docs/segments.md's figures)."""
NAIVE_SAMPLE = 2000
"""Members the naive way walks per round: 2 round trips each, ~500/s under load, a steady rate."""


def planned(quick: bool) -> list[tuple[str, float]]:
    """What ``python -m bench expand`` (``--quick``: 50,000 followers) runs and its seconds, at rates
    measured on the shared machine under load (load average 13, 2026-11-30 05:39): loading ~12,000
    followers/s, an expansion ~90,000 members/s with the Bloom filter and ~44,000 without (SSCAN
    ~400,000/s), the naive way ~500 members/s, a first batch published ~1 s."""
    users, sample = (50_000, 500) if quick else (USERS, NAIVE_SAMPLE)
    return [
        (f"load {users:,} followers", users / 12_000),
        (f"naive per-member round trips on {sample:,} x 3", 3 * sample / 500),
        (
            "SSCAN and expansion, Bloom on and off, x 3 each, the cold and the traced ones; 3 first batches published",
            5 * users / 90_000 + 4 * users / 44_000 + 6 * users / 400_000 + 3,
        ),
    ]


async def cleanup(redis: Redis, keys: Keys) -> None:
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=keys.pattern(), count=1000):
        batch.append(key)
    for start in range(0, len(batch), 500):
        await redis.unlink(*batch[start : start + 500])


def main(argv: list[str], results: Results | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_expand", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--chunk", type=int, default=2000, help="SSCAN COUNT per round trip (both sides)")
    parser.add_argument("--buckets", type=int, default=16)
    parser.add_argument("--naive-sample", type=int, default=NAIVE_SAMPLE)
    parser.add_argument("--rounds", type=int, default=3, help="warm expansions (and SSCANs) per mode: the runs")
    parser.add_argument("--namespace", default=f"bench-expand-{uuid.uuid4().hex[:8]}")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (median, min and max over the runs)")
    own = results if results is not None else Results("expand")
    return asyncio.run(run(args.users, args.chunk, args.buckets, args.naive_sample, args.rounds, args.namespace, own))


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
