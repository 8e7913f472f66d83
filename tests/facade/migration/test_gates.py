from __future__ import annotations

import pytest

from facade.migration.gates import GateStatus, evaluate_gates, partial_evidence, with_results
from facade.migration.plan import Gate, Gates
from facade.stats import DiffCounts, SideStats

PASS, FAIL, INC = GateStatus.PASS, GateStatus.FAIL, GateStatus.INCONCLUSIVE
OLD = SideStats(requests=1000, errors=10, p50_ms=10.0, p95_ms=40.0, p99_ms=80.0)  # 1 % errors
NO_DIFFS = DiffCounts()


def one(gate: Gate, new: SideStats, *, old: SideStats = OLD, diffs: DiffCounts = NO_DIFFS, minimum: int = 0):  # type: ignore[no-untyped-def]
    report = evaluate_gates(Gates((gate,), minimum), old, new, diffs)
    results = [r for r in report.results if r.name != "min_requests"]
    assert len(results) == 1
    return report, results[0]


def test_no_gates_pass() -> None:
    report = evaluate_gates(Gates(), SideStats(), SideStats(), NO_DIFFS)
    assert report.status is PASS and report.results == ()


@pytest.mark.parametrize(
    ("gate", "new", "status", "value"),
    [
        (Gate("error_rate", "max", 2.0), SideStats(requests=100, errors=2), PASS, 2.0),
        (Gate("error_rate", "max", 2.0), SideStats(requests=100, errors=3), FAIL, 3.0),
        (Gate("error_rate", "max_delta", 0.5), SideStats(requests=100, errors=1), PASS, 0.0),
        (Gate("error_rate", "max_delta", 0.5), SideStats(requests=100, errors=2), FAIL, 1.0),
        (Gate("latency_p99", "max_ms", 100.0), SideStats(requests=100, p99_ms=99.0), PASS, 99.0),
        (Gate("latency_p99", "max_ms", 100.0), SideStats(requests=100, p99_ms=101.0), FAIL, 101.0),
        (Gate("latency_p50", "max_ratio", 1.25), SideStats(requests=100, p50_ms=12.5), PASS, 1.25),
        (Gate("latency_p95", "max_ratio", 1.25), SideStats(requests=100, p95_ms=60.0), FAIL, 1.5),
    ],
)
def test_pass_and_fail_with_measured_values(gate: Gate, new: SideStats, status: GateStatus, value: float) -> None:
    report, result = one(gate, new)
    assert result.status is status and report.status is status
    assert result.value == pytest.approx(value)
    assert result.threshold == gate.limit
    assert result.message.startswith(gate.name + ":")


def test_error_rate_delta_records_both_sides() -> None:
    _, result = one(Gate("error_rate", "max_delta", 0.5), SideStats(requests=200, errors=6))
    assert result.old == pytest.approx(1.0) and result.new == pytest.approx(3.0) and result.value == pytest.approx(2.0)
    assert result.to_json()["status"] == "fail"


@pytest.mark.parametrize(
    ("gate", "new", "old"),
    [
        (Gate("error_rate", "max", 1.0), SideStats(requests=0), OLD),  # no traffic at all
        (Gate("error_rate", "max_delta", 1.0), SideStats(requests=50, errors=50), SideStats()),  # no baseline
        (Gate("latency_p99", "max_ms", 1.0), SideStats(requests=50), OLD),  # no latency samples
        (Gate("latency_p99", "max_ratio", 1.0), SideStats(requests=50, p99_ms=500.0), SideStats(requests=5)),
    ],
)
def test_missing_data_is_inconclusive_never_fail(gate: Gate, new: SideStats, old: SideStats) -> None:
    report, result = one(gate, new, old=old)
    assert result.status is INC and report.status is INC and result.value is None


def test_below_min_requests_is_inconclusive_even_if_terrible() -> None:
    terrible = SideStats(requests=10, errors=10, p99_ms=10_000.0)
    report = evaluate_gates(
        Gates((Gate("error_rate", "max", 1.0), Gate("latency_p99", "max_ms", 100.0)), min_requests=200),
        OLD, terrible, NO_DIFFS,
    )
    assert report.status is INC
    assert [r.status for r in report.results] == [INC, INC, INC]
    assert report.results[0].name == "min_requests" and report.results[0].value == 10.0
    enough = SideStats(requests=200, errors=200, p99_ms=10_000.0)
    assert evaluate_gates(Gates((Gate("error_rate", "max", 1.0),), 200), OLD, enough, NO_DIFFS).status is FAIL


def test_diff_rate_uses_the_compared_count() -> None:
    gate = Gate("diff_rate", "max", 0.5)
    _, few = one(gate, SideStats(), diffs=DiffCounts(compared=100, differing=50), minimum=200)
    assert few.status is INC
    _, ok = one(gate, SideStats(), diffs=DiffCounts(compared=1000, differing=5), minimum=200)
    assert ok.status is PASS and ok.value == pytest.approx(0.5)
    _, bad = one(gate, SideStats(), diffs=DiffCounts(compared=1000, differing=6), minimum=200)
    assert bad.status is FAIL


def test_overall_fail_beats_inconclusive_beats_pass() -> None:
    new = SideStats(requests=100, errors=50, p99_ms=None)
    gates = Gates((Gate("latency_p99", "max_ms", 100.0), Gate("error_rate", "max", 1.0)))
    report = evaluate_gates(gates, OLD, new, NO_DIFFS)
    assert [r.status for r in report.results] == [INC, FAIL]
    assert report.status is FAIL
    assert "error_rate.max: 50% > 1%" in report.summary()
    gates = Gates((Gate("latency_p99", "max_ms", 100.0), Gate("error_rate", "max", 60.0)))
    assert evaluate_gates(gates, OLD, new, NO_DIFFS).status is INC


def test_partial_evidence_turns_a_pass_inconclusive_but_never_hides_a_failure() -> None:
    assert partial_evidence(()) == ()
    gates = Gates((Gate("error_rate", "max", 60.0),))
    passing = evaluate_gates(gates, OLD, SideStats(requests=100, errors=1), NO_DIFFS)
    assert passing.status is PASS
    partial = with_results(passing, partial_evidence(["worker 1 (pid 42)"]))
    assert partial.status is INC and partial.results[-1].name == "telemetry.complete"
    assert "worker 1 (pid 42)" in partial.summary()
    failing = evaluate_gates(gates, OLD, SideStats(requests=100, errors=90), NO_DIFFS)
    assert with_results(failing, partial_evidence(["worker 1 (pid 42)"])).status is FAIL
