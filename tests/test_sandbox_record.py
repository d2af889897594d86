"""``goalhorn sandbox --record``: one JSON line per push the sandbox accepted, nothing for the ones it
refused, intact under concurrent writers, and readable by another process while the sandbox runs."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from goalhorn.ops.delivery import _one_off_intent, send_one
from goalhorn.sandbox.recorder import PushRecorder
from goalhorn.sandbox.servers import SandboxServers

GOALHORN = str(Path(sys.executable).with_name("goalhorn"))
FCM = "fcm-" + "Ab9_-:" * 24
APNS = "ab" * 32


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
async def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    async with SandboxServers(tmp_path / "sandbox", record=tmp_path / "pushes.jsonl") as running:
        for name, value in running.settings_env().items():
            monkeypatch.setenv(name, value)
        yield running


async def test_each_accepted_push_is_one_line(servers: SandboxServers, tmp_path: Path) -> None:
    intent = _one_off_intent("GOAL! EDM", "CGY 0 - 1 EDM (12:01)", {})
    hook = servers.webhooks.endpoint_url("bot")
    results = [
        await send_one("fcm", FCM, None, intent),
        await send_one("apns", APNS, None, intent),
        await send_one("webhook", hook, servers.webhook_secret, intent),
    ]
    assert [r.outcome for r in results] == ["sent"] * 3
    fcm, apns, webhook = records(tmp_path / "pushes.jsonl")
    assert {k: v for k, v in fcm.items() if k != "at"} == {
        "provider": "fcm",
        "token": FCM,
        "title": "GOAL! EDM",
        "body": "CGY 0 - 1 EDM (12:01)",
        "intent_id": intent.intent_id,
    }
    assert (apns["provider"], apns["token"], apns["title"], apns["body"], apns["intent_id"]) == (
        "apns",
        APNS,
        "GOAL! EDM",
        "CGY 0 - 1 EDM (12:01)",
        intent.intent_id,
    )
    assert (webhook["provider"], webhook["url"], webhook["title"], webhook["intent_id"]) == (
        "webhook",
        hook,
        "GOAL! EDM",
        intent.intent_id,
    )
    stamps = [datetime.fromisoformat(r["at"]) for r in (fcm, apns, webhook)]
    assert stamps == sorted(stamps)
    assert all(s.tzinfo is not None for s in stamps)


async def test_refused_pushes_are_not_recorded(servers: SandboxServers, tmp_path: Path) -> None:
    intent = _one_off_intent("t", "b", {})
    servers.fcm.unregistered.add(FCM)
    servers.apns.unregistered[APNS] = 1
    servers.webhooks.gone.add("gone")
    assert (await send_one("fcm", FCM, None, intent)).outcome == "invalid_token"
    assert (await send_one("apns", APNS, None, intent)).outcome == "invalid_token"
    hook = await send_one("webhook", servers.webhooks.endpoint_url("bot"), "whsec_" + "B" * 32, intent)
    assert hook.outcome != "sent", "a wrong signature is refused"
    assert (
        await send_one("webhook", servers.webhooks.endpoint_url("gone"), servers.webhook_secret, intent)
    ).outcome != "sent"
    servers.fcm.fail_next(1, 503)
    assert (await send_one("fcm", "other-" + FCM, None, intent)).outcome != "sent"
    assert (tmp_path / "pushes.jsonl").read_text() == ""


async def test_concurrent_pushes_give_whole_lines(servers: SandboxServers, tmp_path: Path) -> None:
    intent = _one_off_intent("t" * 300, "b" * 2000, {})
    sends = [send_one("fcm", f"{n:04d}-{FCM}", None, intent) for n in range(60)]
    sends += [
        send_one("webhook", servers.webhooks.endpoint_url(f"b{n}"), servers.webhook_secret, intent) for n in range(60)
    ]
    results = await asyncio.gather(*sends)
    assert all(r.outcome == "sent" for r in results)
    lines = records(tmp_path / "pushes.jsonl")
    assert len(lines) == 120
    assert {line.get("token") or line["url"] for line in lines} == {f"{n:04d}-{FCM}" for n in range(60)} | {
        servers.webhooks.endpoint_url(f"b{n}") for n in range(60)
    }


def test_threads_and_processes_appending_to_one_file_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    body = "x" * 5000  # larger than a pipe's atomic write, so only O_APPEND and one write(2) keep it whole

    def write(recorder: PushRecorder, who: str) -> None:
        for n in range(200):
            recorder.record("fcm", {"token": f"{who}-{n}"}, "t", body)

    with PushRecorder(path) as first, PushRecorder(path) as second:
        threads = [
            threading.Thread(target=write, args=(r, f"{name}{i}"))
            for i in range(3)
            for name, r in (("a", first), ("b", second))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    lines = records(path)
    assert len(lines) == 1200
    assert all(line["body"] == body for line in lines)
    assert len({line["token"] for line in lines}) == 1200


def test_a_closed_recorder_refuses(tmp_path: Path) -> None:
    recorder = PushRecorder(tmp_path / "r.jsonl")
    recorder.close()
    with pytest.raises(ValueError, match="closed"):
        recorder.record("apns", {"token": APNS}, "t", "b")


# --- the sandbox as its own process -------------------------------------------------------------
def read_until(proc: subprocess.Popen[bytes], pattern: str, timeout_s: float) -> list[str]:
    """Lines of ``proc``'s stdout, read through the pipe as they come, until one starts with ``pattern``."""
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    lines: list[str] = []
    buffer = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not selector.select(timeout=0.2):
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        lines += [line.decode() for line in complete]
        if any(line.startswith(pattern) for line in lines):
            return lines
    raise AssertionError(f"no line starting with {pattern!r} within {timeout_s}s; got {lines!r}")


def test_the_sandbox_process_records_what_goalhorn_send_delivered(tmp_path: Path) -> None:
    record = tmp_path / "pushes.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOALHORN_")}
    args = ["sandbox", "--dir", str(tmp_path / "sb"), "--record", str(record)]
    args += ["--fcm-port", "0", "--apns-port", "0", "--webhook-port", "0"]
    with (
        (tmp_path / "sandbox.log").open("wb") as log,
        subprocess.Popen([GOALHORN, *args], env=env, stdout=subprocess.PIPE, stderr=log) as proc,
    ):
        try:
            run_sandbox(proc, record, env)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def run_sandbox(proc: subprocess.Popen[bytes], record: Path, env: dict[str, str]) -> None:
    """Read the exports as the sandbox prints them, send through each provider, read the record."""
    # The parent sees the lines while the sandbox keeps running: its output is not held in a buffer.
    lines = read_until(proc, "export GOALHORN_WEBHOOK_ALLOWLIST=", timeout_s=60)
    assert proc.poll() is None
    exports = dict(line.removeprefix("export ").split("=", 1) for line in lines if line.startswith("export "))
    assert "GOALHORN_FCM_BASE_URL" in exports
    assert "GOALHORN_APNS_PORT" in exports
    assert f"recording accepted pushes to {record}" in lines
    webhooks = next(line.split()[1] for line in lines if line.startswith("webhooks "))
    secret = next(line.split()[2] for line in lines if line.startswith("webhook secret "))
    hook = webhooks.replace("<endpoint>", "bot1")
    sends = [
        ["--provider", "fcm", "--to", FCM],
        ["--provider", "apns", "--to", APNS],
        ["--provider", "webhook", "--to", hook, "--secret", secret],
        ["--provider", "webhook", "--to", hook, "--secret", "whsec_" + "C" * 32],  # refused: bad signature
    ]
    outcomes = [
        subprocess.run(
            [GOALHORN, "send", *send, "--title", "GOAL!", "--body", "1-0"],
            env={**env, **exports},
            capture_output=True,
            text=True,
            timeout=60,
        )
        for send in sends
    ]
    assert [o.returncode for o in outcomes] == [0, 0, 0, 1], [o.stdout + o.stderr for o in outcomes]
    # Already on disk while the sandbox still runs.
    got = records(record)
    assert [(r["provider"], r.get("token") or r["url"], r["title"], r["body"]) for r in got] == [
        ("fcm", FCM, "GOAL!", "1-0"),
        ("apns", APNS, "GOAL!", "1-0"),
        ("webhook", hook, "GOAL!", "1-0"),
    ]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
