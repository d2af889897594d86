from __future__ import annotations

from goalhorn.errors import PayloadRejected
from goalhorn.ingest.quarantine import Quarantine, QuarantinedPayload, QuarantineStore, rejected_count
from goalhorn.keys import Keys


def test_the_quarantine_is_bounded_counts_everything_and_keeps_the_newest() -> None:
    before = rejected_count("qtest", "bad")
    seen: list[QuarantinedPayload] = []
    quarantine = Quarantine(capacity=3, max_bytes=4, on_record=seen.append)
    for n in range(5):
        quarantine.record(PayloadRejected("qtest", "bad", f"#{n}"), f"payload{n}".encode())
    assert rejected_count("qtest", "bad") == before + 5
    assert quarantine.total == 5
    assert [item.detail for item in quarantine.items()] == ["#2", "#3", "#4"]
    assert quarantine.items()[0].payload == b"payl"
    assert quarantine.items()[0].truncated
    assert len(seen) == 5


async def test_the_redis_mirror_keeps_the_newest_first_bytes_intact(redis, settings) -> None:
    quarantine = Quarantine()
    store = QuarantineStore(redis, Keys(settings.namespace), capacity=2)
    for n in range(3):
        quarantine.record(PayloadRejected("qtest", "bad", f"#{n}"), b"\xff\x00" + bytes([n]))
    await store.push(quarantine.items())
    recent = await store.recent(10)
    assert [(r["detail"], r["payload"]) for r in recent] == [("#2", b"\xff\x00\x02"), ("#1", b"\xff\x00\x01")]


def test_feeds_quarantine_prints_what_ingest_rejected(monkeypatch) -> None:
    import asyncio
    import json
    import uuid

    from typer.testing import CliRunner

    from goalhorn.ops.cli import app
    from goalhorn.redis_client import make_redis
    from goalhorn.settings import Settings

    namespace = f"t{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("GOALHORN_NAMESPACE", namespace)
    monkeypatch.delenv("GOALHORN_REDIS_URL", raising=False)

    async def fill() -> None:
        redis = make_redis(Settings(namespace=namespace))
        quarantine = Quarantine()
        quarantine.record(PayloadRejected("espn", "not_json", "JSONDecodeError"), b"<html>502</html>")
        await QuarantineStore(redis, Keys(namespace)).push(quarantine.items())
        await redis.aclose()

    asyncio.run(fill())
    result = CliRunner().invoke(app, ["feeds", "quarantine", "--limit", "5"])
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    item = json.loads(line)
    assert (item["source"], item["reason"], item["payload"]) == ("espn", "not_json", "<html>502</html>")
