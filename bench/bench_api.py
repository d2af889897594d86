"""The sidecar API under load, against a bare Starlette route under the same server, in one run.

Starts each server as its own process (uvicorn, one worker, the same options) and drives it from a
separate load process holding ``--connections`` keep-alive HTTP/1.1 connections for ``--seconds``:

- ``GET /v1/games/{id}`` of the API (key check, rate limit, kill switches, live state read from
  Redis, strong ETag) against a bare Starlette route returning the same bytes: requests/s, p50, p99,
  and the ratio of the API's requests/s to the bare route's;
- the 304 path: the same request with ``If-None-Match``;
- device registration: ``POST /v1/users/{id}/devices`` with a new APNs token per request (a new
  user every 40 devices), against the bare route taking the same POST; every run registers devices
  no earlier run did (201 each);
- the same route re-registering the devices just registered (200 each: an app sends its token
  again at every launch), against the same bare route;
- server-sent events: ``--clients`` clients connected to ``/v1/stream``; one score update published
  to Redis; the time until every client had it (p50 and the last), against one client alone.

Each connection has a key of its own (enterprise tier: as 50 apps would), so the rate limit is paid
but does not throttle. Needs Redis on 127.0.0.1 (RabbitMQ is not used); writes under a namespace of
its own and deletes it after. ``python -m bench api`` or ``python -m bench.bench_api --seconds 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis as sync_redis

from bench.figures import Figure, Results
from goalhorn.ingest.live import LiveState
from goalhorn.keys import Keys
from goalhorn.models import GameState, GameStatus, Sport
from goalhorn.redis_client import make_redis
from goalhorn.settings import LOCAL_REDIS_URL, Settings
from goalhorn.sidecar.apikeys import KeyStore
from goalhorn.sidecar.streams import UpdatePublisher

SECRET = "bench-server-secret-of-at-least-32-characters!"
GAME = "espn:401"
COUNTER = b"#" * 64
"""Replaced by the request's number in 64 hex digits (an APNs token), keeping Content-Length right."""
USER = b"@" * 8
"""Replaced by the request's number // DEVICES_PER_USER: a new user every few devices (at most 50 each).
A load's numbers start where the last run's registrations ended, so each run registers new devices."""
DEVICES_PER_USER = 40
USERS_PER_CONNECTION = 250


def settings_for(namespace: str) -> Settings:
    return Settings(redis_url=LOCAL_REDIS_URL, namespace=namespace, api_key_secret=SECRET)


def state(home: int) -> GameState:
    return GameState(
        game_id="401",
        source="espn",
        sport=Sport.HOCKEY,
        league="nhl",
        status=GameStatus.LIVE,
        home_team="EDM",
        away_team="PIT",
        home_team_id="6",
        away_team_id="16",
        home_score=home,
        away_score=1,
        period=2,
        clock_s=612.0,
        display_clock="10:12",
        observed_at=datetime.now(UTC),
    )


# --- servers (each run in its own process: ``python -m bench.bench_api serve KIND PORT NAMESPACE``) ----------
def serve(kind: str, port: int, namespace: str, body_file: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    app: Starlette
    if kind == "api":
        from goalhorn.sidecar.app import create_app

        app = create_app(settings_for(namespace))
    else:
        with open(body_file, "rb") as f:
            body = f.read()

        async def game(request: Request) -> Response:
            return Response(body, media_type="application/json")

        async def accept(request: Request) -> Response:
            await request.body()
            return Response(b'{"device_id":"apns-0"}', status_code=201, media_type="application/json")

        app = Starlette(
            routes=[Route("/v1/games/{game_id}", game), Route("/v1/users/{u}/devices", accept, methods=["POST"])]
        )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


# --- load (``python -m bench.bench_api load ...``, prints one JSON line) ------------------------------------
async def _connection(
    port: int, make: Callable[[int], bytes], stop_at: float, out: list[float], statuses: dict[int, int]
) -> int:
    """Requests back to back until ``stop_at``; how many were sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    try:
        while (started := time.perf_counter()) < stop_at:
            writer.write(make(n))
            n += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            out.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()
    return n


def load(port: int, requests: list[bytes], seconds: float, start: int = 0, span: int = 0) -> dict[str, float]:
    """Each connection sends its request back to back, its ``n``-th with USER and COUNTER replaced by
    ``start + n`` (``start + n % span`` with a ``span``: the same ``span`` numbers over and over).
    ``sent``: the fewest requests a connection sent."""

    async def run() -> dict[str, float]:
        latencies: list[list[float]] = [[] for _ in requests]
        statuses: dict[int, int] = {}
        stop_at = time.perf_counter() + seconds
        started = time.perf_counter()

        def maker(template: bytes) -> Callable[[int], bytes]:
            if COUNTER not in template:
                return lambda n: template

            def make(n: int) -> bytes:
                n = start + (n % span if span else n)
                return template.replace(USER, b"%08d" % (n // DEVICES_PER_USER)).replace(COUNTER, b"%064x" % n)

            return make

        sent = await asyncio.gather(
            *(_connection(port, maker(r), stop_at, latencies[i], statuses) for i, r in enumerate(requests))
        )
        elapsed = time.perf_counter() - started
        every = sorted(x for each in latencies for x in each)
        return {
            "rps": len(every) / elapsed,
            "p50_ms": every[len(every) // 2] * 1000,
            "p99_ms": every[int(len(every) * 0.99)] * 1000,
            "requests": len(every),
            "sent": min(sent),
            "most_sent": max(sent),
            "statuses": {str(k): v for k, v in statuses.items()},  # type: ignore[dict-item]
        }

    return asyncio.run(run())


def sse_clients(port: int, key: str, clients: int, ready_file: str) -> dict[str, float]:
    """Connect ``clients`` SSE clients, signal readiness, and time the first score event on each."""

    async def run() -> dict[str, float]:
        arrivals: list[float] = []
        connected = 0
        all_connected = asyncio.Event()

        async def client() -> None:
            nonlocal connected
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /v1/stream HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
            await reader.readuntil(b"\r\n\r\n")
            connected += 1
            if connected == clients:
                all_connected.set()
            while True:
                line = await reader.readline()
                if line.startswith(b"event: score") or (b"event: score" in line):
                    arrivals.append(time.time())
                    break
                if not line:
                    break
            writer.close()

        tasks = [asyncio.create_task(client()) for _ in range(clients)]
        await asyncio.wait_for(all_connected.wait(), 120)
        await asyncio.sleep(1.0)  # the server's subscriptions settle
        Path(ready_file).write_text("ready")  # noqa: ASYNC240  # one tiny write; the clients wait on it
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        return {"arrivals": arrivals}  # type: ignore[dict-item]

    return asyncio.run(run())


# --- the run ------------------------------------------------------------------------------------------------
@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(kind: str, namespace: str, body_file: str) -> Server:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_api", "serve", kind, str(port), namespace, body_file],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return Server(proc, port)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start")


def _load_process(args: list[str]) -> object:
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_api", *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _request(method: str, path: str, key: str | None, extra: str = "", body: str = "") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: bench"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    if extra:
        lines.append(extra)
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


Load = tuple[int, list[bytes], int, int]
"""A load: port, requests, and the ``start`` and ``span`` of their numbers (:func:`load`)."""


def _measure(loads: list[Load], seconds: float) -> list[dict[str, float]]:
    """Each load in turn for ``seconds``, from one load process (one start a run, not one a load: a
    Python process takes a second or two to start on the loaded machine); a load whose span is -1
    repeats the numbers the load before it sent (as many as its every connection sent)."""
    path = f"/tmp/goalhorn-bench-{uuid.uuid4().hex}.json"
    with open(path, "w") as f:
        json.dump([[port, [r.decode() for r in requests], start, span] for port, requests, start, span in loads], f)
    try:
        return _load_process(["load", path, str(seconds)])  # type: ignore[return-value]
    finally:
        os.unlink(path)


async def _prepare(namespace: str, connections: int) -> tuple[list[str], bytes]:
    settings = settings_for(namespace)
    redis = make_redis(settings)
    try:
        store = KeyStore.from_settings(redis, settings)
        keys = [(await store.create("bench", "enterprise", ("read", "write")))[0] for _ in range(connections)]
        await LiveState(redis, Keys(namespace), retention_s=3600).write([state(2)])
    finally:
        await redis.aclose()
    return keys, b""


AGAIN = "POST /v1/users/{id}/devices, known device (200)"

SECONDS = 3.0
"""Each load's length (six loads and two SSE fan-outs a run): 50 connections back to back make
thousands of requests in 3 s, and the runs' spread is the machine's, not the length's."""


def planned(quick: bool) -> list[tuple[str, float]]:
    """What ``python -m bench api`` (``--quick``: 0.5 s loads, 20 connections, 100 SSE clients) runs, and its seconds:
    the loads' length plus ~15 s of setup (the servers, keys, users) and, a run, ~3 s to start the load
    process and ~5 s for the two SSE fan-outs (~10 s with 1,000 clients), measured under load."""
    seconds, sse, setup = (0.5, 5.0, 10.0) if quick else (SECONDS, 10.0, 15.0)
    return [(f"6 loads of {seconds:g} s and 2 SSE fan-outs x 3 runs", setup + 3 * (6 * seconds + 3 + sse))]


def report(results: Results, runs: dict[str, list[dict[str, float]]]) -> None:
    """Each figure over the runs; the API's routes against the bare route measured in the same runs."""
    for name, baseline in (
        ("GET /v1/games/{id}", "bare Starlette route, same bytes"),
        ("GET /v1/games/{id}, If-None-Match (304)", "bare Starlette route, same bytes"),
        ("POST /v1/users/{id}/devices", "bare Starlette route, same POST"),
        (AGAIN, "bare Starlette route, same POST"),
    ):
        base = statistics.median(r["rps"] for r in runs[baseline])
        results.add(Figure(f"{name}: requests/s", [r["rps"] for r in runs[name]], "req/s", baseline=(baseline, base)))
        results.add(Figure(f"{name}: p99", [r["p99_ms"] for r in runs[name]], "ms"))
    for name in (k for k in runs if k.startswith("SSE")):
        results.add(Figure(f"{name}: one update reached all", [r["last_ms"] for r in runs[name]], "ms"))


def _line(name: str, result: dict[str, float], baseline: dict[str, float] | None = None) -> None:
    ratio = f"   {result['rps'] / baseline['rps']:.2f}x the bare route" if baseline else ""
    print(
        f"  {name:<38} {result['rps']:>8.0f} req/s   p50 {result['p50_ms']:6.2f} ms   p99 {result['p99_ms']:6.2f} ms"
        f"   statuses {result['statuses']}{ratio}",
        flush=True,
    )


def main(argv: list[str], results: Results | None = None) -> int:
    if argv and argv[0] == "serve":
        serve(argv[1], int(argv[2]), argv[3], argv[4])
        return 0
    if argv and argv[0] == "load":
        with open(argv[1]) as f:
            loads = [(int(p), [r.encode() for r in rs], first, span) for p, rs, first, span in json.load(f)]
        answers: list[dict[str, float]] = []
        for port, requests, first, span in loads:
            if span == -1:  # what the load before sent, again
                first, span = int(answers[-1]["start"]), max(1, int(answers[-1]["sent"]))
            answers.append({**load(port, requests, float(argv[2]), first, span), "start": first})
        print(json.dumps(answers))
        return 0
    if argv and argv[0] == "sse":
        print(json.dumps(sse_clients(int(argv[1]), argv[2], int(argv[3]), argv[4])))
        return 0

    parser = argparse.ArgumentParser(prog="python -m bench api")
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="runs of each figure (median, min, max)")
    parser.add_argument(
        "--namespace", default=None, help="Redis namespace to write under (deleted after); default: a new one."
    )
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))

    namespace = args.namespace or f"bench-api-{uuid.uuid4().hex[:8]}"
    keys, _ = asyncio.run(_prepare(namespace, args.connections))
    body_file = f"/tmp/goalhorn-bench-body-{namespace}.json"
    api = _start("api", namespace, body_file)
    bare: Server | None = None
    try:
        # the exact bytes the API answers, for the bare route to answer too
        with socket.create_connection(("127.0.0.1", api.port)) as probe:
            probe.sendall(_request("GET", f"/v1/games/{GAME}", keys[0]) + b"")
            raw = b""
            while b"\r\n\r\n" not in raw or len(raw.split(b"\r\n\r\n", 1)[1]) < int(
                raw.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0] if b"content-length: " in raw else 1
            ):
                raw += probe.recv(65536)
        head, body = raw.split(b"\r\n\r\n", 1)
        etag = next(line.split(b": ", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"etag:"))
        with open(body_file, "wb") as f:
            f.write(body)
        bare = _start("bare", namespace, body_file)
        print(
            f"  {args.connections} connections, {args.seconds:g} s each, uvicorn (h11, one worker) for both, "
            f"load from another process, {os.cpu_count()} cores shared",
            flush=True,
        )

        get_bare = [_request("GET", f"/v1/games/{GAME}", None) for _ in keys]
        get_api = [_request("GET", f"/v1/games/{GAME}", k) for k in keys]
        not_modified = [_request("GET", f"/v1/games/{GAME}", k, f"If-None-Match: {etag.decode()}") for k in keys]
        asyncio.run(_users(namespace, keys))
        posts = [
            _request(
                "POST", f"/v1/users/u{i}-{'@' * 8}/devices", k, body='{"platform":"apns","address":"' + "#" * 64 + '"}'
            )
            for i, k in enumerate(keys)
        ]
        runs: dict[str, list[dict[str, float]]] = defaultdict(list)
        start = 0  # the number of the first device a run registers: none registered before
        for n in range(args.runs):
            print(f"  run {n + 1} of {args.runs}", flush=True)
            jobs: tuple[tuple[str, int, list[bytes], int, int, str | None], ...] = (
                ("bare Starlette route, same bytes", bare.port, get_bare, 0, 0, None),
                ("GET /v1/games/{id}", api.port, get_api, 0, 0, "bare Starlette route, same bytes"),
                (
                    "GET /v1/games/{id}, If-None-Match (304)",
                    api.port,
                    not_modified,
                    0,
                    0,
                    "bare Starlette route, same bytes",
                ),
                ("bare Starlette route, same POST", bare.port, posts, start, 0, None),
                ("POST /v1/users/{id}/devices", api.port, posts, start, 0, "bare Starlette route, same POST"),
                (AGAIN, api.port, posts, start, -1, "bare Starlette route, same POST"),
            )
            measured = _measure([(port, reqs, first, span) for _, port, reqs, first, span, _ in jobs], args.seconds)
            for (name, _, _, _, _, baseline), result in zip(jobs, measured, strict=True):
                runs[name].append(result)
                _line(name, runs[name][-1], runs[baseline][-1] if baseline else None)
            registered = int(measured[4]["most_sent"])  # by the API's POST load (the bare route keeps none)
            start += -(-registered // DEVICES_PER_USER) * DEVICES_PER_USER  # the next run: users of its own
            if start > DEVICES_PER_USER * USERS_PER_CONNECTION:
                raise RuntimeError("the bench ran out of users: raise USERS_PER_CONNECTION")
            for clients in (1, args.clients):
                times = _sse(api.port, keys[0], clients, namespace)
                runs[f"SSE fan-out to {clients:,} clients"].append(times)
                print(
                    f"  SSE fan-out to {clients:>5} clients: one update reached all in {times['last_ms']:.1f} ms "
                    f"(p50 {times['p50_ms']:.1f} ms)",
                    flush=True,
                )
        report(results if results is not None else Results("api"), runs)
    finally:
        api.stop()
        if bare is not None:
            bare.stop()
        if os.path.exists(body_file):
            os.unlink(body_file)
        client = sync_redis.Redis.from_url(LOCAL_REDIS_URL)
        for name in client.scan_iter(match=f"{namespace}:*", count=1000):
            client.delete(name)
        client.close()
    return 0


async def _users(namespace: str, keys: list[str]) -> None:
    """Users for each connection's device registrations, of the keys' tenant, as the API stores them."""
    settings = settings_for(namespace)
    redis = make_redis(settings)
    try:
        from goalhorn.preferences.store import PreferenceStore
        from goalhorn.sidecar.tenants import TenantUsers

        users = TenantUsers(redis, Keys(namespace), PreferenceStore(redis, Keys(namespace)))
        for i in range(len(keys)):
            await users.register("bench", {f"u{i}-{n:08d}": "en" for n in range(USERS_PER_CONNECTION)})
    finally:
        await redis.aclose()


def _sse(port: int, key: str, clients: int, namespace: str) -> dict[str, float]:
    ready = f"/tmp/goalhorn-bench-sse-{uuid.uuid4().hex}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_api", "sse", str(port), key, str(clients), ready],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        deadline = time.monotonic() + 180
        while not os.path.exists(ready):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("SSE clients did not connect")
            time.sleep(0.05)

        async def publish() -> float:
            redis = make_redis(settings_for(namespace))
            try:
                sent = time.time()
                await UpdatePublisher(redis, Keys(namespace)).publish([state(int(sent))])
                return sent
            finally:
                await redis.aclose()

        sent = asyncio.run(publish())
        out, _ = proc.communicate(timeout=180)
    finally:
        if os.path.exists(ready):
            os.unlink(ready)
        if proc.poll() is None:
            proc.kill()
    arrivals = sorted(json.loads(out.strip().splitlines()[-1])["arrivals"])
    if len(arrivals) != clients:
        raise RuntimeError(f"{clients - len(arrivals)} SSE clients missed the update")
    return {"p50_ms": (statistics.median(arrivals) - sent) * 1000, "last_ms": (arrivals[-1] - sent) * 1000}


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
