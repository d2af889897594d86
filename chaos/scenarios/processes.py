"""A fanout and a deliver process SIGKILLed mid fan-out, restarted 3 s later."""

from __future__ import annotations

import time

from chaos.report import Row
from chaos.scenarios import IDLE_S, Context, goal, kill_bound, wait_pushes


def worker_sigkill(ctx: Context) -> Row:
    row = Row("worker-sigkill")
    with ctx.deployment("worker-sigkill") as d:
        d.start_stages(fanout=1, deliver=2)
        audience = d.audience("t1", ctx.size(2000, 1000))
        goals = ctx.size(4, 3)
        for n in range(goals):
            d.publish(goal(d, "t1", n + 1), audience)
        wait_pushes(d, audience.size // 3)
        d.kill("fanout")
        d.kill("deliver-1")
        killed_at = time.time()
        row.notes.append(f"killed fanout and deliver-1 after {d.ledger.pushes:,} pushes; restarted 3 s later")
        time.sleep(3)
        d.processes["fanout"].start()
        d.processes["deliver-1"].start()
        report = d.ledger.wait(timeout_s=240, settle_s=5, idle_s=IDLE_S)
        row.duplicates_allowed = kill_bound(d, killed_deliver=1)
        return d.settle(row, report, killed_at)
