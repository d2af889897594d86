"""Hostile input at every edge while goals are delivered: pushed feeds, the rules YAML, API bodies and
another tenant's key. Nothing may crash a process, answer 5xx, reach another tenant's data, or stop
the goals published meanwhile from arriving exactly once."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from importlib import resources

from chaos.report import Row
from chaos.rig import ChaosDeployment
from chaos.scenarios import IDLE_S, Context, goal
from tests.processes import Process, free_port

FEED_TOKEN = "chaos-feed-token-0123456789abcdef"
API_SECRET = "chaos-api-key-secret-0123456789abcdef0123456789"

HOSTILE_YAML = [
    "rules: [unclosed",
    "!!python/object/apply:os.system ['touch /tmp/goalhorn-chaos-pwned']\n",
    'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n"
        for i in range(9)
    ),
    "\x00\xff\xfe binary",
    "rules: 42\nsegments: {}\ntemplates: null\n",
]

HOSTILE_BODIES: list[bytes] = [
    b"",
    b"not json",
    b"[1,2,3]",
    b"null",
    b"[" * 50_000 + b"]" * 50_000,
    json.dumps({"locale": "x" * 300_000}).encode(),
    json.dumps({"locale": "en\u0000\ud7ff", "timezone": "../../etc/passwd"}).encode(),
    json.dumps({"locale": 7, "opted_in": "GOAL", "cap": {"max_alerts": -1, "window_s": 1e308}}).encode(),
    json.dumps({"quiet_hours": {"start": "25:99", "end": None}}).encode(),
]


def _request(url: str, method: str, body: bytes | None, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 599  # no answer at all counts as a server failure


def hostile_input(ctx: Context) -> Row:
    row = Row("hostile-input")
    work = ctx.work / "hostile-input"
    work.mkdir(parents=True, exist_ok=True)
    rules = work / "rules.yaml"
    packaged = resources.files("goalhorn.catalog").joinpath("default.yaml").read_text()
    rules.write_text(packaged)
    feeds_port, api_port = free_port(), free_port()
    env = {
        "GOALHORN_RULES_FILE": str(rules),
        "GOALHORN_API_KEY_SECRET": API_SECRET,
        "GOALHORN_FEEDS_LISTEN": f"127.0.0.1:{feeds_port}",
        "GOALHORN_FEEDS_SECRETS": f"sportradar=token:{FEED_TOKEN}",
        "GOALHORN_ESPN_BASE_URL": "http://127.0.0.1:9",  # nothing leaves the machine
    }
    with ctx.deployment("hostile-input", env=env) as d:
        d.start_stages(fanout=1, deliver=1)
        d.start("ingest")
        api = Process("api", ["run", "api", "--host", "127.0.0.1", "--port", str(api_port)], d.env, d.work_dir)
        d.processes["api"] = api.start()
        base = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 60
        while _request(base + "/healthz", "GET", None, {}) == 599 and time.monotonic() < deadline:
            time.sleep(0.3)
        audience = d.audience("t1", ctx.size(1000, 300))
        goals = 0

        def publish_goal() -> None:
            nonlocal goals
            goals += 1
            d.publish(goal(d, "t1", goals), audience)

        publish_goal()
        server_errors: list[str] = []
        _feeds(f"http://127.0.0.1:{feeds_port}", server_errors)
        publish_goal()
        for text in HOSTILE_YAML:
            rules.write_text(text, errors="surrogateescape")
            time.sleep(1.5)
            publish_goal()  # the last good rules stay in use
        rules.write_text(packaged)
        crossed = _api(d, base, server_errors, row.notes)
        publish_goal()
        report = d.ledger.wait(timeout_s=180, settle_s=5, idle_s=IDLE_S)
        row.check("hostile requests answered 5xx or not at all", len(server_errors), "0", not server_errors)
        if server_errors:
            row.notes.append("5xx: " + "; ".join(server_errors[:5]))
        row.check("another tenant's data read or changed with a key", crossed, "0", crossed == 0)
        exited = [n for n, p in d.processes.items() if p.proc is not None and p.proc.poll() is not None]
        row.check("processes that exited", ", ".join(exited) or "none", "none", not exited)
        row.notes.append(
            f"{goals} goals published around {len(HOSTILE_YAML)} hostile rules files, "
            f"{len(FEED_BODIES) * 3 + 1} feed requests and {len(HOSTILE_BODIES) * 2 + 6} API requests"
        )
        return d.settle(row, report, None)


FEED_BODIES: list[bytes] = [
    b"",
    b"{",
    b'{"payload": ' * 20_000,
    json.dumps({"payload": {"event": {"type": "goal", "id": None, "period": "x" * 10_000}}}).encode(),
    b"\xff\xfe\x00garbage",
    json.dumps([{"metadata": {"league": "../../"}}] * 1000).encode(),
]


def _feeds(base: str, server_errors: list[str]) -> None:
    url = base + "/v1/feeds/sportradar"
    for body in FEED_BODIES:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {FEED_TOKEN}"}):
            status = _request(url, "POST", body, {**headers, "Content-Type": "application/json"})
            if status >= 500:
                server_errors.append(f"feed {body[:20]!r} -> {status}")
    big = _request(url, "POST", b"x" * (5 << 20), {"Authorization": f"Bearer {FEED_TOKEN}"})
    if big >= 500:
        server_errors.append(f"feed of 5 MiB -> {big}")


def _key(d: ChaosDeployment, tenant: str) -> str:
    args = ["keys", "create", "--tenant", tenant, "--scopes", "read,write", "--tier", "enterprise"]
    done = d.command(*args, timeout_s=60)
    if done.returncode != 0:
        raise RuntimeError(f"goalhorn keys create: {done.stderr[-300:]}")
    return done.stdout.strip().splitlines()[-1].strip()


def _api(d: ChaosDeployment, base: str, server_errors: list[str], notes: list[str]) -> int:
    """Hostile bodies with a valid key, then tenant b's key on tenant a's user; returns how many of
    b's requests reached a's data."""
    mine, theirs = _key(d, "tenanta"), _key(d, "tenantb")
    auth = {"Authorization": f"Bearer {mine}", "Content-Type": "application/json"}
    created = _request(base + "/v1/users/alice", "PUT", b'{"locale": "en"}', auth)
    if created not in (200, 201):
        server_errors.append(f"creating a user -> {created}")
    for body in HOSTILE_BODIES:
        for path, method in (("/v1/users/alice", "PUT"), ("/v1/users/alice/devices", "POST")):
            status = _request(base + path, method, body, auth)
            if status >= 500:
                server_errors.append(f"{method} {path} {body[:20]!r} -> {status}")
    ssrf = json.dumps({"platform": "webhook", "address": "http://169.254.169.254/latest/meta-data"}).encode()
    if _request(base + "/v1/users/alice/devices", "POST", ssrf, auth) < 400:
        server_errors.append("a webhook to the metadata address was accepted")
    other = {"Authorization": f"Bearer {theirs}", "Content-Type": "application/json"}
    crossed = 0
    attempts: tuple[tuple[str, str, bytes | None], ...] = (
        ("/v1/users/alice", "GET", None),
        ("/v1/users/alice", "PUT", b'{"locale": "fr"}'),
        ("/v1/users/alice", "DELETE", None),
    )
    answers = []
    for path, method, payload in attempts:
        status = _request(base + path, method, payload, other)
        answers.append(f"{method} {status}")
        if status >= 500:
            server_errors.append(f"tenant b {method} {path} -> {status}")
        if method == "GET" and status == 200:
            crossed += 1
    mine_after = _request(base + "/v1/users/alice", "GET", None, auth)
    for _ in range(20):  # a rate limit is not an answer about the user: ask again once it allows
        if mine_after != 429:
            break
        time.sleep(1.0)
        mine_after = _request(base + "/v1/users/alice", "GET", None, auth)
    if mine_after != 200:
        crossed += 1  # b's PUT or DELETE reached a's user (b's PUT creates b's own alice, which is fine)
    notes.append(f"tenant b on tenant a's user: {', '.join(answers)}; then a's GET: {mine_after}")
    return crossed
