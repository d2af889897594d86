"""``goalhorn send`` through each real provider to the sandbox servers, and a smoke run of the provider bench."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from goalhorn.ops.cli import app
from goalhorn.ops.delivery import _one_off_intent, send_one
from goalhorn.sandbox.servers import SandboxServers


@pytest.fixture
async def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    async with SandboxServers(tmp_path) as running:
        for name, value in running.settings_env().items():
            monkeypatch.setenv(name, value)
        yield running


async def test_send_reaches_each_sandbox_through_the_real_providers(servers: SandboxServers) -> None:
    intent = _one_off_intent("Hello", "from goalhorn", {"match": "g1"})
    fcm = await send_one("fcm", "fcm-token-1", None, intent)
    apns = await send_one("apns", "ab" * 32, None, intent)
    hook = await send_one("webhook", servers.webhooks.endpoint_url("bot"), servers.webhook_secret, intent)
    assert (fcm.outcome, apns.outcome, hook.outcome) == ("sent", "sent", "sent")
    assert servers.fcm.messages[0]["notification"] == {"title": "Hello", "body": "from goalhorn"}
    assert servers.fcm.messages[0]["data"]["match"] == "g1"
    assert servers.apns.requests[0].payload["aps"]["alert"] == {"title": "Hello", "body": "from goalhorn"}
    assert servers.webhooks.deliveries[0].body["data"]["title"] == "Hello"


async def test_send_reports_a_dead_token(servers: SandboxServers) -> None:
    servers.fcm.unregistered.add("gone")
    result = await send_one("fcm", "gone", None, _one_off_intent("t", "b", {}))
    assert result.outcome == "invalid_token"


def test_send_rejects_bad_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOALHORN_FCM_CREDENTIALS_FILE", raising=False)
    runner = CliRunner()
    base = ["send", "--to", "x", "--title", "t", "--body", "b"]
    assert runner.invoke(app, [*base, "--provider", "sms"]).exit_code == 2
    bad_data = runner.invoke(app, [*base, "--provider", "fcm", "--data", '{"n": 1}'])
    assert bad_data.exit_code == 2
    assert "JSON object of strings" in bad_data.output
    unconfigured = runner.invoke(app, [*base, "--provider", "fcm"])
    assert unconfigured.exit_code == 2
    assert "GOALHORN_FCM_CREDENTIALS_FILE" in unconfigured.output


def test_provider_bench_smoke_run() -> None:
    from bench import bench_providers

    assert bench_providers.main(["--small"]) in (0, 1)  # figures at this size mean nothing; it must run through


def test_help_sent_to_a_pipe_is_not_cut_at_80_columns() -> None:
    """rich cuts what it prints at 80 columns when it sees no terminal (a pipe, a CI log): the CLI widens it."""
    import subprocess

    from tests.processes import GOALHORN, clean_env

    env = {k: v for k, v in clean_env().items() if k != "COLUMNS"}
    done = subprocess.run([GOALHORN, "sandbox", "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "/channels/{id}/subscribers" in done.stdout
    assert "…" not in done.stdout
