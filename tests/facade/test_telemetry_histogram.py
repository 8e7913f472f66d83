"""The log-linear histogram: quantiles within 2 % of the exact sample quantile, merge, coarse buckets."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facade.telemetry.histogram import (
    HIGHEST_S,
    LOWEST_S,
    MAX_INDEX,
    PROMETHEUS_BUCKETS,
    LogLinearHistogram,
    bucket_index,
    bucket_value,
)

QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)


def exact_quantile(samples: list[float], q: float) -> float:
    """Nearest-rank quantile of the samples, the definition the histogram approximates."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def assert_quantiles_close(samples: list[float]) -> None:
    hist = LogLinearHistogram.of(samples)
    for q in QUANTILES:
        got = hist.quantile(q)
        want = exact_quantile(samples, q)
        assert got is not None
        assert abs(got - want) / want <= 0.02, (q, got, want)
    # The one-pass variant agrees with the single-quantile one.
    assert hist.quantiles(QUANTILES) == [hist.quantile(q) for q in QUANTILES]


def test_uniform_distribution_quantiles_within_2_percent() -> None:
    rng = random.Random(1)
    assert_quantiles_close([rng.uniform(0.001, 0.5) for _ in range(20_000)])


def test_exponential_distribution_quantiles_within_2_percent() -> None:
    rng = random.Random(2)
    assert_quantiles_close([rng.expovariate(1 / 0.030) + 1e-4 for _ in range(20_000)])


def test_bimodal_distribution_quantiles_within_2_percent() -> None:
    # Fast cache hits around 2 ms, slow database path around 250 ms: p50 and p99 sit in different modes.
    rng = random.Random(3)
    samples = [rng.gauss(0.002, 0.0002) if rng.random() < 0.8 else rng.gauss(0.250, 0.03) for _ in range(20_000)]
    samples = [max(s, 1e-4) for s in samples]
    assert_quantiles_close(samples)
    hist = LogLinearHistogram.of(samples)
    assert hist.quantile(0.5) == pytest.approx(0.002, rel=0.2)
    assert hist.quantile(0.99) == pytest.approx(0.25, rel=0.3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=LOWEST_S, max_value=HIGHEST_S * 0.99), min_size=1, max_size=300))
def test_any_sample_set_quantiles_within_2_percent(samples: list[float]) -> None:
    assert_quantiles_close(samples)


def test_bucket_width_is_about_one_percent() -> None:
    for index in (1, 100, 800, MAX_INDEX - 1):
        lower = LOWEST_S * 1.01 ** (index - 1)
        upper = LOWEST_S * 1.01**index
        assert bucket_index(lower * 1.0001) == index
        assert bucket_index(upper * 0.9999) == index
        assert abs(bucket_value(index) - lower) / lower < 0.0051


def test_out_of_range_values_are_clamped_not_lost() -> None:
    hist = LogLinearHistogram.of([0.0, -1.0, 1e-9, 500.0, 1e9])
    assert hist.total == 5
    assert hist.counts == {0: 3, MAX_INDEX: 2}
    assert hist.quantile(0.0) == LOWEST_S
    assert hist.quantile(1.0) == HIGHEST_S


def test_empty_histogram_has_no_quantiles() -> None:
    hist = LogLinearHistogram()
    assert hist.quantile(0.5) is None
    assert hist.quantiles((0.5, 0.99)) == [None, None]


def test_quantile_outside_0_1_is_a_programmer_error() -> None:
    with pytest.raises(ValueError, match="0..1"):
        LogLinearHistogram.of([0.1]).quantile(1.5)


def test_merge_equals_recording_everything_in_one() -> None:
    rng = random.Random(4)
    a = [rng.expovariate(20) for _ in range(1000)]
    b = [rng.expovariate(5) for _ in range(1000)]
    merged = LogLinearHistogram.of(a)
    merged.merge(LogLinearHistogram.of(b))
    assert merged.counts == LogLinearHistogram.of(a + b).counts
    assert merged.total == 2000


def test_subtract_gives_what_was_recorded_since_the_baseline() -> None:
    hist = LogLinearHistogram.of([0.01] * 5)
    baseline = dict(hist.counts)
    for _ in range(3):
        hist.record(0.2)
    since = hist.subtract(baseline)
    assert since.total == 3
    assert since.quantile(0.5) == pytest.approx(0.2, rel=0.01)


def test_cumulative_buckets_match_exact_counts_away_from_boundaries() -> None:
    rng = random.Random(5)
    samples = [rng.expovariate(1 / 0.1) for _ in range(5000)]
    # Keep clear of the ~1 % band above each boundary, where coarse buckets are approximate.
    samples = [s for s in samples if not any(le <= s < le * 1.011 for le in PROMETHEUS_BUCKETS)]
    buckets = dict(LogLinearHistogram.of(samples).cumulative_buckets())
    for le in PROMETHEUS_BUCKETS:
        assert buckets[le] == sum(1 for s in samples if s <= le), le
    assert buckets[math.inf] == len(samples)


def test_observation_exactly_on_a_boundary_counts_as_less_or_equal() -> None:
    buckets = dict(LogLinearHistogram.of(list(PROMETHEUS_BUCKETS)).cumulative_buckets())
    assert [buckets[le] for le in PROMETHEUS_BUCKETS] == list(range(1, len(PROMETHEUS_BUCKETS) + 1))
