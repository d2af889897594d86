"""A flood of low-priority intents while goals trickle in: the goals' latency must hold."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime

from chaos.report import Row
from chaos.rig import percentile, records
from chaos.scenarios import IDLE_S, Context, drained, goal

GOAL_P99_TARGET_S = 5.0
FLOOD = 8_000
"""Intents of the flood in a full run. The issue's 50,000 (``CHAOS_FLOOD=50000``) take about 9 minutes
to publish and drain on two shared cores (15,000 took 165 s), more than the suite's 15-minute bound
leaves for one scenario."""


def flood(ctx: Context) -> Row:
    row = Row("low-priority-flood")
    flood_size = int(os.environ.get("CHAOS_FLOOD", "0")) or ctx.size(FLOOD, 3_000)
    with ctx.deployment("flood") as d:
        d.start_stages(fanout=1, deliver=2)
        crowd = d.audience("lo", 1, mix=(("fcm", 100),))
        fans = d.audience("hi", ctx.size(300, 100))
        lows = [goal(d, "lo", n, priority=1) for n in range(flood_size)]

        def publish_flood() -> None:
            for intent in lows:
                d.publish(intent, crowd)

        started = time.time()
        flooding = threading.Thread(target=publish_flood, daemon=True)
        flooding.start()
        goals: dict[str, float] = {}
        while flooding.is_alive() or len(goals) < 3:
            time.sleep(2.0)
            intent = goal(d, "hi", len(goals) + 1, priority=9)
            goals[intent.intent_id] = d.publish(intent, fans).timestamp()
        flooding.join()
        took = time.time() - started
        row.notes.append(f"{flood_size:,} priority-1 intents published in {took:.0f} s, {len(goals)} goals meanwhile")
        report = d.ledger.wait(timeout_s=ctx.size(600, 240), settle_s=5, idle_s=IDLE_S)
        waits = [
            datetime.fromisoformat(r["at"]).timestamp() - goals[r["intent_id"]]
            for r in records(d.record)
            if r.get("intent_id") in goals
        ]
        p99 = percentile(waits, 99)
        row.check(
            "goal pushes' p99 from publish to provider",
            f"{p99:.2f} s",
            f"< {GOAL_P99_TARGET_S:.0f} s",
            p99 < GOAL_P99_TARGET_S,
        )
        d.settle(row, report, None)
        drained(row, report, started)
        return row
