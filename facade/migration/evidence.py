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

__all__ = ["Contribution", "FleetWindow", "SideEvidence", "StepEvidence", "epoch_key"]


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


@dataclass(frozen=True, slots=True)
class Contribution:
    """One instance's part of a fleet-wide window: how many requests it counted, and how old that count is."""

    instance: str
    requests: int  # old + new requests of its summary
    compared: int  # shadow comparisons of its summary
    live: bool  # this instance's window, read now (the others' are as last published)
    published_at: float | None = None  # the publisher's clock when it stored the summary (None: unknown or live)

    def to_json(self, *, now: float) -> dict[str, Any]:
        age = 0.0 if self.live else None if self.published_at is None else round(max(0.0, now - self.published_at), 3)
        return {"instance": self.instance, "requests": self.requests, "compared": self.compared,
                "live": self.live, "age_s": age}


@dataclass(frozen=True, slots=True)
class FleetWindow:
    """A route's current-step window summed over every instance that shares the store (what gates judge).

    ``facade compare`` reports it instead of the local window when it is about the same backends and
    step; ``error`` says why the other instances' part is the last one read rather than a fresh one.
    """

    route: str
    old_service: str
    new_service: str
    step: str  # the step label, as the proxy records it
    evidence: StepEvidence
    contributions: tuple[Contribution, ...]
    error: str | None = None

    @classmethod
    def of(cls, route: str, old: str, new: str, step: str, mine: tuple[str, StepEvidence],
           published: Mapping[str, Mapping[str, Any]], error: str | None = None) -> FleetWindow:
        """This instance's live window plus every other instance's published one (pure); a summary this
        instance published earlier is replaced by its live numbers."""
        me, local = mine
        others = {who: doc for who, doc in published.items() if who != me}
        parts = [(me, local, None)] + [(who, StepEvidence.from_json(doc), _published_at(doc))
                                       for who, doc in sorted(others.items())]
        contributions = tuple(Contribution(who, e.old.requests + e.new.requests, e.compared, who == me, at)
                              for who, e, at in parts)
        return cls(route, old, new, step, StepEvidence.total(e for _, e, _ in parts), contributions, error)

    def to_json(self, *, now: float) -> dict[str, Any]:
        return {"scope": "fleet", "instances": [c.to_json(now=now) for c in self.contributions],
                "store_error": self.error}


def _published_at(doc: Mapping[str, Any]) -> float | None:
    at = doc.get("published_at")
    return float(at) if isinstance(at, int | float) else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 4)  # as Telemetry.side_stats
