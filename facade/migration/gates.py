"""Gate evaluation (pure): does the new path behave as well as the old one on this step's window?

Each ``Gate`` of a step compares the ``new`` side (the ``to`` service) with the ``old`` side
(the ``from`` service) on the same route, or with an absolute limit.  Too little traffic is
never a failure, only *inconclusive* (Flagger waits for data instead of rolling back):

- a gate is inconclusive when ``new.requests < min_requests`` (for ``diff_rate``: the number of
  shadow comparisons), when the measured value is missing, or when a relative check has no
  baseline on the old side;
- the report is FAIL if any gate fails, else INCONCLUSIVE if any is inconclusive, else PASS;
  a step without gates passes;
- ``plaintext_requests`` (an ``mtls`` step) reads the count of plaintext attempts the service's
  sidecars reported since the step started: ``None`` (no sidecar has reported on the step's
  config yet) is inconclusive; ``min_requests`` does not apply to it (zero is the point).

Values fetched by the controller's edge (``facade.migration.callouts``) are judged here too:

- a ``prometheus`` gate reads a ``QueryResult``: no value (Prometheus unreachable, an error, no
  series, several series, NaN) is inconclusive, else the value must keep ``min`` / ``max``;
- a hook reads a ``HookOutcome`` (Flagger): a ``confirm`` hook's 2xx lets the step proceed and
  anything else (another status, no answer) holds it (inconclusive); a ``pre_step`` / ``post_step``
  hook's non-2xx or no answer fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..stats import DiffCounts, SideStats
from .hooks import PromGate, Webhook
from .plan import MTLS_GATE, Gate, Gates

__all__ = [
    "GateReport",
    "GateResult",
    "GateStatus",
    "HookOutcome",
    "QueryResult",
    "evaluate_gates",
    "evaluate_hooks",
    "evaluate_queries",
    "partial_evidence",
    "with_results",
    "worst_status",
]


class GateStatus(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate's verdict with what was measured.

    ``value`` is the compared quantity in the limit's unit (percent, ms, or ratio); ``old`` and
    ``new`` are the raw measurements of each side (rates in percent, latencies in ms).
    """

    name: str  # "error_rate.max_delta", "min_requests"
    status: GateStatus
    value: float | None
    threshold: float
    message: str
    old: float | None = None
    new: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "value": self.value,
            "threshold": self.threshold,
            "old": self.old,
            "new": self.new,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class GateReport:
    status: GateStatus
    results: tuple[GateResult, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status is GateStatus.PASS

    def failures(self) -> tuple[GateResult, ...]:
        return tuple(r for r in self.results if r.status is not GateStatus.PASS)

    def summary(self) -> str:
        """A one-line why, for journal reasons and refusals."""
        bad = self.failures()
        if not bad:
            return f"gates {self.status.value}"
        return f"gates {self.status.value}: " + "; ".join(r.message for r in bad)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status.value, "results": [r.to_json() for r in self.results]}


PASSING = GateReport(GateStatus.PASS)


def evaluate_gates(
    gates: Gates, old: SideStats, new: SideStats, diffs: DiffCounts, *, plaintext: int | None = None
) -> GateReport:
    """Evaluate every gate of a step over one window of statistics.

    ``plaintext`` is the number of plaintext attempts at the step's service since the step
    started (``mtls`` steps), None when unknown.
    """
    results: list[GateResult] = []
    if gates.min_requests:
        results.append(_min_requests(gates.min_requests, new))
    for gate in gates.checks:
        if gate.metric == MTLS_GATE:
            results.append(_plaintext(gate, plaintext))
        else:
            results.append(_evaluate(gate, gates.min_requests, old, new, diffs))
    return GateReport(_overall(results), tuple(results))


def _overall(results: list[GateResult]) -> GateStatus:
    statuses = {r.status for r in results}
    if GateStatus.FAIL in statuses:
        return GateStatus.FAIL
    if GateStatus.INCONCLUSIVE in statuses:
        return GateStatus.INCONCLUSIVE
    return GateStatus.PASS


def _min_requests(minimum: int, new: SideStats) -> GateResult:
    status = GateStatus.PASS if new.requests >= minimum else GateStatus.INCONCLUSIVE
    message = f"min_requests: {new.requests} of {minimum} requests on the new service"
    return GateResult("min_requests", status, float(new.requests), float(minimum), message, new=float(new.requests))


def _evaluate(gate: Gate, minimum: int, old: SideStats, new: SideStats, diffs: DiffCounts) -> GateResult:
    if gate.metric == "diff_rate":
        return _diff_rate(gate, minimum, diffs)
    if new.requests < minimum or new.requests == 0:
        return _inconclusive(gate, f"only {new.requests} of {max(minimum, 1)} requests on the new service")
    if gate.metric == "error_rate":
        return _error_rate(gate, old, new)
    return _latency(gate, old, new)


def _inconclusive(gate: Gate, why: str, *, old: float | None = None, new: float | None = None) -> GateResult:
    return GateResult(gate.name, GateStatus.INCONCLUSIVE, None, gate.limit, f"{gate.name}: inconclusive, {why}",
                      old=old, new=new)


def _verdict(gate: Gate, value: float, shown: str, old: float | None, new: float | None) -> GateResult:
    ok = value <= gate.limit
    status = GateStatus.PASS if ok else GateStatus.FAIL
    relation = "<=" if ok else ">"
    return GateResult(gate.name, status, value, gate.limit, f"{gate.name}: {shown} {relation} {_limit(gate)}",
                      old=old, new=new)


def _limit(gate: Gate) -> str:
    if gate.metric == MTLS_GATE:
        return f"{gate.limit:g}"
    if gate.check in ("max", "max_delta"):
        return f"{gate.limit:g}%"
    if gate.check == "max_ms":
        return f"{gate.limit:g}ms"
    return f"{gate.limit:g}x"


def _error_rate(gate: Gate, old: SideStats, new: SideStats) -> GateResult:
    new_rate = (new.error_rate or 0.0) * 100.0
    if gate.check == "max":
        return _verdict(gate, new_rate, f"{new_rate:.3g}%", None, new_rate)
    if old.error_rate is None:
        return _inconclusive(gate, "no requests on the old service to compare with", new=new_rate)
    old_rate = old.error_rate * 100.0
    delta = new_rate - old_rate
    return _verdict(gate, delta, f"{new_rate:.3g}% - {old_rate:.3g}% = {delta:+.3g}%", old_rate, new_rate)


def _latency(gate: Gate, old: SideStats, new: SideStats) -> GateResult:
    field = {"latency_p50": "p50_ms", "latency_p95": "p95_ms", "latency_p99": "p99_ms"}[gate.metric]
    new_ms: float | None = getattr(new, field)
    old_ms: float | None = getattr(old, field)
    if new_ms is None:
        return _inconclusive(gate, "no latency samples on the new service", old=old_ms)
    if gate.check == "max_ms":
        return _verdict(gate, new_ms, f"{new_ms:.4g}ms", old_ms, new_ms)
    if old_ms is None or old_ms <= 0.0:
        return _inconclusive(gate, "no latency baseline on the old service", new=new_ms)
    ratio = new_ms / old_ms
    return _verdict(gate, ratio, f"{new_ms:.4g}ms / {old_ms:.4g}ms = {ratio:.3g}x", old_ms, new_ms)


def _diff_rate(gate: Gate, minimum: int, diffs: DiffCounts) -> GateResult:
    if diffs.compared < minimum or diffs.compared == 0:
        return _inconclusive(gate, f"only {diffs.compared} of {max(minimum, 1)} shadow comparisons")
    rate = (diffs.diff_rate or 0.0) * 100.0
    return _verdict(gate, rate, f"{rate:.3g}% ({diffs.differing}/{diffs.compared} differ)", None, rate)


def _plaintext(gate: Gate, seen: int | None) -> GateResult:
    if seen is None:
        return _inconclusive(gate, "no sidecar of the service has reported on the step's mTLS config yet")
    return _verdict(gate, float(seen), f"{seen} plaintext attempts", None, float(seen))


# -- values fetched at the edge ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueryResult:
    """A PromQL query's single value, or None with why there is none."""

    value: float | None
    why: str = ""


@dataclass(frozen=True, slots=True)
class HookOutcome:
    """What a webhook answered: the final status (None: no answer) after ``attempts`` tries."""

    hook: Webhook
    status: int | None
    attempts: int
    error: str = ""  # why there was no answer (timeout, refused, ...)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def to_json(self) -> dict[str, object]:
        return {"name": self.hook.name, "kind": self.hook.kind, "url": self.hook.url, "status": self.status,
                "attempts": self.attempts, "error": self.error}


def evaluate_queries(gates: tuple[PromGate, ...], results: tuple[QueryResult | None, ...]) -> tuple[GateResult, ...]:
    """Each ``prometheus`` gate over its query's result (a missing result: not queried yet)."""
    out = []
    for index, gate in enumerate(gates):
        result = results[index] if index < len(results) else None
        out.append(_query(gate, result))
    return tuple(out)


def _query(gate: PromGate, result: QueryResult | None) -> GateResult:
    name = f"prometheus.{gate.name}"
    limit = gate.max if gate.max is not None else gate.min
    assert limit is not None  # validation requires one of them
    if result is None or result.value is None:
        why = result.why if result is not None else "not queried yet"
        return GateResult(name, GateStatus.INCONCLUSIVE, None, limit, f"{name}: inconclusive, {why}")
    value = result.value
    if gate.min is not None and value < gate.min:
        return GateResult(name, GateStatus.FAIL, value, gate.min, f"{name}: {value:.4g} < min {gate.min:g}", new=value)
    if gate.max is not None and value > gate.max:
        return GateResult(name, GateStatus.FAIL, value, gate.max, f"{name}: {value:.4g} > max {gate.max:g}", new=value)
    return GateResult(name, GateStatus.PASS, value, limit, f"{name}: {value:.4g} within bounds", new=value)


def evaluate_hooks(outcomes: tuple[HookOutcome, ...]) -> tuple[GateResult, ...]:
    """Each hook's verdict; the value is the HTTP status (None: no answer)."""
    out = []
    for outcome in outcomes:
        hook = outcome.hook
        name = f"webhook.{hook.kind}.{hook.name}"
        answer = f"answered {outcome.status}" if outcome.status is not None else f"no answer ({outcome.error})"
        tries = f" after {outcome.attempts} attempts" if outcome.attempts > 1 else ""
        value = float(outcome.status) if outcome.status is not None else None
        if outcome.ok:
            status, message = GateStatus.PASS, f"{name}: {answer}"
        elif hook.kind == "confirm":
            status, message = GateStatus.INCONCLUSIVE, f"{name}: held, {answer}{tries}"
        else:
            status, message = GateStatus.FAIL, f"{name}: {answer}{tries}"
        out.append(GateResult(name, status, value, 200.0, message))
    return tuple(out)


def partial_evidence(missing: Sequence[str]) -> tuple[GateResult, ...]:
    """An inconclusive result when some processes' latest telemetry did not arrive (``facade serve --workers``):
    a verdict on part of the evidence must not pass silently (a failure seen in the rest still fails)."""
    if not missing:
        return ()
    names = ", ".join(missing)
    return (GateResult("telemetry.complete", GateStatus.INCONCLUSIVE, float(len(missing)), 0.0,
                       f"telemetry.complete: inconclusive, the latest telemetry of {names} did not arrive in time"),)


def with_results(report: GateReport | None, extra: tuple[GateResult, ...]) -> GateReport:
    """``report`` with ``extra`` results added; the status is the worst of all."""
    results = (*(report.results if report is not None else ()), *extra)
    statuses = {r.status for r in results} | ({report.status} if report is not None else set())
    return GateReport(worst_status(statuses), results)


def worst_status(statuses: set[GateStatus]) -> GateStatus:
    """FAIL over INCONCLUSIVE over PASS (an empty set passes)."""
    if GateStatus.FAIL in statuses:
        return GateStatus.FAIL
    if GateStatus.INCONCLUSIVE in statuses:
        return GateStatus.INCONCLUSIVE
    return GateStatus.PASS
