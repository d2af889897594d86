"""``goalhorn dlq``: dead letters listed by code and provider, and replayed through the normal path
once the failure is fixed, each device delivered exactly once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from goalhorn.admin.dlq import Filter, parse_since, replayable
from goalhorn.counters import PipelineCounters
from goalhorn.dispatch import deadletters
from goalhorn.errors import AdminError
from goalhorn.keys import Keys
from goalhorn.models import DeadLetter, DeadLetterCode, DeadLetterKind
from goalhorn.providers.fcm import FcmProvider
from goalhorn.redis_client import make_redis
from goalhorn.sandbox.fcm_server import FcmSandbox
from goalhorn.settings import Settings
from tests.conftest import make_settings
from tests.processes import real_env, run_command
from tests.stages import deliver_all, delivery_stage
from tests.test_dispatch import batch_of, devices

pytestmark = pytest.mark.real


@pytest.fixture
async def fcm(tmp_path: Path) -> AsyncIterator[FcmSandbox]:
    async with FcmSandbox() as server:
        server.service_account(tmp_path / "sa.json")
        yield server


async def goalhorn(settings: Settings, *args: str) -> Any:
    result = await asyncio.to_thread(run_command, list(args), real_env(GOALHORN_NAMESPACE=settings.namespace))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def wait_idle(counters: PipelineCounters, timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            snap = await counters.snapshot()
            if snap.get("batches_done") >= snap.get("batches_published"):
                return
            await asyncio.sleep(0.05)


async def test_replay_after_fixing_the_sandbox_delivers_each_dead_lettered_device_once(
    fcm: FcmSandbox, tmp_path: Path
) -> None:
    settings = make_settings(
        "real",
        fcm_credentials_file=str(tmp_path / "sa.json"),
        fcm_base_url=fcm.url,
        delivery_max_attempts=2,
        retry_base_delay_s=0.05,
        breaker_failure_threshold=1000,
    )
    first, second = devices(12)[:7], devices(12)[7:]
    batches = [batch_of(first, intent_id="i-a"), batch_of(second, intent_id="i-b")]
    fcm.unavailable_for(60)
    async with delivery_stage(settings, FcmProvider(settings)) as (stage, redis):
        snap = await deliver_all(stage, redis, [b.encode() for b in batches], 60)
        assert snap.get("dead_letters") == 12
        assert fcm.received == {}
        # an invalid device's entry, which replay must leave alone
        await deadletters.write(
            redis,
            stage.keys,
            DeadLetter(
                kind=DeadLetterKind.DEVICE,
                code=DeadLetterCode.INVALID_DEVICE,
                detail="invalid device in batch b-9: address: too short",
                platform="fcm",
                payload='{"platform":"fcm"}',
                devices=1,
            ),
        )

        listed = await goalhorn(settings, "dlq", "list", "--json")
        groups = {(g["code"], g["platform"]): (g["entries"], g["devices"]) for g in listed["groups"]}
        assert groups == {("attempts_exhausted", "fcm"): (2, 12), ("invalid_device", "fcm"): (1, 1)}
        only = await goalhorn(settings, "dlq", "show", "--reason", "attempts_exhausted", "--json")
        assert sorted(e["intent_id"] for e in only) == ["i-a", "i-b"]
        assert all(e["detail"].startswith("attempts exhausted (2): UNAVAILABLE") for e in only)
        assert await goalhorn(settings, "dlq", "list", "--provider", "apns", "--json") == {
            "groups": [],
            "unreadable": [],
        }
        dry = await goalhorn(settings, "dlq", "replay", "--dry-run", "--json")
        assert (dry["replayed"], dry["devices"]) == (2, 12)

        fcm.unavailable_for(0)  # fixed
        replayed = await goalhorn(settings, "dlq", "replay", "--json")
        assert (replayed["replayed"], replayed["devices"], replayed["expired"]) == (2, 12, 0)
        assert [why for _, why in replayed["skipped"]] == [
            "an invalid device: fix it in the preference store, it is not replayed"
        ]
        await wait_idle(PipelineCounters(redis, stage.keys))
        again = await goalhorn(settings, "dlq", "replay", "--json")
        await wait_idle(PipelineCounters(redis, stage.keys))
        left = await goalhorn(settings, "dlq", "list", "--json")
        snap = await PipelineCounters(redis, stage.keys).snapshot()

    assert fcm.received == {f"tok-{i}": 1 for i in range(12)}, "each dead-lettered device exactly once"
    assert again["replayed"] == 0, "replayed entries are gone from the dead letters"
    assert [(g["code"], g["entries"]) for g in left["groups"]] == [("invalid_device", 1)]
    assert snap.get("delivery:fcm:sent") == 12
    assert snap.get("dlq_replayed") == 12


async def test_replaying_an_entry_whose_devices_were_sent_sends_nobody_twice(fcm: FcmSandbox, tmp_path: Path) -> None:
    settings = make_settings("real", fcm_credentials_file=str(tmp_path / "sa.json"), fcm_base_url=fcm.url)
    batch = batch_of(devices(5), intent_id="i-c")
    async with delivery_stage(settings, FcmProvider(settings)) as (stage, redis):
        await deliver_all(stage, redis, [batch.encode()], 30)
        # the same batch dead-lettered by a worker that failed after sending (its markers say sent)
        await deadletters.write(
            redis,
            stage.keys,
            DeadLetter(
                kind=DeadLetterKind.MESSAGE,
                code=DeadLetterCode.WORKER_FAILED,
                detail="worker failed 3 times: RuntimeError: boom",
                platform="fcm",
                payload=batch.to_json().decode(),
                intent_id="i-c",
                devices=5,
            ),
        )
        replayed = await goalhorn(settings, "dlq", "replay", "--reason", "worker_failed", "--json")
        await wait_idle(PipelineCounters(redis, stage.keys))
        snap = await PipelineCounters(redis, stage.keys).snapshot()
    assert replayed["replayed"] == 1
    assert fcm.received == {f"tok-{i}": 1 for i in range(5)}
    assert snap.get("duplicates_skipped") == 5


def test_filters_refuse_what_they_cannot_read() -> None:
    for args, message in (
        (("sms", None, None), "--provider: 'sms'"),
        ((None, "timeout", None), "--reason: 'timeout' is not a dead-letter code"),
        ((None, None, "yesterday"), "--since: 'yesterday'"),
        ((None, None, "2026-11-29T21:00:00"), "needs a time zone"),
    ):
        with pytest.raises(AdminError, match=message):
            Filter.parse(*args)
    assert (parse_since("2h") - parse_since("1h")).total_seconds() == pytest.approx(-3600, abs=1)
    unreadable = DeadLetter(kind=DeadLetterKind.MESSAGE, code=DeadLetterCode.INVALID_BATCH, platform="fcm", payload="{")
    assert isinstance(replayable(unreadable), str)


async def test_an_entry_written_before_kinds_is_reported_not_misread() -> None:
    settings = make_settings("real")
    keys = Keys(settings.namespace)
    redis = make_redis(settings)
    try:
        await redis.xadd(keys.dead_letters(), {"batch": "{}", "reason": "attempts exhausted (5): x"})
        listed = await goalhorn(settings, "dlq", "list", "--json")
    finally:
        await redis.delete(keys.dead_letters())
        await redis.aclose()
    assert listed["groups"] == []
    assert len(listed["unreadable"]) == 1
    assert "not a dead letter of this version" in listed["unreadable"][0]
