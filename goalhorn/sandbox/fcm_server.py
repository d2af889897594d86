"""A local FCM HTTP v1 server: OAuth token endpoint and ``messages:send``, errors included.

It behaves like the real service where goalhorn and firebase-admin can tell: a service account's
signed JWT assertion is exchanged for a bearer token at ``/token`` (the ``token_uri`` written into
the service-account files it hands out); ``POST /v1/projects/{project}/messages:send`` checks that
token, validates the message (exactly one target: ``token``, ``fid``, ``topic`` or ``condition``;
string-only data; android priority and ttl; the 4 KiB payload cap) and answers with the real
response and error bodies. Tests steer failures: ``unregistered`` tokens (404 UNREGISTERED),
:meth:`FcmSandbox.fail_next` (429 with Retry-After, 5xx), :meth:`FcmSandbox.unavailable_for`
(a 503 window), ``delay_s``, :meth:`FcmSandbox.stall_after` (requests hang until released) and
``faults`` (windows opened at runtime, :mod:`goalhorn.sandbox.faults`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import time
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
from goalhorn.sandbox.recorder import PushRecorder
from goalhorn.sandbox.steering import Steering

MAX_PAYLOAD_BYTES = 4096
MAX_REQUEST_BYTES = 64 * 1024
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
_SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
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
    if not isinstance(target, str) or not target.strip() or any(c.isspace() for c in target):
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
    ) -> None:
        super().__init__()
        self.recorder = recorder
        """Where accepted messages are recorded, if anywhere."""
        self.host = host
        self.port = port
        self.project_id = project_id
        self.messages: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.unregistered: set[str] = set()
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
        if request.method != "POST":
            return web.Response(status=405)
        if (request.content_length or 0) > MAX_REQUEST_BYTES:
            return web.Response(status=413)
        if request.path == "/token":
            return await self._token(request)
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
        if self.recorder is not None:
            self._record(self.recorder, message)  # type: ignore[arg-type]
        return web.json_response({"name": f"projects/{self.project_id}/messages/0:{next(self._ids)}"})

    @staticmethod
    def _record(recorder: PushRecorder, message: dict[str, Any]) -> None:
        kind = next(t for t in _TARGETS if t in message)
        notification = message.get("notification", {})
        intent_id = message.get("data", {}).get("intent_id")
        recorder.record("fcm", {kind: message[kind]}, notification.get("title"), notification.get("body"), intent_id)
