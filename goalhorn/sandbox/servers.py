"""All three sandbox servers together, with the credentials and settings that reach them.

``goalhorn sandbox`` runs this in the foreground; the demo and the tests run it in-process.
:meth:`SandboxServers.settings_env` gives the ``GOALHORN_*`` variables that point goalhorn's real
FCM, APNs and webhook providers at these servers. With ``record``, every push they accept is appended
to that JSONL file (:mod:`goalhorn.sandbox.recorder`); with ``control_port``, another process can
open fault windows and read counts over HTTP (:mod:`goalhorn.sandbox.control`).
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from types import TracebackType
from typing import Self

from goalhorn.sandbox.apns_server import ApnsSandbox
from goalhorn.sandbox.control import SandboxControl
from goalhorn.sandbox.fcm_server import FcmSandbox
from goalhorn.sandbox.recorder import PushRecorder
from goalhorn.sandbox.webhook_receiver import WebhookReceiver
from goalhorn.settings import Settings

APNS_KEY_ID = "SANDBOXKEY"


class SandboxServers:
    """FCM v1, APNs (HTTP/2 + TLS; channel management on ``apns_channels_port``) and a webhook receiver
    on 127.0.0.1; port 0 picks a free one."""

    def __init__(
        self,
        directory: Path,
        *,
        host: str = "127.0.0.1",
        fcm_port: int = 0,
        apns_port: int = 0,
        apns_channels_port: int = 0,
        webhook_port: int = 0,
        webhook_secret: str | None = None,
        record: Path | None = None,
        control_port: int | None = None,
        topic_fanout_per_s: float = 0.0,
        topic_quota_per_s: float | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.record = record
        self.recorder: PushRecorder | None = None
        self.webhook_secret = webhook_secret or "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        self.fcm = FcmSandbox(
            host, fcm_port, topic_fanout_per_s=topic_fanout_per_s, topic_quota_per_s=topic_quota_per_s
        )
        self.apns = ApnsSandbox(directory, host, apns_port)
        self.apns.channels_port = apns_channels_port
        self.webhooks = WebhookReceiver(secret_for=lambda endpoint: self.webhook_secret, host=host, port=webhook_port)
        self.control = (
            SandboxControl(self.fcm, self.apns, self.webhooks, host, control_port) if control_port is not None else None
        )
        self.fcm_credentials: Path | None = None
        self.apns_key: Path | None = None

    async def start(self) -> None:
        if self.record is not None:
            self.recorder = PushRecorder(self.record)
            self.fcm.recorder = self.apns.recorder = self.webhooks.recorder = self.recorder
        await self.fcm.start()
        await self.apns.start()
        await self.webhooks.start()
        if self.control is not None:
            await self.control.start()
        self.fcm_credentials = self.fcm.service_account(self.directory / "fcm-service-account.json")
        self.apns_key = self.apns.signing_key(APNS_KEY_ID)

    async def stop(self) -> None:
        if self.control is not None:
            await self.control.stop()
        await self.webhooks.stop()
        await self.apns.stop()
        await self.fcm.stop()
        if self.recorder is not None:
            self.fcm.recorder = self.apns.recorder = self.webhooks.recorder = None
            self.recorder.close()
            self.recorder = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def settings_env(self) -> dict[str, str]:
        """``GOALHORN_*`` variables pointing the real providers at these servers."""
        return {
            "GOALHORN_FCM_CREDENTIALS_FILE": str(self.fcm_credentials),
            "GOALHORN_FCM_BASE_URL": self.fcm.url,
            "GOALHORN_APNS_KEY_FILE": str(self.apns_key),
            "GOALHORN_APNS_KEY_ID": APNS_KEY_ID,
            "GOALHORN_APNS_TEAM_ID": self.apns.team_id,
            "GOALHORN_APNS_TOPIC": self.apns.topic,
            "GOALHORN_APNS_HOST": self.apns.host,
            "GOALHORN_APNS_PORT": str(self.apns.port),
            "GOALHORN_APNS_CA_FILE": str(self.apns.cert_path),
            "GOALHORN_APNS_CHANNELS_HOST": self.apns.host,
            "GOALHORN_APNS_CHANNELS_PORT": str(self.apns.channels_port),
            "GOALHORN_WEBHOOK_ALLOWLIST": self.apns.host,
        }

    def apply(self, settings: Settings) -> Settings:
        """``settings`` with the providers pointed at these servers."""
        env = self.settings_env()
        fields = {name.removeprefix("GOALHORN_").lower(): value for name, value in env.items()}
        return Settings.model_validate({**settings.model_dump(), **fields})
