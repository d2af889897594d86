"""The control endpoint of a running ``goalhorn sandbox --control-port N``: fault windows, counts, who
watches a Live Activity channel.

A test or a chaos run in another process steers the sandbox over plain HTTP on 127.0.0.1:

- ``POST /faults/{provider}`` (``fcm``, ``apns``, ``webhook``) with a window
  (:meth:`goalhorn.sandbox.faults.FaultWindow.from_json`), e.g. ``{"mode": "status", "status": 503,
  "seconds": 30}``, ``{"mode": "hang", "seconds": 60, "prefix": "slow-"}`` or ``{"mode": "quota",
  "quota_per_s": 200, "seconds": 30, "retry_after": 1}``: 201;
- ``DELETE /faults``: closes every window;
- ``POST /unregistered/{provider}`` with ``{"tokens": [...]}``: those FCM or APNs tokens are
  answered as unregistered from now on, those webhook endpoint names as gone (410);
- ``GET /counts``: per provider, the push requests received, the answers per status, the requests
  a hang window holds right now and the windows still open;
- ``GET /topics``: per FCM topic, how many tokens are subscribed; the topic management calls
  answered; the topic deliveries made and the topic messages still being fanned out;
- ``GET /channels``: per APNs broadcast channel, its storage policy and how many device tokens
  watch it; the channel management calls answered; broadcasts accepted, deliveries made and
  broadcasts still being fanned out;
- ``POST /channels/{channel_id}/subscribers`` with ``{"tokens": [...]}``: those APNs device tokens
  watch the channel from now on (404 for a channel the sandbox does not hold; the id as APNs gave
  it, ``/`` and ``+`` of its base64 included, raw or percent-encoded);
  ``DELETE`` the same with the same body: they stop.

A bad request is a 400 with ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from goalhorn.sandbox.apns_server import ApnsSandbox
from goalhorn.sandbox.faults import Faults, FaultWindow
from goalhorn.sandbox.fcm_server import FcmSandbox
from goalhorn.sandbox.webhook_receiver import WebhookReceiver

MAX_BODY_BYTES = 16 << 20


class SandboxControl:
    """An aiohttp server steering the three sandbox servers it is given."""

    def __init__(
        self, fcm: FcmSandbox, apns: ApnsSandbox, webhooks: WebhookReceiver, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.fcm, self.apns, self.webhooks = fcm, apns, webhooks
        self.host = host
        self.port = port
        self.url = ""
        self._runner: web.AppRunner | None = None

    @property
    def faults(self) -> dict[str, Faults]:
        return {"fcm": self.fcm.faults, "apns": self.apns.faults, "webhook": self.webhooks.faults}

    async def start(self) -> str:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/counts", self._counts)
        app.router.add_get("/topics", self._topics)
        app.router.add_get("/channels", self._channels)
        app.router.add_post("/channels/{channel_id:.+}/subscribers", self._subscribe)
        app.router.add_delete("/channels/{channel_id:.+}/subscribers", self._subscribe)
        app.router.add_post("/faults/{provider}", self._open)
        app.router.add_delete("/faults", self._clear)
        app.router.add_post("/unregistered/{provider}", self._unregister)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._runner = runner
        self.url = f"http://{self.host}:{runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _provider(self, request: web.Request) -> Faults:
        faults = self.faults.get(request.match_info["provider"])
        if faults is None:
            raise _bad("provider: one of fcm, apns, webhook")
        return faults

    async def _counts(self, request: web.Request) -> web.Response:
        return web.json_response({name: faults.snapshot() for name, faults in self.faults.items()})

    async def _topics(self, request: web.Request) -> web.Response:
        topics = self.fcm.topics
        return web.json_response(
            {
                "subscribed": {name: len(tokens) for name, tokens in sorted(topics.subscribers.items())},
                "calls": dict(topics.calls),
                "delivered": self.fcm.fanout.delivered,
                "fanning_out": self.fcm.fanout.pending,
            }
        )

    async def _channels(self, request: web.Request) -> web.Response:
        apns = self.apns
        channels = {
            channel_id: {"message-storage-policy": channel.storage, "subscribers": len(channel.subscribers)}
            for channel_id, channel in apns.channels.items()
        }
        return web.json_response(
            {
                "channels": channels,
                "calls": dict(apns.management_calls),
                "broadcasts": len(apns.broadcasts),
                "delivered": apns.fanout.delivered,
                "fanning_out": apns.fanout.pending,
            }
        )

    async def _subscribe(self, request: web.Request) -> web.Response:
        channel_id = request.match_info["channel_id"]
        tokens = _tokens(await _json(request))
        channel = self.apns.channels.get(channel_id)
        if channel is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such channel"}), content_type="application/json")
        if request.method == "POST":
            self.apns.subscribe(channel_id, tokens)
        else:
            self.apns.unsubscribe(channel_id, tokens)
        return web.json_response({"subscribers": len(channel.subscribers)})

    async def _open(self, request: web.Request) -> web.Response:
        faults = self._provider(request)
        try:
            window = FaultWindow.from_json(await _json(request))
        except ValueError as exc:
            raise _bad(str(exc)) from None
        faults.open(window)
        return web.json_response(faults.snapshot(), status=201)

    async def _clear(self, request: web.Request) -> web.Response:
        for faults in self.faults.values():
            faults.clear()
        return web.Response(status=204)

    async def _unregister(self, request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        self._provider(request)
        tokens = _tokens(await _json(request))
        if provider == "fcm":
            self.fcm.unregistered.update(tokens)
        elif provider == "apns":
            since = int(time.time() * 1000)
            self.apns.unregistered.update(dict.fromkeys(tokens, since))
        else:
            self.webhooks.gone.update(tokens)
        return web.json_response({"unregistered": len(tokens)})


async def _json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except ValueError:
        raise _bad("the body is not JSON") from None


def _tokens(document: Any) -> list[str]:
    tokens = document.get("tokens") if isinstance(document, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
        raise _bad("tokens: a list of non-empty strings")
    return tokens


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")
