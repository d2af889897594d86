"""Batches cut from stored device lines: routed by their platform prefix, never over size, every line
exactly once, unknown lines counted and skipped; and the stored device lines themselves."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from goalhorn.keys import PLATFORMS
from goalhorn.models import DeliveryBatch, Device
from goalhorn.preferences.model import decode_devices, encode_devices
from goalhorn.segmenter.batches import PREFIX_LENGTH, PREFIXES, BatchCutter
from tests.support.builders import make_intent

UNKNOWN_LINES = [
    b"{}",
    b"garbage",
    b'{"platform":"sms","device_id":"x","user_id":"u","address":"a"}',
    b'{"device_id":"x","platform":"fcm","user_id":"u","address":"a"}',  # platform not first
    b' {"platform":"fcm","device_id":"x","user_id":"u","address":"a"}',
    b'{"platform": "fcm","device_id":"x","user_id":"u","address":"a"}',
    b'{"platform":"fcmx","device_id":"x","user_id":"u","address":"a"}',
]


def device(n: int, platform: str, **extra: object) -> Device:
    return Device(
        device_id=f"d{n}",
        user_id=f"u{n}",
        platform=platform,
        address=f"https://hooks.example/{n}" if platform == "webhook" else f"tok-{n}",
        secret="whsec_x" if platform == "webhook" else None,
        **extra,
    )


texts = st.text(min_size=1, max_size=12) | st.sampled_from(["a\nb", "\n", 'q"uo\\te', "é\u2028\u0000", "}\n{"])
devices_strategy = st.lists(
    st.builds(
        lambda platform, address, secret, locale, added: Device(
            device_id=address[:3] + "-id",
            user_id="u\n1",
            platform=platform,
            address=address,
            secret=secret if platform == "webhook" else (secret if len(secret) % 2 else None),
            locale=locale,
            added_at=added,
        ),
        st.sampled_from(PLATFORMS),
        texts,
        texts,
        st.sampled_from(["en", "es-MX"]),
        st.none() | st.just(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ),
    max_size=5,
)


@hsettings(max_examples=200, deadline=None)
@given(devices=devices_strategy)
def test_stored_devices_round_trip_one_line_each_starting_with_the_platform(devices: list[Device]) -> None:
    raw = encode_devices(devices)
    assert decode_devices(raw) == devices
    lines = raw.split(b"\n") if devices else []
    assert len(lines) == len(devices), "one line per device, whatever newlines its strings hold"
    for line, stored in zip(lines, devices, strict=True):
        assert PREFIXES[line[:PREFIX_LENGTH]] == stored.platform
        assert Device.from_json(line) == stored


@hsettings(max_examples=100, deadline=None)
@given(devices=devices_strategy)
def test_devices_with_newlines_in_their_strings_survive_the_cutter(devices: list[Device]) -> None:
    cutter = BatchCutter(make_intent(), 2)
    batches = [*cutter.add([encode_devices(devices)] if devices else []), *cutter.flush()]
    got = [d for b in batches for d in b.decode().devices]
    assert sorted(got, key=repr) == sorted(devices, key=repr)
    assert cutter.take_invalid() == 0


def test_a_newline_in_an_address_or_secret_stays_inside_its_line() -> None:
    hook = Device(device_id="h", user_id="u", platform="webhook", address="https://x/\nevil", secret="whsec_\n{a}\r\n")
    raw = encode_devices([device(1, "fcm"), hook])
    assert raw.count(b"\n") == 1
    assert decode_devices(raw) == [device(1, "fcm"), hook]
    cutter = BatchCutter(make_intent(), 10)
    (batch,) = [*cutter.add([raw], ["webhook"]), *cutter.flush()]
    assert batch.decode().devices == (hook,)


def test_prefixes_name_every_platform() -> None:
    assert sorted(PREFIXES.values()) == sorted(PLATFORMS)
    for platform in PLATFORMS:
        assert device(0, platform).to_json().startswith(next(p for p, v in PREFIXES.items() if v == platform))


line_specs = st.lists(
    st.one_of(st.sampled_from(PLATFORMS), st.integers(0, len(UNKNOWN_LINES) - 1)),
    max_size=40,
)


@hsettings(max_examples=200, deadline=None)
@given(
    specs=line_specs,
    size=st.integers(1, 5),
    cuts=st.lists(st.integers(1, 6), min_size=1, max_size=10),
    per_record=st.lists(st.integers(1, 4), min_size=1, max_size=10),
    platforms=st.none() | st.frozensets(st.sampled_from(PLATFORMS)),
)
def test_cutter_routes_every_line_once_into_batches_of_one_platform_and_at_most_size(
    specs: list[str | int],
    size: int,
    cuts: list[int],
    per_record: list[int],
    platforms: frozenset[str] | None,
) -> None:
    intent = make_intent()
    lines: list[bytes] = []
    expected: list[Device] = []
    unknown = 0
    for n, spec in enumerate(specs):
        if isinstance(spec, int):
            lines.append(UNKNOWN_LINES[spec])
            unknown += 1
        else:
            d = device(n, spec)
            lines.append(d.to_json())
            if platforms is None or spec in platforms:
                expected.append(d)
    # Lines grouped into multi-line records, records into calls of ``add``.
    records: list[bytes] = []
    i = 0
    while i < len(lines):
        take = per_record[len(records) % len(per_record)]
        records.append(b"\n".join(lines[i : i + take]))
        i += take
    cutter = BatchCutter(intent, size)
    added = []
    invalid = 0
    i = 0
    call = 0
    while i < len(records):
        take = cuts[call % len(cuts)]
        call += 1
        added += list(cutter.add(records[i : i + take], platforms))
        invalid += cutter.take_invalid()
        i += take
    assert all(b.size == size for b in added), "add yields only full batches"
    batches = added + list(cutter.flush())

    assert invalid == unknown
    assert cutter.take_invalid() == 0
    assert cutter.devices == len(expected), "dropped and unknown lines are not devices"
    assert cutter.batches == len(batches)
    assert len({b.batch_id for b in batches}) == len(batches)
    sent: list[Device] = []
    for b in batches:
        decoded = b.decode()
        assert isinstance(decoded, DeliveryBatch)
        assert 1 <= b.size <= size
        assert b.size == len(decoded.devices)
        assert (decoded.batch_id, decoded.platform, b.priority) == (b.batch_id, b.platform, intent.priority)
        assert decoded.intent == intent
        assert {d.platform for d in decoded.devices} == {b.platform}
        assert json.loads(b.payload)["devices"] == [json.loads(d.to_json()) for d in decoded.devices]
        sent += decoded.devices
    assert Counter(d.device_id for d in sent) == Counter(d.device_id for d in expected)
    assert sorted(sent, key=lambda d: d.device_id) == sorted(expected, key=lambda d: d.device_id)


def test_unknown_lines_are_skipped_and_the_rest_of_their_record_goes_out() -> None:
    cutter = BatchCutter(make_intent(), 500)
    record = b"\n".join([device(1, "fcm").to_json(), b"not a device", device(2, "apns").to_json()])
    batches = [*cutter.add([record, b'{"platform":"sms"}']), *cutter.flush()]
    assert cutter.take_invalid() == 2
    assert cutter.take_invalid() == 0, "taken once"
    assert {b.platform: [d.device_id for d in b.decode().devices] for b in batches} == {
        "fcm": ["d1"],
        "apns": ["d2"],
    }
    assert cutter.devices == 2


def test_platform_filter_drops_other_platforms_without_counting_them() -> None:
    cutter = BatchCutter(make_intent(), 2)
    record = encode_devices([device(n, p) for n, p in enumerate(["fcm", "apns", "webhook", "apns", "apns"])])
    batches = list(cutter.add([record], ["apns"]))
    assert [[d.device_id for d in b.decode().devices] for b in batches] == [["d1", "d3"]]
    assert [[d.device_id for d in b.decode().devices] for b in cutter.flush()] == [["d4"]]
    assert cutter.devices == 3
    assert cutter.take_invalid() == 0
    assert list(cutter.flush()) == [], "a flushed cutter holds nothing"


def test_nothing_added_is_no_batch() -> None:
    cutter = BatchCutter(make_intent(), 3)
    assert [*cutter.add([]), *cutter.add([], ["fcm"]), *cutter.flush()] == []
    assert (cutter.devices, cutter.batches, cutter.take_invalid()) == (0, 0, 0)
