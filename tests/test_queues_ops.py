"""``goalhorn queues``: a drain loses and duplicates nothing, even with publishers running or a
SIGKILL in the middle; a load keeps priority, headers and ids and loads nothing twice."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from typer.testing import CliRunner

from goalhorn.admin.drain import drain, load, record_of
from goalhorn.admin.where import Where
from goalhorn.catalog import default_catalog
from goalhorn.dispatch.stage import DeliveryStage, make_broker
from goalhorn.errors import AdminError
from goalhorn.keys import Keys
from goalhorn.ops.cli import app
from goalhorn.providers.console import ConsoleProvider
from goalhorn.settings import Settings
from tests.conftest import delete_amqp_namespace, make_settings, pipeline_queues
from tests.processes import Process, real_env, run_command
from tests.test_dispatch import batch_of, devices

pytestmark = pytest.mark.real
ARGS: dict[str, Any] = {"x-max-priority": 10, "x-queue-type": "classic"}


@pytest.fixture
async def settings() -> AsyncIterator[Settings]:
    settings = make_settings("real")
    try:
        yield settings
    finally:
        await delete_amqp_namespace(settings, pipeline_queues(settings.namespace))


async def declare(settings: Settings) -> str:
    """The namespace's intent queue, declared as the bus declares it."""
    name = Keys(settings.namespace).intent_queue
    assert settings.amqp_url
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True, arguments=ARGS)
    return name


async def publish(settings: Settings, queue: str, ids: list[str], pause_s: float = 0.0) -> None:
    assert settings.amqp_url
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for start in range(0, len(ids), 50):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(
                            json.dumps({"n": int(i.split("-")[1])}).encode(),
                            message_id=i,
                            priority=int(i.split("-")[1]) % 10,
                            headers={"x-goalhorn-test": i},
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=queue,
                        mandatory=True,
                    )
                    for i in ids[start : start + 50]
                )
            )
            if pause_s:
                await asyncio.sleep(pause_s)


async def take_all(settings: Settings, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message left in ``queue`` (acked: the queue ends empty)."""
    assert settings.amqp_url
    taken = []
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        while (message := await declared.get(fail=False, no_ack=True)) is not None:
            taken.append(message)
    return taken


def file_ids(path: Path) -> list[str]:
    """The ids of a drain file's records (not its runs' closing lines)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line["id"] for line in lines if "id" in line]


async def test_a_drain_while_publishers_publish_loses_and_duplicates_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    queue = await declare(settings)
    first = [f"m-{n}" for n in range(2000)]
    later = [f"m-{n}" for n in range(2000, 4000)]
    await publish(settings, queue, first)
    out = tmp_path / "drained.jsonl"
    publisher = asyncio.create_task(publish(settings, queue, later, pause_s=0.002))
    report = await drain(settings, "intents.expand", out)
    await publisher
    left = [m.message_id or "" for m in await take_all(settings, queue)]

    drained = file_ids(out)
    assert report.stopped == "snapshot", "it stops once it has seen what the queue held when it started"
    assert report.written == len(drained) >= len(first)
    assert left, "publishers went on publishing: some are still in the queue"
    assert len(set(drained)) == len(drained), "nothing written twice"
    assert sorted(drained + left) == sorted(first + later), "every message in the file or in the queue, once"
    record = json.loads(out.read_text().splitlines()[0])
    n = int(record["id"].split("-")[1])
    assert record["priority"] == n % 10
    assert record["headers"] == {"x-goalhorn-test": record["id"]}
    assert json.loads(record["body"]) == {"n": n}


async def test_a_drain_with_where_takes_only_what_matches_and_leaves_the_rest(
    settings: Settings, tmp_path: Path
) -> None:
    queue = await declare(settings)
    ids = [f"m-{n}" for n in range(300)]
    await publish(settings, queue, ids)
    out = tmp_path / "high.jsonl"
    report = await drain(settings, queue, out, where=Where.parse("priority>=8 and payload.n<250"))
    left = [m.message_id or "" for m in await take_all(settings, queue)]

    wanted = {i for i in ids if int(i.split("-")[1]) % 10 >= 8 and int(i.split("-")[1]) < 250}
    assert set(file_ids(out)) == wanted
    assert len(file_ids(out)) == len(wanted)
    assert sorted(left) == sorted(set(ids) - wanted), "the others were put back, once each"
    assert report.put_back == len(ids) - len(wanted)


async def test_a_drain_limit_stops_there(settings: Settings, tmp_path: Path) -> None:
    queue = await declare(settings)
    await publish(settings, queue, [f"m-{n}" for n in range(500)])
    report = await drain(settings, queue, tmp_path / "some.jsonl", limit=120)
    assert (report.written, report.stopped) == (120, "limit")
    assert len(file_ids(tmp_path / "some.jsonl")) == 120
    assert len(await take_all(settings, queue)) == 380


async def test_a_drain_cut_between_fsync_and_ack_writes_nothing_twice_on_the_next_run(
    settings: Settings, tmp_path: Path
) -> None:
    """What a SIGKILL after the fsync and before the ack leaves: records in the file (and a torn
    line) whose messages come back redelivered."""
    queue = await declare(settings)
    ids = [f"m-{n}" for n in range(100)]
    await publish(settings, queue, ids)
    out = tmp_path / "cut.jsonl"
    assert settings.amqp_url
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=30)
        declared = await channel.declare_queue(queue, passive=True)
        held = [await declared.get(no_ack=False) for _ in range(30)]
        with out.open("w") as f:
            for message in held:
                f.write(json.dumps(record_of(message, queue, datetime.now(UTC), run="killed")) + "\n")
            f.write('{"id": "m-torn", "bo')  # the kill cut this line short
    # the connection closed without acking: the 30 are redelivered
    report = await drain(settings, queue, out)

    drained = file_ids(out)
    assert report.already_in_file == 30
    assert sorted(drained) == sorted(ids), "each message once, the torn line gone"
    assert await take_all(settings, queue) == []


async def test_a_message_loaded_back_and_redelivered_is_drained_again_not_dropped(
    settings: Settings, tmp_path: Path
) -> None:
    """Only a run that never closed (a killed one) can have written a redelivered message already."""
    queue = await declare(settings)
    await publish(settings, queue, [f"m-{n}" for n in range(20)])
    out = tmp_path / "again.jsonl"
    await drain(settings, queue, out)
    env = real_env(GOALHORN_NAMESPACE=settings.namespace)
    loaded = await asyncio.to_thread(run_command, ["queues", "load", str(out), "--to", "intents.expand"], env)
    assert loaded.returncode == 0, loaded.stderr
    assert settings.amqp_url
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:  # a consumer takes one and dies before acking it: it comes back redelivered
        channel = await connection.channel()
        taken = await (await channel.declare_queue(queue, passive=True)).get(no_ack=False)
    report = await drain(settings, queue, out)

    assert (report.written, report.already_in_file) == (20, 0), "every message written again, none dropped"
    assert await take_all(settings, queue) == []
    assert file_ids(out).count(taken.message_id or "") == 2
    reloaded = await asyncio.to_thread(
        run_command, ["queues", "load", str(out), "--to", "intents.expand", "--json"], env
    )
    assert (json.loads(reloaded.stdout)["loaded"], json.loads(reloaded.stdout)["already_loaded"]) == (20, 20)


async def test_a_drain_killed_midway_then_run_again_has_every_message_once(settings: Settings, tmp_path: Path) -> None:
    queue = await declare(settings)
    ids = [f"m-{n}" for n in range(10_000)]
    await publish(settings, queue, ids)
    out = tmp_path / "killed.jsonl"
    env = real_env(GOALHORN_NAMESPACE=settings.namespace)
    drainer = Process("drain", ["queues", "drain", "intents.expand", "--to", str(out)], env, tmp_path).start()
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.stat().st_size > 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        drainer.kill()
    finally:
        drainer.stop_quietly()
    at_kill = len(out.read_bytes().split(b"\n")) - 1
    assert 0 < at_kill < len(ids), f"killed midway ({at_kill} lines)"

    again = run_command(["queues", "drain", "intents.expand", "--to", str(out), "--json"], env)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    drained = file_ids(out)
    assert len(drained) == len(set(drained)), "nothing twice"
    assert sorted(drained) == sorted(ids), "nothing lost"
    assert report["written"] + at_kill >= len(ids)
    assert await take_all(settings, queue) == []


async def test_ctrl_c_stops_a_drain_after_its_chunk_with_nothing_lost(settings: Settings, tmp_path: Path) -> None:
    queue = await declare(settings)
    ids = [f"m-{n}" for n in range(10_000)]
    await publish(settings, queue, ids)
    out = tmp_path / "interrupted.jsonl"
    env = real_env(GOALHORN_NAMESPACE=settings.namespace)
    drainer = Process("drain", ["queues", "drain", "intents.expand", "--to", str(out), "--json"], env, tmp_path)
    drainer.start()
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.stat().st_size > 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        assert drainer.proc is not None
        drainer.proc.send_signal(signal.SIGINT)
        assert drainer.proc.wait(30) == 0, drainer.log()
        report = json.loads(drainer.wait_for(r"^\{").string)
    finally:
        drainer.stop_quietly()
    left = [m.message_id or "" for m in await take_all(settings, queue)]
    drained = file_ids(out)

    assert report["stopped"] == "interrupted"
    assert 0 < report["written"] < len(ids), "stopped part way"
    assert len(drained) == report["written"]
    assert sorted(drained + left) == sorted(ids), "each message in the file or in the queue, once"


async def test_load_keeps_priority_headers_and_ids_and_loads_nothing_twice(settings: Settings, tmp_path: Path) -> None:
    queue = await declare(settings)
    ids = [f"m-{n}" for n in range(450)]
    await publish(settings, queue, ids)
    out = tmp_path / "moved.jsonl"
    await drain(settings, queue, out)
    assert await take_all(settings, queue) == []
    env = real_env(GOALHORN_NAMESPACE=settings.namespace)

    first = run_command(["queues", "load", str(out), "--to", "intents.expand", "--json"], env)
    second = run_command(["queues", "load", str(out), "--to", "intents.expand", "--json"], env)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert json.loads(first.stdout)["loaded"] == 450
    assert (json.loads(second.stdout)["loaded"], json.loads(second.stdout)["already_loaded"]) == (0, 450)
    back = await take_all(settings, queue)
    assert sorted(m.message_id or "" for m in back) == sorted(ids), "each once"
    for message in back:
        n = int((message.message_id or "").split("-")[1])
        assert message.priority == n % 10
        assert message.headers == {"x-goalhorn-test": message.message_id}
        assert json.loads(message.body) == {"n": n}
    assert [m.priority for m in back[:50]] == [9] * 45 + [8] * 5, "priority order holds in the queue again"


async def test_bad_input_gets_a_clear_error(settings: Settings, tmp_path: Path) -> None:
    await declare(settings)
    env = real_env(GOALHORN_NAMESPACE=settings.namespace)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "body": "{}"}\nnot json\n')
    cases = [
        (["queues", "drain", "nope", "--to", str(tmp_path / "a.jsonl")], "'nope' is not a goalhorn queue"),
        (["queues", "drain", "intents.expand", "--to", str(bad)], "bad.jsonl:2: not a JSON line"),
        (["queues", "drain", "intents.expand", "--to", "x", "--where", "priority~1"], "--where: cannot read"),
        (["queues", "load", str(bad), "--to", "intents.expand"], "bad.jsonl:2: not a JSON line"),
        (["queues", "load", str(tmp_path / "none.jsonl"), "--to", "intents.expand"], "no such file"),
        (["queues", "purge", "intents.expand"], "add --yes"),
        (["queues", "drain", "delivery.fcm", "--to", str(tmp_path / "b.jsonl")], "does not exist"),
    ]
    as_run = run_command(cases[0][0], env)  # as a user runs it
    assert (as_run.returncode, cases[0][1] in as_run.stderr) == (2, True), as_run.stderr
    runner = CliRunner()
    for args, message in cases[1:]:  # the others in-process: the same code, without a process start each
        result = await asyncio.to_thread(runner.invoke, app, args, env=env)
        assert (result.exit_code, message in result.stderr) == (2, True), (args, result.output)
    with pytest.raises(AdminError, match="unknown field"):
        Where.parse("body.x=1")


async def test_stats_and_purge(settings: Settings) -> None:
    queue = await declare(settings)
    await publish(settings, queue, [f"m-{n}" for n in range(30)])
    env = real_env(GOALHORN_NAMESPACE=settings.namespace)
    stats = run_command(["queues", "stats", "--json"], env)
    assert stats.returncode == 0, stats.stderr
    rows = {row["name"]: row for row in json.loads(stats.stdout)}
    assert rows[queue]["ready"] == 30
    assert rows[queue]["exists"] is True
    assert rows[Keys(settings.namespace).delivery_queue("fcm") + ".XQ"]["exists"] is False
    assert len(rows) == 1 + 3 * 2 * 3 + 1, "intents; per provider and lane a queue, its .DQ and .XQ; dead letters"
    assert rows[Keys(settings.namespace).delivery_queue("apns", "critical") + ".DQ"]["lane"] == "critical"
    assert rows[Keys(settings.namespace).dead_letters()]["kind"] == "dead letters"
    assert rows[Keys(settings.namespace).dead_letters()]["ready"] == 0
    purged = run_command(["queues", "purge", "intents.expand", "--yes", "--json"], env)
    assert json.loads(purged.stdout)["purged"] == 30
    assert await take_all(settings, queue) == []


async def test_stats_peek_reads_the_head_messages_age_and_leaves_it_in_place(settings: Settings) -> None:
    queue = await declare(settings)
    assert settings.amqp_url
    created = datetime.now(UTC) - timedelta(seconds=90)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for n in range(3):
            body = json.dumps({"intent_id": f"i-{n}", "created_at": created.isoformat()}).encode()
            await channel.default_exchange.publish(aio_pika.Message(body, message_id=f"i-{n}"), routing_key=queue)
    stage = DeliveryStage(
        settings, make_broker(settings), lambda platform, render: ConsoleProvider(platform), default_catalog().render
    )
    try:
        await stage.enqueue(batch_of(devices(2)).encode())
    finally:
        stage.close()
        stage.broker.close()
    await asyncio.sleep(1.0)
    env = real_env(GOALHORN_NAMESPACE=settings.namespace)
    plain = await asyncio.to_thread(run_command, ["queues", "stats", "--json"], env)
    peeked = await asyncio.to_thread(run_command, ["queues", "stats", "--peek", "--json"], env)

    keys = Keys(settings.namespace)
    before = {row["name"]: row for row in json.loads(plain.stdout)}
    after = {row["name"]: row for row in json.loads(peeked.stdout)}
    assert before[queue]["head_age_s"] is None, "without --peek nothing is taken"
    assert 90 <= after[queue]["head_age_s"] < 120, "an intent's created_at"
    assert 1.0 <= after[keys.delivery_queue("fcm", "critical")]["head_age_s"] < 30, "dramatiq's message_timestamp"
    assert after[queue]["ready"] == 3
    left = await take_all(settings, queue)
    assert [m.message_id for m in left] == ["i-0", "i-1", "i-2"], "the peeked head kept its place"
    assert left[0].redelivered


async def test_a_drained_delivery_message_loads_back_into_its_own_lane_only(settings: Settings, tmp_path: Path) -> None:
    stage = DeliveryStage(
        settings, make_broker(settings), lambda platform, render: ConsoleProvider(platform), default_catalog().render
    )
    try:
        await stage.enqueue(batch_of(devices(2)).encode())  # a goal: the critical lane
    finally:
        stage.close()
        stage.broker.close()
    out = tmp_path / "goal.jsonl"
    assert (await drain(settings, "delivery.fcm.critical", out)).written == 1
    with pytest.raises(AdminError, match=r"delivery\.fcm\.critical: its worker takes it only from that queue"):
        await load(settings, out, "delivery.fcm")
    assert (await load(settings, out, "delivery.fcm.critical")).loaded == 1
    assert len(await take_all(settings, Keys(settings.namespace).delivery_queue("fcm", "critical"))) == 1
