"""Providers misbehaving: FCM 503 for 30 s, 30 % unregistered tokens, 250 hanging webhook endpoints
among healthy ones, and a 429 storm under a quota. Steered through the sandbox's control endpoint."""

from __future__ import annotations

import json
import math
import time

from bench.deployment import Audience, locate
from chaos.report import Row
from chaos.rig import ChaosDeployment, percentile, records
from chaos.scenarios import IDLE_S, Context, drained, goal, wait_pushes

FCM_ONLY = (("fcm", 100),)
PHONES = (("fcm", 60), ("apns", 40))
WEBHOOKS = (("webhook", 100),)


def fcm_unavailable(ctx: Context) -> Row:
    row = Row("fcm-503-30s")
    window_s = 30.0
    with ctx.deployment("fcm-503") as d:
        d.start_stages(fanout=1, deliver=2)
        settings = d.settings()
        audience = d.audience("t1", ctx.size(1000, 600), mix=FCM_ONLY)
        for n in range(2):
            d.publish(goal(d, "t1", n + 1), audience)
        wait_pushes(d, audience.size // 2)
        before = d.counts()["fcm"]
        d.fault("fcm", mode="status", status=503, seconds=window_s)
        opened = time.monotonic()
        n = 2
        while time.monotonic() - opened < window_s:  # goals keep coming while FCM is down
            n += 1
            d.publish(goal(d, "t1", n), audience)
            time.sleep(5)
        time.sleep(max(0.0, window_s - (time.monotonic() - opened)))
        closed_at = time.time()
        after = d.counts()["fcm"]
        refused = after["answered"].get("503", 0) - before["answered"].get("503", 0)
        probes = math.ceil(window_s / settings.breaker_open_s) * 2  # a probe per open period, per process
        target = settings.breaker_failure_threshold + probes
        row.check(
            "requests reaching the failing FCM",
            refused,
            f"< breaker threshold {settings.breaker_failure_threshold} + probes {probes} = {target}",
            refused < target,
        )
        report = d.ledger.wait(timeout_s=240, settle_s=5, idle_s=IDLE_S)
        _breakers_closed(d, row)
        return d.settle(row, report, closed_at)


def _breakers_closed(d: ChaosDeployment, row: Row) -> None:
    done = d.command("breakers", "--json", timeout_s=60)
    try:
        states = [b["state"] for b in json.loads(done.stdout)]
    except (ValueError, KeyError, TypeError):
        row.check("goalhorn breakers --json", f"exit {done.returncode}: {done.stdout[-200:]}", "readable", False)
        return
    open_ones = [s for s in states if s != "closed"]
    row.check("circuit breakers not closed at the end", len(open_ones), "0", not open_ones)


def unregistered(ctx: Context) -> Row:
    row = Row("unregistered-30pct")
    with ctx.deployment("unregistered") as d:
        d.start_stages(fanout=1, deliver=2)
        healthy = d.audience("t1", ctx.size(1400, 700), mix=PHONES)
        dead = d.audience("t1dead", ctx.size(600, 300), mix=PHONES)  # fans of the other side
        for platform in ("fcm", "apns"):
            tokens = [dead.address(i) for i in range(dead.size) if dead.platform(i) == platform]
            d.control("POST", f"/unregistered/{platform}", {"tokens": tokens})
        started = time.time()
        for n in range(ctx.size(4, 3)):
            d.publish(goal(d, "t1", n + 1), healthy)
            d.publish(goal(d, "t1dead", n + 1))  # expected nowhere: every token of it is unregistered
        report = d.ledger.wait(timeout_s=240, settle_s=5, idle_s=IDLE_S)
        d.settle(row, report, None)
        drained(row, report, started)
        share = dead.size / (dead.size + healthy.size)
        row.notes.append(
            f"{dead.size:,} of {dead.size + healthy.size:,} devices ({share:.0%}) unregistered at providers"
        )
        _pruned(d, dead, row)
        _breakers_closed(d, row)
        return row


def _pruned(d: ChaosDeployment, dead: Audience, row: Row) -> None:
    path = d.work_dir / "export.jsonl"
    done = d.command("subscribers", "export", str(path), timeout_s=120)
    if done.returncode != 0:
        row.check("goalhorn subscribers export", f"exit {done.returncode}", "exit 0", False)
        return
    kept = 0
    for line in path.read_text().splitlines():
        for device in json.loads(line).get("devices", []):
            where = locate(device.get("address", ""))
            if where is not None and where[0] == dead.tag:
                kept += 1
    row.check("unregistered devices still stored", kept, "0 (all pruned)", kept == 0)


def hanging_webhooks(ctx: Context) -> Row:
    row = Row("hanging-webhooks-250")
    with ctx.deployment("hanging-webhooks") as d:
        d.start_stages(fanout=1, deliver=2)
        healthy = d.audience("hw", ctx.size(1500, 500), mix=WEBHOOKS)
        hanging = d.audience("hh", 250, mix=WEBHOOKS)  # bots of another team, on slow servers
        first = goal(d, "hw", 1)
        first_at = d.publish(first, healthy)
        d.publish(goal(d, "hh", 1), hanging)
        wait_pushes(d, healthy.size + hanging.size)
        baseline = _latencies(d, healthy, first.intent_id, first_at.timestamp())
        d.fault("webhook", mode="hang", seconds=40, prefix=f"{hanging.tag:08x}-")
        second = goal(d, "hw", 2)
        second_at = d.publish(second, healthy)
        d.publish(goal(d, "hh", 2), hanging)
        deadline = time.monotonic() + 120
        while len(during := _latencies(d, healthy, second.intent_id, second_at.timestamp())) < healthy.size:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        p99_before, p99_during = percentile(baseline, 99), percentile(during, 99)
        row.check(
            "healthy webhooks' p99 with 250 endpoints hanging",
            f"{p99_before:.2f} s -> {p99_during:.2f} s ({p99_during / p99_before - 1:+.0%})",
            "< +10 %",
            len(during) == healthy.size and p99_during < 1.10 * p99_before,
        )
        report = d.ledger.wait(timeout_s=240, settle_s=5, idle_s=IDLE_S)
        # The slow endpoints' pushes arrive once they answer again, or are dead-lettered after the
        # attempts: both are accounted; the target here is the healthy ones' latency.
        return d.settle(row, report, None)


def _latencies(d: ChaosDeployment, audience: Audience, intent_id: str, since: float) -> list[float]:
    from datetime import datetime

    out = []
    for record in records(d.record):
        where = locate(record.get("url", ""))
        if record.get("intent_id") == intent_id and where is not None and where[0] == audience.tag:
            out.append(datetime.fromisoformat(record["at"]).timestamp() - since)
    return out


def quota_storm(ctx: Context) -> Row:
    row = Row("fcm-429-storm")
    quota = 200
    with ctx.deployment("quota-storm") as d:
        d.start_stages(fanout=1, deliver=2)
        audience = d.audience("t1", ctx.size(1000, 800), mix=FCM_ONLY)
        d.fault("fcm", mode="quota", quota_per_s=quota, seconds=3600, retry_after=1)
        started = time.time()
        for n in range(ctx.size(4, 3)):
            d.publish(goal(d, "t1", n + 1), audience)
        samples: list[tuple[float, int]] = []
        expected = d.ledger.report().expected
        deadline = time.monotonic() + 300
        while d.ledger.pushes < expected and time.monotonic() < deadline:
            samples.append((time.monotonic(), d.counts()["fcm"]["received"]))
            time.sleep(1.0)
        end = d.counts()["fcm"]
        d.control("DELETE", "/faults")
        accepted = end["answered"].get("200", 0)
        attempts = end["received"] / max(1, accepted)
        row.check("FCM requests per unique push", f"{attempts:.2f}", "< 1.2", attempts < 1.2)
        half = samples[len(samples) // 2 :]
        if len(half) >= 2:
            rate = (half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0])
            row.check(
                "FCM request rate, second half of the storm",
                f"{rate:.0f}/s",
                f"<= quota {quota}/s + 10 %",
                rate <= quota * 1.1,
            )
        report = d.ledger.wait(timeout_s=120, settle_s=5, idle_s=IDLE_S)
        d.settle(row, report, None)
        drained(row, report, started)
        return row
