"""The suite's own RabbitMQ node and Redis servers: started on free ports of 127.0.0.1, each in a
temporary directory, stopped, killed and restarted by the scenarios, and gone when the suite ends.

RabbitMQ: ``rabbitmq-server`` with ``RABBITMQ_NODENAME=chaos-<pid>@localhost``, its own
``RABBITMQ_NODE_PORT`` and ``RABBITMQ_DIST_PORT``, and its mnesia, log, config and plugin files in the
temporary directory. ``HOME`` is that directory too, so Erlang's cookie (``.erlang.cookie``) is a new
one of the node's own and never the system node's. The node registers with the machine's epmd (port
4369), as every node does; if no epmd runs, Erlang starts one, which outlives the suite (harmless: it
holds no data). No plugin is enabled (``RABBITMQ_ENABLED_PLUGINS_FILE`` is an empty file).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.processes import free_port

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
BOOT_TIMEOUT_S = 90.0
START_ATTEMPTS = 3


def rabbitmq_server_bin() -> str:
    for candidate in (RABBITMQ_SERVER, shutil.which("rabbitmq-server") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")


def amqp_login_works(port: int) -> bool:
    """Whether a guest/guest AMQP connection opens (aio-pika's blocking cousin: pika is not here)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            return sock.recv(7)[:1] == b"\x01"  # connection.start: the broker's application is up
    except OSError:
        return False


class RabbitNode:
    """A private RabbitMQ node; its data survives :meth:`stop`/:meth:`kill` and :meth:`start` again."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.dist_port = free_port()
        self.nodename = f"chaos-{os.getpid()}@localhost"
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
            "log.console = false\nlog.file.level = warning\n"
        )
        (base / "enabled_plugins").write_text("[].\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "GOALHORN_"))}
        return env | {
            "HOME": str(self.base),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.base / "plugins-expand"),
            # A node killed by a scenario writes its crash dump here, not in the checkout.
            "ERL_CRASH_DUMP": str(self.base / "erl_crash.dump"),
        }

    def start(self) -> float:
        """Start the node and wait until it takes AMQP connections; returns how long that took. A node
        that exits at once (its name still registered with epmd by the VM just stopped) is started
        again, a few times."""
        started = time.monotonic()
        for attempt in range(1, START_ATTEMPTS + 1):
            self.starts += 1
            with (self.base / "server.log").open("ab") as log:
                self.proc = subprocess.Popen(
                    [rabbitmq_server_bin()],
                    env=self.env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=self.base,
                )
            while not amqp_login_works(self.port):
                if self.proc.poll() is not None:
                    break
                if time.monotonic() - started > BOOT_TIMEOUT_S:
                    raise RuntimeError(f"rabbitmq-server did not take connections in {BOOT_TIMEOUT_S}s")
                time.sleep(0.25)
            else:
                return time.monotonic() - started
            self._reap_group()
            if attempt == START_ATTEMPTS:
                tail = (self.base / "server.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"rabbitmq-server exited ({self.proc.returncode}):\n{tail}")
            time.sleep(2.0 * attempt)
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """A clean shutdown (SIGTERM to the node: queues and messages written to disk)."""
        self._signal(signal.SIGTERM, wait_s=60)

    def kill(self) -> None:
        """SIGKILL to the Erlang VM and its helpers: no chance to write anything."""
        self._signal(signal.SIGKILL, wait_s=20)

    def _signal(self, signum: int, wait_s: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signum)  # the group the node's start_new_session made: only its processes
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        deadline = time.monotonic() + 20
        while amqp_login_works(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        self._reap_group()

    def _reap_group(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the VM outlived its shell: end it
        except ProcessLookupError:
            return
        time.sleep(0.5)


class RedisServer:
    """A private redis-server; with ``aof``, its data is kept on disk (appendonly, fsync every second)."""

    def __init__(self, base: Path, *, aof: bool = False, name: str = "redis") -> None:
        self.base = base / name
        self.base.mkdir(parents=True, exist_ok=True)
        self.aof = aof
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, *, fresh: bool = False) -> None:
        """Start it; ``fresh`` throws its files away first (a server that comes back empty)."""
        if fresh:
            shutil.rmtree(self.base)
            self.base.mkdir()
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.base)]
        args += ["--save", "", "--appendonly", "yes" if self.aof else "no", "--appendfsync", "everysec"]
        args += ["--logfile", str(self.base / "redis.log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.client().ping():
                    return
            except redis.exceptions.BusyLoadingError:
                time.sleep(0.1)
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server on {self.port} did not start; see {self.base}/redis.log"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM: with AOF, what it holds is written before it exits."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def _end(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
            self.proc.wait(30)


class Services:
    """The node and the servers of one suite run, in one temporary directory."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="goalhorn-chaos-"))
        self.rabbit = RabbitNode(self.dir / "rabbitmq")
        self.redis: list[RedisServer] = []

    def start(self) -> None:
        self.rabbit.start()

    def redis_server(self, *, aof: bool = False) -> RedisServer:
        """A new Redis server (a scenario's own: the one a scenario restarts empty is nobody else's)."""
        server = RedisServer(self.dir, aof=aof, name=f"redis-{len(self.redis)}")
        self.redis.append(server)
        server.start()
        return server

    def close(self) -> None:
        for server in self.redis:
            server.kill()
        self.rabbit.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
