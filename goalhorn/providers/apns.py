"""APNs provider on aioapns: token auth (.p8, ES256) over HTTP/2.

aioapns has no host or port parameter; a protocol subclass carrying ``APNS_SERVER``/``APNS_PORT``
on ``pool.protocol_class`` points it at the sandbox (or any APNs host). Its pool binds to the
event loop it is made in, so the client is built on the first ``send``, inside the running loop.
Per intent: ``apns-priority`` 10 for urgent intents (priority >= 5) and 5 otherwise,
``apns-expiration`` at the intent's expiry, ``apns-collapse-id`` from its collapse key (cut to APNs'
64 bytes with a hash suffix, ``collapse_id``); the push type (alert, background, liveactivity) comes
from the intent's ``apns_push_type`` data field.

A Live Activity intent (``data["liveactivity"]``, issue 15) is sent as the ``aps`` it carries, never
rendered: to update and push-to-start tokens through aioapns, and to a broadcast channel (a device
whose address is ``channel:<channel id>``) as ``POST /4/broadcasts/apps/<bundle>``, a path aioapns
cannot reach, through httpx's HTTP/2 client (:mod:`goalhorn.providers.apns_channels`, the same
provider token); both count against the one ``circuit``. Alerts keep their own send path, untouched.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from aioapns import APNs, NotificationRequest, PushType
from aioapns.common import NotificationResult
from aioapns.connection import APNsProductionClientProtocol
from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.exceptions import H2Error
from hpack import Encoder

from goalhorn.catalog import default_catalog
from goalhorn.catalog.templates import Renderer, RenderFailed
from goalhorn.keys import Platform
from goalhorn.models import DeliveryBatch, DeliveryResult, Device, Intent
from goalhorn.providers import Provider, Send, accepted, collapse_id, deadline, render_failed, unanswered
from goalhorn.providers.apns_channels import (
    CHANNEL_ADDRESS,
    ApnsHttp,
    ProviderToken,
    new_request_id,
    read_key,
    reason_of,
)
from goalhorn.settings import Settings

_TOKEN_REASONS = {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered"}
_CHANNEL_GONE_REASONS = {"ChannelNotRegistered", "BadChannelId", "MissingChannelId"}
LIVE_ACTIVITY_TOPIC_SUFFIX = ".push-type.liveactivity"
_RETRYABLE_REASONS = {
    "TooManyRequests",
    "InternalServerError",
    "ServiceUnavailable",
    "Shutdown",
    "InvalidProviderToken",
    "ExpiredProviderToken",
    "MissingProviderToken",
    "TooManyProviderTokenUpdates",
}


def result_for_notification(device: Device, result: NotificationResult) -> DeliveryResult:
    """Map an APNs answer to the device's outcome (per-token errors are never retryable)."""
    if result.is_successful:
        return accepted(device, result.notification_id)
    reason = result.description or f"http_{result.status}"
    if reason in _TOKEN_REASONS or result.status == "410":
        since = datetime.fromtimestamp(result.timestamp / 1000, UTC) if result.timestamp else None
        return DeliveryResult(device_id=device.device_id, outcome="invalid_token", reason=reason, invalid_since=since)
    retryable = reason in _RETRYABLE_REASONS or result.status in ("429", "500", "503")
    return DeliveryResult(device_id=device.device_id, outcome="failed", retryable=retryable, reason=reason)


def result_for_broadcast(device: Device, response: httpx.Response) -> DeliveryResult:
    """Map APNs' answer to a broadcast on a channel to the channel's outcome: a channel APNs does not
    know (deleted, expired, malformed) is an ``invalid_token``, so the registry forgets it."""
    if response.status_code == 200:
        return accepted(device, response.headers.get("apns-request-id"))
    reason = reason_of(response)
    if reason in _CHANNEL_GONE_REASONS:
        return DeliveryResult(device_id=device.device_id, outcome="invalid_token", reason=reason)
    retryable = reason in _RETRYABLE_REASONS or response.status_code in (429, 500, 503)
    return DeliveryResult(device_id=device.device_id, outcome="failed", retryable=retryable, reason=reason)


def live_activity_payload(intent: Intent) -> dict[str, Any]:
    """``{"aps": <intent.data["liveactivity"]>}`` with the intent's ids beside it (the ledger's), and
    ``input-push-channel`` on a start when the fanout put the game's channel on the intent;
    ValueError when the data is not a JSON object."""
    aps = json.loads(intent.data["liveactivity"])
    if not isinstance(aps, dict):
        raise ValueError("liveactivity is not a JSON object")
    channel = intent.data.get("input_push_channel")
    if channel and aps.get("event") == "start":
        aps["input-push-channel"] = channel
    return {"aps": aps, "intent_id": intent.intent_id, "event_id": intent.event_id}


def payload_for(intent: Intent, locale: str, push_type: PushType, render: Renderer) -> dict[str, Any]:
    extra = {k: v for k, v in intent.data.items() if k != "apns_push_type"}
    extra |= {"intent_id": intent.intent_id, "event_id": intent.event_id}
    if push_type is PushType.BACKGROUND:
        return {"aps": {"content-available": 1}, **extra}
    message = render(intent, locale)
    if push_type is PushType.LIVEACTIVITY:
        state = {"title": message.title, "body": message.body, **extra}
        return {"aps": {"timestamp": int(time.time()), "event": "update", "content-state": state}}
    return {"aps": {"alert": {"title": message.title, "body": message.body}, "sound": "default"}, **extra}


_PER_REQUEST_HEADERS = frozenset({":path", "apns-id", "apns-expiration", "authorization"})
"""Request headers whose value is new on (nearly) every request: the device token, the request id, the
expiry (to the second), and the provider token, which h2 keeps out of the compression context."""


class _RequestHeaders(Encoder):
    """HPACK for aioapns' requests, at a fraction of h2's default cost. By default every literal is
    Huffman-coded in pure Python and every new value enters the dynamic table: per request that is the
    device token, the request id and the expiry coded bit by bit (a fifth of an APNs send's CPU), each
    then evicting older entries. Here the per-request values go as never-indexed literals, uncoded (some
    40 bytes more per request), and the rest (method, host, topic, priority, push type, collapse id) is
    indexed once and sent as one byte each after."""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        return super().encode([(name, value, name in _PER_REQUEST_HEADERS) for name, value in headers], huffman=False)


class _Connection(H2Connection):
    MAX_CLOSED_STREAMS = 1024
    """How many closed streams the connection remembers (to tell a late frame on one from a protocol
    error): h2 keeps 65,536 per connection, some 6 MB each once that many pushes went through it;
    aioapns has at most 1,000 streams open per connection."""


_H2_CONFIG = H2Configuration(
    client_side=True,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
)
"""h2's per-request header checks, a tenth of an APNs send's CPU, are off: aioapns writes its headers
lowercase and well-formed, from the settings, the intent and a device token the provider checked
(``_plain_token``); of an answer only ``:status``, ``apns-id`` and the JSON body are read (frames are
still parsed strictly), and one without them is an answer lost: its request times out, retryable."""


def _plain_token(token: str) -> bool:
    """Whether a device token can go in a request path as is (APNs tokens are hex)."""
    return token.isascii() and token.isalnum()


class _Endpoint(APNsProductionClientProtocol):
    """aioapns' connection to ``APNS_SERVER``:``APNS_PORT`` (set per provider on a subclass), noting in
    ``written`` (also per provider) the id of each request that failed after it was written, so the
    provider can tell a request that never left from one whose answer was lost. aioapns keeps a
    request's future after a failure; this drops it."""

    written: set[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _Connection(config=_H2_CONFIG)
        self.conn.encoder = _RequestHeaders()

    def on_stream_ended(self, stream_id: int) -> None:
        """A request's stream is done: forget it. aioapns maps each stream to its request and drops the
        pair only on an answer with an error body, so a connection kept every accepted push's pair
        until it closed (some 150 bytes a push: 50 MB through the APNs share of a 1M goal). An error
        status without a body (which aioapns would leave waiting for one) is that request's answer."""
        notification_id = self.request_streams.pop(stream_id, None)
        status = self.request_statuses.pop(notification_id, None) if notification_id is not None else None
        if notification_id is not None and status is not None:
            request = self.requests.pop(notification_id, None)
            if request is not None and not request.done():
                request.set_result(NotificationResult(notification_id, status))
        # A request with no answer at all stays in ``requests``: its timeout finds it written (``maybe_sent``).
        super().on_stream_ended(stream_id)

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        try:
            return await super().send_notification(request)
        except BaseException:
            if self.requests.pop(request.notification_id, None) is not None:  # registered once flushed
                self.written.add(request.notification_id)
            raise


async def _quiet(request: NotificationRequest, result: NotificationResult) -> None:
    """aioapns logs every failed notification unless given a handler; goalhorn counts them instead."""


class ApnsProvider(Provider):
    """Sends through APNs (or the sandbox at ``apns_host``:``apns_port``) with a .p8 signing key."""

    platform: Platform = "apns"

    def __init__(self, settings: Settings, *, render: Renderer | None = None) -> None:
        self._render = render or default_catalog().render
        self._key = read_key(settings)
        self._settings = settings
        self._circuit = f"apns:{settings.apns_team_id}:{settings.apns_key_id}"
        self._client: APNs | None = None
        token = ProviderToken(self._key, settings.apns_key_id, settings.apns_team_id)
        self._broadcasts = ApnsHttp(settings, settings.apns_host, settings.apns_port, token)
        """Broadcasts to Live Activity channels (a path aioapns cannot reach), on httpx's HTTP/2 client."""
        self._broadcast_path = f"/4/broadcasts/apps/{settings.apns_topic}"
        self._written: set[str] = set()
        """Ids of requests that failed after they were written (``_Endpoint``), until their send looks."""
        # apns-id: a UUID's random head (per provider) and a counter as its last 12 hex digits, unique
        # per request at a fraction of uuid4's cost (a urandom call per request).
        self._id_head = str(uuid.uuid4())[:24]
        self._ids = itertools.count()
        # aioapns polls every 10 ms for a free stream when its pool is full: the dispatch stage keeps
        # fewer in flight than the pool's streams allow.
        self.concurrency = settings.apns_concurrency

    def circuit(self, device: Device) -> str:
        return self._circuit

    def _apns(self) -> APNs:
        if self._client is None:
            settings = self._settings
            context = ssl.create_default_context(cafile=settings.apns_ca_file)
            client = APNs(
                key=self._key,
                key_id=settings.apns_key_id,
                team_id=settings.apns_team_id,
                topic=settings.apns_topic,
                max_connections=settings.apns_max_connections,
                ssl_context=context,
                err_func=_quiet,
            )
            endpoint = {"APNS_SERVER": settings.apns_host, "APNS_PORT": settings.apns_port, "written": self._written}
            client.pool.protocol_class = type("ApnsEndpoint", (_Endpoint,), endpoint)
            self._client = client
        return self._client

    async def prepare(self, batch: DeliveryBatch) -> Send:
        client = self._apns()
        intent = batch.intent
        if "liveactivity" in intent.data:
            return self._prepare_live_activity(client, intent)
        push_type = PushType(intent.data.get("apns_push_type", "alert"))
        topic = self._settings.apns_topic + (".push-type.liveactivity" if push_type is PushType.LIVEACTIVITY else "")
        priority = 10 if intent.priority >= 5 and push_type is not PushType.BACKGROUND else 5
        ttl = max(0, int(intent.expires_at.timestamp() - time.time()))
        collapse = collapse_id(intent.collapse_key) if intent.collapse_key else None
        timeout_s = self._settings.apns_timeout_s
        payloads: dict[str, dict[str, Any]] = {}

        async def send(device: Device) -> DeliveryResult:
            payload = payloads.get(device.locale)
            if payload is None:
                try:
                    payload = payloads[device.locale] = payload_for(intent, device.locale, push_type, self._render)
                except RenderFailed as exc:
                    return render_failed(device, exc)
            request = NotificationRequest(
                device_token=device.address,
                message=payload,
                notification_id=f"{self._id_head}{next(self._ids) & 0xFFFFFFFFFFFF:012x}",
                time_to_live=ttl,
                priority=priority,
                collapse_key=collapse,
                push_type=push_type,
                apns_topic=topic,
            )
            return await self._request(client, request, device, timeout_s)

        return send

    def _prepare_live_activity(self, client: APNs, intent: Intent) -> Send:
        """A Live Activity intent: the ``aps`` it carries, never rendered, to update and push-to-start
        tokens (``/3/device/``, topic ``<bundle>.push-type.liveactivity``) and, for a ``channel:<id>``
        address, as one broadcast to the channel's subscribers (``apns-expiration: 0``, as its No
        Message Storage channel takes). Priority 10 for urgent intents (priority >= 5), else 5."""
        try:
            payload = live_activity_payload(intent)
        except ValueError as exc:
            problem = f"invalid_liveactivity: {exc}"

            async def refuse(device: Device) -> DeliveryResult:
                return DeliveryResult(device_id=device.device_id, outcome="failed", reason=problem, message_error=True)

            return refuse
        priority = 10 if intent.priority >= 5 else 5
        topic = self._settings.apns_topic + LIVE_ACTIVITY_TOPIC_SUFFIX
        ttl = max(0, int(intent.expires_at.timestamp() - time.time()))
        collapse = collapse_id(intent.collapse_key) if intent.collapse_key else None
        timeout_s = self._settings.apns_timeout_s
        broadcast_body = json.dumps(payload, separators=(",", ":")).encode()
        broadcasts, path = self._broadcasts, self._broadcast_path

        async def send(device: Device) -> DeliveryResult:
            if device.address.startswith(CHANNEL_ADDRESS):
                return await broadcast(device)
            request = NotificationRequest(
                device_token=device.address,
                message=payload,
                notification_id=f"{self._id_head}{next(self._ids) & 0xFFFFFFFFFFFF:012x}",
                time_to_live=ttl,
                priority=priority,
                collapse_key=collapse,
                push_type=PushType.LIVEACTIVITY,
                apns_topic=topic,
            )
            return await self._request(client, request, device, timeout_s)

        async def broadcast(device: Device) -> DeliveryResult:
            headers = {
                "apns-channel-id": device.address[len(CHANNEL_ADDRESS) :],
                "apns-push-type": "liveactivity",
                "apns-expiration": "0",
                "apns-priority": str(priority),
                "apns-request-id": new_request_id(),
                "content-type": "application/json",
            }
            try:
                async with deadline(timeout_s):
                    response = await broadcasts.request("POST", path, headers, broadcast_body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:  # nothing was written
                return unanswered(device, f"connection_error: {type(exc).__name__}", maybe_sent=False)
            except (TimeoutError, httpx.TimeoutException):
                return unanswered(device, "timeout", maybe_sent=True)
            except httpx.HTTPError as exc:  # the connection failed under the request: its answer is lost
                return unanswered(device, f"connection_error: {type(exc).__name__}", maybe_sent=True)
            if response.status_code == 403 and reason_of(response) == "ExpiredProviderToken":
                broadcasts.token.renew()
            return result_for_broadcast(device, response)

        return send

    async def _request(
        self, client: APNs, request: NotificationRequest, device: Device, timeout_s: float
    ) -> DeliveryResult:
        """One request through aioapns (an alert or a Live Activity to a token), as the device's result."""
        if not _plain_token(request.device_token):  # what APNs answers such a token, without the request
            return DeliveryResult(device_id=device.device_id, outcome="invalid_token", reason="BadDeviceToken")
        try:
            async with deadline(timeout_s):
                result = await client.send_notification(request)
        except TimeoutError:
            return unanswered(device, "timeout", maybe_sent=self._was_written(request))
        except (MaxAttemptsExceeded, ConnectionClosed, ApnsConnectionError, H2Error, OSError) as exc:
            # Connection-level: aioapns could not connect, or the HTTP/2 connection closed (before the
            # request was written, or under it: aioapns tries again on another connection first).
            reason = f"connection_error: {type(exc).__name__}"
            return unanswered(device, reason, maybe_sent=self._was_written(request))
        self._written.discard(request.notification_id)  # written, lost, then sent again by aioapns
        return result_for_notification(device, result)

    def _was_written(self, request: NotificationRequest) -> bool:
        """Whether a failed request was written on a connection (by any of aioapns' attempts)."""
        try:
            self._written.remove(request.notification_id)
        except KeyError:
            return False
        return True

    async def aclose(self) -> None:
        await self._broadcasts.aclose()
        if self._client is not None:
            pool = self._client.pool
            self._client = None
            # aioapns closes a connection by asking TLS for a graceful shutdown, which needs the event
            # loop to keep running; a worker stopping its loop right after would leak the sockets.
            for connection in list(pool.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()
            pool.close()
            await asyncio.sleep(0)  # the aborted transports release their sockets on the next turn
