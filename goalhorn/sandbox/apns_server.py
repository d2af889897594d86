"""A local APNs provider API: HTTP/2 over TLS with a generated self-signed certificate.

Like Apple's server it takes ``POST /3/device/<token>`` with an ES256 provider token (JWT) in
``authorization``, checks the JWT against the signing keys it handed out (:meth:`ApnsSandbox.signing_key`),
the topic, push type, priority, expiration, collapse id and the 4 KiB payload cap, echoes ``apns-id``
and answers 200 with headers only: no body frame (aioapns fails on an empty DATA frame). Errors
carry Apple's ``{"reason": ...}`` body; an unregistered token gets 410 with the ``timestamp`` (ms)
since when it was invalid. Tests steer it like the FCM sandbox: ``unregistered``, ``fail_next``,
``unavailable_for``, ``delay_s``, ``stall_after``, and ``faults`` (windows opened at runtime).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import re
import ssl
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded, StreamReset
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

from goalhorn.sandbox.faults import Faults
from goalhorn.sandbox.recorder import PushRecorder, alert_text
from goalhorn.sandbox.steering import Steering

MAX_PAYLOAD_BYTES = 4096
MAX_CONCURRENT_STREAMS = 1000
"""What Apple's servers advertise once a connection is established."""
CONNECTION_WINDOW = 16 * 1024 * 1024
PUSH_TYPES = {"alert", "background", "voip", "complication", "fileprovider", "mdm", "liveactivity", "location"}
_TOKEN = re.compile(r"^[0-9a-fA-F]{16,200}$")
_PATH = re.compile(r"^/3/device/([^/]+)$")
_REFUSAL_REASONS = {429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_tls_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A throwaway self-signed certificate for ``host`` (and localhost); returns (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "goalhorn APNs sandbox")])
    now = dt.datetime.now(dt.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        alt_names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "apns-sandbox.crt", directory / "apns-sandbox.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem(key))
    return cert_path, key_path


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class ApnsRequest:
    token: str
    headers: dict[str, str]
    payload: dict[str, Any]


class ApnsSandbox(Steering):
    """The APNs stand-in; ``received`` counts accepted notifications per device token."""

    def __init__(
        self,
        directory: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        team_id: str = "SANDBOXTM1",
        topic: str = "",
        recorder: PushRecorder | None = None,
    ) -> None:
        super().__init__()
        self.recorder = recorder
        """Where accepted notifications are recorded, if anywhere."""
        self.directory = directory
        self.host = host
        self.port = port
        self.team_id = team_id
        self.topic = topic or "com.goalhorn.sandbox"
        self.requests: deque[ApnsRequest] = deque(maxlen=10_000)
        self.unregistered: dict[str, int] = {}
        """token -> ms timestamp since when it is invalid (410)."""
        self.delay_s = 0.0
        self.faults = Faults()
        self._keys: dict[str, Any] = {}
        self._verified: dict[str, dict[str, Any]] = {}
        self._failures: deque[_Failure] = deque()
        self._server: asyncio.Server | None = None
        self.cert_path, self.key_path = make_tls_certificate(directory, host)

    # --- steering ---------------------------------------------------------------------------
    def fail_next(self, n: int, status: int, reason: str) -> None:
        """Answer the next ``n`` notifications with ``status`` and ``reason`` (e.g. 429 TooManyRequests)."""
        self._failures.extend(_Failure(status, reason) for _ in range(n))

    def signing_key(self, key_id: str = "SANDBOXKEY", *, trusted: bool = True) -> Path:
        """Write a fresh ES256 token-auth key (.p8) and, if ``trusted``, accept JWTs signed with it."""
        key = ec.generate_private_key(ec.SECP256R1())
        if trusted:
            self._keys[key_id] = key.public_key()
        path = self.directory / f"AuthKey_{key_id}.p8"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return path

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> int:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        context.set_alpn_protocols(["h2"])
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _H2Server(self), self.host, self.port, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        self.release_stalled()
        if self._server is not None:
            self._server.close()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- the provider API -------------------------------------------------------------------
    async def answer(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any] | None]:
        """Status and error body (None on success) for one request."""
        self.faults.received += 1
        status, error = await self._answer(headers, body)
        self.faults.count(status)
        return status, error

    async def _answer(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any] | None]:
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        status, error = self._check(headers, body)
        if status != 200:
            return status, error
        token = _PATH.match(headers[":path"]).group(1)  # type: ignore[union-attr]  # checked above
        refusal = await self.faults.verdict(token)
        if refusal is not None:
            return refusal.status, {"reason": _REFUSAL_REASONS.get(refusal.status, "InternalServerError")}
        await self.accept(token)
        payload = json.loads(body)
        self.requests.append(ApnsRequest(token, headers, payload))
        if self.recorder is not None:
            title, text = alert_text(payload["aps"].get("alert"))
            self.recorder.record("apns", {"token": token}, title, text, payload.get("intent_id"))
        return 200, None

    def _check(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        def reject(status: int, reason: str) -> tuple[int, dict[str, Any]]:
            return status, {"reason": reason}

        match = _PATH.match(headers.get(":path", ""))
        if headers.get(":method") != "POST":
            return reject(405, "MethodNotAllowed")
        if match is None:
            return reject(404, "BadPath")
        auth = self._check_token(headers.get("authorization", ""))
        if auth:
            return reject(403, auth)
        if self.unavailable:
            return reject(503, "ServiceUnavailable")
        if self._failures:
            failure = self._failures.popleft()
            return reject(failure.status, failure.reason)
        push_type = headers.get("apns-push-type", "alert")
        topic = headers.get("apns-topic", "")
        if push_type not in PUSH_TYPES:
            return reject(400, "InvalidPushType")
        expected_topic = self.topic + (".push-type.liveactivity" if push_type == "liveactivity" else "")
        if not topic:
            return reject(400, "MissingTopic")
        if topic != expected_topic:
            return reject(400, "TopicDisallowed")
        if headers.get("apns-priority", "10") not in ("1", "5", "10"):
            return reject(400, "BadPriority")
        if not headers.get("apns-expiration", "0").isdigit():
            return reject(400, "BadExpirationDate")
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return reject(400, "BadCollapseId")
        token = match.group(1)
        if not _TOKEN.match(token):
            return reject(400, "BadDeviceToken")
        if not body:
            return reject(400, "PayloadEmpty")
        if len(body) > MAX_PAYLOAD_BYTES:
            return reject(413, "PayloadTooLarge")
        try:
            payload = json.loads(body)
        except ValueError:
            return reject(400, "BadPayload")
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            return reject(400, "BadPayload")
        if token in self.unregistered:
            return 410, {"reason": "Unregistered", "timestamp": self.unregistered[token]}
        return 200, {}

    def _check_token(self, authorization: str) -> str | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "MissingProviderToken"
        claims = self._verified.get(token)
        if claims is None:
            try:
                key = self._keys[jwt.get_unverified_header(token).get("kid", "")]
                claims = jwt.decode(token, key, algorithms=["ES256"], options={"require": ["iss", "iat"]})
            except (KeyError, jwt.PyJWTError):
                return "InvalidProviderToken"
            if len(self._verified) > 1000:
                self._verified.clear()
            self._verified[token] = claims  # a provider token is reused for up to an hour; verify it once
        if claims["iss"] != self.team_id:
            return "InvalidProviderToken"
        if time.time() - float(claims["iat"]) > 3600:
            return "ExpiredProviderToken"
        return None


class _H2Server(asyncio.Protocol):
    """One client connection: HTTP/2 frames in, APNs answers out."""

    def __init__(self, sandbox: ApnsSandbox) -> None:
        self._sandbox = sandbox
        self._conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._conn.initiate_connection()
        self._conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS})
        # A connection window for every stream at once: aioapns sleeps a second when it runs dry.
        self._conn.increment_flow_control_window(CONNECTION_WINDOW)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        for task in self._tasks:
            task.cancel()

    def _flush(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(self._conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self._conn.receive_data(data)
        except ProtocolError:
            self._flush()
            if self._transport is not None:
                self._transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self._streams[event.stream_id] = ({str(k): str(v) for k, v in event.headers or []}, bytearray())
            elif isinstance(event, DataReceived):
                if event.stream_id in self._streams:
                    self._streams[event.stream_id][1].extend(event.data or b"")
                self._conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
            elif isinstance(event, StreamEnded):
                headers, body = self._streams.pop(event.stream_id, ({}, bytearray()))
                task = asyncio.ensure_future(self._respond(event.stream_id, headers, bytes(body)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(event, StreamReset):
                self._streams.pop(event.stream_id, None)
            elif isinstance(event, ConnectionTerminated) and self._transport is not None:
                self._transport.close()
        self._flush()

    async def _respond(self, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        status, error = await self._sandbox.answer(headers, body)
        if self._transport is None:
            return
        apns_id = headers.get("apns-id") or str(uuid.uuid4()).upper()
        try:
            if error is None:
                self._conn.send_headers(stream_id, [(":status", "200"), ("apns-id", apns_id)], end_stream=True)
            else:
                data = json.dumps(error).encode()
                response = [(":status", str(status)), ("content-type", "application/json"), ("apns-id", apns_id)]
                self._conn.send_headers(stream_id, response)
                self._conn.send_data(stream_id, data, end_stream=True)
        except ProtocolError:
            return  # the client reset the stream meanwhile
        self._flush()
