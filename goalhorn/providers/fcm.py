"""FCM provider: firebase-admin for credentials and message building, aiohttp for sending.

firebase-admin's ``send_each_for_multicast`` spends a thread per message over a small connection
pool, and its async path runs on httpx; both are several times slower than aiohttp under
concurrency. So firebase-admin does what it is good at (service-account or application-default
credentials with token refresh, and building and validating the ``Message``), and each device's
request goes out on one shared aiohttp session (``fcm_concurrency`` connections). Per batch, the
access token is looked up once; per (intent, locale) the request body is serialized once, as the bytes
before and after the token, so a device costs only its token's splice. A Live Activity intent
(``data["live_update"]``) goes out the same way as a data-only message (``live_update_message``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from datetime import timedelta
from typing import Any

import aiohttp
import google.auth.exceptions
import google.auth.transport.requests
from firebase_admin import credentials, messaging
from yarl import URL

from goalhorn.catalog import default_catalog
from goalhorn.catalog.templates import Renderer, RenderFailed
from goalhorn.errors import ConfigError, ProviderAuthError, ProviderUnavailable
from goalhorn.keys import Platform
from goalhorn.models import DeliveryBatch, DeliveryResult, Device, Intent, utcnow
from goalhorn.providers import Provider, Send, accepted, collapse_id, deadline, render_failed, unanswered
from goalhorn.providers.webhook import retry_after_seconds
from goalhorn.settings import Settings

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 16 * 1024
_PLACEHOLDER = "goalhorn-placeholder"
_TOKEN_SLOT = json.dumps(_PLACEHOLDER).encode()
_CACHED_MESSAGES = 256
_TOKEN_ERRORS = {"UNREGISTERED", "SENDER_ID_MISMATCH"}
_TOKEN_KEY = b'"token":'
TOPIC_ADDRESS = "/topics/"
"""A device address starting so is an FCM topic (``goalhorn.topics``): one message its members share."""


def build_message(intent: Intent, locale: str, render: Renderer) -> dict[str, Any]:
    """The v1 ``message`` for an intent in one locale, built and validated by firebase-admin.

    Android priority is high for urgent intents (priority >= 5), ``ttl`` is what is left of the
    intent's life, and ``collapse_key`` (android) / ``apns-collapse-id`` come from its collapse key.
    A Live Activity intent (``data["live_update"]``) is a data-only message instead (``live_update_message``).
    """
    if "live_update" in intent.data:
        return live_update_message(intent)
    rendered = render(intent, locale)
    ttl = max(0.0, (intent.expires_at - utcnow()).total_seconds())
    urgent = intent.priority >= 5
    data = {**intent.data, "intent_id": intent.intent_id, "event_id": intent.event_id, "kind": str(intent.kind)}
    apns_headers = {
        "apns-priority": "10" if urgent else "5",
        "apns-expiration": str(int(intent.expires_at.timestamp())),
    }
    if intent.collapse_key:
        apns_headers["apns-collapse-id"] = collapse_id(intent.collapse_key)
    message = messaging.Message(
        notification=messaging.Notification(title=rendered.title, body=rendered.body),
        data=data,
        android=messaging.AndroidConfig(
            priority="high" if urgent else "normal",
            collapse_key=intent.collapse_key,
            ttl=timedelta(seconds=int(ttl)),
        ),
        apns=messaging.APNSConfig(headers=apns_headers),
        fid=_PLACEHOLDER,
    )
    encoded: dict[str, Any] = messaging._MessagingService.encode_message(message)  # the SDK's encoder and checks
    del encoded["fid"]
    return encoded


def live_update_message(intent: Intent) -> dict[str, Any]:
    """The data-only message an Android app renders as the match's live update (issue 15): the intent's
    ``live_update`` object (string values: the content-state flattened) plus its ids, android priority
    high for urgent intents, ``collapse_key`` the activity id (a newer state replaces a queued older one),
    ``ttl`` what is left of the intent's life. Never rendered; the same for every locale.
    ValueError when ``live_update`` is not a JSON object of strings."""
    fields = json.loads(intent.data["live_update"])
    if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
        raise ValueError("live_update is not a JSON object of strings")
    ttl = max(0.0, (intent.expires_at - utcnow()).total_seconds())
    message = messaging.Message(
        data={**fields, "intent_id": intent.intent_id, "event_id": intent.event_id},
        android=messaging.AndroidConfig(
            priority="high" if intent.priority >= 5 else "normal",
            collapse_key=intent.data.get("activity_id") or intent.collapse_key,
            ttl=timedelta(seconds=int(ttl)),
        ),
        fid=_PLACEHOLDER,
    )
    encoded: dict[str, Any] = messaging._MessagingService.encode_message(message)
    del encoded["fid"]
    return encoded


def with_target(head: bytes, address: str) -> bytes:
    """The body's head up to its target: the device's token, or for a topic address
    (``/topics/<name>``, a topic send the fanout planned) ``"topic"`` instead of ``"token"``."""
    if address.startswith(TOPIC_ADDRESS):
        return head[: -len(_TOKEN_KEY)] + b'"topic":' + json.dumps(address[len(TOPIC_ADDRESS) :]).encode()
    return head + json.dumps(address).encode()


def _error_fields(payload: Any) -> tuple[str, str | None, list[str]]:
    """(status, FCM errorCode, violated fields) from an FCM v1 error body."""
    error = payload.get("error", {}) if isinstance(payload, dict) else {}
    if not isinstance(error, dict):
        return "", None, []
    code: str | None = None
    fields: list[str] = []
    for detail in error.get("details", []) if isinstance(error.get("details"), list) else []:
        if not isinstance(detail, dict):
            continue
        code = detail.get("errorCode", code)
        fields += [v.get("field", "") for v in detail.get("fieldViolations", []) if isinstance(v, dict)]
    return str(error.get("status", "")), code, fields


def result_for_response(device: Device, status: int, payload: Any, retry_after: str | None) -> DeliveryResult:
    """Map an FCM v1 answer to the device's outcome (per-token errors are never retryable)."""
    if status == 200:
        name = payload.get("name") if isinstance(payload, dict) else None
        return accepted(device, name if isinstance(name, str) else None)
    grpc_status, code, fields = _error_fields(payload)
    reason = code or grpc_status or f"http_{status}"
    if code in _TOKEN_ERRORS or (status == 400 and any(f in ("message.token", "message.fid") for f in fields)):
        return DeliveryResult(device_id=device.device_id, outcome="invalid_token", reason=reason)
    if status in (401, 429) or status >= 500 or code == "THIRD_PARTY_AUTH_ERROR":
        return DeliveryResult(
            device_id=device.device_id,
            outcome="failed",
            retryable=True,
            reason=reason,
            retry_after=retry_after_seconds(retry_after),
        )
    return DeliveryResult(device_id=device.device_id, outcome="failed", reason=reason)


class FcmProvider(Provider):
    """Sends through FCM's HTTP v1 API (or the sandbox at ``fcm_base_url``)."""

    platform: Platform = "fcm"

    def __init__(
        self, settings: Settings, credential: credentials.Base | None = None, *, render: Renderer | None = None
    ) -> None:
        self._settings = settings
        self._render = render or default_catalog().render
        try:
            if credential is None:
                path = settings.fcm_credentials_file
                credential = credentials.Certificate(path) if path else credentials.ApplicationDefault()
            project = settings.fcm_project_id or getattr(credential, "project_id", None)
            self._google = credential.get_credential()
        except (ValueError, OSError, google.auth.exceptions.GoogleAuthError) as exc:
            raise ConfigError(f"FCM credentials unusable: {exc}") from exc
        if not project:
            raise ConfigError("FCM project id unknown: set GOALHORN_FCM_PROJECT_ID or use a service-account file")
        self.project_id: str = project
        self._circuit = f"fcm:{project}"
        self.url = URL(f"{settings.fcm_base_url.rstrip('/')}/v1/projects/{project}/messages:send")
        self.concurrency = settings.fcm_concurrency
        self._session: aiohttp.ClientSession | None = None
        self._refresh = asyncio.Lock()
        self._bodies: OrderedDict[tuple[str, str], tuple[bytes, bytes]] = OrderedDict()

    def circuit(self, device: Device) -> str:
        return self._circuit

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._settings.fcm_concurrency),
                timeout=aiohttp.ClientTimeout(total=None),  # ``deadline`` around each request instead
                headers={"Content-Type": "application/json; charset=UTF-8"},
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                trust_env=False,
            )
        return self._session

    async def access_token(self) -> str:
        """A valid OAuth access token from the credential, refreshed off the loop when stale."""
        if not self._google.valid:
            async with self._refresh:
                if not self._google.valid:
                    try:
                        await asyncio.to_thread(self._google.refresh, google.auth.transport.requests.Request())
                    except google.auth.exceptions.TransportError as exc:
                        raise ProviderUnavailable(f"FCM token endpoint unreachable: {exc}") from exc
                    except google.auth.exceptions.RefreshError as exc:
                        raise ProviderAuthError(f"FCM credentials rejected: {exc}") from exc
        return str(self._google.token)

    def _body(self, intent: Intent, locale: str) -> tuple[bytes, bytes]:
        """The request body of an (intent, locale) as the bytes before and after the device's token."""
        key = (intent.intent_id, locale)
        body = self._bodies.get(key)
        if body is None:
            message = build_message(intent, locale, self._render)
            whole = json.dumps({"message": {**message, "token": _PLACEHOLDER}}, separators=(",", ":")).encode()
            head, _, tail = whole.partition(_TOKEN_SLOT)
            body = self._bodies[key] = (head, tail)
            if len(self._bodies) > _CACHED_MESSAGES:
                self._bodies.popitem(last=False)
        return body

    async def prepare(self, batch: DeliveryBatch) -> Send:
        session = self._client()
        headers = {"Authorization": f"Bearer {await self.access_token()}"}
        intent = batch.intent
        url = self.url
        timeout_s = self._settings.fcm_timeout_s

        async def send(device: Device) -> DeliveryResult:
            try:
                head, tail = self._body(intent, device.locale)
            except RenderFailed as exc:
                return render_failed(device, exc)
            except ValueError as exc:  # firebase-admin refused the message (e.g. a reserved data key)
                reason = f"invalid_message: {exc}"
                return DeliveryResult(device_id=device.device_id, outcome="failed", reason=reason, message_error=True)
            body = with_target(head, device.address) + tail
            try:
                async with deadline(timeout_s), session.post(url, data=body, headers=headers) as response:
                    raw = await response.content.read(MAX_RESPONSE_BYTES)
                    try:
                        payload = json.loads(raw) if raw else None
                    except ValueError:
                        payload = None
                    if response.status == 401:
                        self._google.token = None  # force a refresh on the next batch
                    return result_for_response(device, response.status, payload, response.headers.get("Retry-After"))
            except TimeoutError:  # the request may be at FCM (the pool holds no more than the workers send)
                return unanswered(device, "timeout", maybe_sent=True)
            except aiohttp.ClientConnectorError as exc:  # no connection: nothing was written
                return unanswered(device, f"connection_error: {type(exc).__name__}", maybe_sent=False)
            except aiohttp.ClientError as exc:  # the connection failed under the request: its answer is lost
                return unanswered(device, f"connection_error: {type(exc).__name__}", maybe_sent=True)

        return send

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
