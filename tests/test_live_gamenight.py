"""A game's Live Activity night as a user runs it: ``goalhorn sandbox``, ``goalhorn run api``,
``run ingest`` (GOALHORN_LIVE_ACTIVITIES=true) polling a local ESPN, ``run fanout`` and ``run deliver``,
each its own process on RabbitMQ and Redis. The app registers its users through the API; before
kickoff the fanout makes the game's broadcast channel (``goalhorn live channels`` shows it); the start
reaches the eligible followers' push-to-start tokens (with the channel) and Android phones once; every
update and the end reach the channel's subscribers once each (one broadcast), the activity started with
a token and the Android registration; the hourly priority-10 budget holds; after full time the channel
is gone, at goalhorn and at APNs."""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis as sync_redis

from goalhorn.keys import Keys
from goalhorn.settings import LOCAL_REDIS_URL
from tests.processes import (
    Process,
    ScoreboardServer,
    exports,
    free_port,
    processes,
    read_records,
    real_env,
    run_command,
)

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]

BOARD = Path(__file__).parent / "fixtures" / "espn" / "nhl_scoreboard_full.json"
GAME = "401461455"  # EDM (team 6) at home to WPG (28)
KEY = f"espn:{GAME}"
FCM = "dGVzdA:APA91b"


def board(state: str, home: int = 0, *, start: datetime) -> bytes:
    """The recorded scoreboard with GAME alone, ``pre``, ``in`` (first period) or ``post``."""
    full = json.loads(BOARD.read_bytes())
    event = copy.deepcopy(next(e for e in full["events"] if e["id"] == GAME))
    event["date"] = event["competitions"][0]["date"] = start.strftime("%Y-%m-%dT%H:%MZ")
    competition = event["competitions"][0]
    period, clock, detail = {
        "pre": (0, "0:00", "Scheduled"),
        "in": (1, "15:00", "15:00 - 1st"),
        "post": (3, "0:00", "Final"),
    }[state]
    competition["status"] = event["status"] = {
        "clock": 900.0 if state == "in" else 0.0,
        "displayClock": clock,
        "period": period,
        "type": {"state": state, "completed": state == "post", "detail": detail, "shortDetail": detail},
    }
    for competitor in competition["competitors"]:
        competitor["score"] = str(home if competitor["homeAway"] == "home" else 0)
    full["events"] = [event]
    return json.dumps(full).encode()


def token(n: int) -> str:
    return f"{n:064x}"


def fcm_token(n: int) -> str:
    return f"{FCM}{n:04d}" + "x" * 120


def wait(what: str, check, timeout_s: float = 60.0, running: dict[str, Process] | None = None):
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            logs = "\n".join(f"== {p.name}\n{p.log()}" for p in (running or {}).values())
            raise AssertionError(f"{what}: not within {timeout_s}s\n{logs}")
        time.sleep(0.2)


def live_intents(namespace: str, intent_ids: set[str]) -> dict[str, dict[str, str]]:
    """The traces (event id, kind, priority) of the Live Activity intents among ``intent_ids``."""
    client = sync_redis.Redis.from_url(LOCAL_REDIS_URL, decode_responses=True)
    try:
        traces: dict[str, dict[str, str]] = {i: client.hgetall(Keys(namespace).trace(i)) for i in intent_ids}  # type: ignore[misc]
    finally:
        client.close()
    return {i: t for i, t in traces.items() if t.get("event_id", "").startswith(f"live:{KEY}:")}


def test_a_game_night_of_live_activities_through_the_processes(tmp_path: Path) -> None:
    kickoff = datetime.now(UTC) + timedelta(minutes=20)
    espn = ScoreboardServer(board("pre", start=kickoff))
    api_port = free_port()
    env = real_env(
        GOALHORN_ESPN_BASE_URL=espn.url,
        GOALHORN_ESPN_LEAGUES="hockey/nhl",
        GOALHORN_POLL_FAST_S="0.3",
        GOALHORN_POLL_SLOW_S="0.3",
        GOALHORN_LIVE_ACTIVITIES="true",
        GOALHORN_LIVE_ACTIVITY_TICK_S="1",
        GOALHORN_LIVE_ACTIVITY_HIGH_PER_HOUR="1",  # the start spends it: the goal goes at priority 5
        GOALHORN_LIVE_CHANNEL_MIN_FOLLOWERS="5",
        GOALHORN_LIVE_CHANNEL_INTERVAL_S="0.5",
        GOALHORN_LIVE_CHANNEL_KEEP_S="3",
        GOALHORN_API_KEY_SECRET="a-server-secret-of-at-least-32-characters!",
        GOALHORN_WORKER_THREADS="2",
    )
    namespace = env["GOALHORN_NAMESPACE"]
    record = tmp_path / "pushes.jsonl"
    with processes(tmp_path) as running, contextlib.ExitStack() as closing:
        ports = ["--fcm-port", str(free_port()), "--apns-port", str(free_port()), "--webhook-port", str(free_port())]
        control_port = free_port()
        args = ["sandbox", "--dir", str(tmp_path / "sb"), "--record", str(record), "--control-port", str(control_port)]
        sandbox = running["sandbox"] = Process("sandbox", [*args, *ports], env, tmp_path).start()
        sandbox.wait_for(r"^export GOALHORN_WEBHOOK_ALLOWLIST=")
        env.update(exports(sandbox.lines))
        control = f"http://127.0.0.1:{control_port}"

        # The app registers its users through the API, as an app backend would.
        running["api"] = Process("api", ["run", "api", "--port", str(api_port)], env, tmp_path).start()
        created = run_command(
            ["keys", "create", "--tenant", "acme", "--tier", "enterprise", "--scopes", "read,write", "--json"], env
        )
        assert created.returncode == 0, created.stderr
        key = json.loads(created.stdout)["key"]
        auth = {"Authorization": f"Bearer {key}"}
        api = closing.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers=auth))
        wait("the API answers", lambda: _up(api), running=running)
        starters = {1: "6", 2: "6", 3: "28", 4: "6", 8: "6"}  # push-to-start phones, by the team followed
        for n, team in starters.items():
            assert api.put(f"/v1/users/fan{n}", json={}).status_code == 201
            assert api.put(f"/v1/users/fan{n}/follows/teams/{team}").status_code == 204
            put = api.put(
                f"/v1/users/fan{n}/live-activities/start-tokens/GameActivityAttributes", json={"token": token(n)}
            )
            assert put.status_code == 201, put.text
        assert api.put("/v1/users/fan4/mutes/teams/6").status_code == 204  # fan4 muted its team: no start
        # fan8 started the activity in the app before kickoff (on the channel, below): no start either
        assert api.put(f"/v1/users/fan8/live-activities/games/{KEY}/running").status_code == 204
        api.put("/v1/users/fan5", json={})
        api.put("/v1/users/fan5/follows/teams/6")
        phone = api.post("/v1/users/fan5/devices", json={"platform": "fcm", "address": fcm_token(5)})
        assert phone.status_code == 201, phone.text  # an Android follower: a start on its phone
        api.put("/v1/users/fan6", json={})
        update = api.put(f"/v1/users/fan6/live-activities/games/{KEY}/update-token", json={"token": token(6)})
        assert update.status_code == 201, update.text  # an activity the app started with a token
        api.put("/v1/users/fan7", json={})
        android = api.put(f"/v1/users/fan7/live-activities/games/{KEY}/android", json={"token": fcm_token(7)})
        assert android.status_code == 201, android.text
        assert api.get(f"/v1/games/{KEY}/live-activity").json()["channel_id"] is None

        for name in ("deliver", "fanout", "ingest"):
            running[name] = Process(name, ["run", name, "--metrics-port", "0"], env, tmp_path).start()
        for name in ("deliver", "fanout", "ingest"):
            running[name].wait_for(r"running \(namespace")

        # Before kickoff the busy game gets its channel; phones that start the activity on it subscribe.
        channel_id = wait("the channel", lambda: _channel(env), running=running)
        assert api.get(f"/v1/games/{KEY}/live-activity").json()["channel_id"] == channel_id
        shown = run_command(["live", "game", KEY, "--json"], env)
        assert json.loads(shown.stdout) == {
            "game_id": KEY,
            "channel_id": channel_id,
            "update_tokens": 1,
            "android_registrations": 1,
        }, shown.stderr
        watchers = [token(n) for n in range(100, 103)] + [token(8)]
        subscribed = httpx.post(f"{control}/channels/{channel_id}/subscribers", json={"tokens": watchers})
        assert subscribed.status_code == 200, subscribed.text

        espn.body = board("in", start=kickoff)  # kickoff: the start
        started = {token(1), token(2), token(3), fcm_token(5), fcm_token(7)}
        wait("the start", lambda: started <= {_address(r) for r in read_records(record)}, running=running)
        # The push-started activities run on the channel (their start carried it): they watch it too.
        httpx.post(f"{control}/channels/{channel_id}/subscribers", json={"tokens": [token(1), token(2), token(3)]})
        watchers += [token(1), token(2), token(3)]
        espn.body = board("in", home=1, start=kickoff)  # a goal: an update
        time.sleep(1.5)
        espn.body = board("post", home=1, start=kickoff)  # full time: the end
        wait("the channel deleted", lambda: _channel(env) is None, running=running)
        assert httpx.get(f"{control}/channels").json()["channels"] == {}
        time.sleep(1.0)  # anything more (a duplicate) would show up now

    records = read_records(record)
    traces = live_intents(namespace, {r["intent_id"] for r in records if "intent_id" in r})
    by_kind = {t["kind"]: i for i, t in traces.items()}
    start, end = by_kind["GAME_START"], by_kind["GAME_END"]
    goal = by_kind["GOAL"]
    got: dict[str, Counter[str]] = {i: Counter() for i in traces}
    for r in records:
        if r.get("intent_id") in got:
            got[r["intent_id"]][_address(r) + (" (broadcast)" if r.get("via") == "broadcast" else "")] += 1
    assert all(n == 1 for counts in got.values() for n in counts.values()), got  # nothing twice
    assert set(got[start]) == {token(1), token(2), token(3), fcm_token(5), fcm_token(7)}  # not fan4, no channel
    for later in (goal, end):
        assert set(got[later]) == {f"{w} (broadcast)" for w in watchers} | {token(6), fcm_token(7)}, later
    for other in set(traces) - {start, goal, end}:  # clock ticks, if any, go the same way
        assert token(6) in got[other]
    # Budgets: one start per phone all night; the start spent the hour's priority-10 update, so the goal
    # went at priority 5 (intent priority 3) and the end, which never waits, at 10.
    starts = Counter(a for i, counts in got.items() for a in counts if traces[i]["kind"] == "GAME_START")
    assert set(starts.values()) == {1}
    assert (traces[start]["priority"], traces[goal]["priority"], traces[end]["priority"]) == ("9", "3", "9")


def _up(api: httpx.Client) -> bool:
    try:
        return api.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def _channel(env: dict[str, str]) -> str | None:
    listed = run_command(["live", "channels", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    channels = {c["game_id"]: c["channel_id"] for c in json.loads(listed.stdout)}
    return channels.get(KEY)


def _address(record: dict) -> str:
    return str(record.get("token") or record.get("url"))
