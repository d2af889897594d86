"""Pacing: the token bucket at its rate, and its AIMD answer to quota refusals, on a clock of the test's own."""

from __future__ import annotations

import asyncio

import pytest

from goalhorn.dispatch.pacing import (
    DECREASE,
    INCREASE_SHARE,
    MIN_RATE_PER_S,
    MIN_STEP_PER_S,
    TokenBucket,
    quota_refused,
)
from goalhorn.models import DeliveryResult, Device
from goalhorn.providers.fcm import result_for_response


class Clock:
    """Time that moves only when told to, or when a sleeper sleeps."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


def bucket(rate: float, clock: Clock, burst: float | None = None) -> TokenBucket:
    return TokenBucket(rate, burst, clock=clock, sleep=clock.sleep)


def state(pacer: TokenBucket) -> tuple[float | None, bool]:
    return pacer.rate, pacer.adapted


def accept(pacer: TokenBucket, clock: Clock, n: int, over_s: float) -> None:
    for _ in range(n):
        clock.t += over_s / n
        pacer.accepted()


def test_at_its_rate_a_burst_goes_at_once_then_one_send_per_interval() -> None:
    clock = Clock()
    pacer = bucket(10, clock, burst=2)
    assert [round(pacer.reserve(), 3) for _ in range(5)] == [0, 0, 0.1, 0.2, 0.3]


def test_unpaced_until_a_refusal_then_every_send_holds_until_retry_after_at_a_cut_rate() -> None:
    clock = Clock()
    pacer = bucket(0, clock)
    assert [pacer.reserve() for _ in range(100)] == [0] * 100
    accept(pacer, clock, 80, over_s=0.8)
    pacer.refused(sent_at=clock.t, retry_after=2)

    assert pacer.rate == pytest.approx(80 * DECREASE), "cut from what was accepted over the last second"
    waits = [pacer.reserve() for _ in range(3)]
    assert waits[0] == pytest.approx(2.0), "every send waits for the Retry-After, not only the refused one"
    assert waits[2] - waits[1] == pytest.approx(1 / (80 * DECREASE)), "then they go at the cut rate"


def test_refusals_of_the_same_wave_cut_once_a_later_one_cuts_again() -> None:
    clock = Clock()
    pacer = bucket(10_000, clock)
    accept(pacer, clock, 100, over_s=0.5)
    in_flight = [clock.t - 0.01 * n for n in range(20)]
    pacer.refused(sent_at=clock.t, retry_after=1)
    for sent_at in in_flight:  # answered after the cut, sent before it
        pacer.refused(sent_at=sent_at, retry_after=1)
    assert pacer.refusals == 1
    assert pacer.rate == pytest.approx(100 * DECREASE)

    clock.t += 1.0  # the hold ends; the next send made now is refused
    sent_at = clock.t
    pacer.refused(sent_at=sent_at, retry_after=1)
    assert pacer.refusals == 2
    assert pacer.rate == pytest.approx(100 * DECREASE * DECREASE), "multiplicative decrease of the cut rate"


def test_without_refusals_the_rate_grows_additively_back_to_its_configured_rate() -> None:
    clock = Clock()
    pacer = bucket(100, clock)
    accept(pacer, clock, 100, over_s=1.0)
    pacer.refused(sent_at=clock.t, retry_after=1)
    cut = pacer.rate
    assert cut is not None
    assert pacer.adapted
    clock.t += 1.0 + 2.0  # hold, then 2 s without refusal
    pacer.reserve()
    assert pacer.rate == pytest.approx(cut + 2 * MIN_STEP_PER_S)
    clock.t += 100.0
    pacer.reserve()
    assert state(pacer) == (100, False), "back at its rate, with its burst of one second"


def test_a_refusal_with_nothing_accepted_still_leaves_a_rate_that_probes() -> None:
    clock = Clock()
    pacer = bucket(0, clock)
    pacer.refused(sent_at=clock.t, retry_after=None)
    assert pacer.rate == MIN_RATE_PER_S
    assert pacer.reserve() == pytest.approx(1.0), "no Retry-After: held one second"
    clock.t += 10.0
    pacer.reserve()
    assert state(pacer) == (None, False), "unpaced again once grown past twice the cut"


def test_a_rate_cut_low_grows_back_at_the_scale_it_had_accepted() -> None:
    clock = Clock()
    pacer = bucket(10_000, clock)
    accept(pacer, clock, 1000, over_s=0.9)
    clock.t += 2.0  # nothing accepted over the last second: the cut goes to the floor
    pacer.refused(sent_at=clock.t, retry_after=1)
    assert pacer.rate == MIN_RATE_PER_S
    clock.t += 1.0 + 1.0
    pacer.reserve()
    assert pacer.rate == pytest.approx(MIN_RATE_PER_S + 1000 * INCREASE_SHARE), "5 % of the 1,000/s once accepted"


async def test_a_waiter_queued_before_a_cut_goes_back_in_line_behind_the_hold() -> None:
    clock = Clock()
    pacer = bucket(10, clock, burst=1)
    assert await pacer.take() == clock.t
    waiting = asyncio.create_task(pacer.take())  # its turn is 0.1 s away; a refusal comes first
    pacer.refused(sent_at=clock.t, retry_after=3)
    went = await waiting
    assert went >= 1000.0 + 3.0, "not sent during the hold"


def test_only_fcm_quota_answers_slow_a_platform_down() -> None:
    device = Device(device_id="d", user_id="u", platform="fcm", address="tok")
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota"}}
    assert quota_refused("fcm", result_for_response(device, 429, body, "1"))
    assert not quota_refused("fcm", result_for_response(device, 503, {"error": {"status": "UNAVAILABLE"}}, None))
    apns_429 = DeliveryResult(device_id="d", outcome="failed", retryable=True, reason="TooManyRequests")
    assert not quota_refused("apns", apns_429), "APNs' 429 is about one device token"
    assert not quota_refused("webhook", apns_429.model_copy(update={"reason": "http_429"}))
