#!/usr/bin/env bash
# Make sure the Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672, guest/guest) that goalhorn's
# real-service tests use are answering. A service that answers is left alone; one that is installed
# but down is started; one that is missing is installed with apt-get when we are root, and otherwise
# the script stops and says what to install. Prints one line per service.
#
# Needs only bash and python3 (the probes speak RESP and AMQP 0-9-1 over a plain socket).
# Environment: PYTHON (default python3), RABBITMQ_WAIT_SECONDS (default 90).
set -euo pipefail

PYTHON=${PYTHON:-python3}
HOST=127.0.0.1
REDIS_PORT=6379
AMQP_PORT=5672
REDIS_WAIT_SECONDS=15
RABBITMQ_WAIT_SECONDS=${RABBITMQ_WAIT_SECONDS:-90}
LOG_DIR=${TMPDIR:-/tmp}

# probe redis|rabbitmq: exit 0 if the service answers properly, 1 if nothing listens on its port,
# 2 if something answers but wrongly (not Redis, guest/guest refused...), 3 if the port is open but
# gives no answer (yet); prints the reason on failure.
probe() {
    "$PYTHON" - "$1" "$HOST" "$REDIS_PORT" "$AMQP_PORT" <<'PY'
import socket
import struct
import sys

TIMEOUT = 3.0


class Wrong(Exception):
    """The port answered, but not as the service should: starting it again would not help."""


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        buf += chunk
    return buf


class Silent(Exception):
    """The port accepts connections but gives no proper answer (yet): busy, booting, or not ours."""


def connect(host: str, port: int) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=TIMEOUT)
    except OSError as exc:
        print(str(exc) or type(exc).__name__)
        sys.exit(1)


def redis(host: str, port: int) -> None:
    with connect(host, port) as sock:
        sock.sendall(b"PING\r\n")
        line = sock.makefile("rb").readline(200).strip()
    if line.startswith(b"-LOADING"):
        raise Silent("Redis is still loading its data")
    if line != b"+PONG":
        raise Wrong(f"PING was answered with {line.decode(errors='replace')!r}, not +PONG")


def shortstr(text: str) -> bytes:
    data = text.encode()
    return bytes([len(data)]) + data


def longstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def table(items: dict[str, object]) -> bytes:
    body = b""
    for key, value in items.items():
        body += shortstr(key)
        if isinstance(value, bool):
            body += b"t" + bytes([value])
        elif isinstance(value, dict):
            body += b"F" + table(value)
        else:
            body += b"S" + longstr(str(value).encode())
    return struct.pack(">I", len(body)) + body


def send_method(sock: socket.socket, class_id: int, method_id: int, args: bytes) -> None:
    payload = struct.pack(">HH", class_id, method_id) + args
    sock.sendall(struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce")


def read_method(sock: socket.socket, expected: tuple[int, int]) -> bytes:
    header = recv_exact(sock, 7)
    if header.startswith(b"AMQP"):
        raise Wrong("the broker does not speak AMQP 0-9-1")
    frame_type, _channel, size = struct.unpack(">BHI", header)
    payload = recv_exact(sock, size)
    if frame_type != 1 or recv_exact(sock, 1) != b"\xce":
        raise Wrong("not an AMQP 0-9-1 method frame")
    ids = struct.unpack(">HH", payload[:4])
    if ids == (10, 50):  # connection.close: the broker says why it refuses us
        (code,) = struct.unpack(">H", payload[4:6])
        text = payload[7 : 7 + payload[6]].decode(errors="replace")
        raise Wrong(f"the broker refused the connection: {code} {text}")
    if ids != expected:
        raise Wrong(f"expected AMQP method {expected}, got {ids}")
    return payload[4:]


def rabbitmq(host: str, port: int) -> None:
    """Log in as guest/guest on vhost / and close cleanly, as a client would."""
    with connect(host, port) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        read_method(sock, (10, 10))  # connection.start
        try:
            properties = table(
                {"product": "goalhorn ensure-services", "capabilities": {"authentication_failure_close": True}}
            )
            send_method(sock, 10, 11, properties + shortstr("PLAIN") + longstr(b"\0guest\0guest") + shortstr("en_US"))
            tune = read_method(sock, (10, 30))
            channel_max, frame_max, _heartbeat = struct.unpack(">HIH", tune[:8])
            send_method(sock, 10, 31, struct.pack(">HIH", channel_max, frame_max, 0))
            send_method(sock, 10, 40, shortstr("/") + shortstr("") + b"\x00")  # connection.open
            read_method(sock, (10, 41))
            send_method(sock, 10, 50, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0))
            read_method(sock, (10, 51))
        except ConnectionError as exc:
            raise Wrong(f"the broker dropped the guest/guest login ({exc})") from exc


service, host, redis_port, amqp_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
try:
    if service == "redis":
        redis(host, redis_port)
    else:
        rabbitmq(host, amqp_port)
except Wrong as exc:
    print(exc)
    sys.exit(2)
except (Silent, OSError) as exc:
    print(str(exc) or type(exc).__name__)
    sys.exit(3)
PY
}

say() { printf '%-9s %s\n' "$1:" "$2"; }
die() {
    say "$1" "$2" >&2
    exit 1
}

address() { if [[ $1 == redis ]]; then echo "$HOST:$REDIS_PORT"; else echo "$HOST:$AMQP_PORT"; fi; }
limit() { if [[ $1 == redis ]]; then echo "$REDIS_WAIT_SECONDS"; else echo "$RABBITMQ_WAIT_SECONDS"; fi; }
package() { if [[ $1 == redis ]]; then echo redis-server; else echo rabbitmq-server; fi; }

# The server binary's path, or nothing if it is not installed (/usr/sbin is not on a user's PATH).
server_bin() {
    local name
    name=$(package "$1")
    command -v "$name" 2>/dev/null && return 0
    for dir in /usr/sbin /usr/lib/rabbitmq/bin; do
        if [[ -x $dir/$name ]]; then
            echo "$dir/$name"
            return 0
        fi
    done
    return 0
}

# wait_for SERVICE SECONDS: probe once a second until it answers or time is up; returns the last
# probe's status and sets WAITED (seconds) and REASON (the last failure).
wait_for() {
    local service=$1 seconds=$2 start=$SECONDS rc
    while :; do
        REASON=$(probe "$service") && rc=0 || rc=$?
        WAITED=$((SECONDS - start))
        if [[ $rc -eq 0 ]] || ((WAITED >= seconds)); then
            return "$rc"
        fi
        sleep 1
    done
}

start_service() {
    local service=$1 bin=$2 output
    if [[ $service == redis ]]; then
        output=$("$bin" --daemonize yes --bind "$HOST" --port "$REDIS_PORT" --save "" --appendonly no \
            --dir "$LOG_DIR" --logfile "$LOG_DIR/goalhorn-redis.log" 2>&1) || {
            die redis "could not start redis-server: $output"
        }
        wait_for redis "$REDIS_WAIT_SECONDS" ||
            die redis "started redis-server but $HOST:$REDIS_PORT did not answer within ${REDIS_WAIT_SECONDS}s ($REASON); see $LOG_DIR/goalhorn-redis.log"
    else
        say rabbitmq "starting it (rabbitmq-server -detached); waiting up to ${RABBITMQ_WAIT_SECONDS}s for an AMQP login"
        output=$("$bin" -detached 2>&1) || {
            local hint=""
            [[ $EUID -ne 0 ]] && hint="; run: sudo rabbitmq-server -detached  (or: sudo systemctl start rabbitmq-server)"
            die rabbitmq "could not start rabbitmq-server: $output$hint"
        }
        wait_for rabbitmq "$RABBITMQ_WAIT_SECONDS" ||
            die rabbitmq "started rabbitmq-server but $HOST:$AMQP_PORT gave no guest/guest AMQP login within ${RABBITMQ_WAIT_SECONDS}s ($REASON); see /var/log/rabbitmq/"
    fi
}

main() {
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        echo "ensure-services: '$PYTHON' not found (set PYTHON=/path/to/python3)" >&2
        exit 1
    fi

    local service rc reason down=() missing=()
    for service in redis rabbitmq; do
        reason=$(probe "$service") && rc=0 || rc=$?
        if [[ $rc -eq 3 ]]; then
            # Something listens there: starting a second server cannot help; give it time to answer.
            wait_for "$service" "$(limit "$service")" && rc=0 || rc=$?
            reason=$REASON
        fi
        case $rc in
            0) say "$service" "answering on $(address "$service") (already running; nothing to do)" ;;
            1) down+=("$service") ;;
            3) die "$service" "$(address "$service") accepts connections but gave no answer within $(limit "$service")s: $reason" ;;
            *) die "$service" "something answers on $(address "$service") but not as it should: $reason" ;;
        esac
    done
    ((${#down[@]})) || return 0

    for service in "${down[@]}"; do
        [[ -n $(server_bin "$service") ]] || missing+=("$(package "$service")")
    done
    if ((${#missing[@]})); then
        if [[ $EUID -ne 0 ]]; then
            echo "ensure-services: ${missing[*]} not installed and not answering; install them, then re-run 'make services':" >&2
            echo "    sudo apt-get install -y ${missing[*]}" >&2
            exit 1
        fi
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "ensure-services: ${missing[*]} not installed and there is no apt-get; install them with your package manager" >&2
            exit 1
        fi
        echo "ensure-services: installing ${missing[*]} with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi

    local installed action
    for service in "${down[@]}"; do
        installed=""
        [[ " ${missing[*]} " == *" $(package "$service") "* ]] && installed="installed $(package "$service") with apt-get; "
        # On a machine with an init system, the package's install scripts may have started it already.
        if [[ -n $installed ]] && wait_for "$service" 5; then
            action="${installed}the package started it"
        else
            start_service "$service" "$(server_bin "$service")"
            action="${installed}was not answering; started it"
        fi
        say "$service" "answering on $(address "$service") ($action, up after ${WAITED}s)"
    done
}

main "$@"
