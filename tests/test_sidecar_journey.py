"""An app's whole journey through the API, with every piece its own process as a deployment runs it:
a key from ``goalhorn keys create``; users, devices, follows and mutes through ``goalhorn run api``; a
goal from a feed (a local ESPN) through ``goalhorn run all``; exactly one push per device in the
sandbox's record, none for the muted user or the other team's fan; and the game's live state and
its goal read back through the API."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.processes import (
    Process,
    ScoreboardServer,
    exports,
    free_port,
    processes,
    read_records,
    real_env,
    run_command,
    with_home_score,
)
from tests.support.api import SECRET

pytestmark = [pytest.mark.real, pytest.mark.timeout(240)]

BOARD = Path(__file__).parent / "fixtures" / "espn" / "nhl_scoreboard_full.json"
GAME = "401461455"  # EDM (team 6) at home to WPG (28), 1-0 on the recorded board
FCM = "journeyFcmToken" + "Ab9_-:" * 20
APNS = "ab" * 32
MUTED_APNS = "cd" * 32
OTHER_FCM = "otherFcmToken" + "Zz0_-:" * 20


def test_an_apps_journey_from_a_key_to_one_push_per_device(tmp_path: Path) -> None:
    espn_board = json.loads(BOARD.read_bytes())
    espn = ScoreboardServer(BOARD.read_bytes())
    record = tmp_path / "pushes.jsonl"
    env = real_env(
        GOALHORN_API_KEY_SECRET=SECRET,
        GOALHORN_ESPN_BASE_URL=espn.url,
        GOALHORN_ESPN_LEAGUES="hockey/nhl",
        GOALHORN_POLL_FAST_S="0.3",
        GOALHORN_POLL_SLOW_S="0.3",
    )
    try:
        with processes(tmp_path) as running:
            ports = [
                "--fcm-port",
                str(free_port()),
                "--apns-port",
                str(free_port()),
                "--webhook-port",
                str(free_port()),
            ]
            sandbox = running["sandbox"] = Process(
                "sandbox",
                ["sandbox", "--dir", str(tmp_path / "sandbox"), "--record", str(record), *ports],
                env,
                tmp_path,
            ).start()
            sandbox.wait_for(r"^export GOALHORN_WEBHOOK_ALLOWLIST=")
            env.update(exports(sandbox.lines))
            hooks = sandbox.wait_for(r"^webhooks\s+(\S+)/hooks/").group(1)
            secret = sandbox.wait_for(r"^webhook secret (\S+)").group(1)  # the one the sandbox verifies with

            created = run_command(
                ["keys", "create", "--tenant", "app1", "--tier", "pro", "--scopes", "read,write"], env
            )
            assert created.returncode == 0, created.stderr
            key = created.stdout.strip().splitlines()[-1]
            api = running["api"] = Process("api", ["run", "api", "--port", "0"], env, tmp_path).start()
            port = api.wait_for(r"on http://127\.0\.0\.1:(\d+)").group(1)
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:

                def ok(response: httpx.Response) -> httpx.Response:
                    assert response.status_code < 300, response.text
                    return response

                for user in ("alice", "bob", "carol", "dave"):
                    ok(client.put(f"/v1/users/{user}", json={"locale": "en"}))
                ok(client.post("/v1/users/alice/devices", json={"platform": "fcm", "address": FCM}))
                ok(client.post("/v1/users/alice/devices", json={"platform": "apns", "address": APNS}))
                bot = {"platform": "webhook", "address": f"{hooks}/hooks/bob", "secret": secret}
                ok(client.post("/v1/users/bob/devices", json=bot))
                ok(client.post("/v1/users/carol/devices", json={"platform": "apns", "address": MUTED_APNS}))
                ok(client.post("/v1/users/dave/devices", json={"platform": "fcm", "address": OTHER_FCM}))
                for user in ("alice", "bob", "carol"):
                    ok(client.put(f"/v1/users/{user}/follows/teams/6"))
                ok(client.put("/v1/users/carol/mutes/teams/6"))
                ok(client.put("/v1/users/dave/follows/teams/28"))

                pipeline = running["all"] = Process("all", ["run", "all", "--metrics-port", "0"], env, tmp_path).start()
                pipeline.wait_for(r"running \(namespace")
                game = _wait(lambda: client.get(f"/v1/games/espn:{GAME}"), lambda r: r.status_code == 200)
                assert game.json()["state"]["home_score"] == 1

                espn.body = with_home_score(espn_board, GAME, 1)
                wanted = {FCM, APNS, f"{hooks}/hooks/bob"}
                deadline = time.monotonic() + 90
                while {r.get("token") or r.get("url") for r in read_records(record)} < wanted:
                    assert time.monotonic() < deadline, f"pushes so far: {read_records(record)}\n{pipeline.log()}"
                    time.sleep(0.3)
                time.sleep(3.0)  # strays and duplicates would arrive by now
                records = read_records(record)
                copies = Counter(r.get("token") or r.get("url") for r in records)
                assert copies == Counter(dict.fromkeys(wanted, 1)), records
                assert all("EDM" in (r["title"] or "") for r in records), records
                live = _wait(
                    lambda: client.get(f"/v1/games/espn:{GAME}"), lambda r: r.json()["state"]["home_score"] == 2
                )
                assert live.headers["etag"]
                events = client.get(f"/v1/games/espn:{GAME}/events").json()["events"]
                assert [(e["kind"], e["home_score"]) for e in events if e["kind"] == "GOAL"] == [("GOAL", 2)]
    finally:
        espn.close()


def _wait(call, done, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        answer = call()
        if done(answer):
            return answer
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.3)
