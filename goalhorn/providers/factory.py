"""Which provider serves a platform, from settings: the real one when configured, else the console.

FCM is real once ``fcm_credentials_file`` is set, APNs once ``apns_key_file`` is; webhooks are always
real (signed, SSRF-guarded). The console stands in for an unconfigured phone platform (a dry run).
"""

from __future__ import annotations

from typing import TextIO

from goalhorn.catalog.templates import Renderer
from goalhorn.keys import Platform
from goalhorn.providers import Provider
from goalhorn.providers.console import ConsoleProvider
from goalhorn.settings import Settings


def make_provider(settings: Settings, platform: Platform, render: Renderer, out: TextIO | None = None) -> Provider:
    """The provider for ``platform``, formatting messages with ``render`` (the process's catalog)."""
    if platform == "fcm" and settings.fcm_credentials_file:
        from goalhorn.providers.fcm import FcmProvider

        return FcmProvider(settings, render=render)
    if platform == "apns" and settings.apns_key_file:
        from goalhorn.providers.apns import ApnsProvider

        return ApnsProvider(settings, render=render)
    if platform == "webhook":
        from goalhorn.providers.webhook import WebhookProvider

        return WebhookProvider(settings, render=render)
    return ConsoleProvider(platform, out, render=render)
