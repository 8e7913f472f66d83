"""The coarse timer wheel (facade/timers.py): deadlines never fire early, cancelled ones never fire, many
share one loop timer, and ``timeout()`` keeps ``asyncio.timeout``'s contract."""

from __future__ import annotations

import asyncio
import logging

import pytest

from facade.timers import RESOLUTION, TimerWheel, timeout, wheel_for


async def _until(predicate: object, limit: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_a_deadline_fires_once_never_early_and_a_cancelled_one_never() -> None:
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    fired: list[tuple[str, float]] = []
    start = loop.time()
    wheel.call_later(0.05, lambda: fired.append(("a", loop.time())))
    cancelled = wheel.call_later(0.05, lambda: fired.append(("b", loop.time())))
    cancelled.cancel()
    assert cancelled.cancelled()
    await _until(lambda: fired)
    await asyncio.sleep(0.05 + 2 * RESOLUTION)  # b's slot has passed too
    assert [name for name, _ in fired] == ["a"]
    assert fired[0][1] - start >= 0.05 - 0.001  # (the loop clock's own millisecond rounding)
    assert wheel.armed == 0


async def test_deadlines_in_one_slot_share_one_loop_timer_and_a_failing_callback_does_not_stop_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wheel = TimerWheel(asyncio.get_running_loop(), resolution=0.5)  # wide slots: all of these land in one or two
    seen: list[int] = []

    def boom() -> None:
        raise RuntimeError("boom")

    handles = [wheel.call_later(0.01, seen.append, i) for i in range(100)]
    wheel.call_later(0.01, boom)
    assert len(wheel._slots) <= 2 and wheel.armed == 101
    for h in handles[:50]:
        h.cancel()
    with caplog.at_level(logging.ERROR, logger="facade.timers"):
        await _until(lambda: len(seen) == 50)
        await _until(lambda: "timer callback" in caplog.text)
    assert sorted(seen) == list(range(50, 100))


async def test_timeout_raises_timeout_error_when_the_block_outlives_it() -> None:
    with pytest.raises(TimeoutError):
        with timeout(0.02):
            await asyncio.sleep(5)
    with timeout(5):  # a block that ends in time: nothing happens, later awaits are not cancelled
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    with timeout(None):
        await asyncio.sleep(0)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    entered = asyncio.Event()

    async def waits() -> None:
        with timeout(5):
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.create_task(waits())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_nested_timeouts_each_report_their_own_expiry() -> None:
    # The inner one expires: the inner block raises TimeoutError, caught inside the outer.
    with timeout(5):
        with pytest.raises(TimeoutError):
            with timeout(0.02):
                await asyncio.sleep(5)
    # The outer one expires while the inner block runs: the inner lets the cancellation through (not its
    # own), the outer turns it into TimeoutError.
    with pytest.raises(TimeoutError):
        with timeout(0.02):
            with timeout(5):
                await asyncio.sleep(5)


async def test_one_wheel_per_loop() -> None:
    loop = asyncio.get_running_loop()
    assert wheel_for(loop) is wheel_for(loop)
    other = asyncio.new_event_loop()
    try:
        assert wheel_for(other) is not wheel_for(loop) and wheel_for(other).loop is other
    finally:
        other.close()
