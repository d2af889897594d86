"""Whether a device address can be delivered to, checked when a subscriber is imported rather than
when the first goal is scored.

APNs device tokens are hex (32 bytes today; Apple warns they may grow, so any even length in
bounds); FCM registration tokens are URL-safe text of about 150 characters; a webhook URL is http(s)
and passes the SSRF guard of :mod:`goalhorn.providers.ssrf` with the deployment's allowlist. Host
names are not resolved here (DNS answers change; the provider's resolver checks every connection),
but ``localhost`` names, which always mean this machine, are refused like a loopback address.
"""

from __future__ import annotations

import re

from yarl import URL

from goalhorn.errors import AddressRefused
from goalhorn.keys import Platform
from goalhorn.providers.ssrf import AddressPolicy
from goalhorn.providers.webhook import SECRET_PREFIX, signing_keys

APNS_TOKEN = re.compile(r"[0-9A-Fa-f]{32,200}")
FCM_TOKEN = re.compile(r"[A-Za-z0-9_:\-]{100,1024}")
MAX_URL_CHARS = 2048


def address_problem(platform: Platform, address: str, policy: AddressPolicy) -> str | None:
    """Why ``address`` is no ``platform`` address (a short phrase), or None if it is one."""
    if platform == "apns":
        if not APNS_TOKEN.fullmatch(address) or len(address) % 2:
            return "not an APNs token (an even number of 32-200 hex digits)"
        return None
    if platform == "fcm":
        if not FCM_TOKEN.fullmatch(address):
            return "not an FCM token (100-1024 characters of A-Z a-z 0-9 _ : -)"
        return None
    return url_problem(address, policy)


def url_problem(address: str, policy: AddressPolicy) -> str | None:
    """Why a webhook URL is refused, or None."""
    if len(address) > MAX_URL_CHARS:
        return f"URL longer than {MAX_URL_CHARS} characters"
    try:
        url = URL(address)
    except ValueError:
        return "not a URL"
    if not url.is_absolute():
        return "not an absolute http(s) URL"
    try:
        policy.check_url(url)
    except AddressRefused as exc:
        return f"webhook URL refused: {exc}"
    host = (url.raw_host or "").rstrip(".").lower()
    if (host == "localhost" or host.endswith(".localhost")) and not policy.allows_host(host):
        return f"webhook URL refused: loopback host {host} (not in GOALHORN_WEBHOOK_ALLOWLIST)"
    return None


def secret_problem(secret: str) -> str | None:
    """Why a webhook signing secret is unusable, or None: one ``whsec_<base64>`` key, or two separated
    by a space during a rotation."""
    parts = secret.split()
    if not 1 <= len(parts) <= 2 or not all(part.startswith(SECRET_PREFIX) for part in parts):
        return f"not a Standard Webhooks secret ({SECRET_PREFIX}<base64>, two separated by a space while rotating)"
    try:
        keys = signing_keys(secret)
    except ValueError as exc:
        return str(exc)
    if any(len(key) < 16 for key in keys):
        return "webhook secret shorter than 16 bytes"
    return None
