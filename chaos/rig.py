"""What every scenario uses on top of :class:`bench.deployment.Deployment`: the sandbox with its control
endpoint, an event loop in a thread for the async helpers and proxies, dead letters, and the row."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Coroutine, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from bench.deployment import RUNNING, Audience, Deployment, LedgerReport, locate
from chaos.report import Row
from goalhorn.models import Intent
from tests.processes import Process

T = TypeVar("T")

BASE_ENV = {
    "GOALHORN_WORKER_THREADS": "2",  # two cores shared by everything
    "GOALHORN_BATCH_SIZE": "100",
}


class Loop:
    """An asyncio loop in a thread of its own, for coroutines called from the scenarios' sync code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class ChaosDeployment(Deployment):
    """The bench deployment with the sandbox's control endpoint (``--control-port``), its async helpers
    run on :class:`Loop`, and what the scenarios read besides the ledger."""

    def __init__(self, work_dir: Path, loop: Loop, **kwargs: Any) -> None:
        super().__init__(work_dir, control=True, **kwargs)
        self.loop = loop

    def close(self) -> None:
        self.loop.run(self.close_bus(), 30)
        super().close()

    def start(
        self, stage: str, *, name: str | None = None, env: Mapping[str, str] | None = None, wait: bool = True
    ) -> Process:
        """As the bench's, once more on another port if its metrics port was taken (see :meth:`start_stages`)."""
        try:
            return super().start(stage, name=name, env=env, wait=wait)
        except AssertionError as exc:
            if "address already in use" not in str(exc):
                raise
            del self.processes[name or stage]
            return super().start(stage, name=name, env=env, wait=wait)

    def start_stages(self, *, fanout: int = 1, deliver: int = 1, env: Mapping[str, str] | None = None) -> list[str]:
        """As the bench's, but a process whose metrics port was taken between the harness picking it and
        the process binding it (other processes on the machine bind free ports too) is started once
        more on another: a clash at start is no part of what a scenario measures."""
        names = [f"deliver-{n}" for n in range(1, deliver + 1)]
        names += ["fanout" if n == 1 else f"fanout-{n}" for n in range(1, fanout + 1)]
        for name in names:
            self.start(name.partition("-")[0], name=name, env=env, wait=False)
        for name in names:
            try:
                self.processes[name].wait_for(RUNNING)
            except AssertionError as exc:
                if "address already in use" not in str(exc):
                    raise
                del self.processes[name]
                self.start(name.partition("-")[0], name=name, env=env)
        return names

    # --- the sandbox's control ------------------------------------------------------------------
    def control(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        assert self.control_url is not None, "the sandbox serves no control endpoint"
        request = urllib.request.Request(self.control_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None

    def fault(self, provider: str, **window: object) -> None:
        self.control("POST", f"/faults/{provider}", window)

    def counts(self) -> dict[str, Any]:
        return self.control("GET", "/counts")  # type: ignore[no-any-return]

    # --- data -----------------------------------------------------------------------------------
    def audience(self, team: str, size: int, **kwargs: Any) -> Audience:
        return self.loop.run(self.load_audience(team, size, **kwargs), 600)

    def publish(self, intent: Intent, audience: Audience | None = None, *, retry_s: float = 0.0) -> datetime:
        """Publish ``intent`` (expected by every device of ``audience``); with ``retry_s``, retry a
        publish that fails (the broker away) for that long, as a publisher must."""
        if audience is not None:
            self.ledger.expect(intent, audience)
        deadline = time.monotonic() + retry_s
        while True:
            try:
                return self.loop.run(self.publish_intent(intent), 120)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def subscribers_file(self, audience: Audience, name: str) -> Path:
        path = self.work_dir / f"{name}.jsonl"
        with path.open("wb") as out:
            for line in audience.lines(self.webhook_secret):
                out.write(line)
        return path

    def command(self, *args: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
        """``goalhorn ARGS`` with the deployment's environment."""
        from tests.processes import run_command

        return run_command(list(args), self.env, timeout_s)

    def dead_lettered(self) -> int:
        """Devices in the namespace's dead-letter entries."""
        client = _redis(self.env["GOALHORN_REDIS_URL"])
        try:
            entries = client.xrange(self.keys.dead_letters())
        except Exception:
            return 0
        finally:
            client.close()
        total = 0
        for _, fields in entries:
            raw = fields.get(b"devices", b"1")
            total += int(raw) if raw.isdigit() else 1
        return total

    def tally(self, audience: Audience) -> tuple[int, int, int, int]:
        """``(once, lost, duplicated, pushes)`` devices of ``audience`` by the record, for an audience
        that gets one push per device (from an intent the ledger cannot expect, e.g. one ingest
        made); ``pushes`` is every record of it (which the ledger counts as strays)."""
        copies = bytearray(audience.size)
        for record in records(self.record):
            where = locate(record.get("token") or record.get("url") or "")
            if where is not None and where[0] == audience.tag and 0 <= where[1] < audience.size:
                copies[where[1]] = min(255, copies[where[1]] + 1)
        zero, one = copies.count(0), copies.count(1)
        return one, zero, audience.size - zero - one, sum(copies)

    def settle(self, row: Row, report: LedgerReport, fault_end: float | None) -> Row:
        """Fill ``row`` from the ledger: ``fault_end`` is the wall-clock time (``time.time()``) the fault
        ended, recovery the time from then to the last expected push (None: no outage to recover from)."""
        dead = self.dead_lettered()
        row.published = report.expected
        row.once = report.once
        row.duplicated = report.duplicated
        row.dead_lettered = dead
        row.lost = max(0, report.lost - dead)
        row.strays = report.strays
        last = report.last_at()
        row.timed = fault_end is not None
        if row.lost == 0 and last is not None and fault_end is not None:
            row.recovery_s = max(0.0, last.timestamp() - fault_end)
        if self.ledger.stray_samples:
            row.stray_sample = self.ledger.stray_samples[0]
        return row


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=10)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def records(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
