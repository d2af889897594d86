"""Webhook provider: one Standard Webhooks signed POST per device, to the device's own URL.

Every request carries ``webhook-id`` (the same for an (intent, device) on every retry, so a
receiver can drop duplicates), ``webhook-timestamp`` and ``webhook-signature``: ``v1,<base64
HMAC-SHA256 of "{id}.{timestamp}.{body}">`` under each of the device's secrets (two during a
rotation). Targets pass the SSRF guard of :mod:`goalhorn.providers.ssrf`; redirects are never
followed, since a redirect could lead anywhere the guard would refuse.

Each endpoint URL is its own circuit, with at most ``webhook_endpoint_concurrency`` requests in flight
(taken by the dispatch stage before one of the ``webhook_concurrency`` shared slots), so a hanging
endpoint holds a few slots until its breaker opens on the timeouts, not all of them; a request unanswered
after ``webhook_slow_after_s`` gives its shared slot back and goes on aside (``webhook_slow_concurrency``
per process, hence the connection pool's size), so endpoints that start hanging before they ever failed
hold the shared slots that long, not until the timeout. For the breaker,
an endpoint's 4xx answer is the endpoint working (a success); a request refused before it was sent
(the SSRF guard, an unusable URL or secret) says nothing about the endpoint (``refused``: abstain).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from goalhorn.catalog import default_catalog
from goalhorn.catalog.templates import Rendered, Renderer, RenderFailed
from goalhorn.errors import AddressRefused
from goalhorn.keys import Platform
from goalhorn.models import DeliveryBatch, DeliveryResult, Device, Intent
from goalhorn.providers import Provider, Send, accepted, deadline, render_failed
from goalhorn.providers.ssrf import AddressPolicy, VettingResolver
from goalhorn.settings import Settings

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 * 1024
"""A receiver's answer is read up to this much (to reuse the connection), never more."""
SECRET_PREFIX = "whsec_"
USER_AGENT = "goalhorn-webhooks/1"
MEMO_SIZE = 4096
K = TypeVar("K")
V = TypeVar("V")


def webhook_id(intent_id: str, device_id: str) -> str:
    """The ``webhook-id`` of an (intent, device): stable, so retries of one delivery share it."""
    digest = hashlib.sha256(f"{len(intent_id)}:{intent_id}:{device_id}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def signing_keys(secret: str) -> list[bytes]:
    """The HMAC keys of a device secret: one ``whsec_<base64>`` or two separated by a space.

    Like the reference libraries, missing base64 padding is tolerated.
    """
    keys = []
    for part in secret.split():
        try:
            encoded = part.removeprefix(SECRET_PREFIX)
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error as exc:
            raise ValueError("webhook secret is not base64") from exc
        if not key:
            raise ValueError("webhook secret is empty")
        keys.append(key)
    if not keys:
        raise ValueError("webhook secret is empty")
    return keys


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: a space-separated ``v1,<base64>`` per key."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in keys)


def webhook_body(intent: Intent, message: Rendered) -> bytes:
    """The compact JSON payload; the intent's own fields win over same-named template data."""
    core: dict[str, Any] = {
        "intent_id": intent.intent_id,
        "event_id": intent.event_id,
        "game_id": intent.game_id,
        "sport": str(intent.sport),
        "team_id": intent.team_id,
        "priority": intent.priority,
        "title": message.title,
        "body": message.body,
    }
    data = {**core, **{k: v for k, v in intent.data.items() if k not in core}}
    payload = {"type": intent.kind.lower(), "timestamp": intent.event_at.isoformat(), "data": data}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header (delay-seconds or HTTP date) as seconds from ``now``; None if absent or bad."""
    if not value or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _memo(cache: dict[K, V], key: K, make: Callable[[], V]) -> V:
    """``cache[key]``, made on a miss; the cache is emptied when full (failures are never kept)."""
    value = cache.get(key)
    if value is None:
        if len(cache) >= MEMO_SIZE:
            cache.clear()
        value = cache[key] = make()
    return value


def _failed(device: Device, reason: str, *, retryable: bool, retry_after: float | None = None) -> DeliveryResult:
    return DeliveryResult(
        device_id=device.device_id,
        outcome="failed",
        retryable=retryable,
        reason=reason,
        retry_after=retry_after,
    )


def _refused(device: Device, reason: str) -> DeliveryResult:
    """A request that was never sent: the device's URL or secret cannot be used (not retried)."""
    return DeliveryResult(device_id=device.device_id, outcome="failed", reason=reason, refused=True)


def result_for_status(device: Device, msg_id: str, status: int, headers: Mapping[str, str]) -> DeliveryResult:
    """Map a receiver's HTTP status to the device's outcome."""
    if 200 <= status < 300:
        return accepted(device, msg_id)
    reason = f"http_{status}"
    if status == 410:
        return DeliveryResult(device_id=device.device_id, outcome="invalid_token", reason=reason)
    if 300 <= status < 400:
        return _failed(device, f"redirect_refused: {reason}", retryable=False)
    if status == 429 or status >= 500:
        retry_after = retry_after_seconds(headers.get("Retry-After"))
        return _failed(device, reason, retryable=True, retry_after=retry_after)
    return _failed(device, reason, retryable=False)


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read at most MAX_RESPONSE_BYTES of the answer; drop the connection if more is coming."""
    if response.content.at_eof():
        return
    received = 0
    try:
        while received < MAX_RESPONSE_BYTES:
            chunk = await response.content.read(MAX_RESPONSE_BYTES - received)
            if not chunk:
                return
            received += len(chunk)
    except (aiohttp.ClientError, TimeoutError):
        pass  # the status is what counts; a broken body does not change it
    if not response.content.at_eof():
        response.close()


class WebhookProvider(Provider):
    """Posts each device's notification to its URL, with at most ``webhook_concurrency`` in flight,
    ``webhook_endpoint_concurrency`` per endpoint.

    The HTTP session is made on the first ``prepare``, inside the running loop; ``resolver``
    (for tests) replaces the system resolver under the SSRF check, and is closed with the provider.
    """

    platform: Platform = "webhook"

    def __init__(
        self, settings: Settings, *, resolver: AbstractResolver | None = None, render: Renderer | None = None
    ) -> None:
        self._settings = settings
        self._render = render or default_catalog().render
        self._policy = AddressPolicy.from_allowlist(settings.webhook_allowlist)
        self._resolver = VettingResolver(self._policy, resolver)
        self._session: aiohttp.ClientSession | None = None
        self.concurrency = settings.webhook_concurrency
        self.endpoint_concurrency = settings.webhook_endpoint_concurrency
        # Per device only the signature differs: bodies, keys and vetted URLs are computed once.
        self._bodies: dict[tuple[str, str], bytes] = {}
        self._keys: dict[str, list[bytes]] = {}
        self._urls: dict[str, URL] = {}

    def circuit(self, device: Device) -> str:
        """Each endpoint has its own breaker: one bot's outage must not hold back the others."""
        return f"webhook:{device.address}"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            limit = self._settings.webhook_concurrency + self._settings.webhook_slow_concurrency  # slots + aside
            connector = aiohttp.TCPConnector(resolver=self._resolver, limit=limit)
            self._session = aiohttp.ClientSession(
                connector=connector,
                # The whole request's timeout is ``deadline`` (stall-tolerant), around each request.
                timeout=aiohttp.ClientTimeout(total=None, connect=self._settings.webhook_connect_timeout_s),
                headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
                skip_auto_headers=("Accept", "Accept-Encoding"),
                cookie_jar=aiohttp.DummyCookieJar(),  # one bot's cookies are nobody else's business
                auto_decompress=False,  # answers are only drained
                trust_env=False,  # an environment proxy would connect on our behalf, past the guard
            )
        return self._session

    async def prepare(self, batch: DeliveryBatch) -> Send:
        session = self._client()
        intent = batch.intent

        async def send(device: Device) -> DeliveryResult:
            return await self._deliver(session, intent, device)

        return send

    async def _deliver(self, session: aiohttp.ClientSession, intent: Intent, device: Device) -> DeliveryResult:
        try:
            body = _memo(
                self._bodies,
                (intent.intent_id, device.locale),
                lambda: webhook_body(intent, self._render(intent, device.locale)),
            )
        except RenderFailed as exc:
            return render_failed(device, exc)
        try:
            keys = _memo(self._keys, device.secret or "", lambda: signing_keys(device.secret or ""))
        except ValueError as exc:
            return _refused(device, f"bad_secret: {exc}")
        try:
            url = _memo(self._urls, device.address, lambda: self._policy.check_url(device.address))
        except AddressRefused as exc:
            return _refused(device, f"ssrf_refused: {exc}")
        except ValueError as exc:
            return _refused(device, f"invalid_url: {type(exc).__name__}")
        msg_id = webhook_id(intent.intent_id, device.device_id)
        try:
            async with deadline(self._settings.webhook_timeout_s):
                return await self._post(session, url, device, msg_id, keys, body)
        except AddressRefused as exc:  # raised by the resolver for a host name
            return _refused(device, f"ssrf_refused: {exc}")
        except aiohttp.InvalidURL as exc:
            return _refused(device, f"invalid_url: {type(exc).__name__}")
        except TimeoutError:
            return _failed(device, "timeout", retryable=True)
        except aiohttp.ClientError as exc:
            return _failed(device, f"connection_error: {type(exc).__name__}", retryable=True)

    async def _post(
        self,
        session: aiohttp.ClientSession,
        url: URL,
        device: Device,
        msg_id: str,
        keys: Sequence[bytes],
        body: bytes,
    ) -> DeliveryResult:
        timestamp = int(time.time())
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(keys, msg_id, timestamp, body),
        }
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
            await _drain(response)
            return result_for_status(device, msg_id, response.status, response.headers)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._resolver.close()
