"""``goalhorn keys create|list|revoke``: the sidecar's API keys (stored only as HMACs in Redis)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, NoReturn, TypeVar

import redis.exceptions
import typer

from goalhorn.errors import ConfigError
from goalhorn.redis_client import make_redis
from goalhorn.settings import load_settings
from goalhorn.sidecar.apikeys import TIERS, ApiKey, KeyStore, Tier, check_tenant, parse_scopes

app = typer.Typer(help="Create, list and revoke the API's keys.", no_args_is_help=True)
T = TypeVar("T")

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _with_store(action: Callable[[KeyStore], Awaitable[T]]) -> T:
    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc).replace("\n", "; "))
    if settings.redis_url is None:
        _fail("GOALHORN_REDIS_URL is not set: keys live in the Redis the API reads (e.g. redis://127.0.0.1:6379/0)")

    async def run() -> T:
        redis = make_redis(settings)
        try:
            return await action(KeyStore.from_settings(redis, settings))
        finally:
            await redis.aclose()

    try:
        return asyncio.run(run())
    except ConfigError as exc:
        _fail(str(exc))
    except (redis.exceptions.RedisError, OSError) as exc:
        _fail(f"Redis does not answer or refused ({type(exc).__name__}: {exc}); check GOALHORN_REDIS_URL")


def _when(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if epoch is not None else "-"


@app.command()
def create(
    tenant: Annotated[str, typer.Option("--tenant", help="The tenant the key acts for (a-z 0-9 _ -).")],
    tier: Annotated[str, typer.Option("--tier", help=f"Rate-limit tier: {', '.join(TIERS)}.")] = "community",
    scopes: Annotated[str, typer.Option("--scopes", help="Comma-separated: read, write, admin.")] = "read",
    as_json: AsJson = False,
) -> None:
    """Create a key: printed once, alone on the last line; only its HMAC is stored."""
    try:
        check_tenant(tenant)
        scope_list = parse_scopes(scopes)
    except ConfigError as exc:
        _fail(str(exc))
    if tier not in TIERS:
        _fail(f"invalid tier {tier!r}: one of {', '.join(TIERS)}")
    chosen: Tier = next(t for t in TIERS if t == tier)
    key, record = _with_store(lambda store: store.create(tenant, chosen, scope_list))
    if as_json:
        typer.echo(json.dumps({**record.public(), "key": key}))
        return
    typer.echo(f"key {record.id} for tenant {record.tenant}: tier {record.tier}, scopes {','.join(record.scopes)}")
    typer.echo("store it now: it is not shown again")
    typer.echo(key)


@app.command("list")
def list_(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's keys.")] = None,
    as_json: AsJson = False,
) -> None:
    """List keys (never the keys themselves): id, tenant, tier, scopes, created, last used, revoked."""
    records: list[ApiKey] = _with_store(lambda store: store.list(tenant))
    if as_json:
        typer.echo(json.dumps([r.public() for r in records]))
        return
    typer.echo(f"{'id':<21} {'tenant':<16} {'tier':<10} {'scopes':<17} {'created':<20} {'last used':<20} revoked")
    for r in records:
        typer.echo(
            f"{r.id:<21} {r.tenant:<16} {r.tier:<10} {','.join(r.scopes):<17} {_when(r.created_at):<20} "
            f"{_when(r.last_used_at):<20} {_when(r.revoked_at)}"
        )


@app.command()
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_..., from `goalhorn keys list`).")]) -> None:
    """Revoke a key: every request with it is refused from now on (exit 1 if there is no such key)."""
    record = _with_store(lambda store: store.revoke(key_id))
    if record is None:
        typer.echo(f"error: no key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {record.id} (tenant {record.tenant})")
