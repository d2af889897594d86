"""Redis away: restarted empty mid-expansion, down 45 s with its data kept (AOF), failed over to a
replica (``REPLICAOF NO ONE``)."""

from __future__ import annotations

import time

from chaos.report import Row
from chaos.scenarios import IDLE_S, Context, goal, kill_bound, wait_pushes
from tests.tcpproxy import TCPProxy


def restarted_empty(ctx: Context) -> Row:
    """The subscribers are imported again after the restart (``goalhorn subscribers import``), as an
    operator does when the lost-data alarm fires, then ``goalhorn subscribers restored`` where main
    has it. Markers went with the data: a push already sent may be sent again (stated bound)."""
    row = Row("redis-restarted-empty")
    server = ctx.services.redis_server()
    with ctx.deployment("redis-restarted-empty", redis_url=server.url) as d:
        d.start_stages(fanout=1, deliver=2)
        audience = d.audience("t1", ctx.size(2000, 1000))
        subscribers = d.subscribers_file(audience, "subscribers")
        for n in range(ctx.size(5, 4)):
            d.publish(goal(d, "t1", n + 1), audience)
        wait_pushes(d, audience.size // 4)
        server.kill()
        server.start(fresh=True)
        back_at = time.time()  # recovery includes the operator's import and restore, done at once here
        at = d.ledger.pushes
        imported = d.command("subscribers", "import", str(subscribers))
        row.check("re-import after the restart", f"exit {imported.returncode}", "exit 0", imported.returncode == 0)
        if "restored" in d.command("subscribers", "--help").stdout:
            restored = d.command("subscribers", "restored")
            row.notes.append(f"goalhorn subscribers restored: exit {restored.returncode}")
        else:
            row.notes.append("main has no `goalhorn subscribers restored` yet")
        row.notes.append(f"Redis restarted empty after {at:,} pushes; subscribers imported again")
        report = d.ledger.wait(timeout_s=240, settle_s=5, idle_s=IDLE_S)
        row.duplicates_allowed = at  # every push sent before the restart lost its marker
        return d.settle(row, report, back_at)


def down_with_aof(ctx: Context) -> Row:
    row = Row("redis-down-45s-aof")
    server = ctx.services.redis_server(aof=True)
    with ctx.deployment("redis-down-aof", redis_url=server.url) as d:
        d.start_stages(fanout=1, deliver=2)
        audience = d.audience("t1", ctx.size(2000, 1000))
        for n in range(ctx.size(4, 3)):
            d.publish(goal(d, "t1", n + 1), audience)
        wait_pushes(d, audience.size // 3)
        at = d.ledger.pushes
        server.stop()
        time.sleep(45)
        server.start()
        back_at = time.time()
        row.notes.append(f"Redis stopped (SIGTERM, AOF kept) after {at:,} pushes, started 45 s later")
        report = d.ledger.wait(timeout_s=240, settle_s=5, idle_s=IDLE_S)
        return d.settle(row, report, back_at)


def failover(ctx: Context) -> Row:
    """The stages reach Redis through a proxy (the service address); the primary is SIGKILLed, its
    replica promoted with ``REPLICAOF NO ONE`` and the address moved to it. Writes the primary
    acknowledged but had not yet replicated are lost: a marker among them can let a push go twice."""
    row = Row("redis-failover")
    primary = ctx.services.redis_server()
    replica = ctx.services.redis_server()
    replica.client().replicaof("127.0.0.1", primary.port)
    proxy = TCPProxy("127.0.0.1", primary.port)
    ctx.loop.run(proxy.start())
    try:
        with ctx.deployment("redis-failover", redis_url=f"redis://127.0.0.1:{proxy.port}/0") as d:
            d.start_stages(fanout=1, deliver=2)
            audience = d.audience("t1", ctx.size(2000, 1000))
            for n in range(ctx.size(4, 3)):
                d.publish(goal(d, "t1", n + 1), audience)
            wait_pushes(d, audience.size // 3)
            at = d.ledger.pushes
            primary.kill()
            replica.client().replicaof("NO", "ONE")
            proxy.upstream_port = replica.port
            ctx.loop.run(proxy.drop())
            back_at = time.time()
            row.notes.append(f"primary SIGKILLed after {at:,} pushes, replica promoted at once")
            report = d.ledger.wait(timeout_s=240, settle_s=5, idle_s=IDLE_S)
            row.duplicates_allowed = kill_bound(d, killed_deliver=2)
            return d.settle(row, report, back_at)
    finally:
        ctx.loop.run(proxy.aclose())
