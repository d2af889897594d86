"""APNs broadcast channels: channel management and broadcast requests, over httpx's HTTP/2 client.

aioapns can only reach ``/3/device/<token>``; Live Activities' broadcast channels (iOS 18) need
``/1/apps/<bundle>/channels`` and ``/1/apps/<bundle>/all-channels`` on Apple's channel management
host (``apns_channels_host``:``apns_channels_port``, production api-manage-broadcast.push.apple.com:2196)
and ``/4/broadcasts/apps/<bundle>`` on the push host (``apns_host``:``apns_port``). Both go out here,
on httpx with ``http2=True`` (h2 underneath), signed with the same .p8 key as the APNs provider.

``ProviderToken`` is the ES256 provider token (JWT): made once and reused, renewed after
``TOKEN_RENEW_S`` (Apple refuses one older than an hour with ``ExpiredProviderToken`` and one renewed
more often than every 20 minutes with ``TooManyProviderTokenUpdates``). ``ApnsHttp`` is one HTTP/2
connection pool to one APNs host with that token; ``ApnsChannels`` is the management API LA-AUDIENCE
calls; the APNs provider sends broadcasts with ``ApnsHttp.broadcast``.
"""

from __future__ import annotations

import json
import ssl
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import httpx
import jwt

from goalhorn.errors import (
    ChannelLimitReached,
    ChannelRejected,
    ConfigError,
    ProviderAuthError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from goalhorn.settings import Settings

TOKEN_RENEW_S = 50 * 60
"""A provider token is renewed after this long: under Apple's hour, over its 20 minutes between renewals."""
CHANNEL_PUSH_TYPE = "LiveActivity"
CHANNEL_LIMIT = 10_000
"""Channels an app may hold per environment (Apple); past it, creating one answers CannotCreateChannelConfig."""
CHANNEL_ADDRESS = "channel:"
"""A device address starting so is a broadcast channel (``channel:<channel id>``), not a device token."""
_AUTH_REASONS = {"InvalidProviderToken", "MissingProviderToken", "ExpiredProviderToken", "Forbidden"}
_GONE_REASONS = {"ChannelNotRegistered", "BadChannelId"}


class ProviderToken:
    """The ``authorization: bearer <jwt>`` APNs takes with token auth: ES256 over ``iss`` (team id) and
    ``iat``, ``kid`` the key id; one token reused until ``TOKEN_RENEW_S`` old."""

    def __init__(self, key: str, key_id: str, team_id: str) -> None:
        self._key, self._key_id, self._team_id = key, key_id, team_id
        self._token = ""
        self._issued = 0.0

    def bearer(self) -> str:
        now = time.time()
        if not self._token or now - self._issued >= TOKEN_RENEW_S:
            self._issued = now
            self._token = jwt.encode(
                {"iss": self._team_id, "iat": int(now)}, self._key, algorithm="ES256", headers={"kid": self._key_id}
            )
        return f"bearer {self._token}"

    def renew(self) -> None:
        """Make a new token on the next request (APNs answered ``ExpiredProviderToken``)."""
        self._token = ""


def read_key(settings: Settings) -> str:
    """The .p8 signing key of ``settings``; ConfigError when APNs is not configured or it is unreadable."""
    if not (settings.apns_key_file and settings.apns_key_id and settings.apns_team_id and settings.apns_topic):
        raise ConfigError("APNs needs GOALHORN_APNS_KEY_FILE, _KEY_ID, _TEAM_ID and _TOPIC")
    try:
        return Path(settings.apns_key_file).read_text()
    except OSError as exc:
        raise ConfigError(f"APNs key file unreadable: {exc}") from exc


def reason_of(response: httpx.Response) -> str:
    """Apple's ``reason`` from an error body, else ``http_<status>``."""
    try:
        body = json.loads(response.content) if response.content else None
    except ValueError:
        body = None
    reason = body.get("reason") if isinstance(body, dict) else None
    return reason if isinstance(reason, str) and reason else f"http_{response.status_code}"


def new_request_id() -> str:
    return str(uuid.uuid4())


class ApnsHttp:
    """An HTTP/2 client (httpx) to one APNs host, signing every request with the provider token.

    Built lazily: httpx binds its connections to the event loop that first uses them."""

    def __init__(self, settings: Settings, host: str, port: int, token: ProviderToken) -> None:
        self._settings = settings
        self._base = f"https://{host}:{port}"
        self.token = token
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            context = ssl.create_default_context(cafile=self._settings.apns_ca_file)
            self._client = httpx.AsyncClient(
                base_url=self._base,
                http2=True,
                verify=context,
                timeout=httpx.Timeout(self._settings.apns_timeout_s),
                limits=httpx.Limits(max_connections=self._settings.apns_max_connections),
                trust_env=False,
            )
        return self._client

    async def request(
        self, method: str, path: str, headers: dict[str, str], content: bytes | None = None
    ) -> httpx.Response:
        """One request with the provider token; transport failures are raised as httpx raises them."""
        headers = {"authorization": self.token.bearer(), **headers}
        return await self.client().request(method, path, headers=headers, content=content)

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


class ApnsChannels:
    """APNs channel management for the app (``apns_topic``): create, read, delete and list broadcast
    channels. Provider-wide failures raise ``ProviderError`` subclasses: ``ProviderUnavailable`` (no
    answer, 5xx), ``ProviderRateLimited`` (429), ``ProviderAuthError`` (the key or team refused),
    ``ChannelLimitReached`` (10,000 channels held), ``ChannelRejected`` (any other refusal, with
    Apple's reason)."""

    def __init__(self, settings: Settings) -> None:
        key = read_key(settings)
        self.bundle = settings.apns_topic
        token = ProviderToken(key, settings.apns_key_id, settings.apns_team_id)
        self._http = ApnsHttp(settings, settings.apns_channels_host, settings.apns_channels_port, token)
        self._channels = f"/1/apps/{self.bundle}/channels"

    async def create(self, *, storage: Literal[0, 1] = 0) -> str:
        """A new channel (``storage`` 0: No Message Storage, as Apple recommends for frequent updates
        such as scores; broadcasts on it then need ``apns-expiration: 0``); its id."""
        body = json.dumps({"message-storage-policy": storage, "push-type": CHANNEL_PUSH_TYPE}).encode()
        response = await self._call("POST", self._channels, {"content-type": "application/json"}, body)
        if response.status_code != 201 or not response.headers.get("apns-channel-id"):
            raise self._refusal(response, "create")
        return str(response.headers["apns-channel-id"])

    async def read(self, channel_id: str) -> dict[str, Any] | None:
        """The channel's configuration (``{"message-storage-policy": 0, "push-type": "LiveActivity"}``),
        None when APNs does not know it."""
        response = await self._call("GET", self._channels, {"apns-channel-id": channel_id})
        if response.status_code == 200:
            try:
                document = json.loads(response.content)
            except ValueError:
                document = None
            if not isinstance(document, dict):
                raise ChannelRejected("read", "BadResponse", response.status_code)
            return document
        if reason_of(response) in _GONE_REASONS:
            return None
        raise self._refusal(response, "read")

    async def delete(self, channel_id: str) -> bool:
        """Delete the channel; False when APNs did not know it (already deleted, or never there)."""
        response = await self._call("DELETE", self._channels, {"apns-channel-id": channel_id})
        if response.status_code in (200, 204):
            return True
        if reason_of(response) in _GONE_REASONS:
            return False
        raise self._refusal(response, "delete")

    async def list(self) -> list[str]:
        """Every channel id the app holds in this environment."""
        response = await self._call("GET", f"/1/apps/{self.bundle}/all-channels", {})
        if response.status_code != 200:
            raise self._refusal(response, "list")
        try:
            channels = json.loads(response.content).get("channels")
        except (ValueError, AttributeError):
            channels = None
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise ChannelRejected("list", "BadResponse", response.status_code)
        return channels

    async def _call(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> httpx.Response:
        headers = {"apns-request-id": new_request_id(), **headers}
        for attempt in (1, 2):
            try:
                response = await self._http.request(method, path, headers, body)
            except httpx.HTTPError as exc:
                raise ProviderUnavailable(f"APNs channel management unreachable: {type(exc).__name__}: {exc}") from exc
            if attempt == 1 and response.status_code == 403 and reason_of(response) == "ExpiredProviderToken":
                self._http.token.renew()  # our token aged past Apple's hour: one more try with a new one
                continue
            return response
        return response

    @staticmethod
    def _refusal(response: httpx.Response, operation: str) -> Exception:
        status, reason = response.status_code, reason_of(response)
        if reason == "CannotCreateChannelConfig":
            return ChannelLimitReached(operation, reason, status)
        if status == 429:
            retry_after = response.headers.get("retry-after")
            seconds = float(retry_after) if retry_after and retry_after.isdigit() else None
            return ProviderRateLimited(f"APNs channel {operation}: {reason}", retry_after=seconds)
        if status >= 500:
            return ProviderUnavailable(f"APNs channel {operation}: {status} {reason}")
        if status == 403 or reason in _AUTH_REASONS:
            return ProviderAuthError(f"APNs channel {operation}: {reason}")
        return ChannelRejected(operation, reason, status)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
