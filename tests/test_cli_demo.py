"""``goalhorn demo``: what a new user runs first must work and say what happened."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
from typer.testing import CliRunner

from goalhorn.demo.night import demo_namespace
from goalhorn.ops.cli import app
from goalhorn.redis_client import make_redis
from goalhorn.settings import Settings
from tests.conftest import delete_namespace, make_settings
from tests.queues import delete_delivery_queues


def figure(output: str, label: str) -> int:
    match = re.search(rf"^{label}\s+([\d,]+)", output, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{output}"
    return int(match[1].replace(",", ""))


@pytest.mark.parametrize(
    ("real", "sandbox"), [(False, False), (True, False), (False, True)], ids=["embedded", "real", "sandbox"]
)
async def test_demo_replays_the_night_and_prints_the_summary(
    real: bool, sandbox: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = f"t{uuid.uuid4().hex[:12]}"
    if real:
        make_settings("real")  # fails under CI, skips locally, when the services are down
    monkeypatch.setenv("GOALHORN_NAMESPACE", namespace)
    args = ["demo", "--users", "400", "--duration", "0.5"] + (["--real"] if real else [])
    args += ["--sandbox"] if sandbox else []
    try:
        result = await asyncio.to_thread(CliRunner().invoke, app, args)
    finally:
        if real:  # the demo ran in its own namespace beside the configured one
            settings = Settings(namespace=demo_namespace(namespace)).with_real_services()
            redis = make_redis(settings)
            await delete_namespace(redis, settings.namespace)
            await redis.aclose()
            await delete_delivery_queues(settings)

    assert result.exit_code == 0, result.output
    out = result.output
    # The night has 16 goals, 10 period ends (3 of them halftimes), 5 final whistles, 5 game starts and
    # a red card; the default rules make one intent of each, none of its 53 baskets as such, and one
    # more for each of the 3 upsets (a side under 20 % brought to 50 % or more), the overtime winner
    # (close game late) and the goal taken back by its score correction.
    assert figure(out, "intents") == 42
    assert figure(out, "dead letters") == 0
    assert re.search(r"p50 [\d,.]+ ms, p99 [\d,.]+ ms", out)
    if sandbox:
        sent = sum(figure_row(out, p) for p in ("fcm", "apns"))
        assert figure(out, "phone pushes") == sent, "the sandbox servers accepted every phone push sent"
    else:
        assert re.search(r"^phone pushes\s+console \(dry run\)", out, re.MULTILINE)
    for provider in ("fcm", "apns", "webhook"):
        assert re.search(rf"^│ {provider}\s+│\s+[1-9][\d,]*", out, re.MULTILINE), f"no {provider} sends in:\n{out}"


def figure_row(output: str, provider: str) -> int:
    """The ``sent`` column of a provider's row in the deliveries table."""
    match = re.search(rf"^│ {provider}\s+│\s+([\d,]+)", output, re.MULTILINE)
    assert match, f"no {provider} row in:\n{output}"
    return int(match[1].replace(",", ""))


def test_help_lists_the_demo() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "demo" in result.output
