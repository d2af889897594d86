"""Under a provider's quota the delivery stage settles below it: few requests are refused and sent again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from goalhorn.models import DeliveryBatch, Device
from goalhorn.providers.fcm import FcmProvider
from goalhorn.sandbox.faults import FaultWindow
from goalhorn.sandbox.fcm_server import FcmSandbox
from tests.conftest import make_settings
from tests.stages import deliver_all, delivery_stage
from tests.support.builders import make_intent

QUOTA_PER_S = 100
DEVICES = 500


def fcm_batches(n: int, per_batch: int) -> list[DeliveryBatch]:
    intent = make_intent("i-quota")
    devices = [Device(device_id=f"d{i}", user_id=f"u{i}", platform="fcm", address=f"tok-{i}") for i in range(n)]
    return [
        DeliveryBatch(
            batch_id=f"b{start}", platform="fcm", intent=intent, devices=tuple(devices[start : start + per_batch])
        )
        for start in range(0, n, per_batch)
    ]


@pytest.mark.parametrize("backend", ["real"])
async def test_a_quota_storm_costs_under_1_2_requests_per_push_and_every_device_gets_it(
    backend: str, tmp_path: Path
) -> None:
    async with FcmSandbox() as sandbox:
        settings = make_settings(
            backend,
            fcm_credentials_file=str(sandbox.service_account(tmp_path / "sa.json")),
            fcm_base_url=sandbox.url,
        )
        sandbox.faults.open(
            FaultWindow("quota", time.monotonic() + 600, status=429, retry_after=1, quota_per_s=QUOTA_PER_S)
        )
        async with FcmProvider(settings) as provider, delivery_stage(settings, provider) as (stage, redis):
            snap = await deliver_all(stage, redis, [b.encode() for b in fcm_batches(DEVICES, 100)], timeout_s=90)

        accepted = sandbox.faults.answered[200]
        assert sandbox.faults.answered[429] > 0, "the quota was met"
        assert accepted == DEVICES == snap.get("delivery:fcm:sent"), "every device got it, once"
        assert sandbox.faults.received / accepted < 1.2
