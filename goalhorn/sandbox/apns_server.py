"""A local APNs provider API: HTTP/2 over TLS with a generated self-signed certificate.

Like Apple's server it takes ``POST /3/device/<token>`` with an ES256 provider token (JWT) in
``authorization``, checks the JWT against the signing keys it handed out (:meth:`ApnsSandbox.signing_key`),
the topic, push type, priority, expiration, collapse id and the 4 KiB payload cap, echoes ``apns-id``
and answers 200 with headers only: no body frame (aioapns fails on an empty DATA frame). Errors
carry Apple's ``{"reason": ...}`` body; an unregistered token gets 410 with the ``timestamp`` (ms)
since when it was invalid. Tests steer it like the FCM sandbox: ``unregistered``, ``fail_next``,
``unavailable_for``, ``delay_s``, ``stall_after``, and ``faults`` (windows opened at runtime).

Live Activities (issue 15). A ``liveactivity`` push on ``/3/device/`` must name the topic
``<bundle>.push-type.liveactivity`` and carry a valid ``aps`` (``event`` start/update/end, an integer
``timestamp``, a ``content-state`` object on start and update, ``attributes-type`` and ``attributes``
on start; optional dates integers), else 400 ``BadPayload`` with a sandbox-only ``detail`` naming the
rule. Broadcast channels as iOS 18 has them: channel management on a second listener
(``channels_port``, Apple's api-manage-broadcast host): ``POST /1/apps/<bundle>/channels``
(``{"message-storage-policy": 0|1, "push-type": "LiveActivity"}``; 201 and ``apns-channel-id``),
``GET``/``DELETE`` the same path with ``apns-channel-id`` (200 with the configuration / 204),
``GET /1/apps/<bundle>/all-channels`` (``{"channels": [...]}``), at most ``channel_limit`` (10,000)
channels (400 ``CannotCreateChannelConfig`` past it); and on the push listener
``POST /4/broadcasts/apps/<bundle>`` with ``apns-channel-id`` (400 ``MissingChannelId``,
``BadChannelId`` or ``ChannelNotRegistered``: Apple's status table for these APIs has no 410),
``apns-push-type: liveactivity`` (400 ``MissingPushType`` / ``InvalidPushType``),
``apns-expiration: 0`` on a No Message Storage channel
(400 ``BadExpirationDate``), a payload of at most 5,120 bytes (413) with a valid Live Activity ``aps``
whose event is update or end (ActivityKit starts an activity only from a push-to-start token).
Who watches a channel is steered (:meth:`ApnsSandbox.subscribe`, or the control API): an accepted
broadcast is delivered to each subscribed token (unregistered ones skipped), each recorded like a
per-token push with ``"via": "broadcast"`` and the ``channel``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import json
import re
import secrets
import ssl
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
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
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

from goalhorn.sandbox.faults import Faults
from goalhorn.sandbox.fcm_topics import TopicFanout
from goalhorn.sandbox.recorder import PushRecorder, alert_text
from goalhorn.sandbox.steering import Steering

MAX_PAYLOAD_BYTES = 4096
MAX_BROADCAST_PAYLOAD_BYTES = 5120
CHANNEL_LIMIT = 10_000
"""Channels an app may hold per environment (Apple)."""
LIVE_ACTIVITY_SUFFIX = ".push-type.liveactivity"
LIVE_EVENTS = ("start", "update", "end")
MAX_CONCURRENT_STREAMS = 1000
"""What Apple's servers advertise once a connection is established."""
CONNECTION_WINDOW = 16 * 1024 * 1024
PUSH_TYPES = {"alert", "background", "voip", "complication", "fileprovider", "mdm", "liveactivity", "location"}
_TOKEN = re.compile(r"^[0-9a-fA-F]{16,200}$")
_PATH = re.compile(r"^/3/device/([^/]+)$")
_BROADCAST_PATH = re.compile(r"^/4/broadcasts/apps/([^/]+)$")
_CHANNELS_PATH = re.compile(r"^/1/apps/([^/]+)/(channels|all-channels)$")
_CHANNEL_ID = re.compile(r"^[A-Za-z0-9+/]{4,128}={0,2}$")
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
    """The device token, or for a broadcast the channel id."""
    headers: dict[str, str]
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Answer:
    """What the sandbox answers one request: status, JSON body (None: headers only) and extra headers."""

    status: int
    body: dict[str, Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def error(cls, status: int, reason: str, detail: str = "") -> Answer:
        """Apple's ``{"reason": ...}``; ``detail`` (sandbox only) says which rule a payload broke."""
        return cls(status, {"reason": reason, "detail": detail} if detail else {"reason": reason})


@dataclass(slots=True)
class Channel:
    storage: int
    """``message-storage-policy``: 0 No Message Storage, 1 Most Recent Message."""
    subscribers: set[str]


def live_activity_problem(aps: dict[str, Any]) -> str | None:
    """What is wrong with a Live Activity ``aps`` (None: nothing), as ActivityKit reads it."""
    event = aps.get("event")
    if event not in LIVE_EVENTS:
        return "aps.event must be start, update or end"
    if not _is_int(aps.get("timestamp")):
        return "aps.timestamp must be an integer (epoch seconds)"
    state = aps.get("content-state")
    if (event != "end" or state is not None) and not isinstance(state, dict):
        return "aps.content-state must be an object (required on start and update)"
    for key in ("stale-date", "dismissal-date"):
        if key in aps and not _is_int(aps[key]):
            return f"aps.{key} must be an integer (epoch seconds)"
    if event == "start":
        if not isinstance(aps.get("attributes-type"), str) or not aps["attributes-type"]:
            return "aps.attributes-type is required on start"
        if not isinstance(aps.get("attributes"), dict):
            return "aps.attributes (an object) is required on start"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
        self.channels: dict[str, Channel] = {}
        """channel id -> its storage policy and the device tokens subscribed to it."""
        self.channel_limit = CHANNEL_LIMIT
        self.channels_port = 0
        """Where channel management listens (a second listener, as Apple's is a host of its own)."""
        self.broadcasts: deque[ApnsRequest] = deque(maxlen=10_000)
        self.management_calls: Counter[str] = Counter()
        """Channel management requests answered, per operation (create, read, delete, list)."""
        self.fanned_out: Counter[str] = Counter()
        """Broadcast deliveries per device token."""
        self.fanout = TopicFanout()
        self._manage_server: asyncio.Server | None = None
        self._keys: dict[str, Any] = {}
        self._verified: dict[str, dict[str, Any]] = {}
        self._failures: deque[_Failure] = deque()
        self._server: asyncio.Server | None = None
        self.cert_path, self.key_path = make_tls_certificate(directory, host)

    # --- steering ---------------------------------------------------------------------------
    def fail_next(self, n: int, status: int, reason: str) -> None:
        """Answer the next ``n`` notifications with ``status`` and ``reason`` (e.g. 429 TooManyRequests)."""
        self._failures.extend(_Failure(status, reason) for _ in range(n))

    def subscribe(self, channel_id: str, tokens: list[str]) -> None:
        """These device tokens watch the channel from now on (ActivityKit's ``pushType: .channel``);
        KeyError for a channel the sandbox does not hold."""
        self.channels[channel_id].subscribers.update(tokens)

    def unsubscribe(self, channel_id: str, tokens: list[str]) -> None:
        channel = self.channels.get(channel_id)
        if channel is not None:
            channel.subscribers.difference_update(tokens)

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
        self._server = await loop.create_server(lambda: _H2Server(self.answer), self.host, self.port, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]
        self._manage_server = await loop.create_server(
            lambda: _H2Server(self.manage), self.host, self.channels_port, ssl=context
        )
        self.channels_port = self._manage_server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        self.release_stalled()
        await self.fanout.stop()
        for server in (self._server, self._manage_server):
            if server is not None:
                server.close()
        self._server = self._manage_server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- the provider API -------------------------------------------------------------------
    async def answer(self, headers: dict[str, str], body: bytes) -> Answer:
        """The answer to one request on the push listener (a device push or a broadcast)."""
        self.faults.received += 1
        answer = await self._answer(headers, body)
        self.faults.count(answer.status)
        return answer

    async def _answer(self, headers: dict[str, str], body: bytes) -> Answer:
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        if _BROADCAST_PATH.match(headers.get(":path", "")):
            return await self._broadcast(headers, body)
        problem = self._check(headers, body)
        if problem is not None:
            return problem
        token = _PATH.match(headers[":path"]).group(1)  # type: ignore[union-attr]  # checked above
        refusal = await self.faults.verdict(token)
        if refusal is not None:
            return Answer.error(refusal.status, _REFUSAL_REASONS.get(refusal.status, "InternalServerError"))
        await self.accept(token)
        payload = json.loads(body)
        self.requests.append(ApnsRequest(token, headers, payload))
        if self.recorder is not None:
            title, text = alert_text(payload["aps"].get("alert"))
            self.recorder.record("apns", {"token": token}, title, text, payload.get("intent_id"))
        return Answer(200)

    def _common(self, headers: dict[str, str]) -> Answer | None:
        """What every push and broadcast is refused for first: method, provider token, outages."""
        if headers.get(":method") != "POST":
            return Answer.error(405, "MethodNotAllowed")
        auth = self._check_token(headers.get("authorization", ""))
        if auth:
            return Answer.error(403, auth)
        if self.unavailable:
            return Answer.error(503, "ServiceUnavailable")
        if self._failures:
            failure = self._failures.popleft()
            return Answer.error(failure.status, failure.reason)
        return None

    def _check(self, headers: dict[str, str], body: bytes) -> Answer | None:
        match = _PATH.match(headers.get(":path", ""))
        if headers.get(":method") == "POST" and match is None:
            return Answer.error(404, "BadPath")
        common = self._common(headers)
        if common is not None:
            return common
        assert match is not None  # a POST elsewhere was refused above, any other method by _common
        push_type = headers.get("apns-push-type", "alert")
        topic = headers.get("apns-topic", "")
        if push_type not in PUSH_TYPES:
            return Answer.error(400, "InvalidPushType")
        live = push_type == "liveactivity"
        expected_topic = self.topic + (LIVE_ACTIVITY_SUFFIX if live else "")
        if not topic:
            return Answer.error(400, "MissingTopic")
        if topic != expected_topic:
            return Answer.error(400, "TopicDisallowed")
        if headers.get("apns-priority", "10") not in ("1", "5", "10"):
            return Answer.error(400, "BadPriority")
        if not headers.get("apns-expiration", "0").isdigit():
            return Answer.error(400, "BadExpirationDate")
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return Answer.error(400, "BadCollapseId")
        token = match.group(1)
        if not _TOKEN.match(token):
            return Answer.error(400, "BadDeviceToken")
        payload, problem = _payload(body, MAX_PAYLOAD_BYTES)
        if problem is not None:
            return problem
        if live:
            detail = live_activity_problem(payload["aps"])
            if detail:
                return Answer.error(400, "BadPayload", detail)
        if token in self.unregistered:
            return Answer(410, {"reason": "Unregistered", "timestamp": self.unregistered[token]})
        return None

    async def _broadcast(self, headers: dict[str, str], body: bytes) -> Answer:
        """``POST /4/broadcasts/apps/<bundle>``: one Live Activity update for every device on a channel."""
        common = self._common(headers)
        if common is not None:
            return common
        bundle = _BROADCAST_PATH.match(headers[":path"]).group(1)  # type: ignore[union-attr]  # routed on it
        if bundle != self.topic:
            return Answer.error(400, "TopicDisallowed")
        push_type = headers.get("apns-push-type")
        if not push_type:
            return Answer.error(400, "MissingPushType")
        if push_type != "liveactivity":
            return Answer.error(400, "InvalidPushType")
        channel_id = headers.get("apns-channel-id", "")
        channel, problem = self._channel(channel_id)
        if problem is not None:
            return problem
        assert channel is not None
        if headers.get("apns-priority", "10") not in ("1", "5", "10"):
            return Answer.error(400, "BadPriority")
        expiration = headers.get("apns-expiration", "0")
        if not expiration.isdigit():
            return Answer.error(400, "BadExpirationDate")
        if channel.storage == 0 and int(expiration) != 0:
            return Answer.error(400, "BadExpirationDate", "a No Message Storage channel takes apns-expiration 0")
        payload, problem = _payload(body, MAX_BROADCAST_PAYLOAD_BYTES)
        if problem is not None:
            return problem
        detail = live_activity_problem(payload["aps"])
        if not detail and payload["aps"]["event"] == "start":
            detail = "a broadcast updates or ends Live Activities: aps.event start goes to push-to-start tokens"
        if detail:
            return Answer.error(400, "BadPayload", detail)
        refusal = await self.faults.verdict(channel_id)
        if refusal is not None:
            return Answer.error(refusal.status, _REFUSAL_REASONS.get(refusal.status, "InternalServerError"))
        await self.accept(channel_id)
        self.broadcasts.append(ApnsRequest(channel_id, headers, payload))
        self._fan_out(channel_id, payload, sorted(channel.subscribers - self.unregistered.keys()))
        return Answer(200, headers=(("apns-unique-id", str(uuid.uuid4())),))

    def _fan_out(self, channel_id: str, payload: dict[str, Any], tokens: list[str]) -> None:
        route = {"via": "broadcast", "channel": channel_id}
        title, text = alert_text(payload["aps"].get("alert"))
        intent_id = payload.get("intent_id")

        def deliver(token: str) -> None:
            self.fanned_out[token] += 1
            if self.recorder is not None:
                self.recorder.record("apns", {"token": token}, title, text, intent_id, route)

        self.fanout.start(tokens, deliver)

    def _channel(self, channel_id: str) -> tuple[Channel | None, Answer | None]:
        if not channel_id:
            return None, Answer.error(400, "MissingChannelId")
        if not _CHANNEL_ID.match(channel_id):
            return None, Answer.error(400, "BadChannelId")
        channel = self.channels.get(channel_id)
        if channel is None:
            return None, Answer.error(400, "ChannelNotRegistered")
        return channel, None

    # --- channel management -----------------------------------------------------------------
    async def manage(self, headers: dict[str, str], body: bytes) -> Answer:
        """The answer to one request on the channel management listener."""
        method = headers.get(":method", "")
        match = _CHANNELS_PATH.match(headers.get(":path", ""))
        if match is None:
            return Answer.error(404, "BadPath")
        auth = self._check_token(headers.get("authorization", ""))
        if auth:
            return Answer.error(403, auth)
        if self.unavailable:
            return Answer.error(503, "ServiceUnavailable")
        bundle, resource = match.groups()
        if bundle != self.topic:
            return Answer.error(400, "TopicDisallowed")
        if resource == "all-channels":
            if method != "GET":
                return Answer.error(405, "MethodNotAllowed")
            self.management_calls["list"] += 1
            return Answer(200, {"channels": list(self.channels)})
        if method == "POST":
            return self._create(body)
        if method not in ("GET", "DELETE"):
            return Answer.error(405, "MethodNotAllowed")
        channel_id = headers.get("apns-channel-id", "")
        channel, problem = self._channel(channel_id)
        if problem is not None:
            return problem
        assert channel is not None
        if method == "GET":
            self.management_calls["read"] += 1
            return Answer(200, {"message-storage-policy": channel.storage, "push-type": "LiveActivity"})
        self.management_calls["delete"] += 1
        del self.channels[channel_id]
        return Answer(204)

    def _create(self, body: bytes) -> Answer:
        try:
            config = json.loads(body) if body else None
        except ValueError:
            config = None
        if not isinstance(config, dict):
            return Answer.error(400, "BadPayload", "the body is a JSON object")
        if config.get("push-type") != "LiveActivity":
            return Answer.error(400, "InvalidPushType")
        storage = config.get("message-storage-policy", 0)
        if storage not in (0, 1) or isinstance(storage, bool):
            return Answer.error(400, "BadMessageStoragePolicy")
        if len(self.channels) >= self.channel_limit:
            return Answer.error(400, "CannotCreateChannelConfig")
        self.management_calls["create"] += 1
        channel_id = base64.b64encode(secrets.token_bytes(16)).decode()
        self.channels[channel_id] = Channel(storage, set())
        return Answer(201, headers=(("apns-channel-id", channel_id),))

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


def _payload(body: bytes, limit: int) -> tuple[dict[str, Any], Answer | None]:
    """The JSON payload of a push, or the answer refusing it (empty, too large, not an object with aps)."""
    if not body:
        return {}, Answer.error(400, "PayloadEmpty")
    if len(body) > limit:
        return {}, Answer.error(413, "PayloadTooLarge")
    try:
        payload = json.loads(body)
    except ValueError:
        return {}, Answer.error(400, "BadPayload")
    if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
        return {}, Answer.error(400, "BadPayload")
    return payload, None


Respond = Callable[[dict[str, str], bytes], Awaitable[Answer]]


class _H2Server(asyncio.Protocol):
    """One client connection: HTTP/2 frames in, APNs answers (from ``respond``) out."""

    def __init__(self, respond: Respond) -> None:
        self._respond_to = respond
        self._conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._windows: dict[int, asyncio.Event] = {}
        """Streams whose answer waits for the peer to open its flow control window."""

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
            elif isinstance(event, WindowUpdated):
                for stream_id, window in list(self._windows.items()):
                    if event.stream_id in (0, stream_id):
                        window.set()
            elif isinstance(event, ConnectionTerminated) and self._transport is not None:
                self._transport.close()
        self._flush()

    async def _respond(self, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        answer = await self._respond_to(headers, body)
        if self._transport is None:
            return
        if "apns-request-id" in headers or headers.get(":path", "").startswith(("/1/", "/4/")):
            echo = ("apns-request-id", headers.get("apns-request-id") or str(uuid.uuid4()))
        else:
            echo = ("apns-id", headers.get("apns-id") or str(uuid.uuid4()).upper())
        response = [(":status", str(answer.status)), echo, *answer.headers]
        try:
            if answer.body is None:
                self._conn.send_headers(stream_id, response, end_stream=True)
            else:
                self._conn.send_headers(stream_id, [*response, ("content-type", "application/json")])
                await self._send_body(stream_id, json.dumps(answer.body).encode())
        except ProtocolError:
            return  # the client reset the stream meanwhile
        self._flush()

    async def _send_body(self, stream_id: int, data: bytes) -> None:
        """``data`` in frames the peer's flow control windows and frame size allow (a channel list of
        10,000 ids is ~300 KB), waiting for WINDOW_UPDATEs in between."""
        view = memoryview(data)
        while True:
            size = min(self._conn.local_flow_control_window(stream_id), self._conn.max_outbound_frame_size)
            if size <= 0:
                self._flush()
                window = self._windows[stream_id] = asyncio.Event()
                try:
                    await window.wait()
                finally:
                    self._windows.pop(stream_id, None)
                continue
            chunk, view = view[:size], view[size:]
            self._conn.send_data(stream_id, bytes(chunk), end_stream=not view)
            if not view:
                return
