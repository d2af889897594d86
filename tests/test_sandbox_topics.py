"""The sandbox's FCM topics, run as ``goalhorn sandbox`` in its own process: topic management through
firebase-admin's real calls (v1 registrations and the legacy IID batch API), topic and condition
messages fanned out into the record one push per subscribed token, the fan-out rate, the quota."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import firebase_admin
import pytest
from firebase_admin import messaging

from goalhorn.sandbox.fcm_server import sandbox_certificate
from goalhorn.sandbox.fcm_topics import InvalidCondition, TopicRegistry
from goalhorn.settings import Settings
from goalhorn.topics.fcm_admin import TopicAdmin
from tests.processes import Process, exports, free_port, processes, read_records


class SandboxProcess:
    def __init__(self, process: Process, record: Path, control: str) -> None:
        self.process = process
        self.record = record
        self.control = control
        self.env = exports(process.lines)
        self.settings = Settings(
            fcm_credentials_file=self.env["GOALHORN_FCM_CREDENTIALS_FILE"],
            fcm_base_url=self.env["GOALHORN_FCM_BASE_URL"],
            fcm_timeout_s=5.0,
        )

    @property
    def fcm_url(self) -> str:
        return self.env["GOALHORN_FCM_BASE_URL"]

    async def control_get(self, path: str) -> dict:
        async with aiohttp.ClientSession() as session, session.get(self.control + path) as response:
            return await response.json()

    async def unregister(self, tokens: list[str]) -> None:
        async with aiohttp.ClientSession() as session:
            await session.post(f"{self.control}/unregistered/fcm", json={"tokens": tokens})


def start_sandbox(tmp_path: Path, running: dict[str, Process], *extra: str) -> SandboxProcess:
    record = tmp_path / "record.jsonl"
    control_port = free_port()
    args = ["sandbox", "--dir", str(tmp_path / "sandbox"), "--record", str(record), "--fcm-port", "0"]
    args += ["--apns-port", "0", "--webhook-port", "0", "--control-port", str(control_port), *extra]
    process = running["sandbox"] = Process("sandbox", args, dict(os.environ), tmp_path).start()
    process.wait_for(r"^export GOALHORN_WEBHOOK_ALLOWLIST=")
    return SandboxProcess(process, record, f"http://127.0.0.1:{control_port}")


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[SandboxProcess]:
    with processes(tmp_path) as running:
        yield start_sandbox(tmp_path, running, "--topic-fanout-per-s", "2000")


def firebase_app(sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch) -> firebase_admin.App:
    """firebase-admin's own client on the sandbox: sends at FCM_URL, the legacy IID batch API at IID_URL."""
    monkeypatch.setattr(messaging._MessagingService, "FCM_URL", sandbox.fcm_url + "/v1/projects/{0}/messages:send")
    monkeypatch.setattr(messaging._MessagingService, "IID_URL", sandbox.fcm_url)
    certificate = sandbox_certificate(sandbox.settings.fcm_credentials_file or "")
    return firebase_admin.initialize_app(certificate, name=f"topics-{id(sandbox)}-{time.monotonic_ns()}")


async def wait_records(path: Path, n: int, timeout_s: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_records(path)
        if len(records) >= n or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.05)


def goal(topic: str | None = None, condition: str | None = None, intent_id: str = "i-1") -> messaging.Message:
    return messaging.Message(
        topic=topic,
        condition=condition,
        notification=messaging.Notification("GOAL", "1-0"),
        data={"intent_id": intent_id},
    )


async def test_goalhorns_topic_admin_subscribes_through_firebase_admin_and_a_topic_message_fans_out(
    sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = [f"tok-{n}" for n in range(1203)]  # two calls: 1,000 tokens and 203
    await sandbox.unregister(["tok-dead"])
    admin = TopicAdmin(sandbox.settings)
    try:
        outcome = await admin.subscribe([*tokens, "tok-dead"], "team-ars-en")
        assert sorted(outcome.done) == sorted(tokens)
        assert outcome.dead == ["tok-dead"]
        assert outcome.retry == []
        gone = await admin.unsubscribe(tokens[:3], "team-ars-en")
        assert sorted(gone.done) == sorted(tokens[:3])
    finally:
        await admin.aclose()
    state = await sandbox.control_get("/topics")
    assert state["subscribed"] == {"team-ars-en": 1200}
    assert state["calls"] == {"batchAdd": 2, "batchRemove": 1}  # the IID batch API: <= 1,000 tokens a call

    app = firebase_app(sandbox, monkeypatch)
    try:
        name = await asyncio.to_thread(messaging.send, goal(topic="team-ars-en", intent_id="i-topic"), app=app)
    finally:
        await asyncio.to_thread(firebase_admin.delete_app, app)
    assert name.startswith("projects/goalhorn-sandbox/messages/")
    records = await wait_records(sandbox.record, 1200)
    assert len(records) == 1200
    assert Counter(r["token"] for r in records) == Counter(tokens[3:])  # one push per subscribed token
    assert {(r["via"], r["topic"], r["intent_id"], r["title"]) for r in records} == {
        ("topic", "team-ars-en", "i-topic", "GOAL")
    }


async def test_the_legacy_iid_batch_api_answers_per_token_and_refuses_more_than_1000(
    sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    await sandbox.unregister(["gone"])
    app = firebase_app(sandbox, monkeypatch)
    try:
        with pytest.warns(DeprecationWarning, match="deprecated"):
            added = await asyncio.to_thread(messaging.subscribe_to_topic_legacy, ["a", "gone", "b"], "t", app=app)
        assert (added.success_count, added.failure_count) == (2, 1)
        assert (added.errors[0].index, added.errors[0].reason) == (1, "NOT_FOUND")
        with pytest.warns(DeprecationWarning, match="deprecated"):
            removed = await asyncio.to_thread(messaging.unsubscribe_from_topic_legacy, ["a"], "/topics/t", app=app)
        assert removed.success_count == 1
        too_many = [f"x{n}" for n in range(1001)]
        refused = asyncio.to_thread(messaging.subscribe_to_topic_legacy, too_many, "t", app=app)
        invalid = firebase_admin.exceptions.InvalidArgumentError
        with pytest.warns(DeprecationWarning, match="deprecated"), pytest.raises(invalid, match="INVALID_ARGUMENT"):
            await refused
    finally:
        await asyncio.to_thread(firebase_admin.delete_app, app)
    assert (await sandbox.control_get("/topics"))["subscribed"] == {"t": 1}


async def test_a_condition_reaches_the_tokens_it_describes_once_each(
    sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = TopicAdmin(sandbox.settings)
    try:
        await admin.subscribe(["a", "b", "c"], "home")
        await admin.subscribe(["b", "c", "d"], "away")
        await admin.subscribe(["c"], "muted")
    finally:
        await admin.aclose()
    app = firebase_app(sandbox, monkeypatch)
    try:
        condition = "('home' in topics || 'away' in topics) && !('muted' in topics)"
        await asyncio.to_thread(messaging.send, goal(condition=condition, intent_id="i-cond"), app=app)
        with pytest.raises(firebase_admin.exceptions.InvalidArgumentError):
            await asyncio.to_thread(messaging.send, goal(condition="'home' in topics &&"), app=app)
    finally:
        await asyncio.to_thread(firebase_admin.delete_app, app)
    records = await wait_records(sandbox.record, 3)
    await asyncio.sleep(0.2)
    assert sorted(r["token"] for r in read_records(sandbox.record)) == ["a", "b", "d"]
    assert {r["condition"] for r in records} == {condition}


async def test_fan_out_goes_at_the_configured_rate_and_quota_refusals_are_retryable(tmp_path: Path) -> None:
    with processes(tmp_path) as running:
        sandbox = start_sandbox(tmp_path, running, "--topic-fanout-per-s", "200", "--topic-quota-per-s", "10")
        admin = TopicAdmin(sandbox.settings, api="v1")  # one token a request: the quota refuses some of them
        try:
            tokens = [f"t{n}" for n in range(120)]
            started = time.monotonic()
            first = await admin.subscribe(tokens, "slow")
            # firebase-admin (urllib3) waits out Retry-After itself, 4 times; then the token is refused.
            assert first.quota_refused
            assert 0 < len(first.done) <= 10 * (time.monotonic() - started + 2)  # per calendar second
            assert sorted(first.done + first.retry) == sorted(tokens)
            done = set(first.done)
            left = first.retry
            while left:
                await asyncio.sleep(1.0)
                again = await admin.subscribe(left, "slow")
                done |= set(again.done)
                left = again.retry
        finally:
            await admin.aclose()
        assert done == set(tokens)
        started = time.monotonic()
        monkey = pytest.MonkeyPatch()
        try:
            app = firebase_app(sandbox, monkey)
            try:
                await asyncio.to_thread(messaging.send, goal(topic="slow"), app=app)
            finally:
                await asyncio.to_thread(firebase_admin.delete_app, app)
        finally:
            monkey.undo()
        records = await wait_records(sandbox.record, 120)
        elapsed = time.monotonic() - started
        assert len(records) == 120
        assert elapsed >= 0.5  # 120 tokens at 200/s: 0.6 s at least


def test_condition_grammar() -> None:
    registry = TopicRegistry()
    registry.add("a", ["1", "2"])
    registry.add("b", ["2", "3"])
    assert registry.matching("'a' in topics && 'b' in topics") == {"2"}
    assert registry.matching("'a' in topics || 'b' in topics && !('a' in topics)") == {"1", "2", "3"}
    assert registry.matching("!('a' in topics)") == {"3"}
    with pytest.raises(InvalidCondition, match="Invalid condition"):
        registry.matching("'a' in topics ||")
    with pytest.raises(InvalidCondition, match="Unbalanced"):
        registry.matching("('a' in topics")
