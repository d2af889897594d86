"""RabbitMQ away: stopped for 21 s (a goal published meanwhile), SIGKILLed, and black-holed for 45 s."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.deployment import Audience
from chaos.blackhole import BlackHoleProxy
from chaos.report import Row
from chaos.rig import ChaosDeployment
from chaos.scenarios import IDLE_S, Context, goal, wait_pushes
from tests.processes import ScoreboardServer, with_home_score

BOARD = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "espn" / "nhl_scoreboard_full.json"
GAME = "401461455"  # EDM (team 6) at home to WPG, live, 1-0 on the recorded board
HOME_TEAM = "6"


def _outage(ctx: Context, name: str, *, kill: bool, away_s: float) -> Row:
    """Goals on the intent queue are being fanned out when the broker goes; meanwhile a goal is scored
    on the feed ``goalhorn run ingest`` polls (a local ESPN): its followers must get it once too."""
    row = Row(name)
    rabbit = ctx.services.rabbit
    espn = ScoreboardServer(BOARD.read_bytes())
    board = json.loads(BOARD.read_bytes())
    ingest_env = {
        "GOALHORN_ESPN_BASE_URL": espn.url,
        "GOALHORN_ESPN_LEAGUES": "hockey/nhl",
        "GOALHORN_POLL_FAST_S": "0.3",
        "GOALHORN_POLL_SLOW_S": "0.3",
        "GOALHORN_POLL_BACKOFF_BASE_S": "0.1",
    }
    try:
        with ctx.deployment(name) as d:
            d.start_stages(fanout=1, deliver=2)
            d.start("ingest", env=ingest_env)
            audience = d.audience("t1", ctx.size(2000, 1000))
            fans = d.audience(HOME_TEAM, ctx.size(500, 200))  # the feed's home side
            espn.wait_requests(2)  # the poller has seen the board as it was
            for n in range(ctx.size(4, 3)):
                d.publish(goal(d, "t1", n + 1), audience)
            wait_pushes(d, audience.size // 3)
            at = d.ledger.pushes
            down_at = time.monotonic()
            rabbit.kill() if kill else rabbit.stop()
            espn.body = with_home_score(board, GAME, 1)  # scored while the broker is away
            # Started ``away_s`` after it went; it takes connections again once booted (a few seconds more).
            time.sleep(max(0.0, away_s - (time.monotonic() - down_at)))
            rabbit.start()
            back_at = time.time()
            how = "SIGKILLed" if kill else "stopped"
            away = time.monotonic() - down_at
            row.notes.append(
                f"broker {how} after {at:,} pushes, taking connections again {away:.0f} s later; a goal was "
                f"scored on the polled feed while it was away ({fans.size:,} followers)"
            )
            d.ledger.wait(timeout_s=240, settle_s=5, idle_s=IDLE_S)
            _wait_tally(d, fans)
            _check_processes_alive(d, row)
            d.ledger.scan()
            d.settle(row, d.ledger.report(), back_at)
            once, lost, duplicated, pushes = d.tally(fans)
            row.strays = max(0, row.strays - pushes)  # the ledger could not expect the feed's goal
            row.published += fans.size
            row.once += once
            row.lost += lost
            row.duplicated += duplicated
            if lost:
                row.recovery_s = None
            row.check(
                "followers that got the goal scored during the outage",
                f"{once:,} of {fans.size:,}",
                "all",
                once == fans.size,
            )
            return row
    finally:
        espn.close()


def _wait_tally(d: ChaosDeployment, fans: Audience, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while d.tally(fans)[1] and time.monotonic() < deadline:  # devices still without the goal
        time.sleep(1.0)


def _check_processes_alive(d: ChaosDeployment, row: Row) -> None:
    exited = [n for n, p in d.processes.items() if p.proc is not None and p.proc.poll() is not None]
    row.check("processes that exited", ", ".join(exited) or "none", "none", not exited)


def stopped(ctx: Context) -> Row:
    return _outage(ctx, "rabbitmq-stopped-21s", kill=False, away_s=21)


def killed(ctx: Context) -> Row:
    return _outage(ctx, "rabbitmq-sigkill", kill=True, away_s=0)


def black_hole(ctx: Context) -> Row:
    row = Row("amqp-black-hole-45s")
    proxy = BlackHoleProxy("127.0.0.1", ctx.services.rabbit.port)
    ctx.loop.run(proxy.start())
    try:
        with ctx.deployment("amqp-black-hole") as d:
            d.start_stages(fanout=1, deliver=2, env={"GOALHORN_AMQP_URL": proxy.url()})
            audience = d.audience("t1", ctx.size(2000, 1000))
            for n in range(ctx.size(4, 3)):
                d.publish(goal(d, "t1", n + 1), audience)
            wait_pushes(d, audience.size // 3)
            at = d.ledger.pushes
            ctx.loop.loop.call_soon_threadsafe(proxy.swallow)
            time.sleep(45)
            ctx.loop.loop.call_soon_threadsafe(proxy.restore)
            back_at = time.time()
            row.notes.append(f"every byte between the stages and RabbitMQ dropped for 45 s after {at:,} pushes")
            report = d.ledger.wait(timeout_s=240, settle_s=5, idle_s=IDLE_S)
            _check_processes_alive(d, row)
            return d.settle(row, report, back_at)
    finally:
        ctx.loop.run(proxy.aclose())
