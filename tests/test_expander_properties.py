"""The expander against a naive pure-Python reference, on random populations (hypothesis).

Follows, watches, static lists, devices on every platform and locale, mutes, opt-ins and opt-outs,
quiet hours in several zones and caps across a sequence of intents: the set of devices each intent
reaches must equal the reference exactly, with the Bloom prefilter on (some preferences written after
the filter was built) and off, on both backends.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from goalhorn.catalog import parse_catalog
from goalhorn.keys import Keys
from goalhorn.models import Device, EventKind, Intent, Sport
from goalhorn.preferences.bloom import PreferenceBloom
from goalhorn.preferences.model import Cap, Preferences, QuietHours
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import make_redis
from goalhorn.segmenter.expander import Expander, ExpansionStats
from goalhorn.settings import Settings
from tests.conftest import delete_namespace

CATALOG = parse_catalog(
    """
segments:
  fans: {source: "team:{team_id}:followers"}
  watchers: {source: "match:{game_id}:watching"}
  vips: {static: [u1, u3, u5, u8]}
  both:
    intersection: [{segment: fans}, {segment: watchers}, {source: "sport:{sport}:all"}]
  fans_or_vips_not_watching:
    difference:
      - union: [{segment: fans}, {segment: vips}]
      - segment: watchers
  spanish_phones:
    union: [{segment: fans}, {segment: watchers}]
    filters: {platform: [fcm, apns], locale: [es]}
  apple_fans:
    source: "team:{team_id}:followers"
    filters: {platform: apns}
rules: {}
templates: {}
""",
    "props.yaml",
)
SEGMENTS = ["fans", "watchers", "vips", "both", "fans_or_vips_not_watching", "spanish_phones", "apple_fans"]
USERS = [f"u{i}" for i in range(12)]
TEAMS, GAMES = ["t1", "t2"], ["g1", "g2"]
ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kathmandu"]
KINDS = ["GOAL", "GAME_END"]
T0 = datetime(2026, 3, 8, 6, 30, tzinfo=UTC)  # New York springs forward at 07:00 UTC this day

minutes = st.integers(0, 24 * 60 - 1)
preferences = st.builds(
    Preferences,
    time_zone=st.sampled_from(ZONES),
    quiet_hours=st.none() | st.builds(QuietHours, minutes, minutes),
    muted_teams=st.frozensets(st.sampled_from(TEAMS), max_size=1),
    muted_matches=st.frozensets(st.sampled_from(GAMES), max_size=1),
    opted_in=st.frozensets(st.sampled_from(KINDS)),
    opted_out=st.frozensets(st.sampled_from(KINDS), max_size=1),
    cap=st.none() | st.builds(Cap, st.integers(0, 2), st.sampled_from([120, 600])),
)
device_specs = st.lists(
    st.tuples(st.sampled_from(["fcm", "apns", "webhook"]), st.sampled_from(["en", "es", "es-MX", "pt-BR"])),
    max_size=2,
)
intent_specs = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.sampled_from(TEAMS),
        st.sampled_from(GAMES),
        st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3, unique=True),
        st.booleans(),  # bypass quiet hours
        st.booleans(),  # opt-in required
        st.integers(0, 400),  # seconds after the previous intent
    ),
    min_size=1,
    max_size=4,
)
population = st.fixed_dictionaries(
    {
        "teams": st.dictionaries(st.sampled_from(USERS), st.frozensets(st.sampled_from(TEAMS))),
        "games": st.dictionaries(st.sampled_from(USERS), st.frozensets(st.sampled_from(GAMES))),
        "sport": st.frozensets(st.sampled_from(USERS)),
        "devices": st.dictionaries(st.sampled_from(USERS), device_specs),
        "prefs": st.dictionaries(st.sampled_from(USERS), preferences),
        "late_prefs": st.dictionaries(st.sampled_from(USERS), preferences, max_size=3),
    }
)


def quiet_at(prefs: Preferences, at: datetime) -> bool:
    if prefs.quiet_hours is None:
        return False
    local = at.astimezone(ZoneInfo(prefs.time_zone)).time().replace(second=0, microsecond=0)
    start = time(prefs.quiet_hours.start // 60, prefs.quiet_hours.start % 60)
    end = time(prefs.quiet_hours.end // 60, prefs.quiet_hours.end % 60)
    return start <= local < end if start <= end else (local >= start or local < end)


class Reference:
    """The naive model: sets in dicts, every user looked at one by one."""

    def __init__(self, pop: dict, devices: dict[str, list[Device]], prefs: dict[str, Preferences]) -> None:
        self.pop, self.devices, self.prefs = pop, devices, prefs
        self.cap_log: dict[tuple[str, str], list[tuple[datetime, str]]] = defaultdict(list)

    def members(self, name: str, intent: Intent) -> set[str]:
        fans = {u for u, ts in self.pop["teams"].items() if intent.team_id in ts}
        watchers = {u for u, gs in self.pop["games"].items() if intent.game_id in gs}
        vips = {"u1", "u3", "u5", "u8"}
        return {
            "fans": fans,
            "watchers": watchers,
            "vips": vips,
            "both": fans & watchers & set(self.pop["sport"]),
            "fans_or_vips_not_watching": (fans | vips) - watchers,
            "spanish_phones": fans | watchers,
            "apple_fans": fans,
        }[name]

    @staticmethod
    def admits(name: str, device: Device) -> bool:
        if name == "spanish_phones":
            return device.platform in ("fcm", "apns") and device.locale.split("-")[0] == "es"
        if name == "apple_fans":
            return device.platform == "apns"
        return True

    def expand(self, intent: Intent, at: datetime) -> set[str]:
        reached: dict[str, set[str]] = defaultdict(set)
        for name in intent.segments:
            for user in self.members(name, intent):
                reached[user] |= {d.device_id for d in self.devices.get(user, []) if self.admits(name, d)}
        out: set[str] = set()
        for user, device_ids in sorted(reached.items()):
            if not device_ids:
                continue
            prefs = self.prefs.get(user, Preferences())
            kind = intent.kind.value
            if kind in prefs.opted_out or (intent.opt_in_required and kind not in prefs.opted_in):
                continue
            if intent.team_id in prefs.muted_teams or intent.game_id in prefs.muted_matches:
                continue
            if not intent.bypass_quiet_hours and quiet_at(prefs, at):
                continue
            if prefs.cap is not None:
                log = self.cap_log[(user, intent.game_id)]
                recent = [entry for entry in log if entry[0] > at - timedelta(seconds=prefs.cap.window_s)]
                if len(recent) >= prefs.cap.max_alerts:
                    continue
                log.append((at, intent.intent_id))
            out |= device_ids
        return out


def build_devices(specs: dict[str, list[tuple[str, str]]]) -> dict[str, list[Device]]:
    out: dict[str, list[Device]] = {}
    for user, rows in specs.items():
        out[user] = [
            Device(
                device_id=f"{user}-{i}",
                user_id=user,
                platform=platform,
                address=f"https://hooks.example/{user}" if platform == "webhook" else f"tok-{user}-{i}",
                secret="whsec_x" if platform == "webhook" else None,
                locale=locale,
            )
            for i, (platform, locale) in enumerate(rows)
        ]
    return out


@pytest.mark.parametrize("bloom", [True, False], ids=["bloom", "no-bloom"])
@hsettings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(pop=population, intents=intent_specs)
async def test_expander_equals_the_naive_reference(backend: str, bloom: bool, pop: dict, intents: list) -> None:
    base = Settings(namespace=f"p{uuid.uuid4().hex[:12]}")
    settings = base.with_real_services() if backend == "real" else base
    if backend == "real":
        from tests.conftest import require_real_services

        require_real_services()
    redis = make_redis(settings)
    keys = Keys(settings.namespace)
    try:
        store = PreferenceStore(redis, keys, buckets=3)
        devices = build_devices(pop["devices"])
        await store.add_devices([d for ds in devices.values() for d in ds])
        await store.follow_teams([(u, t) for u, ts in pop["teams"].items() for t in ts])
        await store.watch_matches([(u, g) for u, gs in pop["games"].items() for g in gs])
        await store.follow_sports([(u, "soccer") for u in pop["sport"]])
        await store.set_preferences(pop["prefs"])
        await PreferenceBloom(redis, keys, buckets=3).rebuild()
        await store.set_preferences(pop["late_prefs"])  # after the filter was built: only in the pending set
        prefs = {**pop["prefs"], **pop["late_prefs"]}
        reference = Reference(pop, devices, prefs)
        expander = Expander(redis, keys, lambda: CATALOG, chunk=10, batch_size=3, buckets=3, bloom=bloom)

        at = T0
        for n, (kind, team, game, segments, bypass, opt_in, gap) in enumerate(intents):
            at += timedelta(seconds=gap)
            intent = Intent(
                intent_id=f"i{n}",
                event_id=f"e{n}",
                kind=EventKind(kind),
                sport=Sport.SOCCER,
                game_id=game,
                team_id=team,
                priority=5,
                segments=tuple(segments),
                template="goal",
                event_at=at,
                created_at=at,
                expires_at=at + timedelta(hours=1),
                bypass_quiet_hours=bypass,
                opt_in_required=opt_in,
            )
            stats = ExpansionStats()
            got = [
                d.device_id async for batch in expander.expand(intent, stats, now=at) for d in batch.decode().devices
            ]
            assert len(got) == len(set(got)), "no device twice in one intent"
            assert set(got) == reference.expand(intent, at), (intent.segments, kind, team, game)
            assert stats.devices == len(got)
    finally:
        await delete_namespace(redis, settings.namespace)
        await redis.aclose()
