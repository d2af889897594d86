"""``goalhorn run``: what a process does before it takes work, while it runs, and when told to stop."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
import redis as sync_redis

from goalhorn.keys import Keys
from goalhorn.settings import LOCAL_REDIS_URL
from tests.processes import Process, clean_env, free_port, processes, real_env, run_command

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("GOALHORN_AMQP_URL", "amqp://guest:wrong@127.0.0.1:5672/", "RabbitMQ refused the credentials"),
        ("GOALHORN_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/", "RabbitMQ is unreachable"),
        ("GOALHORN_AMQP_URL", "http://127.0.0.1:5672/", "must be an amqp:// or amqps:// URL"),
        ("GOALHORN_REDIS_URL", "redis://127.0.0.1:1/0", "Redis is unreachable"),
        ("GOALHORN_REDIS_URL", "redis://nobody:wrong@127.0.0.1:6379/0", "Redis refused the credentials"),
        ("GOALHORN_REDIS_URL", "127.0.0.1:6379", "must be a redis://"),
        ("GOALHORN_BATCH_SIZE", "900", "less than or equal to 500"),
        ("GOALHORN_WORKER_THREADS", "many", "valid integer"),
        ("GOALHORN_API_KEY_SECRET", "wrong-and-short", "at least 32 characters"),
    ],
)
def test_a_process_that_cannot_work_says_which_setting_and_exits_2(variable: str, value: str, says: str) -> None:
    started = time.monotonic()
    result = run_command(["run", "deliver"], real_env(**{variable: value}), timeout_s=60)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {variable}"), lines
    assert says in lines[0]
    assert "wrong" not in lines[0], "a password is never printed"
    assert time.monotonic() - started < 30


def test_every_bad_setting_is_named_on_its_own_line() -> None:
    result = run_command(["run", "fanout"], real_env(GOALHORN_BATCH_SIZE="0", GOALHORN_EXPAND_CHUNK="x"))
    assert result.returncode == 2
    assert sorted(line.split(":")[1].strip() for line in result.stderr.splitlines()) == [
        "GOALHORN_BATCH_SIZE",
        "GOALHORN_EXPAND_CHUNK",
    ]


def test_without_services_a_stage_process_refuses_and_points_at_the_demo() -> None:
    result = run_command(["run", "fanout"], clean_env())
    assert result.returncode == 2
    assert "GOALHORN_AMQP_URL and GOALHORN_REDIS_URL not set" in result.stderr
    assert "goalhorn demo" in result.stderr


def test_a_process_refuses_data_written_with_another_bucket_count() -> None:
    env = real_env(GOALHORN_PREFERENCE_BUCKETS="16")
    keys = Keys(env["GOALHORN_NAMESPACE"])
    client = sync_redis.Redis.from_url(LOCAL_REDIS_URL)
    client.hset(keys.layout(), mapping={"format": "2", "preference_buckets": "16"})
    env["GOALHORN_PREFERENCE_BUCKETS"] = "32"
    result = run_command(["run", "fanout"], env)
    assert result.returncode == 2
    assert "GOALHORN_PREFERENCE_BUCKETS is 32 but namespace" in result.stderr
    assert "written with 16 buckets" in result.stderr
    client.close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_running_process_serves_health_readiness_and_metrics_and_stops_on_sigterm(tmp_path) -> None:
    port = free_port()
    with processes(tmp_path) as running:
        worker = running["deliver"] = Process(
            "deliver", ["worker", "--metrics-port", str(port)], real_env(), tmp_path
        ).start()
        worker.wait_for(rf"running \(namespace t\w+, health and metrics on http://127.0.0.1:{port}\)")
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        status, body = get(f"http://127.0.0.1:{port}/readyz")
        assert (status, json.loads(body)["status"]) == (200, "ready")
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert b"# TYPE goalhorn_pipeline_total counter" in body
        started = time.monotonic()
        assert worker.terminate(60) == 0
        assert time.monotonic() - started < 40
        assert "stopped" in worker.lines[-1]


@pytest.mark.real
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run", "deliver", "--metrics-port", "{port}"], "error: --metrics-port: cannot listen on 127.0.0.1:{port}"),
        (["run", "api", "--port", "{port}"], "error: --host/--port: cannot listen on 127.0.0.1:{port}"),
    ],
)
def test_a_port_in_use_is_one_line_naming_the_option_and_exit_2(args: list[str], says: str) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = str(busy.getsockname()[1])
        env = real_env(GOALHORN_API_KEY_SECRET="s" * 40)
        done = run_command([a.format(port=port) for a in args], env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors[0].startswith(says.format(port=port)), done.stderr
