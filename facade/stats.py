"""Plain values that cross the telemetry -> gates / compare boundary.

Telemetry produces them from its histograms and counters; gates, the compare report and
the load test consume them. Latencies are in milliseconds; ``None`` means no sample.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DiffCounts", "SideStats"]


@dataclass(frozen=True, slots=True)
class SideStats:
    """What one backend (old or new path) did on one route over one window."""

    requests: int = 0
    errors: int = 0  # 5xx responses and requests the facade could not forward
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True, slots=True)
class DiffCounts:
    """Shadow comparisons on one route over one window."""

    compared: int = 0
    differing: int = 0
    noise_fields: tuple[str, ...] = ()

    @property
    def diff_rate(self) -> float | None:
        return self.differing / self.compared if self.compared else None
