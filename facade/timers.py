"""Coarse timers: the proxy's many per-request deadlines for the price of a few event-loop timers.

Every proxied request arms and cancels several deadlines that almost never fire: the per-try timeout,
the client's request-head timeout, the keep-alive timeout of its connection. A loop timer
(``loop.call_later`` + ``cancel``) costs ~2 µs each and ``asyncio.timeout`` ~5.5 µs (uvloop, this
machine): ~10 µs of a request's ~110. A :class:`TimerWheel` rounds each deadline up to the next
``RESOLUTION`` slot (10 ms) and keeps one loop timer per slot, not per deadline: arming is a dict insert,
cancelling a dict delete (~0.2 µs). A deadline fires 0-10 ms late, never early; nothing here is
meant for timers that must be exact (Envoy's own timers are coarse too: its timer wheel works in
milliseconds and most of its timeouts are checked at that granularity).

One wheel per event loop (:func:`wheel_for`); it holds no task and needs no closing: a slot's loop timer
fires once, finds what was not cancelled and calls it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

__all__ = ["RESOLUTION", "Deadline", "TimerWheel", "WheelHandle", "timeout", "wheel_for"]

RESOLUTION = 0.01  # seconds: how late a deadline may fire

logger = logging.getLogger("facade.timers")


class WheelHandle:
    """An armed deadline (``loop.call_later``'s handle, as far as callers use it: ``cancel()``)."""

    __slots__ = ("_args", "_callback", "_slot")

    def __init__(self, callback: Callable[..., object], args: tuple[Any, ...], slot: dict[WheelHandle, None]) -> None:
        self._callback = callback
        self._args = args
        self._slot: dict[WheelHandle, None] | None = slot

    def cancel(self) -> None:
        slot = self._slot
        if slot is not None:
            self._slot = None
            slot.pop(self, None)

    def cancelled(self) -> bool:
        """True once cancelled or fired (no longer armed)."""
        return self._slot is None


class TimerWheel:
    """Deadlines on one event loop, grouped in ``resolution``-wide slots that share one loop timer."""

    __slots__ = ("_resolution", "_slots", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = RESOLUTION) -> None:
        if resolution <= 0:
            raise ValueError("resolution must be > 0")
        self.loop = loop
        self._resolution = resolution
        self._slots: dict[int, dict[WheelHandle, None]] = {}

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> WheelHandle:
        """Call ``callback(*args)`` ``delay`` seconds from now, up to one resolution later."""
        key = int((self.loop.time() + delay) / self._resolution) + 1  # the slot that ends after the deadline
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = {}
            self.loop.call_at(key * self._resolution, self._fire, key)
        handle = WheelHandle(callback, args, slot)
        slot[handle] = None
        return handle

    def _fire(self, key: int) -> None:
        slot = self._slots.pop(key, None)
        if not slot:
            return
        for handle in list(slot):
            handle._slot = None
            try:
                handle._callback(*handle._args)
            except Exception:  # as the loop does for a failing callback: log it, run the others
                logger.exception("timer callback %r failed", handle._callback)

    @property
    def armed(self) -> int:
        """Deadlines armed and not cancelled (for tests and /debug views)."""
        return sum(len(slot) for slot in self._slots.values())


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TimerWheel] = weakref.WeakKeyDictionary()
_last: TimerWheel | None = None


def wheel_for(loop: asyncio.AbstractEventLoop) -> TimerWheel:
    """The wheel of ``loop`` (created on first use). Almost every process runs one loop: the last wheel
    handed out is checked first."""
    global _last
    wheel = _last
    if wheel is not None and wheel.loop is loop:
        return wheel
    wheel = _wheels.get(loop)
    if wheel is None:
        wheel = _wheels[loop] = TimerWheel(loop)
    _last = wheel
    return wheel


class Deadline:
    """``with timeout(s):`` — ``asyncio.timeout``'s contract at the wheel's resolution: the task is
    cancelled when the block outlives ``s`` and the block raises ``TimeoutError`` instead of
    ``CancelledError``; a cancellation from elsewhere stays a ``CancelledError``. A plain (not async)
    context manager: entering and leaving it awaits nothing."""

    __slots__ = ("_cancelling", "_expired", "_handle", "_task")

    def __init__(self, delay: float | None) -> None:
        self._expired = False
        self._handle: WheelHandle | None = None
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("timeout() must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        if delay is not None:
            if delay <= 0:
                self._expire()
            else:
                self._handle = wheel_for(task.get_loop()).call_later(delay, self._expire)

    def _expire(self) -> None:
        self._handle = None
        self._expired = True
        self._task.cancel()

    @property
    def expired(self) -> bool:
        return self._expired

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        handle = self._handle
        if handle is not None:
            handle.cancel()
            self._handle = None
        if self._expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


def timeout(delay: float | None) -> Deadline:
    """A deadline ``delay`` seconds from now for the current task (``None``: none)."""
    return Deadline(delay)
