"""The subscriber JSONL format: what a line becomes, why a bad one is rejected, and that an exported
line reads back as the same subscriber."""

from __future__ import annotations

import base64
import json

import pytest

from goalhorn.admin.subscriber_lines import (
    MAX_LINE_BYTES,
    Follows,
    LineRejected,
    Subscriber,
    device_id_for,
    format_line,
    parse_line,
)
from goalhorn.models import Device
from goalhorn.preferences.model import Cap, Preferences, QuietHours
from goalhorn.providers.ssrf import AddressPolicy

FCM = "fTok" + "Ab9_-:" * 24
APNS = "ab" * 32
SECRET = "whsec_" + base64.b64encode(bytes(range(24))).decode()
HOOK = "https://bots.example.com/hooks/b1"
POLICY = AddressPolicy()


def parse(line: dict | str | bytes, policy: AddressPolicy = POLICY) -> Subscriber:
    raw = line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
    return parse_line(raw, policy)


def reason(line: dict | str | bytes, policy: AddressPolicy = POLICY) -> str:
    with pytest.raises(LineRejected) as caught:
        parse(line, policy)
    return str(caught.value)


def test_a_full_line_becomes_the_stores_types() -> None:
    subscriber = parse(
        {
            "user_id": "u1",
            "locale": "pt-BR",
            "timezone": "America/Sao_Paulo",
            "devices": [
                {"platform": "fcm", "address": FCM},
                {"platform": "apns", "address": APNS, "locale": "en", "id": "u1-iphone"},
                {"platform": "webhook", "address": HOOK, "secret": SECRET},
            ],
            "follows": {"teams": ["16", "29", "16"], "matches": ["g1"], "markets": ["m1"], "sports": ["hockey"]},
            "preferences": {
                "muted_teams": ["29"],
                "muted_matches": ["g2"],
                "opted_in": ["GAME_END"],
                "opted_out": ["GOAL"],
                "quiet_hours": {"start": "22:30", "end": "07:00"},
                "cap": {"max_alerts": 2},
            },
        }
    )
    fcm, apns, hook = subscriber.devices
    assert fcm == Device(platform="fcm", device_id=device_id_for("fcm", FCM), user_id="u1", address=FCM, locale="pt-BR")
    assert (apns.device_id, apns.locale) == ("u1-iphone", "en")
    assert (hook.platform, hook.secret) == ("webhook", SECRET)
    assert subscriber.follows == Follows(
        frozenset({"16", "29"}), frozenset({"g1"}), frozenset({"m1"}), frozenset({"hockey"})
    )
    assert subscriber.preferences == Preferences(
        time_zone="America/Sao_Paulo",
        quiet_hours=QuietHours(22 * 60 + 30, 7 * 60),
        muted_teams=frozenset({"29"}),
        muted_matches=frozenset({"g2"}),
        opted_in=frozenset({"GAME_END"}),
        opted_out=frozenset({"GOAL"}),
        cap=Cap(2, 600),
    )


def test_only_the_user_id_is_required_and_ids_do_not_depend_on_the_user() -> None:
    assert parse({"user_id": "u1"}) == Subscriber("u1")
    first, second = (
        parse({"user_id": "a", "devices": [{"platform": "apns", "address": APNS}]}).devices,
        parse({"user_id": "b", "devices": [{"platform": "apns", "address": APNS}]}).devices,
    )
    assert first[0].device_id == second[0].device_id, "one phone is one device, whoever is signed in on it"
    assert device_id_for("apns", APNS) != device_id_for("apns", "cd" * 32)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"user_id": 7}', "user_id: Input should be a valid string"),
        ('{"user_id": "has space"}', "user_id: not a user id"),
        ('{"user_id": ""}', "user_id: not a user id"),
        ('{"user_id": "u", "nickname": "x"}', "nickname: Extra inputs are not permitted"),
        ('{"user_id": "u", "devices": {"platform": "fcm"}}', "devices: Input should be a valid array"),
        ('{"user_id": "u", "devices": [{"platform": "sms", "address": "x"}]}', "devices[0].platform: 'sms' is not one"),
        ('{"user_id": "u", "devices": [{"platform": "apns", "address": "xyz"}]}', "devices[0].address: not an APNs"),
        ('{"user_id": "u", "devices": [{"platform": "apns", "address": "abc"}]}', "devices[0].address: not an APNs"),
        ('{"user_id": "u", "devices": [{"platform": "fcm", "address": "short"}]}', "devices[0].address: not an FCM"),
        ('{"user_id": "u", "devices": [{"platform": "fcm", "address": "' + "a b" * 60 + '"}]}', "not an FCM token"),
        ('{"user_id": "u", "devices": [{"platform": "webhook", "address": "' + HOOK + '"}]}', "devices[0].secret"),
        ('{"user_id": "u", "timezone": "Mars/Olympus"}', "timezone: unknown time zone"),
        ('{"user_id": "u", "locale": "english please"}', "locale: not a locale"),
        ('{"user_id": "u", "follows": {"teams": ["a b"]}}', "follows.teams[0]: not an id"),
        ('{"user_id": "u", "follows": {"leagues": ["nhl"]}}', "follows.leagues: Extra inputs"),
        ('{"user_id": "u", "follows": {"sports": ["curling"]}}', "follows.sports[0]: 'curling' is not one"),
        ('{"user_id": "u", "preferences": {"opted_out": ["GOALS"]}}', "preferences.opted_out[0]: 'GOALS' is not"),
        ('{"user_id": "u", "preferences": {"opted_in": ["GOAL"], "opted_out": ["GOAL"]}}', "GOAL is also opted out"),
        ('{"user_id": "u", "preferences": {"quiet_hours": {"start": "25:00", "end": "07:00"}}}', "not a time of day"),
        ('{"user_id": "u", "preferences": {"cap": {"max_alerts": "1"}}}', "preferences.cap.max_alerts: Input should"),
        ('{"user_id": "u", "preferences": {"cap": {"max_alerts": -1}}}', "preferences.cap.max_alerts: Input should"),
    ],
)
def test_a_bad_line_is_rejected_with_where_and_why(line: str, expected: str) -> None:
    assert expected in reason(line)


def test_device_problems_name_the_device() -> None:
    line = {"user_id": "u", "devices": [{"platform": "fcm", "address": FCM}, {"platform": "fcm", "address": FCM}]}
    assert reason(line).startswith("devices[1]: the same device as an earlier one")
    line = {"user_id": "u", "devices": [{"platform": "apns", "address": APNS, "secret": SECRET}]}
    assert reason(line) == "devices[0].secret: only a webhook has a secret"
    for secret in ("hunter2", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()):
        line = {"user_id": "u", "devices": [{"platform": "webhook", "address": HOOK, "secret": secret}]}
        assert reason(line).startswith("devices[0].secret: "), secret
    rotating = f"{SECRET} whsec_{base64.b64encode(bytes(32)).decode()}"
    assert parse({"user_id": "u", "devices": [{"platform": "webhook", "address": HOOK, "secret": rotating}]})


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:192.168.0.1]/hook",
        "http://localhost/hook",
        "http://api.localhost/hook",
        "ftp://bots.example.com/hook",
        "/relative/hook",
        "https://",
    ],
)
def test_webhooks_to_internal_or_odd_addresses_are_refused(url: str) -> None:
    line = {"user_id": "u", "devices": [{"platform": "webhook", "address": url, "secret": SECRET}]}
    assert reason(line).startswith("devices[0].address: ")


def test_the_allowlist_opens_internal_webhooks() -> None:
    policy = AddressPolicy.from_allowlist("127.0.0.1,localhost,10.0.0.0/8")
    for url in ("http://127.0.0.1:8472/hooks/b", "http://localhost:8472/hooks/b", "http://10.1.2.3/hook"):
        line = {"user_id": "u", "devices": [{"platform": "webhook", "address": url, "secret": SECRET}]}
        assert parse(line, policy).devices[0].address == url
    line = {"user_id": "u", "devices": [{"platform": "webhook", "address": "http://192.168.1.1/", "secret": SECRET}]}
    assert "private address" in reason(line, policy)


def test_errors_beyond_the_first_three_are_counted() -> None:
    line = {"user_id": 1, "locale": 2, "timezone": 3, "devices": 4, "follows": 5}
    assert reason(line).endswith("; and 2 more")


def test_a_line_over_the_limit_is_rejected_before_parsing() -> None:
    huge = json.dumps({"user_id": "u", "follows": {"teams": ["t" * 100] * 700}}).encode()
    assert len(huge) > MAX_LINE_BYTES
    assert reason(huge) == "line longer than 64 KiB"


def test_non_utf8_is_rejected() -> None:
    assert "not valid JSON" in reason(b'{"user_id": "\xff\xfe"}')


def test_an_exported_line_reads_back_as_the_same_subscriber() -> None:
    policy = AddressPolicy.from_allowlist("127.0.0.1")
    subscribers = [
        Subscriber("bare"),
        parse(
            {
                "user_id": "full",
                "locale": "fr",
                "timezone": "Europe/Paris",
                "devices": [
                    {"platform": "fcm", "address": FCM, "id": "custom-id", "locale": "de"},
                    {"platform": "webhook", "address": "http://127.0.0.1:9/hooks/x", "secret": SECRET},
                ],
                "follows": {"teams": ["t2", "t1"], "markets": ["m"]},
                "preferences": {
                    "muted_matches": ["g"],
                    "opted_in": ["EDGE"],
                    "quiet_hours": {"start": "00:00", "end": "23:59"},
                    "cap": {"max_alerts": 0, "window_s": 60},
                },
            },
            policy,
        ),
    ]
    for subscriber in subscribers:
        line = format_line(subscriber)
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1
        assert parse_line(line.rstrip(b"\n"), policy) == subscriber
    assert b"custom-id" in format_line(subscribers[1])
    assert b'"id"' not in format_line(parse({"user_id": "u", "devices": [{"platform": "apns", "address": APNS}]}))
