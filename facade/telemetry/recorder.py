"""``Telemetry``: the per-request recorder and the windows gates, reports and ``/metrics`` read.

The proxy calls ``record`` once per request, from the event loop (no locks: not thread-safe).
The hot path is one dict lookup for the label set, a handful of integer stores, one ``math.log``
for the latency bucket and the per-second ring slot of the route x backend.

Windows:

- per step: "everything since ``begin_step(route, step)``". The migration engine calls it at each
  transition; a label that repeats after a rollback starts a new epoch, so its window starts fresh.
  Each label set keeps lifetime counters (Prometheus needs them monotonic) plus a copy taken when the
  epoch began; the window is the difference, which costs nothing per request.
- rolling: the last N seconds, up to ``max(rolling)``: one slot per second for the newest 60 s
  (exact to the second), 10-second blocks before that (exact to 10 s), packed into arrays once a
  second is over, all pairs together within ``rolling_budget`` bytes (docs/telemetry.md, "Memory").

Cardinality is bounded: labels are route names (never raw paths), backend names, step labels,
a fixed method set and the status class; past ``max_series`` label sets, new ones are folded into
``route="overflow"`` (counted in ``overflowed``), which adds at most 8 methods x 5 classes more.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..stats import DiffCounts, SideStats
from .histogram import INDEX_OFFSET, INV_LOG_GROWTH, LOWEST_S, MAX_INDEX, LogLinearHistogram
from .prometheus import render_exposition
from .series import MAX_NOISE_FIELDS, DiffRingSlots, DiffSeries, RequestRing, RequestSeries, RollingBudget

__all__ = [
    "DEFAULT_MAX_SERIES",
    "DEFAULT_ROLLING",
    "DEFAULT_ROLLING_BUDGET",
    "METHODS",
    "OVERFLOW",
    "Telemetry",
    "status_class",
]

DEFAULT_ROLLING = (60.0, 300.0)
DEFAULT_MAX_SERIES = 10_000
DEFAULT_ROLLING_BUDGET = 64 * 1024 * 1024  # bytes of rolling history, all route x backend pairs together
OVERFLOW = "overflow"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_METHOD_LABEL = {m: m for m in METHODS}
# status // 100 -> class; 0 ("could not forward") counts as a server error, as does anything >= 600.
_STATUS_CLASS = ("5xx", "1xx", "2xx", "3xx", "4xx", "5xx")
_log = math.log


def status_class(status: int) -> str:
    """The ``status_class`` label: ``1xx`` .. ``5xx``; 0 and out-of-range statuses are ``5xx``."""
    return _STATUS_CLASS[status // 100] if 0 <= status < 600 else "5xx"


class _StepMark:
    __slots__ = ("began", "began_unix", "epoch", "label")

    def __init__(self, label: str, epoch: int, began: float) -> None:
        self.label = label
        self.epoch = epoch
        self.began = began
        self.began_unix = time.time()


class Telemetry:
    """Per route x backend x step request metrics and shadow diff counts, with step and rolling windows."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        rolling: tuple[float, ...] = DEFAULT_ROLLING,
        max_series: int = DEFAULT_MAX_SERIES,
        rolling_budget: int = DEFAULT_ROLLING_BUDGET,
    ) -> None:
        if not rolling or min(rolling) <= 0:
            raise ValueError(f"rolling windows must be positive seconds, got {rolling!r}")
        if rolling_budget <= 0:
            raise ValueError(f"rolling_budget must be positive bytes, got {rolling_budget!r}")
        self.rolling_budget = RollingBudget(rolling_budget)
        self._clock = clock
        self.rolling = tuple(sorted(rolling))
        self._horizon = self.rolling[-1]
        self._max_series = max_series
        self.overflowed = 0  # requests folded into the overflow label set
        self._label_sets = 0
        # (route, backend, step, method, status_class) -> series; the hot path's only lookup.
        self._series: dict[tuple[str, str, str, str, str], RequestSeries] = {}
        self._by_step: dict[tuple[str, str], list[RequestSeries]] = {}  # (route, step) -> series
        self._rings: dict[tuple[str, str], RequestRing] = {}  # (route, backend) -> ring
        self._diffs: dict[tuple[str, str], DiffSeries] = {}  # (route, step)
        self._diff_rings: dict[str, DiffRingSlots] = {}
        self._steps: dict[str, _StepMark] = {}  # route -> current step
        self._epochs: dict[tuple[str, str], int] = {}
        self._faults: dict[tuple[str, str, str], int] = {}  # (route, backend, kind) -> injected faults

    def __repr__(self) -> str:
        return f"Telemetry(series={len(self._series)}, routes={len(self.routes())}, rolling={self.rolling})"

    # -- hot path ---------------------------------------------------------------------------------

    def record(
        self,
        *,
        route: str,
        backend: str,
        step: str,
        method: str,
        status: int,
        duration_s: float,
        upstream_s: float | None,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        """Count one proxied request. ``status`` 0 means the facade could not forward it (an error)."""
        cls = _STATUS_CLASS[status // 100] if 0 <= status < 600 else "5xx"
        series = self._series.get((route, backend, step, method, cls))
        if series is None:
            series = self._new_series(route, backend, step, method, cls)
        if duration_s < LOWEST_S:
            index = 0
        else:
            index = int(_log(duration_s) * INV_LOG_GROWTH + INDEX_OFFSET)
            if index > MAX_INDEX:  # noqa: PLR1730 -- a branch is cheaper than calling min() per request
                index = MAX_INDEX
        series.count += 1
        series.duration_sum += duration_s
        hist = series.hist
        hist[index] = hist.get(index, 0) + 1
        series.bytes_in += bytes_in
        series.bytes_out += bytes_out
        if upstream_s is not None:
            series.upstream_count += 1
            series.upstream_sum += upstream_s
            if upstream_s < LOWEST_S:
                up = 0
            else:
                up = int(_log(upstream_s) * INV_LOG_GROWTH + INDEX_OFFSET)
                if up > MAX_INDEX:  # noqa: PLR1730
                    up = MAX_INDEX
            uh = series.upstream_hist
            uh[up] = uh.get(up, 0) + 1
        # Rolling window: the slot of the current second, reset if it still holds an older second.
        ring = series.ring
        tick = int(self._clock())
        slot = tick % ring.size
        if ring.stamps[slot] != tick:
            ring.reset(slot, tick)
        ring.requests[slot] += 1
        if series.error:
            ring.errors[slot] += 1
        sh = ring.hists[slot]
        sh[index] = sh.get(index, 0) + 1

    def _new_series(self, route: str, backend: str, step: str, method: str, cls: str) -> RequestSeries:
        # Methods are case-sensitive (RFC 9110); anything outside the fixed set is "other" and takes this
        # slower path on every request, so a client inventing methods cannot grow any table.
        label_method = _METHOD_LABEL.get(method, "other")
        key = (route, backend, step, label_method, cls)
        series = self._series.get(key)
        if series is not None:
            return series
        if self._label_sets >= self._max_series:
            self.overflowed += 1
            route = backend = step = OVERFLOW
            key = (route, backend, step, label_method, cls)
            series = self._series.get(key)
            if series is not None:
                return series
        else:
            self._label_sets += 1
        ring = self._rings.get((route, backend))
        if ring is None:
            ring = self._rings[(route, backend)] = RequestRing(self._horizon, self.rolling_budget)
            self.rolling_budget.rings.append(ring)
        series = self._series[key] = RequestSeries(route, backend, step, label_method, cls, ring)
        self._by_step.setdefault((route, step), []).append(series)
        return series

    def record_fault(self, *, route: str, backend: str, kind: str) -> None:
        """Count one injected fault (``kind``: delay or abort) of a route's or a migration step's ``fault``."""
        key = (route, backend, kind)
        self._faults[key] = self._faults.get(key, 0) + 1

    def record_diff(self, *, route: str, step: str, differing: bool, noise_fields: Iterable[str] = ()) -> None:
        """Count one shadow comparison; ``noise_fields`` are paths suppressed as noise in it."""
        series = self._diffs.get((route, step))
        if series is None:
            series = self._diffs[(route, step)] = DiffSeries(route, step)
        series.compared += 1
        if differing:
            series.differing += 1
        ring = self._diff_rings.get(route)
        if ring is None:
            ring = self._diff_rings[route] = DiffRingSlots(self._horizon)
        tick = int(self._clock())
        slot = tick % ring.size
        if ring.stamps[slot] != tick:
            ring.reset(slot, tick)
        ring.compared[slot] += 1
        if differing:
            ring.differing[slot] += 1
        fields = tuple(noise_fields)
        if fields:
            if len(series.noise) < MAX_NOISE_FIELDS:
                series.noise.update(fields)
            slot_noise = ring.noise[slot]
            if slot_noise is None:
                slot_noise = ring.noise[slot] = set()
            if len(slot_noise) < MAX_NOISE_FIELDS:
                slot_noise.update(fields)

    # -- workers: deltas shipped to the supervisor, absorbed there (docs/workers.md) ---------------

    def take_delta(self, shipped: dict[Any, Any]) -> dict[str, Any]:
        """What was recorded since the last call, as plain data (picklable, summable).

        ``shipped`` is the caller's memory of what it sent before (updated here): a worker keeps one
        dict and calls this every ~0.5 s, off the hot path. Histograms travel as bucket counts, so the
        supervisor sums them (never averages quantiles).
        """
        series_out = []
        for key, s in self._series.items():
            before = shipped.get(key)
            if before is None:
                before = (0, 0.0, {}, 0, 0.0, {}, 0, 0)
            if s.count == before[0] and s.upstream_count == before[3]:
                continue
            hist = _dict_delta(s.hist, before[2])
            uhist = _dict_delta(s.upstream_hist, before[5])
            series_out.append((
                key, s.count - before[0], s.duration_sum - before[1], hist, s.upstream_count - before[3],
                s.upstream_sum - before[4], uhist, s.bytes_in - before[6], s.bytes_out - before[7],
            ))
            shipped[key] = (
                s.count, s.duration_sum, dict(s.hist), s.upstream_count, s.upstream_sum, dict(s.upstream_hist),
                s.bytes_in, s.bytes_out,
            )
        diffs_out = []
        for diff_key, d in self._diffs.items():
            dkey = ("diff", *diff_key)
            shipped_diff = shipped.get(dkey, (0, 0, frozenset()))
            if d.compared == shipped_diff[0]:
                continue
            diffs_out.append((
                diff_key, d.compared - shipped_diff[0], d.differing - shipped_diff[1], tuple(d.noise - shipped_diff[2])
            ))
            shipped[dkey] = (d.compared, d.differing, frozenset(d.noise))
        overflowed = self.overflowed - shipped.get("overflowed", 0)
        shipped["overflowed"] = self.overflowed
        faults_out = []
        for fault_key, count in self._faults.items():
            fkey = ("fault", *fault_key)
            if count != shipped.get(fkey, 0):
                faults_out.append((fault_key, count - shipped.get(fkey, 0)))
                shipped[fkey] = count
        delta: dict[str, Any] = {"series": series_out, "diffs": diffs_out, "overflowed": overflowed}
        if faults_out:
            delta["faults"] = faults_out
        return delta

    def absorb(self, delta: Mapping[str, Any]) -> int:
        """Add a delta from ``take_delta`` (another process's requests) as if recorded here, now.

        Rolling windows count it in the second it arrives (batches are <= 1 s apart, so a window is
        off by at most that at its edges). Returns the number of requests absorbed.
        """
        absorbed = 0
        tick = int(self._clock())
        for key, count, duration_sum, hist, up_count, up_sum, uhist, bytes_in, bytes_out in delta.get("series", ()):
            series = self._series.get(key) or self._new_series(*key)
            series.count += count
            series.duration_sum += duration_sum
            _add_counts(series.hist, hist)
            series.upstream_count += up_count
            series.upstream_sum += up_sum
            _add_counts(series.upstream_hist, uhist)
            series.bytes_in += bytes_in
            series.bytes_out += bytes_out
            ring = series.ring
            slot = tick % ring.size
            if ring.stamps[slot] != tick:
                ring.reset(slot, tick)
            ring.requests[slot] += count
            if series.error:
                ring.errors[slot] += count
            _add_counts(ring.hists[slot], hist)
            absorbed += count
        for (route, step), compared, differing, noise in delta.get("diffs", ()):
            series_d = self._diffs.get((route, step))
            if series_d is None:
                series_d = self._diffs[(route, step)] = DiffSeries(route, step)
            series_d.compared += compared
            series_d.differing += differing
            if noise and len(series_d.noise) < MAX_NOISE_FIELDS:
                series_d.noise.update(noise)
            ring_d = self._diff_rings.get(route)
            if ring_d is None:
                ring_d = self._diff_rings[route] = DiffRingSlots(self._horizon)
            slot = tick % ring_d.size
            if ring_d.stamps[slot] != tick:
                ring_d.reset(slot, tick)
            ring_d.compared[slot] += compared
            ring_d.differing[slot] += differing
        self.overflowed += delta.get("overflowed", 0)
        for fault_key, count in delta.get("faults", ()):
            key = tuple(fault_key)
            self._faults[key] = self._faults.get(key, 0) + count
        return absorbed

    # -- steps ------------------------------------------------------------------------------------

    def begin_step(self, route: str, step: str) -> None:
        """Start a new window for ``step`` on ``route`` (a new epoch if the label was used before)."""
        epoch = self._epochs.get((route, step), 0) + 1
        self._epochs[(route, step)] = epoch
        self._steps[route] = _StepMark(step, epoch, self._clock())
        for series in self._by_step.get((route, step), ()):
            series.mark_epoch()
        diff = self._diffs.get((route, step))
        if diff is not None:
            diff.mark_epoch()

    def current_step(self, route: str) -> str | None:
        """The label of the step last begun on ``route`` (``None`` if ``begin_step`` was never called)."""
        mark = self._steps.get(route)
        return mark.label if mark else None

    # -- queries ----------------------------------------------------------------------------------

    def steps(self, route: str) -> list[str]:
        """Every step label ``route`` has a window for, past steps included (``facade compare --step N``
        after a rollback reads them)."""
        labels = {label for r, label in self._epochs if r == route}
        labels |= {label for r, label in self._by_step if r == route}
        labels |= {label for r, label in self._diffs if r == route}
        return sorted(labels)

    def routes(self) -> list[str]:
        return sorted({route for route, _ in self._rings} | {route for route, _ in self._diffs})

    def backends(self, route: str) -> list[str]:
        return sorted(backend for r, backend in self._rings if r == route)

    def side_stats(
        self, route: str, backend: str, *, step: str | None = None, window: float | None = None
    ) -> SideStats:
        """What ``backend`` did on ``route``: since ``step`` began, over the last ``window`` seconds, or
        (neither given) since the route's current step began, or over all time if no step was ever begun."""
        requests, errors, hist = self._side(route, backend, step=step, window=window)
        p50, p95, p99 = hist.quantiles((0.50, 0.95, 0.99))
        return SideStats(requests=requests, errors=errors, p50_ms=_ms(p50), p95_ms=_ms(p95), p99_ms=_ms(p99))

    def step_window(self, route: str, backend: str) -> tuple[int, int, LogLinearHistogram]:
        """Requests, errors and the latency histogram of ``backend`` since ``route``'s current step began:
        the numbers ``side_stats`` reads, in a form that adds up across replicas (facade.migration.evidence)."""
        return self._side(route, backend, step=None, window=None)

    def _side(
        self, route: str, backend: str, *, step: str | None, window: float | None
    ) -> tuple[int, int, LogLinearHistogram]:
        if window is not None:
            if step is not None:
                raise ValueError("give a step or a window, not both")
            self._check_window(window)
            ring = self._rings.get((route, backend))
            if ring is None:
                return 0, 0, LogLinearHistogram()
            return ring.window(self._clock(), window)
        label = step if step is not None else self.current_step(route)
        requests = errors = 0
        hist = LogLinearHistogram()
        if label is None:
            for series in (s for s in self._series.values() if s.route == route and s.backend == backend):
                requests += series.count
                errors += series.count if series.error else 0
                hist.merge(series.hist)
            return requests, errors, hist
        for series in self._by_step.get((route, label), ()):
            if series.backend != backend:
                continue
            count = series.count - series.base_count
            requests += count
            errors += count if series.error else 0
            hist.merge(LogLinearHistogram(series.hist).subtract(series.base_hist))
        return requests, errors, hist

    def diff_counts(self, route: str, *, step: str | None = None, window: float | None = None) -> DiffCounts:
        """Shadow comparisons on ``route``, windowed like ``side_stats``."""
        if window is not None:
            if step is not None:
                raise ValueError("give a step or a window, not both")
            self._check_window(window)
            ring = self._diff_rings.get(route)
            if ring is None:
                return DiffCounts()
            compared, differing, window_noise = ring.window(self._clock(), window)
            return DiffCounts(compared=compared, differing=differing, noise_fields=tuple(sorted(window_noise)))
        label = step if step is not None else self.current_step(route)
        if label is None:
            compared = differing = 0
            noise: set[str] = set()
            for (r, _), each in self._diffs.items():
                if r == route:
                    compared += each.compared
                    differing += each.differing
                    noise |= each.noise
            return DiffCounts(compared=compared, differing=differing, noise_fields=tuple(sorted(noise)))
        current = self._diffs.get((route, label))
        if current is None:
            return DiffCounts()
        return DiffCounts(
            compared=current.compared - current.base_compared,
            differing=current.differing - current.base_differing,
            noise_fields=tuple(sorted(current.noise)),
        )

    def step_summary(self, route: str) -> dict[str, Any]:
        """JSON-able summary of the route's current step per backend, for the migration journal."""
        mark = self._steps.get(route)
        label = mark.label if mark else None
        backends: dict[str, Any] = {}
        for backend in self.backends(route):
            stats = self.side_stats(route, backend, step=label)
            if label is not None and not stats.requests and not self._has_step_series(route, backend, label):
                continue
            backends[backend] = {
                "requests": stats.requests,
                "errors": stats.errors,
                "error_rate": stats.error_rate,
                "p50_ms": stats.p50_ms,
                "p95_ms": stats.p95_ms,
                "p99_ms": stats.p99_ms,
            }
        diffs = self.diff_counts(route, step=label) if label is not None else self.diff_counts(route)
        return {
            "route": route,
            "step": label,
            "epoch": mark.epoch if mark else None,
            "began_unix": round(mark.began_unix, 3) if mark else None,
            "elapsed_s": round(self._clock() - mark.began, 3) if mark else None,
            "backends": backends,
            "diffs": {
                "compared": diffs.compared,
                "differing": diffs.differing,
                "diff_rate": diffs.diff_rate,
                "noise_fields": list(diffs.noise_fields),
            },
        }

    def prometheus_text(self) -> str:
        """Every series in the Prometheus text exposition format 0.0.4."""
        return render_exposition(self._series.values(), self._diffs.values(), self._faults)

    # -- internals --------------------------------------------------------------------------------

    def _has_step_series(self, route: str, backend: str, label: str) -> bool:
        return any(s.backend == backend for s in self._by_step.get((route, label), ()))

    def _check_window(self, window: float) -> None:
        if not 0 < window <= self._horizon:
            raise ValueError(f"window must be within 0..{self._horizon:g} s (the longest rolling window), got {window}")


def _dict_delta(now: Mapping[int, int], before: Mapping[int, int]) -> dict[int, int]:
    return {i: c - before.get(i, 0) for i, c in now.items() if c != before.get(i, 0)}


def _add_counts(into: dict[int, int], counts: Mapping[int, int]) -> None:
    for index, count in counts.items():
        into[index] = into.get(index, 0) + count


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 4)
