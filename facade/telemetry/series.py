"""The recorder's mutable state: one object per Prometheus label set, and per-second rings for rolling windows.

Internal to ``facade.telemetry``; the recorder mutates these on its hot path (attribute stores on
``__slots__`` objects, no method calls), and the query side turns them into ``SideStats`` / text.
"""

from __future__ import annotations

import math
import sys
from array import array

from .histogram import MAX_INDEX, LogLinearHistogram

__all__ = [
    "COARSE_S",
    "FINE_S",
    "MAX_NOISE_FIELDS",
    "DiffRingSlots",
    "DiffSeries",
    "RequestRing",
    "RequestSeries",
    "RollingBudget",
]

MAX_NOISE_FIELDS = 256  # per step window and per ring slot: a route with more noisy fields is all noise


FINE_S = 60  # the newest seconds kept one by one: windows up to this long are exact to the second
COARSE_S = 10  # older seconds are folded into blocks this long


def _freeze(hist: dict[int, int]) -> tuple[array[int], array[int]]:
    """A second's histogram as two packed arrays (2 + 4 bytes a bucket instead of ~70 in a dict)."""
    return array("H", hist.keys()), array("I", hist.values())


def _frozen_bytes(frozen: tuple[array[int], array[int]]) -> int:
    return sys.getsizeof(frozen[0]) + sys.getsizeof(frozen[1])


def _dict_bytes(hist: dict[int, int]) -> int:
    """What a dict histogram costs, counting every count as an int object of its own (an upper bound)."""
    return sys.getsizeof(hist) + 32 * len(hist)


def _add_frozen(into: dict[int, int], frozen: tuple[array[int], array[int]]) -> None:
    for index, count in zip(frozen[0], frozen[1]):
        into[index] = into.get(index, 0) + count


class RollingBudget:
    """The byte budget shared by every ``RequestRing`` of one ``Telemetry``.

    Rings charge what their packed history holds (``sys.getsizeof`` of the arrays, plus their fixed
    slot lists); when the total passes ``limit``, the histories of the pairs that recorded least
    recently are dropped (pairs idle for the whole horizon first: they hold nothing a window can
    still read) until it fits again. The current second of each pair (a live dict, at most one
    bucket per request of that second) is not charged.
    """

    __slots__ = ("evictions", "limit", "rings", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.evictions = 0
        self.rings: list[RequestRing] = []

    def __repr__(self) -> str:
        return (
            f"RollingBudget(used={self.used}, limit={self.limit}, rings={len(self.rings)}, evictions={self.evictions})"
        )

    def enforce(self, keep: RequestRing) -> None:
        """Over the limit: drop least recently recorded histories down to 90 % of it (so this runs seldom)."""
        if self.used <= self.limit:
            return
        target = self.limit * 0.9
        for ring in sorted(self.rings, key=lambda r: r.last_tick):
            if ring is keep or ring.charged <= ring.fixed_bytes:
                continue
            ring.clear()
            self.evictions += 1
            if self.used <= target:
                return


class RequestRing:
    """Rolling (requests, errors, latency histogram) history of one route x backend, in a fixed budget.

    The newest ``FINE_S`` seconds are kept one slot per second (slot ``t % size`` holds absolute second
    ``t``, ``stamps``); older seconds, up to the horizon, are folded into ``COARSE_S``-second blocks.
    The second being recorded is a plain dict (the recorder's hot path); when the next second begins
    it is packed into arrays, and when its slot is needed again it is folded into its block.
    Memory per pair is therefore bounded by the slot counts, whatever the traffic: see
    docs/telemetry.md ("Memory") for the worst case, and ``RollingBudget`` for the total.
    """

    __slots__ = (
        "block_errors",
        "block_hists",
        "block_requests",
        "block_stamps",
        "blocks",
        "budget",
        "charged",
        "errors",
        "fixed_bytes",
        "frozen",
        "hists",
        "last_tick",
        "live",
        "open_block",
        "open_charged",
        "open_hist",
        "requests",
        "since",
        "size",
        "stamps",
    )

    def __init__(self, horizon_s: float, budget: RollingBudget | None = None) -> None:
        fine = min(float(FINE_S), horizon_s)
        self.size = math.ceil(fine) + 1
        self.stamps = [-1] * self.size
        self.requests = [0] * self.size
        self.errors = [0] * self.size
        self.hists: list[dict[int, int]] = [{} for _ in range(self.size)]  # the live second's, others empty
        self.frozen: list[tuple[array[int], array[int]] | None] = [None] * self.size
        self.live = -1  # the slot whose dict is being recorded into
        # Blocks of COARSE_S seconds for what left the fine slots, up to the horizon.
        self.blocks = math.ceil(max(0.0, horizon_s - fine) / COARSE_S) + 2 if horizon_s > fine else 0
        self.block_stamps = [-1] * self.blocks  # block number (second // COARSE_S)
        self.block_requests = [0] * self.blocks
        self.block_errors = [0] * self.blocks
        self.block_hists: list[tuple[array[int], array[int]] | None] = [None] * self.blocks
        self.open_block = -1  # the block being filled, kept as a dict until the next one opens
        self.open_hist: dict[int, int] = {}
        self.open_charged = 0
        self.last_tick = -1
        self.since = -1  # the first second of the history (after an eviction: the second it restarted)
        self.budget = budget
        self.fixed_bytes = sum(
            sys.getsizeof(x)
            for x in (
                self.stamps,
                self.requests,
                self.errors,
                self.hists,
                self.frozen,
                self.block_stamps,
                self.block_requests,
                self.block_errors,
                self.block_hists,
            )
        )
        self.charged = 0  # bytes this ring has charged to the budget
        self._charge(self.fixed_bytes)

    @classmethod
    def worst_case_bytes(cls, horizon_s: float) -> int:
        """What one pair's history can charge at most: every slot and block holding every bucket."""
        ring = cls(horizon_s)
        every = dict.fromkeys(range(MAX_INDEX + 1), 1 << 20)
        full = _frozen_bytes(_freeze(every))
        if not ring.blocks:
            return ring.fixed_bytes + (ring.size - 1) * full
        return ring.fixed_bytes + (ring.size - 1) * full + (ring.blocks - 1) * full + _dict_bytes(every)

    def _charge(self, delta: int) -> None:
        self.charged += delta
        budget = self.budget
        if budget is not None:
            budget.used += delta

    def reset(self, slot: int, tick: int) -> None:
        """Second ``tick`` begins in ``slot``: pack the second before it, fold the slot's old second away."""
        live = self.live
        if live >= 0 and live != slot and self.frozen[live] is None and self.stamps[live] >= 0:
            frozen = self.frozen[live] = _freeze(self.hists[live])
            self.hists[live] = {}
            self._charge(_frozen_bytes(frozen))
        old = self.stamps[slot]
        if old >= 0:
            self._fold(slot, old)
        if self.since < 0:
            self.since = tick
        self.stamps[slot] = tick
        self.requests[slot] = 0
        self.errors[slot] = 0
        self.hists[slot] = {}
        self.live = slot
        self.last_tick = tick
        budget = self.budget
        if budget is not None and budget.used > budget.limit:
            budget.enforce(self)

    def _fold(self, slot: int, second: int) -> None:
        """Move a second out of its fine slot into its block (or drop it: no blocks, or too old).

        The block being filled stays a dict (a fold adds one second's buckets to it, no repacking
        every second); it is packed when the next block opens.
        """
        frozen = self.frozen[slot]
        self.frozen[slot] = None
        if frozen is not None:
            self._charge(-_frozen_bytes(frozen))
        if not self.blocks:
            return
        number = second // COARSE_S
        b = number % self.blocks
        stamp = self.block_stamps[b]
        if stamp > number:
            return  # a newer block already took this place: the second is past the horizon
        if stamp != number:
            # A new block takes this place (what it held is past the horizon) and becomes the open one.
            if b == self.open_block:
                self._close_open(pack=False)
            old = self.block_hists[b]
            if old is not None:
                self._charge(-_frozen_bytes(old))
                self.block_hists[b] = None
            if self.open_block >= 0:
                self._close_open(pack=True)
            self.block_stamps[b] = number
            self.block_requests[b] = 0
            self.block_errors[b] = 0
            self.open_block = b
            self.open_hist = {}
        self.block_requests[b] += self.requests[slot]
        self.block_errors[b] += self.errors[slot]
        live_hist = self.hists[slot]
        if frozen is None and not live_hist:
            return
        if b == self.open_block:
            target = self.open_hist
        else:  # a late second for a block already packed (sparse traffic): unpack, add, pack again
            target = {}
            packed = self.block_hists[b]
            if packed is not None:
                _add_frozen(target, packed)
                self._charge(-_frozen_bytes(packed))
        if frozen is not None:
            _add_frozen(target, frozen)
        for index, count in live_hist.items():
            target[index] = target.get(index, 0) + count
        if b == self.open_block:
            estimate = _dict_bytes(target)
            self._charge(estimate - self.open_charged)
            self.open_charged = estimate
        else:
            repacked = self.block_hists[b] = _freeze(target)
            self._charge(_frozen_bytes(repacked))

    def _close_open(self, *, pack: bool) -> None:
        b = self.open_block
        if pack and self.open_hist:
            packed = self.block_hists[b] = _freeze(self.open_hist)
            self._charge(_frozen_bytes(packed))
        self._charge(-self.open_charged)
        self.open_charged = 0
        self.open_block = -1
        self.open_hist = {}

    def clear(self) -> None:
        """Forget the whole history (the budget evicted it); recording starts over next second."""
        for slot in range(self.size):
            self.stamps[slot] = -1
            self.requests[slot] = 0
            self.errors[slot] = 0
            self.hists[slot] = {}
            self.frozen[slot] = None
        for b in range(self.blocks):
            self.block_stamps[b] = -1
            self.block_requests[b] = 0
            self.block_errors[b] = 0
            self.block_hists[b] = None
        self.live = -1
        self.since = -1
        self.open_block = -1
        self.open_hist = {}
        self.open_charged = 0
        self._charge(self.fixed_bytes - self.charged)

    def window(self, now: float, window_s: float) -> tuple[int, int, LogLinearHistogram]:
        """Totals over the last ``ceil(window_s)`` seconds, the current (partial) one included.

        Exact to the second when the window fits in the fine slots (``FINE_S + 1`` seconds); a
        longer one starts at the ``COARSE_S`` boundary at or before its first second (it counts up
        to ``COARSE_S - 1`` seconds more, never fewer), since older seconds live in blocks.
        """
        tick = int(now)
        first = tick - math.ceil(window_s) + 1
        if self.blocks and first < tick - (self.size - 1):
            first -= first % COARSE_S
        requests = errors = 0
        counts: dict[int, int] = {}
        for slot in range(self.size):
            stamp = self.stamps[slot]
            if first <= stamp <= tick:
                requests += self.requests[slot]
                errors += self.errors[slot]
                frozen = self.frozen[slot]
                if frozen is not None:
                    _add_frozen(counts, frozen)
                else:
                    for index, count in self.hists[slot].items():
                        counts[index] = counts.get(index, 0) + count
        for b in range(self.blocks):
            begins = self.block_stamps[b] * COARSE_S
            if first <= begins <= tick:
                requests += self.block_requests[b]
                errors += self.block_errors[b]
                if b == self.open_block:
                    for index, count in self.open_hist.items():
                        counts[index] = counts.get(index, 0) + count
                packed = self.block_hists[b]
                if packed is not None:
                    _add_frozen(counts, packed)
        return requests, errors, LogLinearHistogram(counts)


class RequestSeries:
    """Lifetime counters of one label set (route, backend, step, method, status class).

    ``base_*`` are copies taken when the step's current epoch began (``Telemetry.begin_step``): the
    step window is "now minus base", while the Prometheus counters stay monotonic.
    """

    __slots__ = (
        "backend",
        "base_count",
        "base_hist",
        "bytes_in",
        "bytes_out",
        "count",
        "duration_sum",
        "error",
        "hist",
        "method",
        "ring",
        "route",
        "status_class",
        "step",
        "upstream_count",
        "upstream_hist",
        "upstream_sum",
    )

    def __init__(self, route: str, backend: str, step: str, method: str, status_class: str, ring: RequestRing) -> None:
        self.route = route
        self.backend = backend
        self.step = step
        self.method = method
        self.status_class = status_class
        self.error = status_class == "5xx"
        self.ring = ring
        self.count = 0
        self.duration_sum = 0.0
        self.hist: dict[int, int] = {}
        self.upstream_count = 0
        self.upstream_sum = 0.0
        self.upstream_hist: dict[int, int] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        self.base_count = 0
        self.base_hist: dict[int, int] = {}

    def mark_epoch(self) -> None:
        self.base_count = self.count
        self.base_hist = dict(self.hist)

    def labels(self) -> tuple[tuple[str, str], ...]:
        return (
            ("route", self.route),
            ("backend", self.backend),
            ("step", self.step),
            ("method", self.method),
            ("status_class", self.status_class),
        )


class DiffSeries:
    """Shadow comparisons of one route x step: lifetime counters plus the current epoch's share."""

    __slots__ = ("base_compared", "base_differing", "compared", "differing", "noise", "route", "step")

    def __init__(self, route: str, step: str) -> None:
        self.route = route
        self.step = step
        self.compared = 0
        self.differing = 0
        self.base_compared = 0
        self.base_differing = 0
        self.noise: set[str] = set()

    def mark_epoch(self) -> None:
        self.base_compared = self.compared
        self.base_differing = self.differing
        self.noise = set()


class DiffRingSlots:
    """Per-second (compared, differing, noise fields) for one route, like ``RequestRing``."""

    __slots__ = ("compared", "differing", "noise", "size", "stamps")

    def __init__(self, horizon_s: float) -> None:
        self.size = math.ceil(horizon_s) + 1
        self.stamps = [-1] * self.size
        self.compared = [0] * self.size
        self.differing = [0] * self.size
        self.noise: list[set[str] | None] = [None] * self.size

    def reset(self, slot: int, tick: int) -> None:
        self.stamps[slot] = tick
        self.compared[slot] = 0
        self.differing[slot] = 0
        self.noise[slot] = None

    def window(self, now: float, window_s: float) -> tuple[int, int, set[str]]:
        tick = int(now)
        first = tick - math.ceil(window_s) + 1
        compared = differing = 0
        noise: set[str] = set()
        for slot in range(self.size):
            if first <= self.stamps[slot] <= tick:
                compared += self.compared[slot]
                differing += self.differing[slot]
                fields = self.noise[slot]
                if fields:
                    noise |= fields
        return compared, differing, noise
