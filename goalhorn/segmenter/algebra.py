"""Set algebra over Redis follower sets, chunk by chunk.

``stream`` yields the members of a resolved expression in chunks without ever loading a whole set:
a source is read with SSCAN; a union streams each child and drops members of the children before it;
an intersection streams its smallest child and keeps members of all the others; a difference streams
its first child and drops members of the rest. Membership of a chunk in any expression costs one
pipelined round trip (one SMISMEMBER per set involved).

SSCAN may return a member twice only when the set is resized during the scan; such a repeat reaches
the delivery markers, which keep the device from a second push.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from typing import TypeVar, cast

from goalhorn.redis_client import Redis
from goalhorn.segmenter.definitions import Members, Op, Resolved, SetKey

T = TypeVar("T")


async def read_ahead(chunks: AsyncIterator[T], depth: int = 2) -> AsyncGenerator[T, None]:
    """Yield ``chunks`` while a task reads up to ``depth`` more, so Redis round trips overlap the work
    done on the current chunk. Stacked, each stage runs ahead of the next (Redis interleaves the
    stages' connections); the reader's error is raised here, and stopping early cancels it."""
    queue: asyncio.Queue[tuple[bool, T | None, BaseException | None]] = asyncio.Queue(depth)

    async def pump() -> None:
        try:
            async for item in chunks:
                await queue.put((True, item, None))
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put((False, None, exc))
        else:
            await queue.put((False, None, None))
        finally:
            # Closed here, in its own task, not left half-way for the garbage collector to finalize.
            close = getattr(chunks, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    task = asyncio.create_task(pump())
    try:
        while True:
            more, item, error = await queue.get()
            if not more:
                if error is not None:
                    raise error
                return
            yield cast(T, item)
    finally:
        await _stop(task, queue)


async def _stop(task: asyncio.Task[None], queue: asyncio.Queue[tuple[bool, T | None, BaseException | None]]) -> None:
    """Stop ``read_ahead``'s producer once its consumer is gone. A read that swallows the producer's
    cancellation (a client library may, mid-read) leaves it going on, to wait for ever in ``put`` on a
    queue nobody reads: so what it put is dropped and it is cancelled again until it ends. A
    cancellation of the consumer's own task, meanwhile, is raised, never swallowed."""
    task.cancel()
    while not task.done():
        while not queue.empty():
            queue.get_nowait()
        await asyncio.wait({task}, timeout=0.05)
        if not task.done():
            task.cancel()
    if not task.cancelled():
        task.exception()  # retrieved: the pump hands its errors over the queue, none is left here


async def overlapped(starts: AsyncIterator[Awaitable[T]], depth: int = 3) -> AsyncGenerator[T, None]:
    """The results of ``starts`` in order, with up to ``depth`` of them running at once (each round
    trip on its own connection), so Redis always has the next requests queued while the current
    result is worked on. A finished result is yielded at once, not after ``depth`` more were started
    (the first batch goes out early). Stopping early cancels those still running."""
    running: deque[asyncio.Future[T]] = deque()
    try:
        async for start in starts:
            running.append(asyncio.ensure_future(start))
            while running and (running[0].done() or len(running) >= depth):
                yield await running.popleft()
        while running:
            yield await running.popleft()
    finally:
        for future in running:
            future.cancel()
        if running:
            # ``wait``, not ``await future``: a cancellation of this task meanwhile is raised, not taken
            # for the future's own and swallowed
            await asyncio.wait(running)
            for future in running:
                if not future.cancelled():
                    future.exception()  # retrieved: a result nobody reads any more


def set_keys(expr: Resolved) -> list[str]:
    if isinstance(expr, SetKey):
        return [expr.key]
    if isinstance(expr, Op):
        return [key for child in expr.children for key in set_keys(child)]
    return []


class SetAlgebra:
    """Streams and tests membership of resolved segment expressions over one Redis."""

    def __init__(self, redis: Redis, *, chunk: int = 2000) -> None:
        self._redis = redis
        self._chunk = chunk

    async def sizes(self, exprs: Sequence[Resolved]) -> dict[str, int]:
        """SCARD of every set in ``exprs``, in one round trip."""
        keys = sorted({key for expr in exprs for key in set_keys(expr)})
        if not keys:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.scard(key)
        return dict(zip(keys, cast(list[int], await pipe.execute()), strict=True))

    async def membership(self, exprs: Sequence[Resolved], users: Sequence[bytes]) -> list[list[bool]]:
        """For each expression, whether each of ``users`` is in it (one round trip)."""
        keys = sorted({key for expr in exprs for key in set_keys(expr)})
        found: dict[str, list[bool]] = {}
        if keys and users:
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.smismember(key, list(users))
            rows = cast(list[list[int]], await pipe.execute())
            found = {key: [bool(v) for v in row] for key, row in zip(keys, rows, strict=True)}

        def evaluate(expr: Resolved) -> list[bool]:
            if isinstance(expr, SetKey):
                return found.get(expr.key, [False] * len(users))
            if isinstance(expr, Members):
                return [u in expr.users for u in users]
            parts = [evaluate(child) for child in expr.children]
            if expr.op == "union":
                return [any(col) for col in zip(*parts, strict=True)]
            if expr.op == "intersection":
                return [all(col) for col in zip(*parts, strict=True)]
            return [col[0] and not any(col[1:]) for col in zip(*parts, strict=True)]

        return [evaluate(expr) for expr in exprs]

    async def stream(self, expr: Resolved, sizes: dict[str, int]) -> AsyncIterator[list[bytes]]:
        """The members of ``expr`` (user ids, as the bytes Redis holds) in chunks; ``sizes`` (from
        :meth:`sizes`) picks intersection drivers."""
        if isinstance(expr, SetKey):
            cursor = 0
            while True:
                cursor, raw = await self._redis.sscan(expr.key, cursor, count=self._chunk)
                if raw:
                    yield cast(list[bytes], raw)
                if cursor == 0:
                    return
        elif isinstance(expr, Members):
            ordered = sorted(expr.users)
            for start in range(0, len(ordered), self._chunk):
                yield ordered[start : start + self._chunk]
        elif expr.op == "union":
            for index, child in enumerate(expr.children):
                earlier = None if index == 0 else expr.children[0] if index == 1 else Op("union", expr.children[:index])
                async for chunk in self.stream(child, sizes):
                    if earlier is None:
                        yield chunk
                        continue
                    (inside,) = await self.membership([earlier], chunk)
                    kept = [u for u, hit in zip(chunk, inside, strict=True) if not hit]
                    if kept:
                        yield kept
        else:
            children = list(expr.children)
            if expr.op == "intersection":
                children.sort(key=lambda child: estimate(child, sizes))
                driver, rest = (
                    children[0],
                    Op("intersection", tuple(children[1:])) if len(children) > 2 else children[1],
                )
                keep_if = True
            else:
                driver = children[0]
                rest = Op("union", tuple(children[1:])) if len(children) > 2 else children[1]
                keep_if = False
            async for chunk in self.stream(driver, sizes):
                (inside,) = await self.membership([rest], chunk)
                kept = [u for u, hit in zip(chunk, inside, strict=True) if hit is keep_if]
                if kept:
                    yield kept


def estimate(expr: Resolved, sizes: dict[str, int]) -> int:
    """An upper bound of the expression's size, to stream the cheaper side of an intersection."""
    if isinstance(expr, SetKey):
        return sizes.get(expr.key, 0)
    if isinstance(expr, Members):
        return len(expr.users)
    parts = [estimate(child, sizes) for child in expr.children]
    if expr.op == "union":
        return sum(parts)
    if expr.op == "intersection":
        return min(parts)
    return parts[0]
