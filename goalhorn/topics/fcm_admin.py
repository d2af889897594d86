"""Subscribing FCM tokens to topics through firebase-admin, off the event loop, chunk by chunk.

firebase-admin 7's ``messaging.subscribe_to_topic`` / ``unsubscribe_from_topic`` no longer call the
Instance ID batch API (``iid.googleapis.com/iid/v1:batchAdd``, now ``*_legacy``): they call FCM's
v1 registrations API once per token (``POST {fcm}/v1/projects/<p>/registrations/<token>/
topicSubscriptions?topic_name=<topic>``, ``DELETE .../topicSubscriptions/<topic>``), from up to 100
threads, and report each token's error code in the response instead of raising. The URL they use is
the messaging service's ``_fcm_topic_url``, built from ``fcm.googleapis.com``; it is pointed at
``GOALHORN_FCM_BASE_URL`` here, as goalhorn's own FCM provider is (the sandbox, in development and
tests). A credential used against another host than Google's looks up no "regional access boundary"
on googleapis.com after its token refresh (nothing leaves the machine for the sandbox).

Calls take at most :data:`MAX_TOKENS_PER_CALL` tokens. firebase-admin's HTTP client waits out a
429's ``Retry-After`` and tries again, up to 4 times; a quota refusal (429) left after that, or a provider error,
leaves those tokens to be retried (:attr:`TopicOutcome.retry`), a dead token (unregistered, invalid)
is reported as such (:attr:`TopicOutcome.dead`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import firebase_admin
import google.auth.exceptions
import requests.adapters
from firebase_admin import _http_client, credentials, exceptions, messaging

from goalhorn.errors import ConfigError
from goalhorn.settings import Settings

MAX_TOKENS_PER_CALL = 1000
GOOGLE_FCM_URL = "https://fcm.googleapis.com"
DEAD_TOKEN_ERRORS = frozenset({"UNREGISTERED", "NOT_FOUND", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH"})
"""Per-token error codes that say the token will never be subscribed (firebase-admin's v1 codes, and
the IID batch API's)."""
QUOTA_ERRORS = frozenset({"QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED", "TOO_MANY_REQUESTS"})
Operation = Literal["subscribe", "unsubscribe"]
_apps = itertools.count(1)


@dataclass(slots=True)
class TopicOutcome:
    """What became of the tokens of one call: done, dead (drop them), or to retry later."""

    done: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)
    quota_refused: bool = False
    """Some tokens were refused by the topic management quota (429): back off before the next call."""

    def extend(self, other: TopicOutcome) -> None:
        self.done += other.done
        self.dead += other.dead
        self.retry += other.retry
        self.quota_refused |= other.quota_refused


class TopicAdmin:
    """firebase-admin's topic management for one FCM project, pointed at ``settings.fcm_base_url``."""

    def __init__(self, settings: Settings, credential: credentials.Base | None = None) -> None:
        try:
            if credential is None:
                path = settings.fcm_credentials_file
                credential = credentials.Certificate(path) if path else credentials.ApplicationDefault()
            project = settings.fcm_project_id or getattr(credential, "project_id", None)
        except (ValueError, OSError, google.auth.exceptions.GoogleAuthError) as exc:
            raise ConfigError(f"FCM credentials unusable: {exc}") from exc
        if not project:
            raise ConfigError("FCM project id unknown: set GOALHORN_FCM_PROJECT_ID or use a service-account file")
        self.project_id: str = project
        options = {"projectId": project, "httpTimeout": settings.fcm_timeout_s}
        self._app = firebase_admin.initialize_app(credential, options, name=f"goalhorn-topics-{next(_apps)}")
        service = messaging._get_messaging_service(self._app)
        base = settings.fcm_base_url.rstrip("/")
        if base != GOOGLE_FCM_URL:
            service._fcm_topic_url = f"{base}/v1/projects/{project}/registrations"
            # The pool firebase-admin mounts for fcm.googleapis.com, for its 100 threads.
            pool = requests.adapters.HTTPAdapter(
                pool_connections=100, pool_maxsize=100, max_retries=_http_client.DEFAULT_RETRY_CONFIG
            )
            service._client.session.mount(base, pool)
            google_credential = credential.get_credential()
            if hasattr(google_credential, "_is_regional_access_boundary_lookup_required"):
                google_credential._is_regional_access_boundary_lookup_required = lambda: False

    async def subscribe(self, tokens: Sequence[str], topic: str) -> TopicOutcome:
        return await self._call("subscribe", tokens, topic)

    async def unsubscribe(self, tokens: Sequence[str], topic: str) -> TopicOutcome:
        return await self._call("unsubscribe", tokens, topic)

    async def _call(self, operation: Operation, tokens: Sequence[str], topic: str) -> TopicOutcome:
        outcome = TopicOutcome()
        for start in range(0, len(tokens), MAX_TOKENS_PER_CALL):
            chunk = list(tokens[start : start + MAX_TOKENS_PER_CALL])
            outcome.extend(await asyncio.to_thread(self._chunk, operation, chunk, topic))
        return outcome

    def _chunk(self, operation: Operation, tokens: list[str], topic: str) -> TopicOutcome:
        call = messaging.subscribe_to_topic if operation == "subscribe" else messaging.unsubscribe_from_topic
        try:
            response = call(tokens, topic, app=self._app)
        except exceptions.ResourceExhaustedError:
            return TopicOutcome(retry=tokens, quota_refused=True)
        except exceptions.FirebaseError:  # the call as a whole failed: every token is retried
            return TopicOutcome(retry=tokens)
        failed = {error.index: str(error.reason) for error in response.errors}
        outcome = TopicOutcome()
        for index, token in enumerate(tokens):
            reason = failed.get(index)
            if reason is None:
                outcome.done.append(token)
            elif reason in DEAD_TOKEN_ERRORS and operation == "subscribe":
                outcome.dead.append(token)
            elif reason in DEAD_TOKEN_ERRORS:  # a dead token is in no topic: unsubscribed as far as it goes
                outcome.done.append(token)
            else:
                outcome.retry.append(token)
                outcome.quota_refused |= reason in QUOTA_ERRORS
        return outcome

    async def aclose(self) -> None:
        # firebase-admin closes its async client with asyncio.run: not on this loop.
        await asyncio.to_thread(firebase_admin.delete_app, self._app)
