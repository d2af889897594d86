"""Subscribing FCM tokens to topics through firebase-admin, off the event loop, chunk by chunk.

Two APIs, chosen per :class:`TopicAdmin` (``api``):

- ``"iid"`` (the default): the Instance ID batch API, ``POST {iid}/iid/v1:batchAdd`` and
  ``:batchRemove`` with ``{"to": "/topics/<topic>", "registration_tokens": [...]}``, up to
  :data:`MAX_TOKENS_PER_CALL` tokens a request, answered per token in order (firebase-admin's
  ``*_legacy`` calls; firebase-admin 7 marks them deprecated, Google still serves them with OAuth
  access tokens). A 1,000,000-follower team is ~600 requests. The request goes through
  firebase-admin's own authorized client and its ``TopicManagementResponse``, at
  ``https://iid.googleapis.com``, or ``GOALHORN_FCM_BASE_URL`` when that is not Google's (the
  sandbox serves both APIs). If that endpoint is gone (a whole request answered 404), the admin
  says so once and goes on with ``"v1"``.
- ``"v1"``: what firebase-admin 7's ``messaging.subscribe_to_topic`` / ``unsubscribe_from_topic``
  call, FCM's v1 registrations API once per token (``POST {fcm}/v1/projects/<p>/registrations/
  <token>/topicSubscriptions?topic_name=<topic>``, ``DELETE .../topicSubscriptions/<topic>``) from
  up to 100 threads, each token's error code in the response. Its URL is the messaging service's
  ``_fcm_topic_url``, pointed at ``GOALHORN_FCM_BASE_URL`` here as goalhorn's own FCM provider is.
  One request per token: ~550 tokens/s against the sandbox on 2 cores, a 600k-token team in ~18 min.

A credential used against another host than Google's looks up no "regional access boundary" on
googleapis.com after its token refresh (nothing leaves the machine for the sandbox). firebase-admin's
HTTP client retries 500 and 503 itself; a quota refusal (429) or a provider error leaves those tokens
to be retried (:attr:`TopicOutcome.retry`), a dead token (unregistered, invalid) is reported as such
(:attr:`TopicOutcome.dead`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import firebase_admin
import google.auth.exceptions
import requests
import requests.adapters
from firebase_admin import _http_client, credentials, exceptions, messaging

from goalhorn.errors import ConfigError
from goalhorn.settings import Settings

log = logging.getLogger(__name__)

MAX_TOKENS_PER_CALL = 1000
GOOGLE_FCM_URL = "https://fcm.googleapis.com"
GOOGLE_IID_URL = "https://iid.googleapis.com"
IID_OPERATIONS = {"subscribe": "iid/v1:batchAdd", "unsubscribe": "iid/v1:batchRemove"}
IID_HEADERS = {"access_token_auth": "true"}
DEAD_TOKEN_ERRORS = frozenset({"UNREGISTERED", "NOT_FOUND", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH"})
"""Per-token error codes that say the token will never be subscribed (firebase-admin's v1 codes, and
the IID batch API's)."""
QUOTA_ERRORS = frozenset({"QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED", "TOO_MANY_REQUESTS"})
Operation = Literal["subscribe", "unsubscribe"]
Api = Literal["iid", "v1"]
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
    """firebase-admin's topic management for one FCM project, pointed at ``settings.fcm_base_url``,
    through the IID batch API (``api="iid"``) or the v1 registrations API (``api="v1"``)."""

    def __init__(self, settings: Settings, credential: credentials.Base | None = None, *, api: Api = "iid") -> None:
        if api not in ("iid", "v1"):
            raise ConfigError(f"topic management api {api!r}: one of iid, v1")
        self.api: Api = api
        self.requests = 0
        """Topic management requests made (a v1 call is one per token, an IID call one per chunk)."""
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
        self._service = service
        base = settings.fcm_base_url.rstrip("/")
        self._iid_url = GOOGLE_IID_URL if base == GOOGLE_FCM_URL else base
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
        try:
            if self.api == "iid":
                try:
                    response = self._iid_batch(operation, tokens, topic)
                except exceptions.NotFoundError:
                    log.warning(
                        "the IID batch endpoint %s answered 404: topic management goes on through FCM's v1 "
                        "registrations API, one request per token",
                        self._iid_url,
                    )
                    self.api = "v1"
            if self.api == "v1":
                call = messaging.subscribe_to_topic if operation == "subscribe" else messaging.unsubscribe_from_topic
                self.requests += len(tokens)
                response = call(tokens, topic, app=self._app)
        except exceptions.ResourceExhaustedError:
            return TopicOutcome(retry=tokens, quota_refused=True)
        except exceptions.FirebaseError:  # the call as a whole failed: every token is retried
            return TopicOutcome(retry=tokens)
        except ValueError as exc:  # an answer firebase-admin cannot read: retried like a failed call
            log.error(
                "topic %s: unreadable topic management answer (%s); its %d tokens are retried", topic, exc, len(tokens)
            )
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

    def _iid_batch(self, operation: Operation, tokens: list[str], topic: str) -> messaging.TopicManagementResponse:
        """One IID ``batchAdd``/``batchRemove`` request through firebase-admin's authorized client,
        its errors mapped as firebase-admin maps them (``FirebaseError`` subclasses)."""
        body = {"to": f"/topics/{topic.removeprefix('/topics/')}", "registration_tokens": tokens}
        self.requests += 1
        try:
            answer = self._service._client.body(
                "post", url=f"{self._iid_url}/{IID_OPERATIONS[operation]}", json=body, headers=IID_HEADERS
            )
        except requests.exceptions.RequestException as exc:
            raise self._service._handle_iid_error(exc) from exc
        return messaging.TopicManagementResponse(answer)

    async def aclose(self) -> None:
        # firebase-admin closes its async client with asyncio.run: not on this loop.
        await asyncio.to_thread(firebase_admin.delete_app, self._app)
