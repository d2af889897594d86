"""``goalhorn.admin.subscribers`` on both backends: an import writes what the expander reads, is
idempotent, replaces a changed user, keeps the good lines around bad ones, and round-trips through an
export (also of an audience the import never wrote)."""

from __future__ import annotations

import base64
import io
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from goalhorn.admin.subscriber_lines import MAX_LINE_BYTES, format_line
from goalhorn.admin.subscribers import (
    ImportReport,
    Rejection,
    export_subscribers,
    import_subscribers,
    profile_bucket,
    read_lines,
)
from goalhorn.app.fanout import make_expander
from goalhorn.catalog import default_catalog
from goalhorn.demo.audience import generate_audience
from goalhorn.errors import ConfigError
from goalhorn.intents.rules import intents_for
from goalhorn.keys import Keys
from goalhorn.models import DeliveryBatch, EventKind, GameEvent, Sport
from goalhorn.preferences.bloom import PreferenceBloom
from goalhorn.preferences.layout import check_layout
from goalhorn.preferences.model import DEFAULT_PREFERENCES
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import Redis, make_redis
from goalhorn.segmenter.expander import ExpansionStats
from goalhorn.settings import Settings
from tests.conftest import delete_namespace, make_settings

SECRET = "whsec_" + base64.b64encode(bytes(range(24))).decode()


def fcm(n: int) -> str:
    return f"f{n:05d}" + "Ab9_-:" * 24


def apns(n: int) -> str:
    return f"{n:064x}"


def jsonl(*rows: dict[str, Any] | str | bytes) -> io.BytesIO:
    lines = [
        row if isinstance(row, bytes) else (row if isinstance(row, str) else json.dumps(row)).encode() for row in rows
    ]
    return io.BytesIO(b"".join(line + b"\n" for line in lines))


async def run(redis: Redis, settings: Settings, *rows: dict[str, Any] | str | bytes, **kwargs: Any) -> ImportReport:
    return await import_subscribers(redis, settings, jsonl(*rows), **kwargs)


async def snapshot(redis: Redis, namespace: str) -> dict[str, Any]:
    """Every key of the namespace with its value, but the Bloom filter's (versioned, rebuilt per import)."""
    out: dict[str, Any] = {}
    async for raw in redis.scan_iter(match=f"{namespace}:*", count=1000):
        key = raw.decode()
        if ":bloom:" in key:
            continue
        kind = (await redis.type(key)).decode()  # type: ignore[union-attr]
        if kind == "set":
            out[key] = await redis.smembers(key)
        elif kind == "hash":
            out[key] = await redis.hgetall(key)
        else:
            out[key] = await redis.get(key)
    return out


async def records(redis: Redis, namespace: str) -> dict[str, Any]:
    """:func:`snapshot` without the namespace, the last-seen times, the devices' added times and the
    subscriber epoch (a random token per namespace)."""
    out = {}
    for key, value in (await snapshot(redis, namespace)).items():
        if ":seen:" in key or key == Keys(namespace).subscriber_epoch():
            continue
        if ":devices:" in key:
            value = {user: re.sub(rb',"added_at":"[^"]*"', b"", raw) for user, raw in value.items()}
        out[key.removeprefix(namespace)] = value
    return out


def goal(team_id: str, game_id: str) -> GameEvent:
    return GameEvent(
        event_id=f"e-{team_id}-{game_id}",
        kind=EventKind.GOAL,
        source="espn",
        game_id=game_id,
        sport=Sport.HOCKEY,
        league="nhl",
        team_id=team_id,
        team="EDM",
        home_team="EDM",
        away_team="CGY",
        home_score=1,
        away_score=0,
        period=1,
        observed_at=datetime(2026, 5, 2, 20, 0, tzinfo=UTC),
    )


async def reached(redis: Redis, settings: Settings, event: GameEvent) -> tuple[set[str], ExpansionStats]:
    """The addresses the fanout stage would send ``event`` to, and its stats."""
    catalog = default_catalog()
    expander = make_expander(settings, redis, lambda: catalog)
    (intent,) = intents_for(event, catalog.rules, event.observed_at)
    stats = ExpansionStats()
    addresses = set()
    async for batch in expander.expand(intent, stats, now=event.observed_at, dry_run=True):
        addresses |= {d.address for d in DeliveryBatch.from_json(batch.payload).devices}
    return addresses, stats


async def test_an_import_writes_what_the_expander_reads(redis: Redis, settings: Settings) -> None:
    report = await run(
        redis,
        settings,
        {"user_id": "fan1", "devices": [{"platform": "apns", "address": apns(1)}], "follows": {"teams": ["16"]}},
        {
            "user_id": "muted",
            "devices": [{"platform": "fcm", "address": fcm(2)}],
            "follows": {"teams": ["16"]},
            "preferences": {"muted_teams": ["16"]},
        },
        {
            "user_id": "bot",
            "devices": [{"platform": "webhook", "address": "https://bots.example.com/h", "secret": SECRET}],
            "follows": {"matches": ["g1"], "markets": ["m1"]},
        },
        {"user_id": "phoneless", "follows": {"teams": ["16"]}},
        {"user_id": "other", "devices": [{"platform": "fcm", "address": fcm(5)}], "follows": {"teams": ["29"]}},
    )
    assert (report.imported, report.changed, report.rejected) == (5, 5, 0)
    assert report.preferences_written == 1
    assert report.bloom_rebuilt
    addresses, stats = await reached(redis, settings, goal("16", "g1"))
    assert addresses == {apns(1), "https://bots.example.com/h"}
    assert stats.suppressed["muted"] == 1
    assert stats.users_without_devices == 1
    snapshot_ = await PreferenceBloom(redis, Keys(settings.namespace), buckets=settings.preference_buckets).snapshot()
    assert snapshot_.bloom is not None, "the filter was rebuilt with the imported users"
    assert not snapshot_.pending
    assert snapshot_.maybe("muted"), "a user with preferences is never ruled out"


async def test_a_second_import_of_the_same_file_changes_nothing(redis: Redis, settings: Settings) -> None:
    rows = [
        {
            "user_id": f"u{n}",
            "locale": "fr",
            "devices": [{"platform": "apns", "address": apns(n)}, {"platform": "fcm", "address": fcm(n)}],
            "follows": {"teams": ["16", "29"], "sports": ["hockey"]},
            "preferences": {"quiet_hours": {"start": "23:00", "end": "06:00"}} if n % 2 else {},
        }
        for n in range(30)
    ]
    first = await run(redis, settings, *rows, chunk=7)
    before = await snapshot(redis, settings.namespace)
    second = await run(redis, settings, *rows, chunk=7)
    assert (first.changed, second.changed, second.unchanged) == (30, 0, 30)
    assert (second.devices_written, second.follows_added, second.preferences_written) == (0, 0, 0)
    assert await snapshot(redis, settings.namespace) == before
    store = PreferenceStore(redis, Keys(settings.namespace), buckets=settings.preference_buckets)
    assert len(await store.devices_of("u3")) == 2
    assert len(await redis.smembers(Keys(settings.namespace).team_followers("16"))) == 30


async def test_a_changed_user_is_replaced_and_the_others_left_alone(redis: Redis, settings: Settings) -> None:
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=settings.preference_buckets)
    old = {
        "user_id": "u1",
        "devices": [{"platform": "apns", "address": apns(1)}, {"platform": "fcm", "address": fcm(1)}],
        "follows": {"teams": ["t1", "t2"], "matches": ["g1"]},
        "preferences": {"muted_teams": ["t2"], "cap": {"max_alerts": 1}},
    }
    bystander = {"user_id": "u2", "devices": [{"platform": "fcm", "address": fcm(2)}], "follows": {"teams": ["t1"]}}
    await run(redis, settings, old, bystander)
    kept_added = {d.device_id: d.added_at for d in await store.devices_of("u1")}
    new = {
        "user_id": "u1",
        "locale": "es",
        "devices": [{"platform": "apns", "address": apns(1)}, {"platform": "fcm", "address": fcm(11)}],
        "follows": {"teams": ["t2"], "markets": ["m1"]},
    }
    report = await run(redis, settings, new)
    assert (report.changed, report.devices_removed, report.follows_removed) == (1, 1, 2)
    devices = {d.address: d for d in await store.devices_of("u1")}
    assert set(devices) == {apns(1), fcm(11)}
    assert all(d.locale == "es" for d in devices.values())
    assert devices[apns(1)].added_at == kept_added[devices[apns(1)].device_id], "a kept device keeps its added time"
    assert set(await store.last_seen("u1")) == {d.device_id for d in devices.values()}
    assert await redis.smembers(keys.team_followers("t1")) == {b"u2"}
    assert await redis.smembers(keys.team_followers("t2")) == {b"u1"}
    assert await redis.smembers(keys.match_watchers("g1")) == set()
    assert await redis.smembers(keys.market_watchers("m1")) == {b"u1"}
    assert await store.preferences_of("u1") == DEFAULT_PREFERENCES
    assert [d.address for d in await store.devices_of("u2")] == [fcm(2)]


async def test_bad_lines_are_rejected_and_the_good_ones_around_them_kept(redis: Redis, settings: Settings) -> None:
    def good(n: int) -> dict[str, Any]:
        return {"user_id": f"g{n}", "devices": [{"platform": "apns", "address": apns(n)}], "follows": {"teams": ["t"]}}

    huge = json.dumps({"user_id": "huge", "follows": {"teams": ["x" * 1000] * 100}}).encode()
    assert len(huge) > MAX_LINE_BYTES
    seen: list[Rejection] = []
    report = await run(
        redis,
        settings,
        good(1),
        "{not json",
        good(2),
        "",
        {"user_id": "bad", "devices": [{"platform": "apns", "address": "zz"}]},
        huge,
        good(3),
        b'{"user_id": "\xff"}',
        {"user_id": "g1"},
        {"user_id": "sms", "devices": [{"platform": "sms", "address": "+15550100"}]},
        "   ",
        "42",
        good(4),
        chunk=2,
        on_rejected=seen.append,
    )
    assert report.imported == 4
    assert report.rejected == 7
    assert seen == report.rejections
    reasons = {r.line: r.reason for r in report.rejections}
    assert sorted(reasons) == [2, 5, 6, 8, 9, 10, 12]
    assert reasons[5].startswith("devices[0].address: not an APNs token")
    assert reasons[6] == "line longer than 64 KiB"
    assert reasons[9] == "user_id: 'g1' is already on line 1"
    assert reasons[10].startswith("devices[0].platform: 'sms' is not one of")
    assert reasons[12] == "not a JSON object"
    keys = Keys(settings.namespace)
    assert await redis.smembers(keys.team_followers("t")) == {b"g1", b"g2", b"g3", b"g4"}
    stored = [user async for user, _ in redis.hscan_iter(profile_bucket(keys, 0))]
    assert b"bad" not in stored
    assert b"huge" not in stored


def test_a_long_line_is_skipped_in_bounded_reads() -> None:
    source = io.BytesIO(b"a" * 1_000_000 + b"\nshort\r\nlast-without-newline")
    assert [(n, line) for n, line, _ in read_lines(source, limit=100)] == [
        (1, None),
        (2, b"short"),
        (3, b"last-without-newline"),
    ]
    source = io.BytesIO(b"x" * 100 + b"\n" + b"y" * 101 + b"\n")
    assert [line for _, line, _ in read_lines(source, limit=100)] == [b"x" * 100, None]


async def test_progress_reaches_the_end_of_the_file(redis: Redis, settings: Settings) -> None:
    rows = [{"user_id": f"u{n}"} for n in range(25)]
    done: list[int] = []
    await run(redis, settings, *rows, chunk=10, on_progress=done.append)
    assert done == sorted(done)
    assert done[-1] == len(jsonl(*rows).getvalue())
    assert len(done) == 3


async def test_a_layout_mismatch_refuses_before_writing(redis: Redis, settings: Settings) -> None:
    await check_layout(redis, Keys(settings.namespace), settings)
    other = settings.model_copy(update={"preference_buckets": settings.preference_buckets * 2})
    with pytest.raises(ConfigError, match="GOALHORN_PREFERENCE_BUCKETS"):
        await run(redis, other, {"user_id": "u1", "follows": {"teams": ["t"]}})
    with pytest.raises(ConfigError, match="GOALHORN_PREFERENCE_BUCKETS"):
        await export_subscribers(redis, other)
    assert await redis.smembers(Keys(settings.namespace).team_followers("t")) == set()


@pytest.fixture
async def second(settings: Settings, backend: str):
    """A second, empty namespace on the same backend."""
    other = make_settings(backend, webhook_allowlist=settings.webhook_allowlist)
    client = make_redis(other)
    try:
        yield other, client
    finally:
        await delete_namespace(client, other.namespace)
        await client.aclose()


async def test_import_export_import_gives_the_same_data(redis: Redis, settings: Settings, second) -> None:
    rows = [
        {
            "user_id": f"u{n:03d}",
            "locale": ("en", "fr", "pt-BR")[n % 3],
            "timezone": "Europe/London" if n % 4 == 0 else "UTC",
            "devices": [{"platform": "apns", "address": apns(n)}]
            + (
                [{"platform": "webhook", "address": f"https://b.example.com/{n}", "secret": SECRET}]
                if n % 5 == 0
                else []
            ),
            "follows": {"teams": [f"t{n % 7}"], "matches": [f"g{n % 3}"] if n % 2 else []},
            "preferences": {"opted_out": ["GOAL"], "cap": {"max_alerts": 3, "window_s": 60}} if n % 6 == 0 else {},
        }
        for n in range(60)
    ]
    await run(redis, settings, *rows)
    exported = b"".join(format_line(s) for s in await export_subscribers(redis, settings))
    assert exported.count(b"\n") == 60
    other, client = second
    report = await import_subscribers(client, other, io.BytesIO(exported))
    assert (report.imported, report.rejected) == (60, 0)
    again = b"".join(format_line(s) for s in await export_subscribers(client, other))
    assert again == exported
    assert await records(client, other.namespace) == await records(redis, settings.namespace)
    assert (await import_subscribers(redis, settings, io.BytesIO(exported))).changed == 0


async def test_an_audience_loaded_without_the_import_exports_whole(redis: Redis, settings: Settings, second) -> None:
    """The demo writes straight through the store: the export still finds every user, follow and preference."""
    settings = settings.model_copy(update={"webhook_allowlist": "127.0.0.1"})
    audience = generate_audience(
        ["t1", "t2", "t3"], users=300, webhook_base_url="http://127.0.0.1:9", game_ids=["g1"], seed=3
    )
    keys = Keys(settings.namespace)
    await audience.load(PreferenceStore(redis, keys, buckets=settings.preference_buckets))
    subscribers = await export_subscribers(redis, settings)
    assert len(subscribers) == audience.user_count
    assert sum(len(s.devices) for s in subscribers) == len(audience.devices)
    assert {(s.user_id, t) for s in subscribers for t in s.follows.teams} == set(audience.follows)
    assert {(s.user_id, g) for s in subscribers for g in s.follows.matches} == set(audience.watches)
    assert {s.user_id: s.preferences for s in subscribers if s.preferences != DEFAULT_PREFERENCES} == (
        audience.preferences
    )
    other, client = second
    other = other.model_copy(update={"webhook_allowlist": "127.0.0.1"})
    exported = b"".join(format_line(s) for s in subscribers)
    report = await import_subscribers(client, other, io.BytesIO(exported))
    assert (report.imported, report.rejected) == (audience.user_count, 0), report.rejections[:3]
    assert b"".join(format_line(s) for s in await export_subscribers(client, other)) == exported
