"""The expander's pipelining helpers: ``read_ahead`` (a producer task ahead of its consumer) and
``overlapped`` (up to ``depth`` reads in flight, results in order). Order kept, errors raised in the
consumer, bounded, and nothing left running when the consumer stops early."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import cast

import pytest

from goalhorn.segmenter.algebra import overlapped, read_ahead


def leftover_tasks() -> list[asyncio.Task[object]]:
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not current and not t.done()]


def closable(items: AsyncIterator[int]) -> AsyncGenerator[int, None]:
    """The helpers are async generators typed as iterators; ``aclose`` is what stopping early calls."""
    return cast(AsyncGenerator[int, None], items)


async def collect(items: AsyncIterator[int], into: list[int]) -> None:
    async for item in items:
        into.append(item)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class Source:
    """An async iterator of ``0..n-1`` (``forever``: never ending) that records what happened to it."""

    def __init__(self, n: int = 10, *, fail_at: int | None = None, forever: bool = False, jitter: bool = False):
        self.n, self.fail_at, self.forever, self.jitter = n, fail_at, forever, jitter
        self.produced = 0
        self.cancelled = False
        self.finished = False

    async def __call__(self) -> AsyncIterator[int]:
        try:
            i = 0
            while self.forever or i < self.n:
                if i == self.fail_at:
                    raise ValueError(f"source broke at {i}")
                if self.jitter:
                    await asyncio.sleep(random.random() / 1000)
                else:
                    await asyncio.sleep(0)
                self.produced += 1
                yield i
                i += 1
            self.finished = True
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_read_ahead_keeps_order() -> None:
    source = Source(200, jitter=True)
    got: list[int] = []
    async for item in read_ahead(source(), depth=3):
        got.append(item)
        if item % 7 == 0:
            await asyncio.sleep(random.random() / 1000)
    assert got == list(range(200))
    assert source.finished
    await settle()
    assert leftover_tasks() == []


async def test_read_ahead_reads_ahead_but_no_further_than_depth() -> None:
    source = Source(100)
    reader = read_ahead(source(), depth=3)
    async with asyncio.timeout(2), contextlib.aclosing(closable(reader)):
        assert await anext(reader) == 0
        await asyncio.sleep(0.02)  # the consumer works on item 0
        # 1 handed out, 3 queued, 1 more read and waiting for room in the queue
        assert source.produced == 1 + 3 + 1
        ahead = source.produced
        assert await anext(reader) == 1
        await asyncio.sleep(0.02)
        assert source.produced == ahead + 1, "one more read for the one taken"
    await settle()
    assert leftover_tasks() == [], "closing the reader cancelled its producer"
    await asyncio.sleep(0.01)
    assert source.produced == ahead + 1


async def test_read_ahead_raises_the_producers_error_in_the_consumer() -> None:
    source = Source(10, fail_at=4)
    got: list[int] = []
    with pytest.raises(ValueError, match="source broke at 4"):
        await collect(read_ahead(source(), depth=2), got)
    assert got == [0, 1, 2, 3], "everything read before the error is handed out first"
    await settle()
    assert leftover_tasks() == []


async def test_read_ahead_stopping_early_cancels_the_producer() -> None:
    source = Source(forever=True)
    async with asyncio.timeout(2):
        reader = read_ahead(source(), depth=2)
        async with contextlib.aclosing(closable(reader)):
            async for item in reader:
                if item == 5:
                    break
    await settle()
    assert leftover_tasks() == [], "the producer was cancelled, not left reading"
    produced = source.produced
    await asyncio.sleep(0.01)
    assert source.produced == produced


async def test_read_ahead_stops_a_producer_whose_source_swallowed_the_cancellation() -> None:
    """A source read that swallows the cancellation of the producer (as a client library may, inside a
    read): the producer goes on, fills the queue nobody reads and waits to put; closing must not hang."""
    swallowed: list[bool] = []

    async def swallowing() -> AsyncIterator[int]:
        i = 0
        while True:
            if i == 3 and not swallowed:
                try:
                    await asyncio.sleep(30)  # the read in progress when the consumer stops
                except asyncio.CancelledError:
                    swallowed.append(True)  # ... and the library returns as if nothing happened
            yield i
            i += 1

    reader = read_ahead(swallowing(), depth=4)
    assert await asyncio.wait_for(anext(reader), 5) == 0
    await settle()  # the producer read 1 and 2 and waits in the read of 3
    closing = asyncio.create_task(closable(reader).aclose())
    done, _ = await asyncio.wait({closing}, timeout=5)  # a wait that no code under test can swallow
    assert done, "closing the reader hangs: its producer waits to put into a queue nobody reads"
    assert swallowed == [True]
    await settle()
    assert leftover_tasks() == [], "the producer was stopped, not left waiting to put"


async def test_read_ahead_cancelled_while_waiting_for_the_producer_leaves_no_producer() -> None:
    source = Source(forever=True, jitter=True)  # slower than its consumer: read_ahead waits on it

    async def consume() -> None:
        async for _ in read_ahead(source(), depth=2):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(2):
            await task
    await settle()
    assert source.cancelled
    assert leftover_tasks() == []


class Reads:
    """Awaitables that track how many run at once; read ``i`` takes ``delay(i)`` and returns ``i``."""

    def __init__(self, n: int, delay: float | list[float] = 0.0, fail_at: int | None = None) -> None:
        self.n, self.fail_at = n, fail_at
        self.delays = delay if isinstance(delay, list) else [delay] * n
        self.started = 0
        self.running = 0
        self.most = 0
        self.cancelled: list[int] = []
        self.done: list[int] = []

    async def read(self, i: int) -> int:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(self.delays[i])
            if i == self.fail_at:
                raise ValueError(f"read {i} failed")
            self.done.append(i)
            return i
        except asyncio.CancelledError:
            self.cancelled.append(i)
            raise
        finally:
            self.running -= 1

    async def starts(self, gap: float = 0.0) -> AsyncIterator[Awaitable[int]]:
        for i in range(self.n):
            if gap:
                await asyncio.sleep(gap)
            self.started += 1
            yield self.read(i)


async def test_overlapped_keeps_order_whatever_finishes_first() -> None:
    rng = random.Random(7)
    reads = Reads(60, [rng.random() / 200 for _ in range(60)])
    got = [r async for r in overlapped(reads.starts(), depth=4)]
    assert got == list(range(60))
    assert reads.cancelled == []


@pytest.mark.parametrize("depth", [1, 2, 5])
async def test_overlapped_runs_at_most_depth_at_once(depth: int) -> None:
    reads = Reads(20, 0.002)
    got: list[int] = []
    async for r in overlapped(reads.starts(), depth=depth):
        got.append(r)
        await asyncio.sleep(0.001)  # work on the result while the others run
    assert got == list(range(20))
    assert reads.most == depth, "as many as allowed, and no more"


async def test_overlapped_yields_a_finished_result_before_starting_depth_more() -> None:
    """A read done by the time the next one starts is handed out then: the first batch goes out early."""
    reads = Reads(20, 0.0)
    started_when_yielded = []
    async for _ in overlapped(reads.starts(gap=0.005), depth=8):
        started_when_yielded.append(reads.started)
    assert started_when_yielded[0] <= 2
    assert reads.most <= 2


async def test_overlapped_raises_a_failed_read_and_cancels_the_rest() -> None:
    reads = Reads(10, [0.0, 0.001, 0.0, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05], fail_at=1)
    got: list[int] = []
    with pytest.raises(ValueError, match="read 1 failed"):
        await collect(overlapped(reads.starts(), depth=4), got)
    assert got == [0]
    await settle()
    assert reads.running == 0
    assert reads.cancelled, "the reads still running were cancelled"
    assert leftover_tasks() == []


async def test_overlapped_stopping_early_cancels_the_running_reads() -> None:
    reads = Reads(50, [0.0] + [10.0] * 49)
    async with asyncio.timeout(2):
        results = overlapped(reads.starts(), depth=3)
        async with contextlib.aclosing(closable(results)):
            assert await anext(results) == 0
    await settle()
    assert reads.started == 3, "no read started after the consumer stopped"
    assert sorted(reads.cancelled) == [1, 2]
    assert reads.running == 0
    assert leftover_tasks() == []
