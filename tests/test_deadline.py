"""``providers.deadline``: a request's timeout that a stalled event loop does not spend, and that
behaves like ``asyncio.timeout`` otherwise (its expiry is a ``TimeoutError``, anyone else's
cancellation passes through)."""

from __future__ import annotations

import asyncio
import time

import pytest

from goalhorn.models import Device
from goalhorn.providers import STALL_S, accepted, deadline


async def test_a_request_past_its_deadline_is_a_timeout_error() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with deadline(0.05):
            await asyncio.sleep(5)
    assert time.monotonic() - started < 1.0


async def test_a_request_within_its_deadline_is_left_alone() -> None:
    async with deadline(1.0):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0)  # no cancellation left pending on the task
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_cancellation_from_elsewhere_is_not_taken_for_a_timeout() -> None:
    async def request() -> None:
        async with deadline(5.0):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(request())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_answer_that_came_while_the_loop_stalled_is_read_not_timed_out() -> None:
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def request() -> str:
        async with deadline(0.1):
            return await answer

    task = asyncio.ensure_future(request())
    await asyncio.sleep(0)
    # The loop is blocked past the deadline; the answer is there when it runs again.
    asyncio.get_running_loop().call_soon(answer.set_result, "ok")
    time.sleep(0.1 + STALL_S + 0.1)  # noqa: ASYNC251 - the stall itself
    assert await task == "ok"


async def test_a_deadline_that_stalls_again_and_again_still_expires() -> None:
    async def stall() -> None:
        while True:
            time.sleep(STALL_S + 0.05)  # noqa: ASYNC251 - a loop that keeps stalling
            await asyncio.sleep(0)

    staller = asyncio.ensure_future(stall())
    try:
        with pytest.raises(TimeoutError):
            async with deadline(0.01):
                await asyncio.sleep(30)
    finally:
        staller.cancel()


def test_an_accepted_result_names_the_device_and_the_message() -> None:
    device = Device(device_id="d-1", user_id="u-1", platform="fcm", address="tok-1")
    result = accepted(device, "projects/p/messages/1")
    assert (result.device_id, result.outcome, result.provider_message_id) == ("d-1", "sent", "projects/p/messages/1")
    assert (result.retryable, result.message_error, result.refused, result.maybe_sent) == (False, False, False, False)
    assert accepted(device, None).provider_message_id is None
    assert result.model_fields_set == {"device_id", "outcome", "provider_message_id"}


async def test_many_requests_share_ticks_and_each_times_out_on_its_own() -> None:
    async def request(seconds: float, answer_after: float) -> str:
        try:
            async with deadline(seconds):
                await asyncio.sleep(answer_after)
                return "answered"
        except TimeoutError:
            return "timeout"

    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(request(0.1, 5.0) for _ in range(500)),
        *(request(5.0, 0.02) for _ in range(500)),
        *(request(0.3, 5.0) for _ in range(10)),
    )
    took = time.monotonic() - started
    assert outcomes == ["timeout"] * 500 + ["answered"] * 500 + ["timeout"] * 10
    assert 0.3 <= took < 1.5


async def test_a_deadline_left_in_time_never_cancels_what_its_task_does_next() -> None:
    async with deadline(0.05):
        await asyncio.sleep(0)
    await asyncio.sleep(0.3)  # past the tick the deadline was on: it must not cancel this sleep
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
