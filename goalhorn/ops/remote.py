"""The ops commands through the sidecar (``--api URL``): the same documents as ``--json``, fetched
from ``/v1/admin/...`` with an admin key instead of computed against RabbitMQ and Redis."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import typer

from goalhorn.ops.queues import fail, settings_or_fail

API = typer.Option(
    None,
    "--api",
    metavar="URL",
    help="Go through the sidecar at URL (GOALHORN_ADMIN_API_URL) with GOALHORN_ADMIN_API_KEY, an admin key.",
)


@dataclass(frozen=True)
class AdminApi:
    url: str
    key: str
    timeout_s: float = 30.0

    @classmethod
    def chosen(cls, option: str | None) -> AdminApi | None:
        """The sidecar to go through (``--api`` or GOALHORN_ADMIN_API_URL), or None to go direct."""
        settings = settings_or_fail()
        url = option or settings.admin_api_url
        if not url:
            return None
        if not url.startswith(("http://", "https://")):
            fail(f"--api: {url!r} is not an http:// or https:// URL")
        if settings.admin_api_key is None:
            fail("GOALHORN_ADMIN_API_KEY is not set: the sidecar needs an admin-scoped API key")
        return cls(url.rstrip("/"), settings.admin_api_key.get_secret_value())

    def call(self, method: str, path: str, params: dict[str, Any] | None = None, *, missing: bool = False) -> Any:
        """The JSON answer of ``method /v1/admin/<path>`` (``{}`` when it has no body); None for a 404
        when ``missing`` is allowed.
        Any other error is one ``error:`` line and exit 2 (the key is never shown)."""
        query = urllib.parse.urlencode({k: _param(v) for k, v in (params or {}).items() if v is not None})
        target = f"{self.url}/v1/admin/{path}" + (f"?{query}" if query else "")
        request = urllib.request.Request(target, method=method, headers={"Authorization": f"Bearer {self.key}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                body = answer.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing:
                return None
            fail(_refusal(self.url, exc))
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            fail(f"the admin API at {self.url} does not answer ({why}); check --api / GOALHORN_ADMIN_API_URL")
        return json.loads(body) if body else {}


def _param(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _refusal(url: str, exc: urllib.error.HTTPError) -> str:
    try:
        detail = str(json.loads(exc.read()).get("detail", ""))
    except (ValueError, AttributeError, OSError):
        detail = ""
    if exc.code == 401:
        return f"the admin API at {url} refused the key (401: {detail or 'not valid'}); check GOALHORN_ADMIN_API_KEY"
    if exc.code == 403:
        return f"the admin API at {url} refused (403): GOALHORN_ADMIN_API_KEY needs the admin scope"
    return f"the admin API at {url} answered {exc.code}: {detail or exc.reason}"
