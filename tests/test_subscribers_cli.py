"""``goalhorn subscribers import|export`` as a user runs them: on the real Redis (the only one an
import can live in), with the exit codes scripts rely on."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis as sync_redis
from typer.testing import CliRunner, Result

from goalhorn.ops.cli import app
from goalhorn.settings import LOCAL_REDIS_URL
from tests.conftest import _real_namespaces, require_real_services

APNS = "ab" * 32


@pytest.fixture
def env() -> dict[str, str | None]:
    require_real_services()
    namespace = f"t{uuid.uuid4().hex[:12]}"
    _real_namespaces.append(namespace)  # deleted after the session
    return {"GOALHORN_REDIS_URL": LOCAL_REDIS_URL, "GOALHORN_NAMESPACE": namespace, "GOALHORN_PREFERENCE_BUCKETS": None}


def invoke(args: list[str], env: dict[str, str | None]) -> Result:
    return CliRunner().invoke(app, args, env=env)


def write(path: Path, *lines: dict | str) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def user(n: int) -> dict:
    return {"user_id": f"u{n}", "devices": [{"platform": "apns", "address": f"{n:064x}"}], "follows": {"teams": ["t"]}}


def test_a_clean_file_imports_with_exit_0_and_again_unchanged(tmp_path: Path, env: dict) -> None:
    people = write(tmp_path / "people.jsonl", user(1), user(2), user(3))
    first = invoke(["subscribers", "import", str(people)], env)
    assert first.exit_code == 0, first.output
    assert "imported 3 lines (3 new or changed, 0 unchanged)" in first.stdout
    assert "Bloom" not in first.stdout, "no preferences were written"
    second = invoke(["subscribers", "import", str(people)], env)
    assert second.exit_code == 0
    assert "imported 3 lines (0 new or changed, 3 unchanged)" in second.stdout
    client = sync_redis.Redis.from_url(LOCAL_REDIS_URL)
    try:
        assert client.smembers(f"{env['GOALHORN_NAMESPACE']}:team:t:followers") == {b"u1", b"u2", b"u3"}
    finally:
        client.close()


def test_rejected_lines_are_listed_with_exit_1_and_the_rest_imported(tmp_path: Path, env: dict) -> None:
    people = write(
        tmp_path / "people.jsonl",
        user(1),
        "{oops",
        {"user_id": "u2", "devices": [{"platform": "apns", "address": "nothex"}]},
        user(3),
        {"user_id": "u4", "devices": [{"platform": "webhook", "address": "http://10.0.0.7/hook", "secret": "x"}]},
    )
    result = invoke(["subscribers", "import", str(people)], env)
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("line 2: not valid JSON")
    assert lines[1] == "line 3: devices[0].address: not an APNs token (an even number of 32-200 hex digits)"
    assert lines[2].startswith("line 5: devices[0].address: webhook URL refused: private address 10.0.0.7")
    assert "secret" in lines[2], "every problem of the line is named"
    assert "imported 2 lines" in result.stdout
    assert "rejected 3 lines" in result.stdout
    listed = invoke(["subscribers", "export"], env)
    assert [json.loads(line)["user_id"] for line in listed.stdout.splitlines()] == ["u1", "u3"]


def test_the_allowlist_lets_a_local_webhook_in(tmp_path: Path, env: dict) -> None:
    secret = "whsec_" + "A" * 32
    hook = {
        "user_id": "bot",
        "devices": [{"platform": "webhook", "address": "http://127.0.0.1:8472/hooks/bot", "secret": secret}],
    }
    people = write(tmp_path / "bots.jsonl", hook)
    assert invoke(["subscribers", "import", str(people)], env).exit_code == 1
    allowed = invoke(["subscribers", "import", str(people)], {**env, "GOALHORN_WEBHOOK_ALLOWLIST": "127.0.0.1"})
    assert allowed.exit_code == 0, allowed.output


def test_json_report(tmp_path: Path, env: dict) -> None:
    people = write(tmp_path / "people.jsonl", user(1), "[]")
    result = invoke(["subscribers", "import", "--json", str(people)], env)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["imported"], report["rejected"]) == (1, 1)
    assert report["rejections"] == [{"line": 2, "reason": "not a JSON object"}]
    assert result.stderr == ""


def test_export_to_a_file_round_trips(tmp_path: Path, env: dict) -> None:
    people = write(
        tmp_path / "people.jsonl",
        {
            **user(1),
            "locale": "fr",
            "preferences": {"opted_out": ["GOAL"], "quiet_hours": {"start": "22:00", "end": "07:00"}},
        },
        user(2),
    )
    assert invoke(["subscribers", "import", str(people)], env).exit_code == 0
    out = tmp_path / "out.jsonl"
    exported = invoke(["subscribers", "export", str(out)], env)
    assert exported.exit_code == 0
    assert "exported 2 subscribers" in exported.stderr
    assert out.read_text() == invoke(["subscribers", "export", "-"], env).stdout
    first = json.loads(out.read_text().splitlines()[0])
    assert first["preferences"] == {"opted_out": ["GOAL"], "quiet_hours": {"start": "22:00", "end": "07:00"}}
    again = invoke(["subscribers", "import", str(out)], env)
    assert "0 new or changed, 2 unchanged" in again.stdout
    assert list(tmp_path.glob(".out.jsonl.*")) == [], "no temporary file is left behind"


def test_without_a_redis_url_the_commands_refuse(tmp_path: Path) -> None:
    people = write(tmp_path / "people.jsonl", user(1))
    for args in (["subscribers", "import", str(people)], ["subscribers", "export"]):
        result = invoke(args, {"GOALHORN_REDIS_URL": None})
        assert result.exit_code == 2
        assert result.stderr.startswith("error: GOALHORN_REDIS_URL is not set")
        assert len(result.stderr.splitlines()) == 1


def test_an_unreadable_file_exits_2(tmp_path: Path, env: dict) -> None:
    missing = invoke(["subscribers", "import", str(tmp_path / "nope.jsonl")], env)
    assert missing.exit_code == 2
    assert "cannot read" in missing.stderr
    assert "No such file" in missing.stderr
    directory = invoke(["subscribers", "import", str(tmp_path)], env)
    assert directory.exit_code == 2
    assert "cannot read" in directory.stderr


def test_a_bucket_count_mismatch_or_no_redis_exits_2(tmp_path: Path, env: dict) -> None:
    people = write(tmp_path / "people.jsonl", user(1))
    assert invoke(["subscribers", "import", str(people)], env).exit_code == 0
    mismatch = invoke(["subscribers", "import", str(people)], {**env, "GOALHORN_PREFERENCE_BUCKETS": "64"})
    assert mismatch.exit_code == 2
    assert "GOALHORN_PREFERENCE_BUCKETS" in mismatch.stderr
    down = invoke(["subscribers", "import", str(people)], {**env, "GOALHORN_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert down.exit_code == 2
    assert down.stderr.startswith("error: Redis failed")
