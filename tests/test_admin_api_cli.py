"""The ops commands through the sidecar (``--api``), as an operator without RabbitMQ/Redis access runs
them: a real ``goalhorn run api`` and the CLI as subprocesses, the CLI given no service URL at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.processes import Process, clean_env, processes, real_env, run_command
from tests.support.api import SECRET

pytestmark = pytest.mark.timeout(120)


def test_pause_and_status_through_the_sidecar_with_an_admin_key(tmp_path: Path) -> None:
    env = real_env(GOALHORN_API_KEY_SECRET=SECRET)
    admin = run_command(["keys", "create", "--tenant", "ops", "--scopes", "admin"], env).stdout.split()[-1]
    writer = run_command(["keys", "create", "--tenant", "acme", "--scopes", "read,write"], env).stdout.split()[-1]
    with processes(tmp_path) as running:
        api = running["api"] = Process("api", ["run", "api", "--port", "0"], env, tmp_path).start()
        port = int(api.wait_for(r"on http://127\.0\.0\.1:(\d+)").group(1))
        base = f"http://127.0.0.1:{port}"
        operator = clean_env(GOALHORN_ADMIN_API_KEY=admin)  # no RabbitMQ, no Redis: only the sidecar

        paused = run_command(["pause", "fcm", "--reason", "vendor incident", "--api", base], operator)
        assert paused.returncode == 0, paused.stderr
        assert paused.stdout.startswith("paused fcm: every worker within 1 s")
        status = run_command(["status", "--api", base, "--json", "--interval", "0.2"], operator)
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert doc["namespace"] == env["GOALHORN_NAMESPACE"]
        assert doc["paused"]["fcm"]["reason"] == "vendor incident"
        assert doc["paused"]["fcm"]["by"].startswith("api:ops:")
        fcm = next(q for q in doc["queues"] if q["name"].endswith(".delivery.fcm"))
        assert fcm["paused"] is True

        screen = run_command(["status", "--interval", "0.2"], operator | {"GOALHORN_ADMIN_API_URL": base})
        assert screen.returncode == 0, screen.stderr
        assert "PAUSED fcm" in screen.stdout
        assert "vendor incident" in screen.stdout
        direct = run_command(["breakers", "--json"], env)
        assert json.loads(run_command(["breakers", "--api", base, "--json"], operator).stdout) == json.loads(
            direct.stdout
        )
        resumed = run_command(["resume", "fcm", "--api", base, "--json"], operator)
        assert json.loads(resumed.stdout)["was_paused"] is True

        for key, says in ((writer, "403"), ("ghk_not-a-key", "401")):
            refused = run_command(["status", "--api", base], clean_env(GOALHORN_ADMIN_API_KEY=key))
            assert refused.returncode == 2
            assert refused.stderr.count("\n") == 1
            assert says in refused.stderr
            assert key not in refused.stderr + refused.stdout
        api.kill()
        gone = run_command(["pause", "apns", "--api", base], operator)
        assert gone.returncode == 2
        assert gone.stderr.startswith("error: the admin API at")
        assert gone.stderr.count("\n") == 1
        assert admin not in gone.stderr
