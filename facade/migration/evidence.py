"""Gate evidence that adds up across replicas (pure): one instance's step window, as numbers that sum.

Gates compare the old and the new service over the current step's window. With one facade that
window is its own telemetry; with replicas sharing a store (docs/replicas.md) every instance sees a
part of the traffic, so each publishes its window (``StepEvidence``: request and error counts and the
latency histogram per side, shadow comparisons) and gates judge the sum. Counts add; histograms add
bucket by bucket (``LogLinearHistogram``), so the summed percentiles are those of all the traffic,
not an average of percentiles.

A window is named by ``epoch_key(state)``: the durable time its step began, the same on every
instance (pausing, resuming and auto-mode ticks keep it; entering a step, even again after a
rollback, gives a new one), so evidence of an earlier visit to the same step never counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..stats import DiffCounts, SideStats
from ..telemetry.histogram import LogLinearHistogram
from .engine import MigrationState

__all__ = ["SideEvidence", "StepEvidence", "epoch_key"]


def epoch_key(state: MigrationState) -> str:
    """The name of the current step's window, shared by every instance (its durable start time)."""
    return f"{state.step_started_at or 0.0:.6f}"


@dataclass(frozen=True, slots=True)
class SideEvidence:
    """What one service did on one route in one step's window, on one instance (or summed)."""

    requests: int = 0
    errors: int = 0
    latency: Mapping[int, int] = field(default_factory=dict)  # LogLinearHistogram bucket -> count (seconds)

    def stats(self) -> SideStats:
        p50, p95, p99 = LogLinearHistogram(self.latency).quantiles((0.50, 0.95, 0.99))
        return SideStats(requests=self.requests, errors=self.errors, p50_ms=_ms(p50), p95_ms=_ms(p95),
                         p99_ms=_ms(p99))

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "latency": {str(k): v for k, v in sorted(self.latency.items())}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SideEvidence:
        latency = {int(k): int(v) for k, v in (data.get("latency") or {}).items()}
        return cls(int(data.get("requests", 0)), int(data.get("errors", 0)), latency)


@dataclass(frozen=True, slots=True)
class StepEvidence:
    """Both sides of one route and its shadow comparisons, over one step's window."""

    old: SideEvidence = field(default_factory=SideEvidence)
    new: SideEvidence = field(default_factory=SideEvidence)
    compared: int = 0
    differing: int = 0

    @property
    def empty(self) -> bool:
        return not (self.old.requests or self.new.requests or self.compared)

    def diffs(self, noise_fields: tuple[str, ...] = ()) -> DiffCounts:
        return DiffCounts(compared=self.compared, differing=self.differing, noise_fields=noise_fields)

    def to_json(self) -> dict[str, Any]:
        return {"old": self.old.to_json(), "new": self.new.to_json(), "compared": self.compared,
                "differing": self.differing}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepEvidence:
        return cls(SideEvidence.from_json(data.get("old") or {}), SideEvidence.from_json(data.get("new") or {}),
                   int(data.get("compared", 0)), int(data.get("differing", 0)))

    @classmethod
    def total(cls, parts: Iterable[StepEvidence]) -> StepEvidence:
        """The sum of several instances' evidence for the same window."""
        old, new = LogLinearHistogram(), LogLinearHistogram()
        counts = [0, 0, 0, 0, 0, 0]  # old requests, old errors, new requests, new errors, compared, differing
        for part in parts:
            old.merge(part.old.latency)
            new.merge(part.new.latency)
            for i, value in enumerate((part.old.requests, part.old.errors, part.new.requests, part.new.errors,
                                       part.compared, part.differing)):
                counts[i] += value
        return cls(SideEvidence(counts[0], counts[1], old.counts), SideEvidence(counts[2], counts[3], new.counts),
                   counts[4], counts[5])


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 4)  # as Telemetry.side_stats
