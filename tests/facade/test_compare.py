"""Compare verdicts on synthetic samples with known answers."""

from __future__ import annotations

import json

import pytest

from facade.compare import Comparison, compare, error_rate_p_value, render_table
from facade.stats import DiffCounts, SideStats


def side(requests: int, errors: int = 0, p50: float = 10.0, p95: float = 40.0, p99: float = 80.0) -> SideStats:
    return SideStats(requests=requests, errors=errors, p50_ms=p50, p95_ms=p95, p99_ms=p99)


def test_fisher_exact_matches_the_textbook_tea_tasting_table() -> None:
    # Fisher's lady tasting tea: [[3, 1], [1, 3]], two-sided p = 0.4857 (R: fisher.test).
    assert error_rate_p_value(3, 4, 1, 4) == pytest.approx(0.4857, abs=1e-4)


def test_z_test_for_large_counts() -> None:
    # 50/1000 vs 5/1000: pooled z = 6.15 -> p ~ 7.6e-10.
    assert error_rate_p_value(50, 1000, 5, 1000) == pytest.approx(7.6e-10, rel=0.05)
    assert error_rate_p_value(10, 1000, 10, 1000) == pytest.approx(1.0)
    assert error_rate_p_value(0, 0, 1, 10) is None


def test_one_failure_in_40_vs_none_in_1000_is_not_significant() -> None:
    result = compare(old=side(1000, 0), new=side(40, 1))
    row = result.row("error_rate")
    assert row.new == pytest.approx(0.025)
    assert row.p_value is not None and row.p_value == pytest.approx(40 / 1040, rel=1e-6)  # exact, one table
    assert not row.significant
    assert result.outcome == "insufficient"
    assert result.verdict == "not enough traffic to tell (40 requests on new, need 100)"


def test_50_in_1000_vs_5_in_1000_is_significant_and_worse() -> None:
    result = compare(old=side(1000, 5), new=side(1000, 50))
    row = result.row("error_rate")
    assert row.significant and row.direction == "higher"
    assert row.abs_diff == pytest.approx(0.045)
    assert row.rel_diff == pytest.approx(9.0)
    assert result.outcome == "worse"
    assert result.verdict.startswith("new path has a significantly higher error rate (5.0 % vs 0.5 %, p=")


def test_many_failures_on_a_small_sample_are_significant() -> None:
    result = compare(old=side(1000, 0), new=side(40, 10))
    assert result.row("error_rate").significant
    assert result.outcome == "worse"


def test_same_traffic_same_errors_looks_the_same() -> None:
    result = compare(old=side(5000, 15), new=side(1200, 4, p50=10.4, p95=41.0, p99=83.0))
    assert result.outcome == "same"
    assert result.verdict == "new path looks the same"
    assert not any(r.significant for r in result.rows)


def test_latency_needs_enough_samples_in_the_tail() -> None:
    def slow(requests: int) -> SideStats:
        return side(requests, p50=10.0, p95=40.0, p99=200.0)

    few = compare(old=side(500), new=slow(500))
    p99 = few.row("p99_ms")
    assert not p99.significant and p99.note == "needs 1000 requests a side"
    assert few.outcome == "same"
    many = compare(old=side(5000), new=slow(2000))
    assert many.row("p99_ms").significant
    assert many.row("p99_ms").rel_diff == pytest.approx(1.5)
    assert many.row("p99_ms").ratio == pytest.approx(2.5)
    assert many.outcome == "worse"
    assert "higher p99 latency (200.0 ms vs 80.0 ms, x2.50)" in many.verdict


def test_small_latency_change_is_within_tolerance() -> None:
    result = compare(old=side(5000), new=side(5000, p99=85.0))
    assert not result.row("p99_ms").significant


def test_faster_new_path_is_better() -> None:
    result = compare(old=side(5000, p50=30.0), new=side(5000, p50=10.0))
    assert result.outcome == "better"
    assert result.verdict.startswith("new path looks the same or better: a lower p50 latency")


def test_few_requests_is_insufficient() -> None:
    result = compare(old=side(1000), new=side(12))
    assert result.verdict == "not enough traffic to tell (12 requests on new, need 100)"


def test_diffs_make_the_new_path_worse() -> None:
    result = compare(old=side(1000), new=side(1000), diffs=DiffCounts(compared=400, differing=8))
    row = result.row("diff_rate")
    assert row.significant and row.new == pytest.approx(0.02)
    assert result.outcome == "worse"
    assert "different responses for 2.0 % of shadowed requests (8 of 400)" in result.verdict


def test_shadow_step_judged_by_diffs_alone() -> None:
    same = compare(old=side(1000), new=SideStats(), diffs=DiffCounts(compared=500, differing=0,
                                                                      noise_fields=("$.generated_at",)))
    assert same.outcome == "same"
    assert same.verdict == "new path returns the same responses (500 shadowed requests, none differ)"
    assert "$.generated_at" in same.row("diff_rate").note
    early = compare(old=side(1000), new=SideStats(), diffs=DiffCounts(compared=20))
    assert early.outcome == "insufficient"


def test_no_traffic_anywhere() -> None:
    result = compare(old=SideStats(), new=SideStats())
    assert result.outcome == "insufficient"
    assert result.row("error_rate").note == "no requests on old"


def test_render_table_and_json() -> None:
    result = compare(old=side(1000, 5), new=side(1000, 50), diffs=DiffCounts(compared=10, differing=1))
    text = render_table(result)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["metric", "old", "new", "diff"]
    assert any(line.startswith("error_rate") and "0.50 %" in line and "5.00 %" in line and "yes" in line
               for line in lines)
    assert lines[-1].startswith("verdict: new path has a significantly higher error rate")
    data = json.loads(json.dumps(result.to_json()))
    assert data["outcome"] == "worse"
    assert [r["metric"] for r in data["rows"]] == ["requests", "error_rate", "p50_ms", "p95_ms", "p99_ms",
                                                     "diff_rate"]
    assert data["new"]["error_rate"] == 0.05


def test_bad_alpha_is_rejected() -> None:
    with pytest.raises(ValueError, match="alpha"):
        compare(old=side(1), new=side(1), alpha=1.5)
    assert isinstance(compare(old=side(1), new=side(1)), Comparison)
