"""A local Standard Webhooks receiver: the other end of the webhook provider, for dev and tests.

It serves ``POST /hooks/{endpoint}``, checks the signature on its own (not with goalhorn's
signing code, so a signing bug cannot hide behind a matching verification bug), records what it
accepted and answers 204. Tests steer it at runtime: :meth:`WebhookReceiver.fail_next`,
``delay_s``, ``gone`` endpoints and ``faults`` (windows per endpoint-name prefix, e.g. hanging ones).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from goalhorn.sandbox.faults import Faults
from goalhorn.sandbox.recorder import PushRecorder

TOLERANCE_S = 5 * 60
"""How far a ``webhook-timestamp`` may be from the receiver's clock, either way."""


@dataclass(frozen=True, slots=True)
class ReceivedWebhook:
    """One request as the receiver saw it; ``body`` is the parsed JSON (None if it was not JSON)."""

    endpoint: str
    webhook_id: str
    body: Any
    raw: bytes
    headers: dict[str, str]
    status: int
    received_at: datetime


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    retry_after: int | str | None
    location: str | None


def _keys(secret: str) -> list[bytes]:
    keys = []
    for part in secret.split():
        encoded = part.removeprefix("whsec_")
        try:
            keys.append(base64.b64decode(encoded + "=" * (-len(encoded) % 4)))
        except binascii.Error:
            continue
    return keys


def signature_valid(secret: str, headers: dict[str, str], raw: bytes, now: float | None = None) -> bool:
    """Whether any ``v1`` signature in ``headers`` matches ``raw`` under any of ``secret``'s keys."""
    msg_id, timestamp, signatures = (
        headers.get(name, "") for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
    )
    if not (msg_id and timestamp.isdigit() and signatures):
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_S:
        return False
    signed = f"{msg_id}.{timestamp}.".encode() + raw
    expected = [base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()) for key in _keys(secret)]
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and any(hmac.compare_digest(value.encode(), good) for good in expected):
            return True
    return False


class WebhookReceiver:
    """An aiohttp server receiving webhooks for endpoints whose secrets ``secret_for`` knows.

    ``deliveries`` holds accepted requests (duplicates included, so tests can spot them);
    ``attempts`` holds every request with the status it was answered with.
    """

    def __init__(
        self,
        secret_for: Callable[[str], str | None],
        host: str = "127.0.0.1",
        port: int = 0,
        recorder: PushRecorder | None = None,
    ) -> None:
        self.secret_for = secret_for
        self.recorder = recorder
        """Where accepted webhooks are recorded, if anywhere."""
        self.host = host
        self.port = port
        self.deliveries: list[ReceivedWebhook] = []
        self.attempts: list[ReceivedWebhook] = []
        self.delay_s = 0.0
        self.gone: set[str] = set()
        self.faults = Faults()
        self._failures: deque[_Failure] = deque()
        self._runner: web.BaseRunner | None = None
        self._url = ""

    def fail_next(
        self, n: int, status: int, retry_after: int | str | None = None, *, location: str | None = None
    ) -> None:
        """Answer the next ``n`` requests with ``status`` (and Retry-After / Location when given)."""
        self._failures.extend(_Failure(status, retry_after, location) for _ in range(n))

    @property
    def url(self) -> str:
        """The base URL (``http://host:port``) once started; endpoints live under ``/hooks/``."""
        return self._url

    def endpoint_url(self, endpoint: str) -> str:
        return f"{self._url}/hooks/{endpoint}"

    async def start(self) -> str:
        """Start listening; returns the base URL (``http://host:port``)."""
        # aiohttp's low-level server (no router or middleware); handler_cancellation: a client that
        # gave up (timeout) ends its delayed handler at once.
        runner = web.ServerRunner(web.Server(self._route, handler_cancellation=True), shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._runner = runner
        port = runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._url = f"http://{host}:{port}"
        return self._url

    async def stop(self) -> None:
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

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        endpoint = request.path.removeprefix("/hooks/")
        if request.method != "POST" or endpoint == request.path or not endpoint or "/" in endpoint:
            return web.Response(status=404)
        return await self._handle(request, endpoint)

    async def _handle(self, request: web.BaseRequest, endpoint: str) -> web.StreamResponse:
        self.faults.received += 1
        response = await self._receive(request, endpoint)
        self.faults.count(response.status)
        return response

    async def _receive(self, request: web.BaseRequest, endpoint: str) -> web.StreamResponse:
        raw = await request.read()
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        headers = {name.lower(): value for name, value in request.headers.items()}
        try:
            body, is_json = json.loads(raw), True
        except ValueError:
            body, is_json = None, False
        refusal = await self.faults.verdict(endpoint)
        if refusal is not None:
            extra = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after is not None else {}
            response = web.Response(status=refusal.status, headers=extra)
        else:
            response = self._answer(endpoint, headers, raw, is_json)
        record = ReceivedWebhook(
            endpoint=endpoint,
            webhook_id=headers.get("webhook-id", ""),
            body=body,
            raw=raw,
            headers=headers,
            status=response.status,
            received_at=datetime.now(UTC),
        )
        self.attempts.append(record)
        if response.status == 204:
            self.deliveries.append(record)
            if self.recorder is not None:
                data = body.get("data") if isinstance(body, dict) else None
                if isinstance(data, dict):
                    self.recorder.record(
                        "webhook", {"url": str(request.url)}, data.get("title"), data.get("body"), data.get("intent_id")
                    )
                else:
                    self.recorder.record("webhook", {"url": str(request.url)}, None, None)
        return response

    def _answer(self, endpoint: str, headers: dict[str, str], raw: bytes, is_json: bool) -> web.Response:
        if endpoint in self.gone:
            return web.Response(status=410)
        if self._failures:
            failure = self._failures.popleft()
            extra = {}
            if failure.retry_after is not None:
                extra["Retry-After"] = str(failure.retry_after)
            if failure.location is not None:
                extra["Location"] = failure.location
            return web.Response(status=failure.status, headers=extra)
        secret = self.secret_for(endpoint)
        if secret is None:
            return web.Response(status=404)
        if not signature_valid(secret, headers, raw):
            return web.Response(status=401)
        return web.Response(status=204 if is_json else 400)
