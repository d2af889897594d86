"""Running goalhorn's real commands as subprocesses, the way the README tells a user to."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TextIO

GOALHORN = str(Path(sys.executable).with_name("goalhorn"))
STARTUP_TIMEOUT_S = 60.0


class Process:
    """One ``goalhorn`` command running in its own process; its output goes to a log file (read on
    failure) and each stdout line is kept for :meth:`wait_for`."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], logs: Path) -> None:
        self.name = name
        self.args = args
        self.env = dict(env)
        self.log_path = logs / f"{name}.log"
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0

    def start(self) -> Process:
        self.starts += 1
        log = self.log_path.open("a")
        log.write(f"--- start {self.starts}: goalhorn {' '.join(self.args)}\n")
        log.flush()
        self.lines = []
        self.proc = subprocess.Popen(
            [GOALHORN, *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._pump, args=(self.proc, log), daemon=True)
        self._reader.start()
        return self

    def _pump(self, proc: subprocess.Popen[str], log: TextIO) -> None:
        assert proc.stdout is not None
        with log, proc.stdout:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                with self._seen:
                    self.lines.append(line.rstrip("\n"))
                    self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for(self, pattern: str, timeout_s: float = STARTUP_TIMEOUT_S) -> re.Match[str]:
        """The first stdout line matching ``pattern``; fails with the log if the process exits first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self._seen:
            while True:
                for line in self.lines:
                    found = regex.search(line)
                    if found:
                        return found
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.name} exited ({self.proc.returncode}) first:\n{self.log()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: no line matching {pattern!r} in {timeout_s}s:\n{self.log()}")
                self._seen.wait(min(left, 0.2))

    def log(self) -> str:
        return self.log_path.read_text()[-6000:]

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)

    def terminate(self, timeout_s: float) -> int:
        """SIGTERM and wait; returns the exit code (fails if it takes longer than ``timeout_s``)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
            self._reader.join(10)
            return code
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"{self.name} did not stop within {timeout_s}s of SIGTERM:\n{self.log()}") from None

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


@contextmanager
def processes(logs: Path) -> Iterator[dict[str, Process]]:
    """A registry of processes, every one killed when the block ends."""
    running: dict[str, Process] = {}
    try:
        yield running
    finally:
        for process in running.values():
            process.stop_quietly()


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_command(args: list[str], env: Mapping[str, str], timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GOALHORN, *args], env=dict(env), capture_output=True, text=True, timeout=timeout_s)


def clean_env(**values: str) -> dict[str, str]:
    """The environment without any GOALHORN_* of the caller's, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOALHORN_")}
    env.update(values)
    return env


def real_env(**values: str) -> dict[str, str]:
    """``clean_env`` on the local RabbitMQ and Redis, in a namespace of its own (deleted after the session)."""
    from goalhorn.settings import LOCAL_AMQP_URL, LOCAL_REDIS_URL
    from tests.conftest import _real_namespaces, require_real_services

    require_real_services()
    namespace = f"t{uuid.uuid4().hex[:12]}"
    _real_namespaces.append(namespace)
    base = {"GOALHORN_AMQP_URL": LOCAL_AMQP_URL, "GOALHORN_REDIS_URL": LOCAL_REDIS_URL, "GOALHORN_NAMESPACE": namespace}
    return clean_env(**(base | values))


def exports(lines: list[str]) -> dict[str, str]:
    """The ``export NAME=value`` lines ``goalhorn sandbox`` prints."""
    found = {}
    for line in lines:
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            found[name] = value.strip().strip("'\"")
    return found


def with_home_score(board: dict, game_id: str, delta: int) -> bytes:
    """An ESPN scoreboard with ``delta`` added to the home side's score of ``game_id``."""
    changed = copy.deepcopy(board)
    for event in changed["events"]:
        if event["id"] == game_id:
            for competitor in event["competitions"][0]["competitors"]:
                if competitor["homeAway"] == "home":
                    competitor["score"] = str(int(competitor["score"]) + delta)
    return json.dumps(changed).encode()


def read_records(path: Path) -> list[dict]:
    """The sandbox's record: one accepted push per line (a half-written last line is left for later)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


class ScoreboardServer:
    """A local ESPN: serves the current scoreboard at every ``/apis/site/v2/sports/<sport>/<league>/scoreboard``
    in 16 KB pieces with chunked transfer encoding, as ESPN's CDN does; counts the requests."""

    CHUNK = 16 * 1024

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.requests += 1
                data = outer.body
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, len(data), outer.CHUNK):
                    piece = data[start : start + outer.CHUNK]
                    self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: a test reads what the poller counted, not this server's access log."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait_requests(self, more: int, timeout_s: float = 30.0) -> None:
        """Until ``more`` requests beyond the current count were served."""
        target = self.requests + more
        deadline = time.monotonic() + timeout_s
        while self.requests < target:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the poller made {self.requests - target + more} of {more} requests in {timeout_s}s"
                )
            time.sleep(0.05)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
