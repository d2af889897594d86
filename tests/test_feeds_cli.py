from __future__ import annotations

import json

from typer.testing import CliRunner

from goalhorn.ops.cli import app
from tests.feeds import FIXTURES

runner = CliRunner()


def lines(fmt: str, name: str) -> list[dict]:
    result = runner.invoke(app, ["feeds", "parse", "--format", fmt, str(FIXTURES / name)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_espn_prints_one_game_per_line_with_exactly_the_contract_keys() -> None:
    games = lines("espn", "espn/nhl_scoreboard.json")
    keys = ["game_id", "sport", "league", "status", "home_team", "away_team", "home_team_id", "away_team_id"]
    keys += ["home_score", "away_score", "period", "clock_s", "display_clock"]
    assert all(list(game) == keys for game in games)
    overtime = next(g for g in games if g["game_id"] == "401461562")
    assert overtime == {
        "game_id": "401461562",
        "sport": "hockey",
        "league": "nhl",
        "status": "final",
        "home_team": "PIT",
        "away_team": "CBJ",
        "home_team_id": "16",
        "away_team_id": "29",
        "home_score": 3,
        "away_score": 2,
        "period": 4,
        "clock_s": 0.0,
        "display_clock": "0:00",
    }
    assert {g["status"] for g in games} == {"final", "live", "scheduled"}


def test_espn_soccer_keeps_the_stoppage_time_clock() -> None:
    games = lines("espn", "espn/usa1_scoreboard.json")
    assert any(g["display_clock"] == "90'+5'" for g in games)
    assert {g["sport"] for g in games} == {"soccer"}


def test_polymarket_prints_one_line_per_top_of_book_change() -> None:
    (top,) = lines("polymarket", "polymarket/ws_market_book_nautilus_py.json")
    assert top == {
        "token_id": "48331043336612883890938759509493159234755048973500640148014422747788308965732",
        "best_bid": 0.511,
        "best_ask": 0.514,
        "ts_ms": 1728799418260,
    }


def test_polymarket_reads_one_frame_per_line(tmp_path) -> None:
    recorded = tmp_path / "session.jsonl"
    book = {"event_type": "book", "asset_id": "t", "bids": [{"price": ".4", "size": "1"}], "asks": []}
    move = {
        "event_type": "price_change",
        "timestamp": "2",
        "price_changes": [{"asset_id": "t", "price": ".6", "size": "3", "side": "SELL"}],
    }
    recorded.write_text("\n".join([json.dumps(book | {"timestamp": "1"}), "PONG", "{oops", json.dumps(move)]))
    result = runner.invoke(app, ["feeds", "parse", "--format", "polymarket", str(recorded)])
    assert result.exit_code == 0
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert out == [
        {"token_id": "t", "best_bid": 0.4, "best_ask": None, "ts_ms": 1},
        {"token_id": "t", "best_bid": 0.4, "best_ask": 0.6, "ts_ms": 2},
    ]
    assert "not_json" in result.stderr


def test_sportradar_and_statsperform_print_events_with_the_contract_keys() -> None:
    keys = ["event_id", "game_id", "type", "team", "home_score", "away_score", "period", "sequence"]
    pushed = lines("sportradar", "sportradar/nba_v7_push.jsonstream")
    assert all(list(event) == keys for event in pushed)
    assert [e["type"] for e in pushed] == ["GAME_START", "BASKET", "BASKET", "BASKET"]
    assert pushed[1]["sequence"] == 1664669581400
    assert pushed[1]["team"] == "Bucks"
    match = lines("statsperform", "statsperform/ma3_hsv_svs.json")
    assert all(list(event) == keys for event in match)
    assert [(e["team"], e["home_score"], e["away_score"]) for e in match if e["type"] == "GOAL"] == [
        ("HSV", 1, 0),
        ("SVS", 1, 1),
        ("HSV", 2, 1),
    ]
    assert {e["sequence"] for e in match} == {None}


def test_a_file_that_is_all_garbage_exits_non_zero(tmp_path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_bytes(b"<html>502 Bad Gateway</html>")
    result = runner.invoke(app, ["feeds", "parse", "--format", "espn", str(junk)])
    assert result.exit_code == 1
    assert "not_json" in result.stderr


CONTROLS = ["\x1b", "\x07", "\x9b", "\x7f", "\u202e"]
CLEAR = "\x1b[2J"
RETITLE = "\x1b]0;pwned\x07"


def raw_controls(text: str) -> list[str]:
    return [c for c in CONTROLS if c in text]


def test_espn_rows_carry_the_team_ids_followers_follow() -> None:
    games = lines("espn", "espn/usa1_scoreboard.json")
    assert all(g["home_team_id"] and g["away_team_id"] and g["home_team_id"] != g["away_team_id"] for g in games)


def test_terminal_controls_from_a_feed_are_printed_escaped(tmp_path) -> None:
    board = json.loads((FIXTURES / "espn/nhl_scoreboard.json").read_text())
    first, second = board["events"][0], board["events"][1]
    home = next(c for c in first["competitions"][0]["competitors"] if c["homeAway"] == "home")
    home["team"]["abbreviation"] = f"PIT{CLEAR}\x7f\u202e"
    second["id"] = RETITLE
    second["competitions"] = []
    recorded = tmp_path / "board.json"
    recorded.write_text(json.dumps(board))
    result = runner.invoke(app, ["feeds", "parse", "--format", "espn", str(recorded)])
    assert result.exit_code == 0
    assert raw_controls(result.stdout) == []
    assert raw_controls(result.stderr) == []
    assert json.loads(result.stdout.splitlines()[0])["home_team"] == f"PIT{CLEAR}\x7f\u202e"
    assert "\\x1b]0;pwned\\x07" in result.stderr  # escaped, still readable


def test_a_rejected_frame_is_reported_escaped(tmp_path) -> None:
    recorded = tmp_path / "frames.jsonl"
    recorded.write_text(f"{CLEAR}{{oops\\x1b\n")
    result = runner.invoke(app, ["feeds", "parse", "--format", "polymarket", str(recorded)])
    assert result.exit_code == 1
    assert raw_controls(result.stderr) == []
    assert "\\x1b[2J{oops\\\\x1b" in result.stderr  # a literal backslash cannot pass for an escape


def test_feeds_quarantine_prints_rejected_payloads_escaped(monkeypatch) -> None:
    import asyncio
    import uuid

    from goalhorn.errors import PayloadRejected
    from goalhorn.ingest.quarantine import Quarantine, QuarantineStore
    from goalhorn.keys import Keys
    from goalhorn.redis_client import make_redis
    from goalhorn.settings import Settings

    namespace = f"t{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("GOALHORN_NAMESPACE", namespace)
    monkeypatch.delenv("GOALHORN_REDIS_URL", raising=False)

    async def fill() -> None:
        redis = make_redis(Settings(namespace=namespace))
        quarantine = Quarantine()
        quarantine.record(PayloadRejected("espn", "bad_team", f"event {RETITLE}"), f"{CLEAR}\x7f\x9b".encode())
        await QuarantineStore(redis, Keys(namespace)).push(quarantine.items())
        await redis.aclose()

    asyncio.run(fill())
    result = runner.invoke(app, ["feeds", "quarantine"])
    assert result.exit_code == 0, result.output
    assert raw_controls(result.stdout) == []
    (item,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert (item["detail"], item["payload"]) == (f"event {RETITLE}", f"{CLEAR}\x7f\x9b")
