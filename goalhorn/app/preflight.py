"""What a process checks before it takes work: that Redis and RabbitMQ answer with the configured
URLs and credentials. A failure is one :class:`ServiceUnreachable` naming the ``GOALHORN_*`` variable
to fix (the URL shown without its password), never an endless reconnect log."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiormq.exceptions
import redis.exceptions

from goalhorn.errors import ConfigError
from goalhorn.redis_client import make_redis
from goalhorn.settings import Settings

CHECK_TIMEOUT_S = 5.0


class ServiceUnreachable(ConfigError):
    """A configured service cannot be used: unreachable, refusing the credentials, or a bad URL."""


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparsable URL>"


async def check_redis(settings: Settings) -> None:
    if settings.redis_url is None:
        return
    where = f"GOALHORN_REDIS_URL={redacted(settings.redis_url)}"
    try:
        client = make_redis(settings.model_copy(update={"redis_pool_timeout_s": CHECK_TIMEOUT_S}))
    except ValueError as exc:
        raise ServiceUnreachable(f"{where}: not a Redis URL ({exc})") from None
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await client.ping()
    except redis.exceptions.AuthenticationError as exc:
        raise ServiceUnreachable(f"{where}: Redis refused the credentials ({exc})") from None
    except redis.exceptions.ResponseError as exc:
        raise ServiceUnreachable(f"{where}: Redis refused the connection ({exc})") from None
    except (redis.exceptions.ConnectionError, OSError, TimeoutError) as exc:
        raise ServiceUnreachable(f"{where}: Redis is unreachable ({exc or type(exc).__name__})") from None
    finally:
        await client.aclose()


async def check_rabbitmq(settings: Settings) -> None:
    if settings.amqp_url is None:
        return
    where = f"GOALHORN_AMQP_URL={redacted(settings.amqp_url)}"
    quiet = logging.getLogger("aiormq.connection")  # it logs the failure we are about to report
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        connection = await aio_pika.connect(settings.amqp_url, timeout=CHECK_TIMEOUT_S)
    except aiormq.exceptions.ProbableAuthenticationError:
        raise ServiceUnreachable(f"{where}: RabbitMQ refused the credentials") from None
    except aiormq.exceptions.AMQPConnectionError as exc:
        text = str(exc) or type(exc).__name__
        if "ACCESS_REFUSED" in text or "NOT_ALLOWED" in text:
            raise ServiceUnreachable(f"{where}: RabbitMQ refused access ({text})") from None
        raise ServiceUnreachable(f"{where}: RabbitMQ is unreachable ({text})") from None
    except (OSError, TimeoutError) as exc:
        raise ServiceUnreachable(f"{where}: RabbitMQ is unreachable ({exc or type(exc).__name__})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ServiceUnreachable(f"{where}: not an AMQP URL ({exc})") from None
    finally:
        quiet.setLevel(level)
    await connection.close()


async def check_services(settings: Settings) -> None:
    """Raise :class:`ServiceUnreachable` for the first configured service that cannot be used."""
    await check_redis(settings)
    await check_rabbitmq(settings)
