"""CLI commands of the delivery side: ``goalhorn sandbox`` and ``goalhorn send``."""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import uuid
from datetime import timedelta
from pathlib import Path

import typer
from rich.console import Console

from goalhorn.catalog import CatalogFile
from goalhorn.errors import ConfigError, GoalhornError
from goalhorn.keys import Platform
from goalhorn.models import DeliveryBatch, DeliveryResult, Device, EventKind, Intent, Sport, utcnow
from goalhorn.providers.factory import make_provider
from goalhorn.providers.webhook import signing_keys
from goalhorn.settings import load_settings

console = Console()


def sandbox(
    directory: str = typer.Option(".goalhorn-sandbox", "--dir", help="Where credentials and the cert go."),
    fcm_port: int = typer.Option(8470, help="FCM v1 server port (0: any free port)."),
    apns_port: int = typer.Option(8471, help="APNs (HTTP/2 + TLS) server port (0: any free port)."),
    apns_channels_port: int = typer.Option(
        0,
        help="APNs broadcast channel management (HTTP/2 + TLS) port (default 0: any free port; the printed "
        "GOALHORN_APNS_CHANNELS_PORT says which).",
    ),
    webhook_port: int = typer.Option(8472, help="Webhook receiver port (0: any free port)."),
    record: str | None = typer.Option(
        None,
        "--record",
        metavar="FILE.jsonl",
        help="Append one JSON line per accepted push (provider, token or url, title, body, at) to FILE.",
    ),
    webhook_secret: str | None = typer.Option(
        None,
        "--webhook-secret",
        metavar="whsec_...",
        help="The secret webhooks must be signed with (Standard Webhooks); default: a new random one.",
    ),
    control_port: int | None = typer.Option(
        None,
        "--control-port",
        help="Also serve the control endpoint on this port (0: any free port): fault windows per provider "
        "(POST /faults/{fcm,apns,webhook}), unregistered tokens, and counts of requests received and answered "
        "(GET /counts), FCM topic subscriptions (GET /topics), APNs broadcast channels (GET /channels) and the "
        "device tokens watching one (POST/DELETE /channels/{id}/subscribers).",
    ),
    topic_fanout_per_s: float = typer.Option(
        0.0,
        "--topic-fanout-per-s",
        min=0.0,
        help="Tokens a second an FCM topic or condition message is delivered to, each recorded as a push "
        "(0: as fast as the sandbox goes).",
    ),
    topic_quota_per_s: float | None = typer.Option(
        None,
        "--topic-quota-per-s",
        min=1.0,
        help="Tokens a second FCM topic management (subscribe, unsubscribe, IID batchAdd/batchRemove) accepts; "
        "past it, 429 with Retry-After (default: no quota).",
    ),
) -> None:
    """Run the sandbox FCM, APNs and webhook servers on 127.0.0.1 until Ctrl-C or SIGTERM."""
    from goalhorn.sandbox.servers import SandboxServers

    if webhook_secret is not None:
        try:
            signing_keys(webhook_secret)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--webhook-secret") from None

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        servers = SandboxServers(
            Path(directory),
            fcm_port=fcm_port,
            apns_port=apns_port,
            apns_channels_port=apns_channels_port,
            webhook_port=webhook_port,
            record=Path(record) if record else None,
            webhook_secret=webhook_secret,
            control_port=control_port,
            topic_fanout_per_s=topic_fanout_per_s,
            topic_quota_per_s=topic_quota_per_s,
        )
        async with servers:
            # typer.echo flushes each line: a parent reading this through a pipe sees it at once.
            typer.echo(f"FCM      {servers.fcm.url}/v1/projects/{servers.fcm.project_id}/messages:send")
            apns = servers.apns
            typer.echo(f"APNs     https://{apns.host}:{apns.port}/3/device/<token>")
            typer.echo(
                f"APNs     https://{apns.host}:{apns.port}/4/broadcasts/apps/{apns.topic} (Live Activity channels)"
            )
            typer.echo(f"channels https://{apns.host}:{apns.channels_port}/1/apps/{apns.topic}/channels")
            typer.echo(f"webhooks {servers.webhooks.url}/hooks/<endpoint>")
            typer.echo(f"webhook secret {servers.webhook_secret}")
            if servers.control is not None:
                typer.echo(f"control  {servers.control.url}/counts")
            if record is not None:
                typer.echo(f"recording accepted pushes to {record}")
            typer.echo("Point goalhorn at them with:")
            for name, value in servers.settings_env().items():
                typer.echo(f"export {name}={shlex.quote(value)}")
            await stop.wait()

    try:
        asyncio.run(run())
    except OSError as exc:  # a port in use, an unwritable --record or --dir
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _one_off_intent(title: str, body: str, data: dict[str, str]) -> Intent:
    now = utcnow()
    return Intent(
        intent_id=f"send-{uuid.uuid4().hex[:12]}",
        event_id="manual",
        kind=EventKind.SCORE,
        sport=Sport.SOCCER,
        game_id="manual",
        priority=9,
        segments=("manual",),
        template="message",
        data={**data, "title": title, "body": body},
        event_at=now,
        created_at=now,
        expires_at=now + timedelta(hours=1),
    )


async def send_one(provider_name: Platform, to: str, secret: str | None, intent: Intent) -> DeliveryResult:
    """Send one notification through the configured provider code."""
    settings = load_settings()
    if provider_name == "fcm" and not settings.fcm_credentials_file:
        raise ConfigError("FCM is not configured: set GOALHORN_FCM_CREDENTIALS_FILE")
    if provider_name == "apns" and not settings.apns_key_file:
        raise ConfigError("APNs is not configured: set GOALHORN_APNS_KEY_FILE and friends")
    device = Device(device_id="cli", user_id="cli", platform=provider_name, address=to, secret=secret)
    batch = DeliveryBatch(batch_id="cli", platform=provider_name, intent=intent, devices=(device,))
    render = CatalogFile(settings.rules_file).render
    async with make_provider(settings, provider_name, render) as provider:
        return (await provider.send(batch))[0]


def send(
    provider: str = typer.Option(..., "--provider", help="fcm, apns or webhook."),
    to: str = typer.Option(..., "--to", help="FCM/APNs token or webhook URL."),
    secret: str | None = typer.Option(None, "--secret", help="whsec_ signing secret (webhooks)."),
    title: str = typer.Option(..., "--title"),
    body: str = typer.Option(..., "--body"),
    data: str = typer.Option("{}", "--data", help="Extra string fields as a JSON object."),
) -> None:
    """Send one notification through goalhorn's provider code (to check a setup)."""
    if provider not in ("fcm", "apns", "webhook"):
        raise typer.BadParameter("must be fcm, apns or webhook", param_hint="--provider")
    try:
        extra = json.loads(data)
        if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
            raise ValueError("not an object of strings")
    except ValueError as exc:
        raise typer.BadParameter(f"needs a JSON object of strings ({exc})", param_hint="--data") from None
    try:
        result = asyncio.run(send_one(provider, to, secret, _one_off_intent(title, body, extra)))  # type: ignore[arg-type]
    except (GoalhornError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    detail = result.reason or result.provider_message_id or ""
    console.print(f"{provider} {result.outcome} {detail}")
    raise typer.Exit(0 if result.outcome == "sent" else 1)


def register(app: typer.Typer) -> None:
    for command in (sandbox, send):
        app.command()(command)
