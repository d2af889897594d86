"""A batch with some invalid devices delivers the others and dead-letters each bad one with why; an
unreadable batch is dead-lettered whole: on ``salvage`` itself and through the delivery stage, on both
backends."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from pydantic import ValidationError

from goalhorn.counters import CounterSnapshot
from goalhorn.dispatch.stage import salvage
from goalhorn.keys import Platform
from goalhorn.models import DeadLetter, DeadLetterCode, DeadLetterKind, DeliveryBatch, Device, EncodedBatch
from goalhorn.providers.console import ConsoleProvider
from goalhorn.settings import Settings
from tests.conftest import delete_namespace, make_settings
from tests.stages import deliver_all, delivery_stage
from tests.support.builders import make_intent
from tests.test_delivery import pushes


def hook(n: int) -> dict[str, Any]:
    return {
        "platform": "webhook",
        "device_id": f"h{n}",
        "user_id": f"u{n}",
        "address": f"https://hooks.example/{n}",
        "secret": "whsec_x",
    }


def phone(n: int) -> dict[str, Any]:
    return {"platform": "fcm", "device_id": f"f{n}", "user_id": f"u{n}", "address": f"tok-{n}"}


BAD_WEBHOOKS: list[tuple[dict[str, Any] | int, str]] = [
    ({k: v for k, v in hook(90).items() if k != "secret"}, "signing secret"),
    ({**hook(91), "secret": ""}, "signing secret"),
    ({k: v for k, v in hook(92).items() if k != "address"}, "address: Field required"),
    ({**hook(93), "address": ""}, "address: String should have at least 1 character"),
    (phone(94), "a fcm device in a webhook batch"),
    ({**hook(95), "platform": "sms"}, "platform: Input should be"),
    ({k: v for k, v in hook(96).items() if k != "device_id"}, "device_id: Field required"),
    (7, "should be an object"),
]


# Made when the module is collected, possibly many minutes before a test delivers it: it must not
# expire meanwhile (it did, 5 minutes into a long full run, and its devices were counted expired).
INTENT = make_intent(ttl_s=24 * 3600)


def payload(platform: str, devices: Any, **extra: Any) -> str:
    intent = json.loads(INTENT.to_json())
    return json.dumps({"batch_id": "b-9", "platform": platform, "intent": intent, "devices": devices, **extra})


@pytest.mark.parametrize(("bad", "why"), BAD_WEBHOOKS, ids=lambda v: v if isinstance(v, str) else None)
def test_salvage_keeps_the_valid_devices_and_names_what_is_wrong_with_the_bad_one(
    bad: dict[str, Any] | int, why: str
) -> None:
    devices = [hook(0), hook(1), bad, hook(2)]
    with pytest.raises(ValidationError):
        DeliveryBatch.from_json(payload("webhook", devices))
    batch, rejected = salvage(payload("webhook", devices, attempt=3), "webhook")
    assert batch is not None
    assert batch.devices == tuple(Device.model_validate(hook(n)) for n in range(3))
    assert (batch.batch_id, batch.platform, batch.attempt, batch.intent) == ("b-9", "webhook", 3, INTENT)
    assert len(rejected) == 1
    raw, reason = rejected[0]
    assert json.loads(raw) == bad, "the bad device's own JSON is kept"
    assert why in reason


def test_salvage_sorts_several_bad_devices_out_in_order() -> None:
    bads = [bad for bad, _ in BAD_WEBHOOKS]
    devices = [hook(0), *bads[:4], hook(1), *bads[4:]]
    batch, rejected = salvage(payload("webhook", devices), "webhook")
    assert batch is not None
    assert [d.device_id for d in batch.devices] == ["h0", "h1"]
    assert [json.loads(raw) for raw, _ in rejected] == bads
    assert all(why in reason for (_, reason), (_, why) in zip(rejected, BAD_WEBHOOKS, strict=True))


def test_salvage_uses_the_queue_platform_not_the_batch_claim() -> None:
    """An fcm device on the webhook queue is the bad one, whatever the payload's platform field says."""
    batch, rejected = salvage(payload("fcm", [hook(0), phone(1)]), "webhook")
    assert batch is not None
    assert [d.device_id for d in batch.devices] == ["h0"]
    assert [reason for _, reason in rejected] == ["a fcm device in a webhook batch"]


@pytest.mark.parametrize(
    "garbage",
    [
        "not json",
        "",
        "[]",
        '{"not": "a batch"}',
        payload("webhook", [hook(0)])[:-5],  # truncated
        payload("webhook", [hook(0)]).replace('"intent"', '"intnet"'),
        json.dumps({**json.loads(payload("webhook", [hook(0)])), "intent": {"intent_id": "x"}}),
        payload("webhook", [hook(0)], attempt=0),
        payload("webhook", [hook(0)], attempt="first"),
        payload("webhook", []),
        payload("webhook", [bad for bad, _ in BAD_WEBHOOKS]),  # not one valid device
        payload("webhook", {"devices": [hook(0)]}),
        payload("fcm", [hook(n) for n in range(501)]),  # over the batch limit
    ],
)
def test_an_unreadable_batch_is_not_salvaged(garbage: str) -> None:
    assert salvage(garbage, "webhook") == (None, [])


async def deliver_encoded(
    settings: Settings, batches: list[EncodedBatch], platform: Platform
) -> tuple[CounterSnapshot, list[Any], io.StringIO]:
    """Run raw batches through a real delivery stage and worker until every one is done."""
    out = io.StringIO()
    async with delivery_stage(settings, ConsoleProvider(platform, out)) as (stage, redis):
        try:
            snap = await deliver_all(stage, redis, batches)
            return snap, list(await redis.xrange(stage.keys.dead_letters()) or []), out
        finally:
            await delete_namespace(redis, settings.namespace)


async def test_the_stage_delivers_the_valid_devices_and_dead_letters_each_bad_one(backend: str) -> None:
    settings = make_settings(backend)
    bads = [(bad, why) for bad, why in BAD_WEBHOOKS]
    devices = [hook(0), bads[0][0], hook(1), *[bad for bad, _ in bads[1:]], hook(2)]
    salvageable = payload("webhook", devices).encode()
    unreadable = b'{"batch_id": "b-x", "devices": "nope"}'
    snap, dead, out = await deliver_encoded(
        settings,
        [
            EncodedBatch("b-9", "webhook", 9, len(devices), salvageable),
            EncodedBatch("b-x", "webhook", 9, 1, unreadable),
        ],
        "webhook",
    )

    assert pushes(out) == {("i-1", f"h{n}"): 1 for n in range(3)}, "every valid device got it once"
    assert snap.get("delivery:webhook:sent") == 3
    assert snap.get("quarantined_devices") == len(bads)
    assert snap.get("quarantined_batches") == 1
    assert snap.get("batches_done") == 2
    entries = [DeadLetter.from_fields(sid.decode(), {k.decode(): v.decode() for k, v in f.items()}) for sid, f in dead]
    whole = [e for e in entries if e.code is DeadLetterCode.INVALID_BATCH]
    assert [(e.kind, e.payload) for e in whole] == [(DeadLetterKind.MESSAGE, unreadable.decode())], (
        "the unreadable batch is kept whole"
    )
    singles = [e for e in entries if e.code is DeadLetterCode.INVALID_DEVICE]
    assert len(singles) + len(whole) == len(entries)
    assert [json.loads(e.payload) for e in singles] == [bad for bad, _ in bads], (
        "each bad device dead-lettered on its own"
    )
    for entry, (_, why) in zip(singles, bads, strict=True):
        assert (entry.kind, entry.batch_id, entry.intent_id, entry.devices) == (DeadLetterKind.DEVICE, "b-9", "i-1", 1)
        assert entry.detail.startswith("invalid device in batch b-9: ")
        assert why in entry.detail
