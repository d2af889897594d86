"""The fan-out a team would write without goalhorn, as bench e2e's baseline for a 100k goal.

One dramatiq task per recipient: the producer SSCANs the team's follower set and enqueues a
``notify_user`` message per member; a dramatiq worker (``dramatiq bench.naive_pipeline``, one process,
8 threads like a ``goalhorn run deliver``) looks the user's tokens up in Redis (one HGETALL per user)
and sends them with firebase-admin's ``send_each_for_multicast`` (the 100-connection pool firebase-admin
mounts for FCM, on the sandbox URL). FCM only, as firebase-admin is: its audience is all FCM.

The worker reads its configuration from the environment (``NAIVE_NAMESPACE``, ``NAIVE_AMQP_URL``,
``NAIVE_REDIS_URL`` and the sandbox's ``GOALHORN_FCM_*``), as such a worker would.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker

ACTOR = "notify_user"


def queue_name(namespace: str) -> str:
    return f"{namespace}.naive"


def user_key(namespace: str, user: str) -> str:
    """HASH platform -> token of one user, in the naive store."""
    return f"{namespace}:naive:user:{user}"


def followers_key(namespace: str, team: str) -> str:
    return f"{namespace}:naive:team:{team}:followers"


def producer(amqp_url: str, namespace: str) -> RabbitmqBroker:
    broker = RabbitmqBroker(url=amqp_url)
    broker.declare_queue(queue_name(namespace))
    return broker


def fan_out(broker: RabbitmqBroker, redis_url: str, namespace: str, team: str, notification: dict[str, Any]) -> int:
    """Enqueue one task per follower of ``team``; returns how many."""
    client = redis.Redis.from_url(redis_url)
    sent = 0
    try:
        for member in client.sscan_iter(followers_key(namespace, team), count=2000):
            message: dramatiq.Message[Any] = dramatiq.Message(
                queue_name=queue_name(namespace),
                actor_name=ACTOR,
                args=(member.decode(), notification),
                kwargs={},
                options={},
            )
            broker.enqueue(message)
            sent += 1
    finally:
        client.close()
    return sent


_state: dict[str, Any] = {}
_lock = threading.Lock()


def _clients() -> tuple[Any, Any]:
    """The worker's Redis client and firebase-admin app, made once per process."""
    with _lock:
        if not _state:
            from bench.bench_providers import firebase_app
            from goalhorn.settings import Settings

            _state["redis"] = redis.Redis.from_url(os.environ["NAIVE_REDIS_URL"])
            _state["app"] = firebase_app(Settings(), name="naive")
        return _state["redis"], _state["app"]


def notify_user(user: str, notification: dict[str, Any]) -> None:
    from firebase_admin import messaging

    client, app = _clients()
    tokens = [t.decode() for t in client.hgetall(user_key(os.environ["NAIVE_NAMESPACE"], user)).values()]
    if not tokens:
        return
    message = messaging.MulticastMessage(
        tokens=tokens,
        notification=messaging.Notification(notification["title"], notification["body"]),
        data=notification["data"],
    )
    response = messaging.send_each_for_multicast(message, app=app)
    if response.failure_count:
        raise RuntimeError(f"{response.failure_count} of {len(tokens)} failed")


if "NAIVE_NAMESPACE" in os.environ:  # the worker: ``dramatiq bench.naive_pipeline``
    dramatiq.set_broker(RabbitmqBroker(url=os.environ["NAIVE_AMQP_URL"]))
    dramatiq.actor(actor_name=ACTOR, queue_name=queue_name(os.environ["NAIVE_NAMESPACE"]))(notify_user)
