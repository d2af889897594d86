"""Holding intents, unacked, while their audience cannot be read.

When an expansion finds Redis unreachable (or its subscriber data lost, ``epoch_watch``), the gate
shuts: that intent, and every one delivered after it, waits in its handler, unacked, instead of
going back to the queue to be redelivered at once (which spun an intent ~500 times a second). One
probe at a time checks Redis (a PING and the subscriber epoch) after a jittered delay growing from
``base_s`` to ``cap_s``; when one passes the gate opens and the held intents are expanded. An intent
held ``hold_max_s`` is requeued (so the broker, and ``goalhorn queues``, see it move), and comes
back to wait again: at most one redelivery per held intent per ``hold_max_s``. A stopping process
requeues what it holds at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from goalhorn.backoff import Backoff
from goalhorn.bus import Requeue

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[object]]


class IntentGate:
    def __init__(self, probe: Probe, *, base_s: float = 0.5, cap_s: float = 15.0, hold_max_s: float = 60.0) -> None:
        self._probe = probe
        self._backoff = Backoff(base_s, cap_s)
        self._hold_max_s = hold_max_s
        self._open = asyncio.Event()
        self._open.set()
        self._closing = asyncio.Event()
        self._prober: asyncio.Task[None] | None = None
        self.reason: str | None = None
        """Why the gate is shut, while it is."""
        self.holding = 0
        """Intents waiting at the gate."""

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def shut(self, reason: str) -> None:
        """Hold every intent until a probe passes."""
        if self._closing.is_set():
            return
        if self._open.is_set():
            log.warning("holding intents: %s", reason)
        self.reason = reason
        self._open.clear()
        if self._prober is None or self._prober.done():
            self._prober = asyncio.create_task(self._probe_until_open())

    async def enter(self) -> None:
        """Return once the gate is open; raise :class:`Requeue` after ``hold_max_s``, or at once when
        the process is stopping."""
        if self._closing.is_set():
            raise Requeue("the fanout is stopping")
        if self._open.is_set():
            return
        self.holding += 1
        try:
            await self.sleep(self._hold_max_s, until=self._open)
        finally:
            self.holding -= 1
        if not self._open.is_set():
            raise Requeue(f"held {self._hold_max_s:g}s ({self.reason})")

    async def sleep(self, delay_s: float, *, until: asyncio.Event | None = None) -> None:
        """Sleep ``delay_s``, or less if ``until`` is set or the process starts stopping."""
        waits = [asyncio.ensure_future(self._closing.wait())]
        if until is not None:
            waits.append(asyncio.ensure_future(until.wait()))
        try:
            await asyncio.wait(waits, timeout=delay_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def close(self) -> None:
        """Stop probing and let every held intent go back to the queue."""
        self._closing.set()
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober

    async def _probe_until_open(self) -> None:
        while not self._closing.is_set():
            delay = self._backoff.next_delay()
            await self.sleep(delay)
            if self._closing.is_set():
                return
            try:
                await self._probe()
            except Exception as exc:  # the probe's failure is the news: still shut, and why
                self.reason = describe(exc)
                log.info("still holding intents (probe %d failed: %s)", self._backoff.failures, self.reason)
                continue
            log.warning("expanding held intents again after %d probes", self._backoff.failures)
            self._backoff.reset()
            self.reason = None
            self._open.set()
            return


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
