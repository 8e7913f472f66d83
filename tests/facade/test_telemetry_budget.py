"""The rolling history's fixed memory budget: what the windows answer, and what they never change.

Windows up to a minute are exact to the second (as before the budget: checked against a count of
the samples themselves); longer ones exact to ten seconds; step windows (gates), the compare report
on them and /metrics do not read the rolling history at all, so the budget cannot change them.
"""

from __future__ import annotations

import math
import random

import pytest

from facade.compare import compare
from facade.migration.gates import evaluate_gates
from facade.migration.plan import Gate, Gates
from facade.stats import SideStats
from facade.telemetry import LogLinearHistogram, Telemetry
from facade.telemetry.histogram import MAX_INDEX, bucket_value
from facade.telemetry.series import COARSE_S, FINE_S, RequestRing

Sample = tuple[float, float, int]  # (clock time, duration in seconds, status)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def traffic(rng: random.Random, start: int, seconds: int, *, busy: bool = True) -> list[Sample]:
    """A few requests in most seconds (none in some), latencies log-normal around 20 ms, ~3 % errors."""
    samples: list[Sample] = []
    for second in range(start, start + seconds):
        if not busy and rng.random() < 0.7:
            continue
        for _ in range(rng.randrange(0, 12)):
            status = 503 if rng.random() < 0.03 else 200
            samples.append((second + rng.random(), rng.lognormvariate(math.log(0.02), 0.9), status))
    return samples


def play(t: Telemetry, clock: FakeClock, samples: list[Sample], *, route: str = "catalog", backend: str = "new",
         step: str = "s1") -> None:
    for when, duration, status in samples:
        clock.now = when
        t.record(route=route, backend=backend, step=step, method="GET", status=status, duration_s=duration,
                 upstream_s=duration * 0.9, bytes_in=0, bytes_out=10)


def exact(samples: list[Sample], first: int, last: int) -> SideStats:
    """What a window over seconds first..last holds, counted from the samples themselves."""
    inside = [(d, s) for when, d, s in samples if first <= int(when) <= last]
    hist = LogLinearHistogram.of(d for d, _ in inside)
    p50, p95, p99 = hist.quantiles((0.5, 0.95, 0.99))
    return SideStats(requests=len(inside), errors=sum(1 for _, s in inside if s >= 500),
                     p50_ms=_ms(p50), p95_ms=_ms(p95), p99_ms=_ms(p99))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 4)


@pytest.mark.parametrize("busy", [True, False])
def test_windows_up_to_a_minute_are_exact_to_the_second(busy: bool) -> None:
    rng = random.Random(5 if busy else 6)
    clock = FakeClock()
    t = Telemetry(clock=clock)
    samples = traffic(rng, 1000, 420, busy=busy)
    play(t, clock, samples)
    for now in (1419.2, 1421.7, 1450.0, 1475.5):  # queried as time goes on without new traffic too
        clock.now = now
        for window in (1, 5, 30, 59, FINE_S):
            tick = int(now)
            assert t.side_stats("catalog", "new", window=window) == exact(samples, tick - window + 1, tick), (now, window)


def test_windows_over_a_minute_are_exact_to_ten_seconds() -> None:
    # Past the newest minute, seconds sit in 10-second blocks: a window counts every block holding
    # a second inside it, whole, so it starts at most COARSE_S - 1 seconds early, never late.
    rng = random.Random(7)
    clock = FakeClock()
    t = Telemetry(clock=clock)
    samples = traffic(rng, 1000, 400)
    play(t, clock, samples)
    tick = int(clock.now)
    for window in (61, 62, 90, 123, 299, 300):
        first = tick - window + 1
        # Blocks hold the seconds before the newest FINE_S + 1 (the fine slots): the block holding
        # ``first`` counts whole once ``first`` is one of them.
        start = first - first % COARSE_S if first < tick - FINE_S else first
        got = t.side_stats("catalog", "new", window=window)
        assert got == exact(samples, start, tick), window
        assert exact(samples, first, tick).requests <= got.requests


def test_step_windows_compare_gates_and_metrics_do_not_depend_on_the_rolling_budget() -> None:
    # The same traffic into a default telemetry and one whose budget evicts all the time: the step
    # windows (what gates and the default compare read) and /metrics are the same, to the byte.
    rng = random.Random(9)
    clocks = FakeClock(), FakeClock()
    roomy = Telemetry(clock=clocks[0])
    tight = Telemetry(clock=clocks[1], rolling_budget=20_000)
    old_traffic, new_traffic = traffic(rng, 1000, 360), traffic(rng, 1000, 360)
    for t, clock in zip((roomy, tight), clocks):
        t.begin_step("catalog", "s1")
        for pair in range(30):  # other busy pairs competing for the budget
            play(t, clock, traffic(random.Random(pair), 1000, 40), route=f"r{pair}", backend="b")
        play(t, clock, old_traffic, backend="old")
        play(t, clock, new_traffic, backend="new")
    assert tight.rolling_budget.evictions > 0 and roomy.rolling_budget.evictions == 0
    gates = Gates((Gate("error_rate", "max_delta", 1.0), Gate("latency_p99", "max_ratio", 1.25)), min_requests=100)
    answers = []
    for t in (roomy, tight):
        old, new = t.side_stats("catalog", "old"), t.side_stats("catalog", "new")
        assert new == exact(new_traffic, 0, 10**9)  # the whole step
        answers.append((
            old, new, t.step_summary("catalog")["backends"], compare(old, new, t.diff_counts("catalog")).to_json(),
            evaluate_gates(gates, old, new, t.diff_counts("catalog")), t.prometheus_text(),
        ))
    assert answers[0] == answers[1]


def test_the_budget_holds_and_idle_pairs_go_first() -> None:
    clock = FakeClock()
    t = Telemetry(clock=clock, rolling_budget=60_000)
    rng = random.Random(3)
    play(t, clock, traffic(rng, 1000, 30), route="idle")  # then silent
    busy = {f"busy-{i}": traffic(random.Random(i), 1040, 60) for i in range(4)}
    merged = sorted((when, d, s, route) for route, samples in busy.items() for when, d, s in samples)
    for when, duration, status, route in merged:
        clock.now = when
        t.record(route=route, backend="new", step="s", method="GET", status=status, duration_s=duration,
                 upstream_s=None, bytes_in=0, bytes_out=0)
        assert t.rolling_budget.used <= t.rolling_budget.limit
    assert t.rolling_budget.evictions >= 1
    clock.now = 1099.5
    assert t.side_stats("idle", "new", window=300).requests == 0  # its history was dropped first
    assert t.side_stats("catalog", "new").requests == 0  # (no such pair: nothing invented)
    # The idle pair's lifetime counters (step windows, /metrics) are untouched by the eviction.
    assert t.side_stats("idle", "new").requests == len(traffic(random.Random(3), 1000, 30))


def test_one_pairs_history_stays_within_its_documented_worst_case() -> None:
    # Every bucket in every second: the most a pair's packed history can charge.
    clock = FakeClock()
    t = Telemetry(clock=clock, rolling_budget=1 << 40)
    durations = [bucket_value(i) for i in range(MAX_INDEX + 1)]
    for second in range(1000, 1000 + 320):
        clock.now = second + 0.5
        for d in durations:
            t.record(route="r", backend="b", step="s", method="GET", status=200, duration_s=d, upstream_s=None,
                     bytes_in=0, bytes_out=0)
    worst = RequestRing.worst_case_bytes(300)
    assert 0.9 * worst <= t.rolling_budget.used <= worst
    assert worst < 1024 * 1024  # docs/telemetry.md says ~955 KiB
    assert t.side_stats("r", "b", window=60).requests == 60 * len(durations)


def test_a_telemetry_refuses_a_budget_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="rolling_budget must be positive"):
        Telemetry(rolling_budget=0)
