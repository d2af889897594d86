"""Schemathesis over the API's own OpenAPI document, against a real server on real Redis: generated
requests (valid and not) to every operation never get a 5xx, and every documented answer matches
its schema (errors are problem details). Bounded to a few examples per operation."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis as sync_redis
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from goalhorn.redis_client import make_redis
from goalhorn.settings import LOCAL_REDIS_URL, Settings
from goalhorn.sidecar.apikeys import KeyStore
from goalhorn.sidecar.app import create_app
from tests.conftest import require_real_services
from tests.processes import free_port
from tests.support.api import SECRET

pytestmark = [pytest.mark.real, pytest.mark.timeout(120)]

DOCUMENT = create_app(Settings(namespace="schema", api_key_secret=SECRET)).openapi()
# The streams stay open by design (tests/test_sidecar_streams.py covers them); everything else is run.
schema = schemathesis.openapi.from_dict(DOCUMENT).exclude(path_regex=r"/stream$")


@schemathesis.serializer("application/jsonl", "application/x-ndjson", "application/json-lines")
def _json_lines(ctx, value):
    """The import's body is text (JSON lines): sent as UTF-8."""
    return value.encode() if isinstance(value, str) else str(value).encode()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, dict[str, str]]]:
    require_real_services()
    namespace = f"t{uuid.uuid4().hex[:12]}"
    config = Settings(redis_url=LOCAL_REDIS_URL, namespace=namespace, api_key_secret=SECRET)

    async def new_key() -> str:
        redis = make_redis(config)
        try:
            key, _ = await KeyStore.from_settings(redis, config).create("schema", "enterprise", ("read", "write"))
            return key
        finally:
            await redis.aclose()

    key = asyncio.run(new_key())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    finally:
        server.should_exit = True
        thread.join(20)
        client = sync_redis.Redis.from_url(LOCAL_REDIS_URL)
        for name in client.scan_iter(match=f"{namespace}:*", count=1000):
            client.delete(name)
        client.close()


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_every_answer_matches_the_document(case, served) -> None:
    base, auth = served
    case.call_and_validate(
        base_url=base,
        headers=auth,
        timeout=5,
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
    )
