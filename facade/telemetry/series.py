"""The recorder's mutable state: one object per Prometheus label set, and per-second rings for rolling windows.

Internal to ``facade.telemetry``; the recorder mutates these on its hot path (attribute stores on
``__slots__`` objects, no method calls), and the query side turns them into ``SideStats`` / text.
"""

from __future__ import annotations

import math

from .histogram import LogLinearHistogram

__all__ = ["MAX_NOISE_FIELDS", "DiffRingSlots", "DiffSeries", "RequestRing", "RequestSeries"]

MAX_NOISE_FIELDS = 256  # per step window and per ring slot: a route with more noisy fields is all noise


class RequestRing:
    """Per-second slots of (requests, errors, latency histogram) for one route x backend.

    Slot ``t % size`` holds absolute second ``t`` (``stamps``); a stale slot is reset when the clock
    comes round to it, so memory is ``size`` small dicts however long the facade runs.
    """

    __slots__ = ("errors", "hists", "requests", "size", "stamps")

    def __init__(self, horizon_s: float) -> None:
        self.size = math.ceil(horizon_s) + 1
        self.stamps = [-1] * self.size
        self.requests = [0] * self.size
        self.errors = [0] * self.size
        self.hists: list[dict[int, int]] = [{} for _ in range(self.size)]

    def reset(self, slot: int, tick: int) -> None:
        self.stamps[slot] = tick
        self.requests[slot] = 0
        self.errors[slot] = 0
        self.hists[slot] = {}

    def window(self, now: float, window_s: float) -> tuple[int, int, LogLinearHistogram]:
        """Totals over the last ``ceil(window_s)`` one-second slots, the current (partial) one included."""
        tick = int(now)
        first = tick - math.ceil(window_s) + 1
        requests = errors = 0
        hist = LogLinearHistogram()
        for slot in range(self.size):
            stamp = self.stamps[slot]
            if first <= stamp <= tick:
                requests += self.requests[slot]
                errors += self.errors[slot]
                hist.merge(self.hists[slot])
        return requests, errors, hist


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
