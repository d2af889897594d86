"""FCM topics in the sandbox: who is subscribed to what, topic management, and topic fan-out.

Two ways in, as firebase-admin uses them:

- the Instance ID batch API (``POST /iid/v1:batchAdd`` and ``/iid/v1:batchRemove`` with
  ``{"to": "/topics/<name>", "registration_tokens": [...]}``, at most 1,000 tokens a call), answered
  ``{"results": [{}, {"error": "NOT_FOUND"}, ...]}`` in token order, a whole-request error as
  ``{"error": "<CODE>"}`` (firebase-admin's ``subscribe_to_topic_legacy``);
- the FCM v1 registrations API that firebase-admin 7's ``subscribe_to_topic`` and
  ``unsubscribe_from_topic`` call once per token: ``POST /v1/projects/<p>/registrations/<token>/
  topicSubscriptions?topic_name=<name>`` and ``DELETE .../topicSubscriptions/<name>?allow_missing=true``,
  answered ``{}`` or an FCM v1 error body (404 ``UNREGISTERED`` for a dead token).

With ``quota_per_s``, tokens past that many per second are refused with 429 (``QUOTA_EXCEEDED``),
``Retry-After: 1``, as Google's per-project topic management quota does.

A message sent to a ``topic`` or a ``condition`` (``'a' in topics && ('b' in topics || !('c' in
topics))``) is accepted at once, as FCM does, and then delivered to every token subscribed at that
moment (unregistered ones skipped) at ``fanout_per_s`` tokens a second (0: as fast as it goes), each
delivery recorded like a per-token push with ``"via": "topic"`` and the topic or condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

MAX_TOKENS_PER_CALL = 1000
TOPIC_NAME = re.compile(r"^[a-zA-Z0-9\-_.~%]+$")
_CONDITION_TOKEN = re.compile(r"\s*(?:(&&|\|\||!|\(|\))|'([a-zA-Z0-9\-_.~%]+)'\s+in\s+topics)")
MAX_CONDITION_TOPICS = 5

Deliver = Callable[[str], None]


class InvalidCondition(ValueError):
    """A condition FCM would refuse."""


class TopicRegistry:
    """Topic subscriptions: topic name -> the tokens subscribed to it."""

    def __init__(self) -> None:
        self.subscribers: defaultdict[str, set[str]] = defaultdict(set)
        self.calls: Counter[str] = Counter()
        """Topic management requests answered, per operation (``batchAdd``, ``subscribe``...)."""

    def add(self, topic: str, tokens: Iterable[str]) -> None:
        self.subscribers[topic].update(tokens)

    def remove(self, topic: str, tokens: Iterable[str]) -> None:
        members = self.subscribers.get(topic)
        if members is not None:
            members.difference_update(tokens)
            if not members:
                del self.subscribers[topic]

    def members(self, topic: str) -> set[str]:
        return set(self.subscribers.get(topic, ()))

    def matching(self, condition: str) -> set[str]:
        """The tokens a condition reaches; InvalidCondition for one FCM would refuse."""
        return _Condition(condition, self).evaluate()


class _Condition:
    """A recursive-descent reading of FCM's condition grammar (``||`` binds looser than ``&&``)."""

    def __init__(self, text: str, registry: TopicRegistry) -> None:
        self._registry = registry
        self._tokens: list[tuple[str, str]] = []
        position = 0
        text = text.strip()
        while position < len(text):
            found = _CONDITION_TOKEN.match(text, position)
            if found is None:
                raise InvalidCondition(f"Invalid condition expression provided at {position}.")
            operator, topic = found.groups()
            self._tokens.append(("op", operator) if operator else ("topic", topic))
            position = found.end()
        if sum(1 for kind, _ in self._tokens if kind == "topic") > MAX_CONDITION_TOPICS:
            raise InvalidCondition(f"A condition names at most {MAX_CONDITION_TOPICS} topics.")
        self._at = 0
        self._universe = set().union(*registry.subscribers.values()) if registry.subscribers else set()

    def evaluate(self) -> set[str]:
        if not self._tokens:
            raise InvalidCondition("Empty condition.")
        result = self._or()
        if self._at != len(self._tokens):
            raise InvalidCondition("Invalid condition expression provided.")
        return result

    def _peek(self) -> tuple[str, str] | None:
        return self._tokens[self._at] if self._at < len(self._tokens) else None

    def _or(self) -> set[str]:
        result = self._and()
        while self._peek() == ("op", "||"):
            self._at += 1
            result = result | self._and()
        return result

    def _and(self) -> set[str]:
        result = self._not()
        while self._peek() == ("op", "&&"):
            self._at += 1
            result = result & self._not()
        return result

    def _not(self) -> set[str]:
        token = self._peek()
        if token is None:
            raise InvalidCondition("Invalid condition expression provided.")
        self._at += 1
        if token == ("op", "!"):
            return self._universe - self._not()
        if token == ("op", "("):
            result = self._or()
            if self._peek() != ("op", ")"):
                raise InvalidCondition("Unbalanced parentheses in condition.")
            self._at += 1
            return result
        if token[0] == "topic":
            return self._registry.members(token[1])
        raise InvalidCondition("Invalid condition expression provided.")


class TokenQuota:
    """At most ``per_s`` tokens a second (None: no quota)."""

    def __init__(self, per_s: float | None = None) -> None:
        self.per_s = per_s
        self._second = 0
        self._used = 0

    def take(self) -> bool:
        if self.per_s is None:
            return True
        second = int(time.time())
        if second != self._second:
            self._second, self._used = second, 0
        if self._used >= self.per_s:
            return False
        self._used += 1
        return True


class TopicFanout:
    """Delivers accepted topic messages to their tokens in the background, at a bounded rate."""

    def __init__(self, per_s: float = 0.0) -> None:
        self.per_s = per_s
        self.delivered = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, tokens: list[str], deliver: Deliver) -> None:
        task = asyncio.create_task(self._run(tokens, deliver))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        """Topic messages still being fanned out."""
        return len(self._tasks)

    async def _run(self, tokens: list[str], deliver: Deliver) -> None:
        started = time.monotonic()
        for n, token in enumerate(tokens):
            if self.per_s > 0:
                due = started + n / self.per_s
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            elif n and n % 1000 == 0:
                await asyncio.sleep(0)  # let requests in between
            deliver(token)
            self.delivered += 1

    async def drain(self, timeout_s: float | None = None) -> None:
        """Wait until every accepted topic message has been fanned out."""
        async with asyncio.timeout(timeout_s):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def batch_request(body: Any) -> tuple[str, list[str]]:
    """The topic and tokens of an IID batch request; ValueError (the IID error code) if malformed."""
    if not isinstance(body, dict):
        raise ValueError("INVALID_ARGUMENT")
    to, tokens = body.get("to"), body.get("registration_tokens")
    if not isinstance(to, str) or not to.startswith("/topics/") or not TOPIC_NAME.match(to[len("/topics/") :]):
        raise ValueError("INVALID_ARGUMENT")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError("INVALID_ARGUMENT")
    if len(tokens) > MAX_TOKENS_PER_CALL:
        raise ValueError("INVALID_ARGUMENT")
    return to[len("/topics/") :], tokens
