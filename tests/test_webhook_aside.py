"""Slow webhook requests give their shared slot back: endpoints that start hanging, never answered
before (or answered before, then hang), do not hold the shared slots until they time out."""

from __future__ import annotations

import asyncio

from goalhorn.models import Device
from goalhorn.providers.webhook import WebhookProvider
from tests.conftest import make_settings
from tests.httpserver import serve
from tests.test_send_path import SECRET, Receivers, batch_of, harness


def hook(device_id: str, url: str) -> Device:
    return Device(device_id=device_id, user_id=device_id, platform="webhook", address=url, secret=SECRET)


async def test_hanging_endpoints_first_in_the_batch_do_not_block_the_healthy_ones_behind_them() -> None:
    receivers = Receivers()
    async with serve(receivers.app()) as base:
        settings = make_settings(
            "real",
            webhook_allowlist="127.0.0.1",
            webhook_concurrency=4,
            webhook_timeout_s=60,  # the hanging requests stay in flight for the whole test
            webhook_slow_after_s=0.05,
            webhook_slow_concurrency=20,
        )
        # Twenty endpoints that have never answered, and hang: first in the batch, five times the slots.
        hanging = tuple(hook(f"h{n:02d}", f"{base}/hang/{n}") for n in range(20))
        healthy = tuple(hook(f"k{i:02d}", f"{base}/ok/{i}") for i in range(30))
        try:
            async with harness(settings, WebhookProvider(settings)) as h:
                delivery = asyncio.create_task(h.deliverer.process(batch_of(hanging + healthy)))
                try:
                    async with asyncio.timeout(20):  # well before any hanging request could time out
                        while len(receivers.healthy) < len(healthy):
                            await asyncio.sleep(0.01)
                    # Every healthy endpoint got its webhook while every hanging request was still out.
                    assert receivers.hang_arrived == len(hanging)
                    assert not delivery.done(), "the batch waits for the requests aside"
                    receivers.release.set()
                    await delivery
                finally:
                    delivery.cancel()
                    await asyncio.gather(delivery, return_exceptions=True)
                snap = await h.snapshot()
        finally:
            receivers.release.set()

    # Without stepping aside the four shared slots stay with the first hanging requests, and the
    # healthy ones go only after the 60 s timeout.
    assert len(receivers.healthy) == len(healthy)
    assert snap.get("delivery:webhook:sent") == len(hanging) + len(healthy), "the requests aside were settled"


async def test_requests_aside_are_bounded_and_then_slow_ones_keep_their_shared_slot() -> None:
    receivers = Receivers()
    async with serve(receivers.app()) as base:
        settings = make_settings(
            "real",
            webhook_allowlist="127.0.0.1",
            webhook_concurrency=1,
            webhook_timeout_s=60,
            webhook_slow_after_s=0.05,
            webhook_slow_concurrency=3,
        )
        hanging = tuple(hook(f"h{n:02d}", f"{base}/hang/{n}") for n in range(10))
        try:
            async with harness(settings, WebhookProvider(settings)) as h:
                delivery = asyncio.create_task(h.deliverer.process(batch_of(hanging)))
                try:
                    async with asyncio.timeout(20):
                        while receivers.hang_arrived < 4:
                            await asyncio.sleep(0.01)
                    await asyncio.sleep(0.5)  # ten times the slow threshold: nothing else goes out
                    assert receivers.hang_arrived == 1 + 3, "the one shared slot and three places aside"
                    receivers.release.set()
                    await delivery
                finally:
                    delivery.cancel()
                    await asyncio.gather(delivery, return_exceptions=True)
                snap = await h.snapshot()
        finally:
            receivers.release.set()

    assert receivers.hang_arrived == len(hanging)
    assert snap.get("delivery:webhook:sent") == len(hanging)
