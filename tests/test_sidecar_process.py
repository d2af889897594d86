"""``goalhorn keys`` and ``goalhorn run api`` as a user runs them: real processes, real Redis and RabbitMQ."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest
import redis as sync_redis

from goalhorn.settings import LOCAL_REDIS_URL
from tests.processes import Process, processes, real_env, run_command
from tests.support.api import SECRET

pytestmark = pytest.mark.timeout(120)


def test_keys_create_list_revoke_and_the_key_is_stored_only_as_an_hmac() -> None:
    env = real_env(GOALHORN_API_KEY_SECRET=SECRET)
    created = run_command(["keys", "create", "--tenant", "acme", "--tier", "pro", "--scopes", "read,write"], env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("ghk_")
    assert len(key) == 4 + 43 + 6
    as_json = run_command(["keys", "create", "--tenant", "acme", "--json"], env)
    record = json.loads(as_json.stdout)
    assert (record["tier"], record["scopes"], record["key"][:4]) == ("community", ["read"], "ghk_")

    client = sync_redis.Redis.from_url(LOCAL_REDIS_URL)
    try:
        stored = b""
        for name in client.scan_iter(match=f"{env['GOALHORN_NAMESPACE']}:*"):
            for field, value in client.hgetall(name).items():
                stored += name + field + value
    finally:
        client.close()
    assert key.encode() not in stored
    assert key[4:30].encode() not in stored

    listed = json.loads(run_command(["keys", "list", "--json"], env).stdout)
    assert sorted(r["tier"] for r in listed) == ["community", "pro"]
    assert "key" not in listed[0]
    pro = next(r for r in listed if r["tier"] == "pro")
    revoked = run_command(["keys", "revoke", pro["id"]], env)
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(run_command(["keys", "list", "--json"], env).stdout)[0]["revoked_at"] is not None
    assert run_command(["keys", "revoke", "key_nope"], env).returncode == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["keys", "create", "--tenant", "Bad Tenant"], "invalid tenant"),
        (["keys", "create", "--tenant", "acme", "--scopes", "read,everything"], "invalid scopes"),
        (["keys", "create", "--tenant", "acme", "--tier", "gold"], "invalid tier"),
    ],
)
def test_keys_create_refuses_bad_input(args: list[str], says: str) -> None:
    result = run_command(args, real_env(GOALHORN_API_KEY_SECRET=SECRET))
    assert result.returncode == 2
    assert says in result.stderr


def test_without_a_server_secret_keys_and_the_api_refuse_to_start() -> None:
    for args in (["keys", "create", "--tenant", "acme"], ["run", "api", "--port", "0"]):
        result = run_command(args, real_env(), timeout_s=60)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "GOALHORN_API_KEY_SECRET" in result.stderr
    short = run_command(["run", "api", "--port", "0"], real_env(GOALHORN_API_KEY_SECRET="short"), timeout_s=60)
    assert short.returncode == 2
    assert "GOALHORN_API_KEY_SECRET: at least 32 characters" in short.stderr
    assert "short" not in short.stderr.replace("GOALHORN_API_KEY_SECRET", ""), "a secret is never printed"


def test_keys_without_redis_is_one_line_and_exit_2() -> None:
    env = real_env(GOALHORN_API_KEY_SECRET=SECRET, GOALHORN_REDIS_URL="redis://127.0.0.1:1/0")
    for args in (["keys", "create", "--tenant", "acme"], ["keys", "list"]):
        result = run_command(args, env, timeout_s=60)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.startswith("error: Redis does not answer or refused"), result.stderr
        assert "Traceback" not in result.stderr


def test_run_api_serves_the_api_with_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = real_env(GOALHORN_API_KEY_SECRET=SECRET)
    key = run_command(["keys", "create", "--tenant", "acme", "--scopes", "read,write"], env).stdout.split()[-1]
    with processes(tmp_path) as running:
        api = running["api"] = Process("api", ["run", "api", "--port", "0"], env, tmp_path).start()
        port = int(api.wait_for(r"on http://127\.0\.0\.1:(\d+)").group(1))
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{base}/readyz").json() == {"status": "ready", "reasons": []}
        assert httpx.get(f"{base}/v1/users/u1").status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.put(f"{base}/v1/users/u1", json={"locale": "fr"}, headers=auth).status_code == 201
        assert httpx.get(f"{base}/v1/users/u1", headers=auth).json()["locale"] == "fr"
        metrics = httpx.get(f"{base}/metrics").text
        assert 'goalhorn_api_requests_total{method="PUT",route="/v1/users/{user_id}",status="201"} 1.0' in metrics
        started = time.monotonic()
        assert api.proc is not None
        api.proc.send_signal(signal.SIGTERM)
        assert api.proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 15
        assert "goalhorn api stopped" in api.lines[-1]
