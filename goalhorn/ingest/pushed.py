"""Pushed feeds: ``POST /v1/feeds/{source}`` for providers that deliver by webhook.

Each source (``sportradar``, ``statsperform``, ``espn``: the adapter its body is read with) has its
own secret and way to prove it (``GOALHORN_FEEDS_SECRETS``): ``hmac`` — the request carries
``X-Goalhorn-Signature: sha256=<hex HMAC-SHA256 of the raw body>`` — or ``token`` — it carries
``Authorization: Bearer <secret>``; both compared in constant time. A body over the size cap is
refused (413) before or while it is read. A body is parsed whole (a Sportradar body's unfinished
object is rejected, not kept for the next request; one whose payloads were all sent before is
accepted with nothing new) and handed to the ingestor, which writes live
state and publishes the intents with the broker's confirm; only then is the request answered 202.
So a crash before the answer loses nothing — the provider retries, and the event dedup makes the
retry harmless — and a 503 (the bus or Redis down) tells it to retry, the adapter having been
rolled back so that the retry is not taken for a resend. Requests of one source are
handled one at a time, in arrival order, so a feed's sequence gate sees them in order.

Every request is counted in ``goalhorn_pushed_feed_requests_total{source,outcome}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from prometheus_client import Counter

from goalhorn.errors import ConfigError
from goalhorn.ingest.adapter import FeedAdapter, Parsed
from goalhorn.ingest.espn import EspnAdapter
from goalhorn.ingest.quarantine import Quarantine
from goalhorn.ingest.sportradar import SportradarAdapter
from goalhorn.ingest.statsperform import StatsPerformAdapter
from goalhorn.models import utcnow

log = logging.getLogger(__name__)

Outcome = Literal["accepted", "unauthorized", "too_large", "rejected", "unavailable", "unknown_source"]
REQUESTS = Counter("goalhorn_pushed_feed_requests", "Requests to the pushed-feed endpoint.", ["source", "outcome"])
SOURCES = ("sportradar", "statsperform", "espn")
SIGNATURE = "X-Goalhorn-Signature"
PATH = "/v1/feeds/{source}"
Mode = Literal["hmac", "token"]


@dataclass(frozen=True, slots=True)
class SourceSecret:
    mode: Mode
    secret: bytes

    def __repr__(self) -> str:
        return f"SourceSecret({self.mode}, ***)"


def parse_secrets(raw: str) -> dict[str, SourceSecret]:
    """``source=hmac:SECRET,source=token:SECRET`` as a mapping; a ``ConfigError`` names the bad entry
    (by its source, never its secret)."""
    out: dict[str, SourceSecret] = {}
    for entry in filter(None, (e.strip() for e in raw.split(","))):
        source, _, rest = entry.partition("=")
        mode, _, secret = rest.partition(":")
        source = source.strip()
        if source not in SOURCES:
            raise ConfigError(f"GOALHORN_FEEDS_SECRETS: unknown source {source[:40]!r} (known: {', '.join(SOURCES)})")
        if mode not in ("hmac", "token") or len(secret) < 16:
            raise ConfigError(
                f"GOALHORN_FEEDS_SECRETS: {source}: expected {source}=hmac:<secret> or token:<secret>, "
                "the secret at least 16 characters"
            )
        out[source] = SourceSecret(mode, secret.encode())  # type: ignore[arg-type]
    return out


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value a provider sends with ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _authorized(secret: SourceSecret, request: web.Request, body: bytes) -> bool:
    if secret.mode == "hmac":
        given = request.headers.get(SIGNATURE, "")
        return hmac.compare_digest(given.encode(), sign(secret.secret, body).encode())
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), b"Bearer " + secret.secret)


class PushedFeeds:
    """The endpoint's handlers; ``absorb`` hands a parse on (live state, intents on the bus)."""

    def __init__(
        self,
        secrets: Mapping[str, SourceSecret],
        absorb: Callable[[Parsed, bool], Awaitable[object]],
        *,
        max_bytes: int,
        quarantine: Quarantine | None = None,
    ) -> None:
        self.secrets = dict(secrets)
        self.max_bytes = max_bytes
        self.counts: dict[tuple[str, Outcome], int] = {}
        self._absorb = absorb
        self._quarantine = quarantine if quarantine is not None else Quarantine()
        self._adapters: dict[str, FeedAdapter] = {}
        self._locks = {source: asyncio.Lock() for source in self.secrets}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_bytes)
        app.router.add_post(PATH, self.handle)
        return app

    def _count(self, source: str, outcome: Outcome) -> None:
        self.counts[(source, outcome)] = self.counts.get((source, outcome), 0) + 1
        REQUESTS.labels(source, outcome).inc()

    def _adapter(self, source: str) -> FeedAdapter:
        adapter = self._adapters.get(source)
        if adapter is None:
            if source == "sportradar":
                adapter = SportradarAdapter(quarantine=self._quarantine)
            elif source == "statsperform":
                adapter = StatsPerformAdapter(self._quarantine)
            else:
                adapter = EspnAdapter(quarantine=self._quarantine)
            self._adapters[source] = adapter
        return adapter

    async def handle(self, request: web.Request) -> web.Response:
        source = request.match_info["source"]
        secret = self.secrets.get(source)
        if secret is None:
            self._count("other" if source not in SOURCES else source, "unknown_source")
            return web.json_response({"error": "unknown source"}, status=404)
        if request.content_length is not None and request.content_length > self.max_bytes:
            self._count(source, "too_large")
            return web.json_response({"error": f"body over {self.max_bytes} bytes"}, status=413)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._count(source, "too_large")
            return web.json_response({"error": f"body over {self.max_bytes} bytes"}, status=413)
        if not _authorized(secret, request, body):
            self._count(source, "unauthorized")
            return web.json_response({"error": "bad or missing signature"}, status=401)
        async with self._locks[source]:
            adapter = self._adapter(source)
            checkpoint = adapter.checkpoint()
            parsed = adapter.feed(body, received_at=utcnow())
            parsed.extend(adapter.close())
            if parsed.rejected and not (parsed.states or parsed.events):
                self._count(source, "rejected")
                reasons = sorted({r.reason for r in parsed.rejected})
                return web.json_response({"error": "nothing usable", "reasons": reasons}, status=400)
            try:
                if parsed.states or parsed.events:
                    await self._absorb(parsed, source == "espn")
            except Exception:
                adapter.rollback(checkpoint)  # the provider's retry must parse to the same events
                log.exception("pushed %s feed: handing a payload on failed", source)
                self._count(source, "unavailable")
                return web.json_response({"error": "not handed on; retry"}, status=503)
        self._count(source, "accepted")
        answer = {"states": len(parsed.states), "events": len(parsed.events), "rejected": len(parsed.rejected)}
        return web.json_response(answer, status=202)
