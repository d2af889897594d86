"""A local FCM HTTP v1 server: OAuth token endpoint and ``messages:send``, errors included.

It behaves like the real service where goalhorn and firebase-admin can tell: a service account's
signed JWT assertion is exchanged for a bearer token at ``/token`` (the ``token_uri`` written into
the service-account files it hands out); ``POST /v1/projects/{project}/messages:send`` checks that
token, validates the message (exactly one target: ``token``, ``fid``, ``topic`` or ``condition``;
string-only data; android priority and ttl; the 4 KiB payload cap) and answers with the real
response and error bodies. Tests steer failures: ``unregistered`` tokens (404 UNREGISTERED),
:meth:`FcmSandbox.fail_next` (429 with Retry-After, 5xx), :meth:`FcmSandbox.unavailable_for`
(a 503 window), ``delay_s``, :meth:`FcmSandbox.stall_after` (requests hang until released) and
``faults`` (windows opened at runtime, :mod:`goalhorn.sandbox.faults`). Topic management and the
fan-out of topic and condition messages: :mod:`goalhorn.sandbox.fcm_topics`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import re
import secrets
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from firebase_admin import credentials

from goalhorn.sandbox.faults import Faults
from goalhorn.sandbox.fcm_topics import (
    TOPIC_NAME,
    InvalidCondition,
    TokenQuota,
    TopicFanout,
    TopicRegistry,
    batch_request,
)
from goalhorn.sandbox.recorder import PushRecorder
from goalhorn.sandbox.steering import Steering

MAX_PAYLOAD_BYTES = 4096
MAX_REQUEST_BYTES = 64 * 1024
MAX_IID_REQUEST_BYTES = 1 << 20
"""An IID batch request carries up to 1,000 tokens of ~160 characters each (~170 KB)."""
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
_SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
_SUBSCRIPTIONS_PATH = re.compile(r"^/v1/projects/([^/]+)/registrations/([^/]+)/topicSubscriptions(?:/([^/]+))?$")
_IID_PATHS = {"/iid/v1:batchAdd": True, "/iid/v1:batchRemove": False}
_TTL = re.compile(r"^\d+(\.\d{1,9})?s$")
_TARGETS = ("token", "fid", "topic", "condition")
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}
_STATUS |= {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
_FCM_CODE = {404: "UNREGISTERED", 429: "QUOTA_EXCEEDED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def error_body(status: int, message: str, fcm_code: str | None = None, field: str | None = None) -> dict[str, Any]:
    """An FCM v1 error body as Google's front end sends it."""
    details: list[dict[str, Any]] = []
    if fcm_code:
        details.append({"@type": _FCM_ERROR, "errorCode": fcm_code})
    if field:
        details.append({"@type": _BAD_REQUEST, "fieldViolations": [{"field": field, "description": message}]})
    error: dict[str, Any] = {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return {"error": error}


class InvalidMessage(ValueError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def validate_message(message: Any) -> str:
    """Check a v1 ``message`` the way FCM does; returns its target (token, fid, topic or condition)."""
    if not isinstance(message, dict):
        raise InvalidMessage("Request contains an invalid argument.", "message")
    targets = [t for t in _TARGETS if t in message]
    if len(targets) != 1:
        raise InvalidMessage("Recipient of the message is not set.", "message")
    target = message[targets[0]]
    spaced = targets[0] != "condition" and isinstance(target, str) and any(c.isspace() for c in target)
    if not isinstance(target, str) or not target.strip() or spaced:
        raise InvalidMessage("Invalid registration token", f"message.{targets[0]}")
    data = message.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InvalidMessage("Invalid value at 'message.data': values must be strings", "message.data")
    android = message.get("android", {})
    if not isinstance(android, dict):
        raise InvalidMessage("Invalid value at 'message.android'", "message.android")
    if android.get("priority", "normal") not in ("high", "normal", "HIGH", "NORMAL"):
        raise InvalidMessage("Invalid value at 'message.android.priority'", "message.android.priority")
    if "ttl" in android and not (isinstance(android["ttl"], str) and _TTL.match(android["ttl"])):
        raise InvalidMessage("Invalid value at 'message.android.ttl'", "message.android.ttl")
    notification = message.get("notification", {})
    if not isinstance(notification, dict) or not all(isinstance(v, str) for v in notification.values()):
        raise InvalidMessage("Invalid value at 'message.notification'", "message.notification")
    payload = {k: message[k] for k in ("data", "notification") if k in message}
    if len(json.dumps(payload, separators=(",", ":")).encode()) > MAX_PAYLOAD_BYTES:
        raise InvalidMessage("Request contains an invalid argument.")
    return str(target)


def sandbox_certificate(path: str | Path) -> credentials.Certificate:
    """firebase-admin credentials from a sandbox service-account file, for firebase-admin's own client.

    google-auth's authorized sessions look up a "regional access boundary" on googleapis.com after
    each token refresh; a sandbox credential has none, so the lookup is switched off (no traffic
    leaves the machine). goalhorn's provider refreshes tokens itself and never triggers it.
    """
    certificate = credentials.Certificate(str(path))
    google_credential = certificate.get_credential()
    google_credential._is_regional_access_boundary_lookup_required = lambda: False
    return certificate


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    retry_after: int | None


class FcmSandbox(Steering):
    """An aiohttp FCM v1 stand-in. ``received`` counts accepted messages per target."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        project_id: str = "goalhorn-sandbox",
        recorder: PushRecorder | None = None,
        *,
        topic_fanout_per_s: float = 0.0,
        topic_quota_per_s: float | None = None,
    ) -> None:
        super().__init__()
        self.topics = TopicRegistry()
        """Who is subscribed to which topic (``goalhorn.sandbox.fcm_topics``)."""
        self.fanout = TopicFanout(topic_fanout_per_s)
        """Tokens a second topic and condition messages are delivered to (0: as fast as it goes)."""
        self.topic_quota = TokenQuota(topic_quota_per_s)
        """Tokens a second topic management accepts (None: no quota; past it, 429)."""
        self.fanned_out: collections.Counter[str] = collections.Counter()
        """Deliveries per token of topic and condition messages."""
        self.recorder = recorder
        """Where accepted messages are recorded, if anywhere."""
        self.host = host
        self.port = port
        self.project_id = project_id
        self.messages: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.unregistered: set[str] = set()
        self.iid_gone = False
        """Answer the IID batch API 404, as Google will once it removes it (clients must use v1)."""
        self.delay_s = 0.0
        self.requests = 0
        self.faults = Faults()
        self.tokens_issued = 0
        self._keys: dict[str, Any] = {}
        self._tokens: dict[str, float] = {}
        self._failures: deque[_Failure] = deque()
        self._ids = itertools.count(1)
        self._runner: web.BaseRunner | None = None
        self.url = ""

    # --- steering ---------------------------------------------------------------------------
    def fail_next(self, n: int, status: int, retry_after: int | None = None) -> None:
        """Answer the next ``n`` sends with ``status`` (429, 500, 503, 401...)."""
        self._failures.extend(_Failure(status, retry_after) for _ in range(n))

    def service_account(self, path: Path, *, trusted: bool = True) -> Path:
        """Write a service-account JSON with a fresh RSA key whose ``token_uri`` is this server."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = secrets.token_hex(20)
        if trusted:
            self._keys[key_id] = key.public_key()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        info = {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": key_id,
            "private_key": pem.decode(),
            "client_email": f"sandbox@{self.project_id}.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": f"{self.url}/token",
        }
        path.write_text(json.dumps(info))
        return path

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> str:
        # aiohttp's low-level server: no router or middleware between a request and its answer.
        server = web.Server(self._route, handler_cancellation=True)
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port, backlog=1024).start()
        self._runner = runner
        self.url = f"http://{self.host}:{runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        self.release_stalled()
        await self.fanout.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- handlers ---------------------------------------------------------------------------
    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        limit = MAX_IID_REQUEST_BYTES if request.path in _IID_PATHS else MAX_REQUEST_BYTES
        if (request.content_length or 0) > limit:
            return web.Response(status=413)
        subscriptions = _SUBSCRIPTIONS_PATH.match(request.raw_path.partition("?")[0])
        if subscriptions is not None:
            return await self._subscription(request, *subscriptions.groups())
        if request.method != "POST":
            return web.Response(status=405)
        if request.path == "/token":
            return await self._token(request)
        if request.path in _IID_PATHS:
            return await self._iid_batch(request, _IID_PATHS[request.path])
        match = _SEND_PATH.match(request.path)
        if match is None:
            return self._error(404, "Requested entity was not found.")
        return await self._send(request, match.group(1))

    async def _token(self, request: web.BaseRequest) -> web.Response:
        form = await request.post()
        assertion = form.get("assertion")
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or not isinstance(assertion, str):
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            key = self._keys[jwt.get_unverified_header(assertion).get("kid", "")]
            # google-auth always names Google's token endpoint as the audience, whatever token_uri is.
            jwt.decode(assertion, key, algorithms=["RS256"], audience=[f"{self.url}/token", GOOGLE_TOKEN_URI])
        except (KeyError, jwt.PyJWTError):
            error = {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            return web.json_response(error, status=400)
        token = "ya29.sandbox-" + secrets.token_urlsafe(24)
        self._tokens[token] = time.time() + 3600
        self.tokens_issued += 1
        return web.json_response({"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    def _error(self, status: int, message: str, fcm_code: str | None = None, **headers: str) -> web.Response:
        return web.json_response(error_body(status, message, fcm_code), status=status, headers=headers)

    async def _send(self, request: web.BaseRequest, project: str) -> web.Response:
        self.requests += 1
        self.faults.received += 1
        response = await self._answer_send(request, project)
        self.faults.count(response.status)
        return response

    async def _answer_send(self, request: web.BaseRequest, project: str) -> web.Response:
        raw = await request.read()
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self._tokens.get(bearer, 0.0) < time.time():
            return self._error(401, "Request had invalid authentication credentials.")
        if project != self.project_id:
            return self._error(403, "Permission denied on project.", "SENDER_ID_MISMATCH")
        if self.unavailable:
            return self._error(503, "The service is currently unavailable.", "UNAVAILABLE")
        if self._failures:
            failure = self._failures.popleft()
            extra = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
            return self._error(failure.status, "Failure requested by the test.", _FCM_CODE.get(failure.status), **extra)
        try:
            body = json.loads(raw)
            message = body["message"] if isinstance(body, dict) else None
            target = validate_message(message)
            audience = self._audience(message)  # type: ignore[arg-type]  # validated: a dict
        except (ValueError, KeyError) as exc:
            field = exc.field if isinstance(exc, InvalidMessage) else None
            text = str(exc) if isinstance(exc, InvalidMessage) else "Request contains an invalid argument."
            return web.json_response(error_body(400, text, "INVALID_ARGUMENT", field), status=400)
        refusal = await self.faults.verdict(target)
        if refusal is not None:
            extra = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after is not None else {}
            return self._error(
                refusal.status, "Failure window opened on the sandbox.", _FCM_CODE.get(refusal.status), **extra
            )
        if target in self.unregistered:
            return self._error(404, "Requested entity was not found.", "UNREGISTERED")
        await self.accept(target)  # cancelled, unrecorded, if the client goes away while stalled
        self.messages.append(message)  # type: ignore[arg-type]
        if audience is not None:
            self._fan_out(message, audience)  # type: ignore[arg-type]
        elif self.recorder is not None:
            self._record(self.recorder, message)  # type: ignore[arg-type]
        return web.json_response({"name": f"projects/{self.project_id}/messages/0:{next(self._ids)}"})

    @staticmethod
    def _record(recorder: PushRecorder, message: dict[str, Any]) -> None:
        kind = next(t for t in _TARGETS if t in message)
        notification = message.get("notification", {})
        intent_id = message.get("data", {}).get("intent_id")
        recorder.record("fcm", {kind: message[kind]}, notification.get("title"), notification.get("body"), intent_id)

    # --- topics ---------------------------------------------------------------------------
    def _audience(self, message: dict[str, Any]) -> list[str] | None:
        """The tokens a topic or condition message reaches now (None: a message to one device), in no
        particular order. Taken while the send waits for its answer, so kept cheap: sorting a 540k-token
        topic took 0.75 s, most of the 1.2-1.4 s the bench saw FCM take to accept a 1M goal's topic
        message."""
        if "topic" in message:
            topic = str(message["topic"]).removeprefix("/topics/")
            if not TOPIC_NAME.match(topic):
                raise InvalidMessage("Invalid topic name", "message.topic")
            subscribed = self.topics.subscribers.get(topic, ())
            if not self.unregistered:
                return list(subscribed)
            return [token for token in subscribed if token not in self.unregistered]
        elif "condition" in message:
            try:
                members = self.topics.matching(str(message["condition"]))
            except InvalidCondition as exc:
                raise InvalidMessage(str(exc), "message.condition") from None
        else:
            return None
        return [token for token in members if token not in self.unregistered]

    def _fan_out(self, message: dict[str, Any], tokens: list[str]) -> None:
        kind = "topic" if "topic" in message else "condition"
        route = {"via": "topic", kind: str(message[kind])}
        notification = message.get("notification", {})
        title, text = notification.get("title"), notification.get("body")
        intent_id = message.get("data", {}).get("intent_id")

        def deliver(token: str) -> None:
            self.fanned_out[token] += 1
            if self.recorder is not None:
                self.recorder.record("fcm", {"token": token}, title, text, intent_id, route)

        self.fanout.start(tokens, deliver)

    def _authorized(self, request: web.BaseRequest) -> bool:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return self._tokens.get(bearer, 0.0) >= time.time()

    async def _iid_batch(self, request: web.BaseRequest, add: bool) -> web.Response:
        """``iid/v1:batchAdd`` / ``:batchRemove``: per-token results in order; errors as ``{"error": CODE}``."""
        raw = await request.read()
        self.topics.calls["batchAdd" if add else "batchRemove"] += 1
        if self.iid_gone:
            return web.json_response({"error": "NOT_FOUND"}, status=404)
        if not self._authorized(request):
            return web.json_response({"error": "UNAUTHENTICATED"}, status=401)
        if self.unavailable:
            return web.json_response({"error": "UNAVAILABLE"}, status=503)
        try:
            topic, tokens = batch_request(json.loads(raw))
        except ValueError:
            return web.json_response({"error": "INVALID_ARGUMENT"}, status=400)
        if not all(self.topic_quota.take() for _ in tokens):
            return web.json_response({"error": "QUOTA_EXCEEDED"}, status=429, headers={"Retry-After": "1"})
        results: list[dict[str, str]] = []
        done: list[str] = []
        for token in tokens:
            if not token or any(c.isspace() for c in token):
                results.append({"error": "INVALID_ARGUMENT"})
            elif token in self.unregistered:
                results.append({"error": "NOT_FOUND"})
            else:
                results.append({})
                done.append(token)
        (self.topics.add if add else self.topics.remove)(topic, done)
        return web.json_response({"results": results})

    async def _subscription(
        self, request: web.BaseRequest, project: str, quoted_token: str, quoted_topic: str | None
    ) -> web.Response:
        """The v1 registrations API, one token a call: subscribe (POST ``?topic_name=``) or
        unsubscribe (DELETE ``.../<topic>``)."""
        await request.read()
        subscribe = quoted_topic is None
        if request.method != ("POST" if subscribe else "DELETE"):
            return web.Response(status=405)
        self.topics.calls["subscribe" if subscribe else "unsubscribe"] += 1
        if not self._authorized(request):
            return self._error(401, "Request had invalid authentication credentials.")
        if project != self.project_id:
            return self._error(403, "Permission denied on project.", "SENDER_ID_MISMATCH")
        if self.unavailable:
            return self._error(503, "The service is currently unavailable.", "UNAVAILABLE")
        token = urllib.parse.unquote(quoted_token)
        topic = request.query.get("topic_name", "") if subscribe else urllib.parse.unquote(quoted_topic or "")
        if not TOPIC_NAME.match(topic) or not token or any(c.isspace() for c in token):
            return web.json_response(error_body(400, "Invalid topic or token.", "INVALID_ARGUMENT"), status=400)
        if not self.topic_quota.take():
            return self._error(429, "Topic management quota exceeded.", "QUOTA_EXCEEDED", **{"Retry-After": "1"})
        if token in self.unregistered:
            return self._error(404, "Requested entity was not found.", "UNREGISTERED")
        (self.topics.add if subscribe else self.topics.remove)(topic, [token])
        return web.json_response({})
