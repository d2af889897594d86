"""Provider throughput against the sandbox servers, as ratios to baselines measured in the same run.

- FCM: goalhorn's provider vs firebase-admin's ``send_each_for_multicast`` with the 100-connection
  pool firebase-admin mounts for FCM (target >= 5x);
- APNs: goalhorn's provider vs a bare aioapns loop with 500 in flight (target >= 0.8x);
- webhooks: goalhorn's provider vs a bare aiohttp POST loop with as many in flight (target >= 0.7x),
  and Apprise ``json://`` as context only (its requests are unsigned, so the receiver answers 401);
- resident memory of a ``goalhorn worker`` process while it sends ``--worker-n`` FCM pushes over
  RabbitMQ and Redis (target < 150 MB).

The sandbox servers run in their own process (``goalhorn sandbox``), so client and server do not
share an interpreter. ``python -m bench providers`` runs it; ``main(["--small"])`` is a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bench.figures import Figure, Results
from goalhorn.catalog import default_catalog
from goalhorn.models import DeliveryBatch, Device, EventKind, Intent, Sport, utcnow
from goalhorn.providers.apns import ApnsProvider
from goalhorn.providers.fcm import FcmProvider
from goalhorn.providers.webhook import WebhookProvider, sign, signing_keys, webhook_body, webhook_id
from goalhorn.settings import LOCAL_AMQP_URL, LOCAL_REDIS_URL, Settings

BATCH = 500


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SandboxProcess:
    """``goalhorn sandbox`` in a child process; ``env`` holds the settings it printed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.env: dict[str, str] = {}
        self.secret = ""
        self.webhook_base = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> SandboxProcess:
        ports = [str(_free_port()) for _ in range(3)]
        code = "import sys; from goalhorn.ops.cli import main; sys.argv[0] = 'goalhorn'; main()"
        args = ["sandbox", "--dir", str(self.directory), "--fcm-port", ports[0], "--apns-port", ports[1]]
        args += ["--webhook-port", ports[2]]
        self._proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith("webhook secret "):
                self.secret = line.split()[-1]
            elif line.startswith("webhooks "):
                self.webhook_base = line.split()[1].removesuffix("/hooks/<endpoint>")
            elif line.startswith("export "):
                name, _, value = line.removeprefix("export ").strip().partition("=")
                self.env[name] = value
                if name == "GOALHORN_WEBHOOK_ALLOWLIST":
                    break
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)
            self._proc.wait(10)
            if self._proc.stdout is not None:
                self._proc.stdout.close()

    def settings(self, **overrides: Any) -> Settings:
        fields = {name.removeprefix("GOALHORN_").lower(): value for name, value in self.env.items()}
        return Settings.model_validate({**fields, **overrides})


def make_intent(intent_id: str) -> Intent:
    now = utcnow()
    return Intent(
        intent_id=intent_id,
        event_id=f"e-{intent_id}",
        kind=EventKind.GOAL,
        sport=Sport.SOCCER,
        game_id="g1",
        team_id="t1",
        priority=9,
        segments=("team:t1:followers",),
        template="goal",
        data={"team": "NYC", "home_team": "NYC", "away_team": "NY", "home_score": "1", "away_score": "0", "clock": "9"},
        event_at=now,
        created_at=now,
        expires_at=now + timedelta(minutes=10),
    )


def batches(platform: Any, n: int, address: Callable[[int], str], secret: str | None = None) -> list[DeliveryBatch]:
    intent = make_intent(f"bench-{uuid.uuid4().hex[:8]}")
    devices = [
        Device(device_id=f"d{i}", user_id=f"u{i}", platform=platform, address=address(i), secret=secret)
        for i in range(n)
    ]
    return [
        DeliveryBatch(batch_id=f"b{i}", platform=platform, intent=intent, devices=tuple(devices[i : i + BATCH]))
        for i in range(0, n, BATCH)
    ]


async def timed(n: int, run: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await run()
    return n / (time.perf_counter() - started)


async def provider_rate(provider: Any, work: list[DeliveryBatch], in_flight_batches: int = 4) -> float:
    """Messages/s through a provider, a few batches at a time as a worker would; checks all were sent."""
    slots = asyncio.Semaphore(in_flight_batches)
    sent = 0

    async def one(batch: DeliveryBatch) -> None:
        nonlocal sent
        async with slots:
            results = await provider.send(batch)
            sent += sum(r.outcome == "sent" for r in results)

    n = sum(len(b.devices) for b in work)
    rate = await timed(n, lambda: asyncio.gather(*(one(b) for b in work)))
    if sent != n:
        raise RuntimeError(f"{type(provider).__name__}: only {sent} of {n} sent")
    return rate


# --- FCM -------------------------------------------------------------------------------------------
def firebase_app(settings: Settings, name: str = "bench") -> Any:
    """A firebase-admin app sending to the sandbox with the connection pool it gives FCM itself.

    firebase-admin mounts a 100-connection adapter on ``https://fcm.googleapis.com`` only; pointed at
    another URL it would fall back to requests' default 10-connection pool and, with up to 100 sending
    threads, open and discard connections all along (some 2,000 per 15,000 messages). The same adapter
    is mounted on the sandbox's URL, so the baseline runs as it would against Google."""
    import firebase_admin
    import requests
    from firebase_admin import _http_client, messaging

    from goalhorn.sandbox.fcm_server import sandbox_certificate

    messaging._MessagingService.FCM_URL = settings.fcm_base_url + "/v1/projects/{0}/messages:send"
    app = firebase_admin.initialize_app(sandbox_certificate(str(settings.fcm_credentials_file)), name=name)
    service = messaging._get_messaging_service(app)
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=100, pool_maxsize=100, max_retries=_http_client.DEFAULT_RETRY_CONFIG
    )
    service._client.session.mount(settings.fcm_base_url, adapter)
    return app


async def bench_fcm(sandbox: SandboxProcess, n: int) -> tuple[float, float]:
    import firebase_admin
    from firebase_admin import messaging

    settings = sandbox.settings()
    async with FcmProvider(settings) as provider:
        await provider.send(batches("fcm", 1, lambda i: "warm")[0])
        ours = await provider_rate(provider, batches("fcm", n, lambda i: f"tok-{i}"))
    app = firebase_app(settings)
    try:

        def baseline() -> None:
            for start in range(0, n, BATCH):
                fids = [f"tok-{i}" for i in range(start, min(n, start + BATCH))]
                message = messaging.MulticastMessage(fids=fids, notification=messaging.Notification("GOAL!", "1-0"))
                response = messaging.send_each_for_multicast(message, app=app)
                if response.failure_count:
                    raise RuntimeError(f"firebase-admin: {response.failure_count} failed")

        theirs = await timed(n, lambda: asyncio.to_thread(baseline))
    finally:
        await asyncio.to_thread(firebase_admin.delete_app, app)
    return ours, theirs


# --- APNs ------------------------------------------------------------------------------------------
async def bench_apns(sandbox: SandboxProcess, n: int) -> tuple[float, float]:
    import ssl

    from aioapns import APNs, NotificationRequest, PushType
    from aioapns.connection import APNsProductionClientProtocol

    settings = sandbox.settings()
    async with ApnsProvider(settings) as provider:
        await provider.send(batches("apns", 1, lambda i: f"{i:064x}")[0])
        ours = await provider_rate(provider, batches("apns", n, lambda i: f"{i:064x}"))

    client = APNs(
        key=await asyncio.to_thread(Path(str(settings.apns_key_file)).read_text),
        key_id=settings.apns_key_id,
        team_id=settings.apns_team_id,
        topic=settings.apns_topic,
        max_connections=settings.apns_max_connections,
        ssl_context=ssl.create_default_context(cafile=settings.apns_ca_file),
    )
    endpoint = {"APNS_SERVER": settings.apns_host, "APNS_PORT": settings.apns_port}
    client.pool.protocol_class = type("BenchEndpoint", (APNsProductionClientProtocol,), endpoint)
    slots = asyncio.Semaphore(500)
    message = {"aps": {"alert": {"title": "GOAL! NYC", "body": "NY 0 - 1 NYC (9')"}, "sound": "default"}}

    async def one(i: int) -> None:
        async with slots:
            request = NotificationRequest(f"{i:064x}", message, priority=10, push_type=PushType.ALERT)
            result = await client.send_notification(request)
            if not result.is_successful:
                raise RuntimeError(f"aioapns: {result.description}")

    await one(0)
    theirs = await timed(n, lambda: asyncio.gather(*(one(i) for i in range(n))))
    # aioapns' graceful TLS shutdown needs the loop to keep running: abort first, or the socket can leak.
    for connection in list(client.pool.connections):
        if connection.transport is not None:
            connection.transport.abort()
    client.pool.close()
    await asyncio.sleep(0)  # the aborted transports release their sockets on the next turn
    return ours, theirs


# --- webhooks --------------------------------------------------------------------------------------
async def bench_webhooks(sandbox: SandboxProcess, n: int, apprise_n: int) -> tuple[float, float, float | None]:
    settings = sandbox.settings()
    url = lambda i: f"{sandbox.webhook_base}/hooks/bot{i % 50}"  # noqa: E731
    work = batches("webhook", n, url, sandbox.secret)
    async with WebhookProvider(settings) as provider:
        await provider.send(work[0].model_copy(update={"devices": work[0].devices[:1]}))
        ours = await provider_rate(provider, work)

    intent = work[0].intent
    body = webhook_body(intent, default_catalog().render(intent, "en"))
    keys = signing_keys(sandbox.secret)
    slots = asyncio.Semaphore(settings.webhook_concurrency)
    connector = aiohttp.TCPConnector(limit=settings.webhook_concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(i: int) -> None:
            msg_id, stamp = webhook_id(intent.intent_id, f"d{i}"), int(time.time())
            headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(stamp)}
            headers["webhook-signature"] = sign(keys, msg_id, stamp, body)
            async with slots, session.post(url(i), data=body, headers=headers) as response:
                await response.read()
                if response.status != 204:
                    raise RuntimeError(f"aiohttp loop: HTTP {response.status}")

        bare = await timed(n, lambda: asyncio.gather(*(post(i) for i in range(n))))

    if apprise_n <= 0:
        return ours, bare, None
    try:
        import apprise
    except ImportError:
        return ours, bare, None

    def apprise_loop() -> None:
        with warnings.catch_warnings():  # its plugins import imghdr, deprecated since Python 3.11: not ours
            warnings.simplefilter("ignore", DeprecationWarning)
            notifier = apprise.Apprise()
            host = sandbox.webhook_base.removeprefix("http://")
            # Apprise's own JSON body, unsigned: the receiver answers 401, after reading the whole request.
            notifier.add(f"json://{host}/hooks/bot0")
        for _ in range(apprise_n):
            notifier.notify(body=body.decode(), title="GOAL! NYC")

    theirs = await timed(apprise_n, lambda: asyncio.to_thread(apprise_loop))
    return ours, bare, theirs


# --- worker memory ---------------------------------------------------------------------------------
def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    code = "import sys; from goalhorn.ops.cli import main; sys.argv = ['goalhorn', 'worker']; main()"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL)


async def bench_worker_rss(sandbox: SandboxProcess, n: int) -> tuple[float, float]:
    """Peak RSS (MB) of a ``goalhorn worker`` sending ``n`` FCM pushes, and its messages/s."""
    from goalhorn.counters import PipelineCounters
    from goalhorn.dispatch.stage import DeliveryStage, make_broker
    from goalhorn.keys import Keys
    from goalhorn.providers.console import ConsoleProvider
    from goalhorn.redis_client import make_redis

    namespace = f"bench{uuid.uuid4().hex[:8]}"
    settings = sandbox.settings(amqp_url=LOCAL_AMQP_URL, redis_url=LOCAL_REDIS_URL, namespace=namespace)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOALHORN_")} | sandbox.env
    env |= {"GOALHORN_AMQP_URL": LOCAL_AMQP_URL, "GOALHORN_REDIS_URL": LOCAL_REDIS_URL, "GOALHORN_NAMESPACE": namespace}
    stage = DeliveryStage(
        settings, make_broker(settings), lambda p, render: ConsoleProvider(p), default_catalog().render
    )
    redis = make_redis(settings)
    counters = PipelineCounters(redis, Keys(namespace))
    work = batches("fcm", n, lambda i: f"w-{i}")
    for batch in work:
        await stage.enqueue(batch.encode())
    await counters.add({"batches_published": len(work)})
    worker = start_worker(env)
    peak = 0.0
    started = time.perf_counter()
    try:
        while True:
            peak = max(peak, _rss_mb(worker.pid))
            snap = await counters.snapshot()
            if snap.get("batches_done") >= len(work):
                break
            if worker.poll() is not None:
                raise RuntimeError("the worker died")
            await asyncio.sleep(0.2)
        rate = n / (time.perf_counter() - started)
        if snap.get("delivery:fcm:sent") != n:
            raise RuntimeError(f"worker sent {snap.get('delivery:fcm:sent')} of {n}")
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 30)
        stage.close()
        stage.broker.close()
        keys = [k async for k in redis.scan_iter(match=f"{namespace}:*", count=1000)]
        for i in range(0, len(keys), 1000):
            await redis.delete(*keys[i : i + 1000])
        await redis.aclose()
        from tests.queues import delete_delivery_queues

        await delete_delivery_queues(settings)
    return peak, rate


def _line(name: str, ours: float, theirs: float | None) -> None:
    against = "" if theirs is None else f" vs {theirs:>9,.0f} msg/s = {ours / theirs:5.2f}x"
    print(f"  {name:<36} {ours:>9,.0f} msg/s{against}", flush=True)


WORKER_N = 10_000
"""FCM pushes a worker memory run sends: 20 batches of 500, more than the worker prefetches at once
(2 x its 8 threads), so its peak holds a full hand of batches; more pushes only take longer."""


def planned(quick: bool) -> list[tuple[str, float]]:
    """What ``python -m bench providers`` (``--small``) runs and its seconds, from a run under load:
    ~20 s a round at 5,000 messages per provider, the worker at ~1,000 pushes/s and ~5 s to start."""
    if quick:
        return [("FCM, APNs, webhooks at 50 messages, Apprise at 20, x 3 runs", 15.0)]
    return [
        ("FCM, APNs, webhooks at 5,000 messages and Apprise at 300, x 3 runs", 3 * 20.0),
        (f"worker memory at {WORKER_N:,} FCM pushes x 3 runs", 3 * (WORKER_N / 1000 + 5)),
    ]


async def over_runs(
    runs: int, names: tuple[str, ...], measure: Callable[[], Awaitable[tuple[float | None, ...]]]
) -> dict[str, list[float]]:
    """Each figure's values over ``runs`` runs, the provider and its baselines alternating in each."""
    values: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(runs):
        figures = await measure()
        _line(names[0], figures[0] or 0.0, None)
        for name, value in zip(names, figures, strict=True):
            if value is not None:
                values[name].append(value)
    return values


def _against(
    results: Results, name: str, ours: list[float], base: str, theirs: list[float], target: str | None
) -> None:
    baseline = (base, statistics.median(theirs))
    results.add(Figure(name, ours, "msg/s", baseline=baseline, target=target))


async def run(args: argparse.Namespace, results: Results) -> int:
    with tempfile.TemporaryDirectory(prefix="goalhorn-bench-") as tmp, SandboxProcess(Path(tmp)) as sandbox:
        fcm = await over_runs(args.rounds, ("FCM", "send_each_for_multicast"), lambda: bench_fcm(sandbox, args.fcm_n))
        _against(
            results,
            "FCM provider",
            fcm["FCM"],
            "firebase-admin send_each_for_multicast",
            fcm["send_each_for_multicast"],
            ">= 5x",
        )
        apns = await over_runs(args.rounds, ("APNs", "aioapns"), lambda: bench_apns(sandbox, args.apns_n))
        _against(results, "APNs provider", apns["APNs"], "bare aioapns (500 in flight)", apns["aioapns"], ">= 0.8x")
        hooks = await over_runs(
            args.rounds,
            ("webhooks", "aiohttp", "apprise"),
            lambda: bench_webhooks(sandbox, args.webhook_n, args.apprise_n),
        )
        _against(results, "webhook provider", hooks["webhooks"], "bare aiohttp POST loop", hooks["aiohttp"], ">= 0.7x")
        if hooks["apprise"]:
            # Context only, no pass/fail: Apprise's requests are unsigned, so the receiver refuses them (401).
            _against(
                results,
                "webhook provider (context)",
                hooks["webhooks"],
                "Apprise json://, 401s",
                hooks["apprise"],
                None,
            )
        else:
            results.note("webhooks vs Apprise json://: skipped (--apprise-n 0, or pip install -e '.[bench]')")
        if args.worker_n:
            peaks, rates = [], []
            for _ in range(args.worker_runs):
                peak, rate = await bench_worker_rss(sandbox, args.worker_n)
                peaks.append(peak)
                rates.append(rate)
            results.add(Figure(f"worker peak RSS sending {args.worker_n:,} FCM pushes", peaks, "MB", target="< 150"))
            results.add(Figure(f"worker rate sending {args.worker_n:,} FCM pushes", rates, "msg/s"))
    return 0 if all(f.verdict() != "MISSED" for f in results.figures) else 1


def main(argv: list[str], results: Results | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench providers", description=__doc__)
    parser.add_argument("--fcm-n", type=int, default=5000)
    parser.add_argument("--apns-n", type=int, default=5000)
    parser.add_argument("--webhook-n", type=int, default=5000)
    parser.add_argument("--apprise-n", type=int, default=300)
    parser.add_argument("--worker-n", type=int, default=WORKER_N, help="0 skips the worker memory runs")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each figure (median, min, max)")
    parser.add_argument("--worker-runs", type=int, default=3, help="runs of the worker memory figure")
    parser.add_argument("--small", action="store_true", help="a smoke run with tiny sizes")
    args = parser.parse_args(argv)
    if args.small:
        args.fcm_n = args.apns_n = args.webhook_n = 50
        args.apprise_n, args.worker_n = 20, 0
    return asyncio.run(run(args, results if results is not None else Results("providers")))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
