"""bench e2e at a tiny scale (CI does not run the bench): a goal through the deployed processes reaches
each of 200 followers exactly once by the ledger, the figures are filled in, and the ledger does see a
second copy sent to every device."""

from __future__ import annotations

import asyncio

import pytest

from bench.bare_loops import run_bare_loops
from bench.bench_e2e import one_goal, print_run
from bench.deployment import Deployment
from bench.figures import Figure, Results
from tests.conftest import require_real_services

pytestmark = [pytest.mark.real, pytest.mark.timeout(240)]


def test_a_goal_reaches_200_followers_once_and_a_resend_shows_as_duplicates(tmp_path) -> None:
    require_real_services()
    with Deployment(tmp_path) as deployment:
        audience = asyncio.run(deployment.load_audience("smoke", 200))
        assert audience.counts() == {"fcm": 120, "apns": 70, "webhook": 10}
        deployment.start_stages(fanout=1, deliver=1)

        async def goal_then_resend():
            figures = await one_goal(deployment, audience, "200", 1, 1, 120.0)
            intent_id = next(iter(deployment.ledger.report().intents))
            intent = deployment.ledger.intent(intent_id)
            await run_bare_loops(deployment.settings(), audience, intent, deployment.webhook_secret)
            await deployment.close_bus()
            return figures, intent_id

        figures, intent_id = asyncio.run(goal_then_resend())
        print_run(figures)
        assert figures.exactly_once, figures
        assert (figures.delivered, figures.lost, figures.duplicated, figures.strays) == (200, 0, 0, 0)
        assert figures.first_s is not None
        assert figures.last_s is not None
        assert 0 < figures.first_s <= figures.last_s
        assert figures.expired == 0
        assert figures.worker_cpu_s > 0
        assert set(figures.stages) == {"queued", "expanding", "after_expansion"}
        assert deployment.peak_rss_mb("deliver-1") > 0

        again = deployment.ledger.wait(60.0, 0.5, idle_s=5.0)
        tally = again.intents[intent_id]
        assert (tally.once, tally.duplicated, tally.extra) == (0, 200, 200)
        assert tally.per_provider == {"fcm": 240, "apns": 140, "webhook": 20}
        assert not again.exactly_once

    results = Results("e2e")
    results.add(Figure("200: deliveries/s", [figures.rate], "pushes/s", baseline=("bare loops", 1.0), target=">= 0.7x"))
    section = results.markdown("python -m bench e2e", "Run now.")
    assert "| 200: deliveries/s |" in section
    assert ">= 0.7x ok" in section
