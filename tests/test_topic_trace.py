"""An intent's trace (``goalhorn.admin.trace``) says what went through FCM topics: topic messages, the
phones subscribed to them, and the devices sent per token."""

from __future__ import annotations

from goalhorn.admin.trace import parse


def test_a_trace_counts_topic_messages_apart_from_per_token_devices() -> None:
    t = parse(
        "i-1",
        {
            "expand:recipients": "460",
            "expand:topic_messages": "2",
            "expand:topic_members": "540",
            "expand:batches:fcm": "1",
            "expand:devices:fcm": "60",
            "expand:topic_batches:fcm": "2",
            "expand:batches:apns": "1",
            "expand:devices:apns": "400",
            "fcm:sent": "62",
        },
    )
    assert (t.recipients, t.topic_messages, t.topic_members, t.phones) == (460, 2, 540, 1000)
    fcm, apns = t.providers["fcm"], t.providers["apns"]
    assert (fcm.batches_queued, fcm.devices_queued, fcm.topic_messages_queued) == (1, 60, 2)
    assert (apns.devices_queued, apns.topic_messages_queued) == (400, 0)


def test_a_trace_without_topics_says_none() -> None:
    t = parse("i-2", {"expand:recipients": "3", "expand:devices:webhook": "3", "expand:batches:webhook": "1"})
    assert (t.topic_messages, t.topic_members, t.phones) == (0, 0, 3)
    assert t.providers["webhook"].topic_messages_queued == 0
