"""Telemetry recorder: step windows (epochs), rolling windows on an injected clock, Prometheus exposition."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from facade.stats import DiffCounts
from facade.telemetry import OVERFLOW, Telemetry, status_class


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def hit(t: Telemetry, *, route: str = "catalog", backend: str = "monolith", step: str = "stable",
        method: str = "GET", status: int = 200, duration_s: float = 0.010, upstream_s: float | None = 0.008,
        bytes_in: int = 0, bytes_out: int = 100) -> None:
    t.record(route=route, backend=backend, step=step, method=method, status=status, duration_s=duration_s,
             upstream_s=upstream_s, bytes_in=bytes_in, bytes_out=bytes_out)


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_status_classes_and_errors() -> None:
    assert [status_class(s) for s in (0, 101, 204, 302, 404, 499, 502, 599, 700, -1)] == [
        "5xx", "1xx", "2xx", "3xx", "4xx", "4xx", "5xx", "5xx", "5xx", "5xx"]
    t = Telemetry()
    for status in (200, 404, 499, 500, 503, 0):
        hit(t, status=status)
    stats = t.side_stats("catalog", "monolith")
    assert (stats.requests, stats.errors) == (6, 3)  # 5xx and "could not forward"; 4xx are the client's


def test_side_stats_latency_percentiles_in_milliseconds() -> None:
    t = Telemetry()
    rng = random.Random(1)
    samples = [rng.uniform(0.005, 0.100) for _ in range(2000)]
    for s in samples:
        hit(t, duration_s=s)
    stats = t.side_stats("catalog", "monolith")
    ordered = sorted(samples)
    for got, q in ((stats.p50_ms, 0.5), (stats.p95_ms, 0.95), (stats.p99_ms, 0.99)):
        want = ordered[math.ceil(q * len(ordered)) - 1] * 1000
        assert got is not None and abs(got - want) / want <= 0.02


def test_step_window_starts_at_begin_step() -> None:
    t = Telemetry()
    t.begin_step("catalog", "1:weight-5")
    for _ in range(10):
        hit(t, step="1:weight-5", backend="catalog", status=503)
    t.begin_step("catalog", "2:weight-25")
    for _ in range(4):
        hit(t, step="2:weight-25", backend="catalog", duration_s=0.2)
    assert t.current_step("catalog") == "2:weight-25"
    now = t.side_stats("catalog", "catalog")  # defaults to the current step
    assert (now.requests, now.errors) == (4, 0)
    assert now.p50_ms == pytest.approx(200, rel=0.01)
    # A finished step's window stays readable until that label begins again.
    before = t.side_stats("catalog", "catalog", step="1:weight-5")
    assert (before.requests, before.errors) == (10, 10)


def test_repeated_step_label_after_rollback_starts_a_fresh_epoch() -> None:
    t = Telemetry()
    t.begin_step("catalog", "3:weight-25")
    for _ in range(50):
        hit(t, step="3:weight-25", backend="catalog", status=500)
    t.begin_step("catalog", "2:weight-5")  # rollback
    t.begin_step("catalog", "3:weight-25")  # and forward again: same label, new epoch
    for _ in range(7):
        hit(t, step="3:weight-25", backend="catalog")
    stats = t.side_stats("catalog", "catalog", step="3:weight-25")
    assert (stats.requests, stats.errors) == (7, 0)
    assert t.step_summary("catalog")["epoch"] == 2
    # Prometheus counters stay monotonic across epochs.
    fams = families(t.prometheus_text())
    total = sum(s.value for s in fams["http_server_requests"].samples if s.labels["step"] == "3:weight-25")
    assert total == 57


def test_rolling_windows_with_injected_clock() -> None:
    clock = FakeClock(1000.0)
    t = Telemetry(clock=clock)
    for second in range(300):  # one request a second for five minutes, the last minute all errors
        clock.now = 1000.0 + second + 0.5
        hit(t, status=500 if second >= 240 else 200, duration_s=0.3 if second >= 240 else 0.01)
    one_minute = t.side_stats("catalog", "monolith", window=60)
    assert (one_minute.requests, one_minute.errors) == (60, 60)
    assert one_minute.p50_ms == pytest.approx(300, rel=0.01)
    five_minutes = t.side_stats("catalog", "monolith", window=300)
    assert (five_minutes.requests, five_minutes.errors) == (300, 60)
    # Ten seconds later the oldest ten slots have aged out of the 5 m window; nothing new was recorded.
    clock.now += 10
    assert t.side_stats("catalog", "monolith", window=300).requests == 290
    assert t.side_stats("catalog", "monolith", window=60).requests == 50
    # Long after, the ring is empty again, and reused slots do not leak old counts.
    clock.now += 1000
    assert t.side_stats("catalog", "monolith", window=300).requests == 0
    hit(t)
    assert t.side_stats("catalog", "monolith", window=60).requests == 1


def test_window_outside_the_ring_and_step_plus_window_are_rejected() -> None:
    t = Telemetry(rolling=(60.0,))
    with pytest.raises(ValueError, match="longest rolling window"):
        t.side_stats("catalog", "monolith", window=300)
    with pytest.raises(ValueError, match="not both"):
        t.side_stats("catalog", "monolith", step="s", window=60)
    with pytest.raises(ValueError):
        Telemetry(rolling=())


def test_unknown_route_backend_and_step_are_empty() -> None:
    t = Telemetry()
    hit(t)
    assert t.side_stats("nope", "monolith").requests == 0
    assert t.side_stats("catalog", "nope").p99_ms is None
    assert t.side_stats("catalog", "monolith", step="never").requests == 0
    assert t.diff_counts("catalog") == DiffCounts()


def test_diff_counts_per_step_and_window() -> None:
    clock = FakeClock()
    t = Telemetry(clock=clock)
    t.begin_step("catalog", "0:shadow")
    for i in range(20):
        clock.now += 1
        t.record_diff(route="catalog", step="0:shadow", differing=i % 4 == 0, noise_fields=["$.generated_at"])
    counts = t.diff_counts("catalog")
    assert (counts.compared, counts.differing, counts.noise_fields) == (20, 5, ("$.generated_at",))
    assert counts.diff_rate == 0.25
    assert t.diff_counts("catalog", window=10).compared == 10
    t.begin_step("catalog", "0:shadow")
    assert t.diff_counts("catalog") == DiffCounts()
    fams = families(t.prometheus_text())
    assert [s.value for s in fams["facade_shadow_comparisons"].samples] == [20]
    assert [s.value for s in fams["facade_shadow_diffs"].samples] == [5]


def test_step_summary_is_json_for_the_journal() -> None:
    clock = FakeClock()
    t = Telemetry(clock=clock)
    t.begin_step("catalog", "1:weight-5")
    for _ in range(95):
        hit(t, step="1:weight-5")
    for _ in range(5):
        hit(t, step="1:weight-5", backend="catalog", status=502)
    t.record_diff(route="catalog", step="1:weight-5", differing=False)
    clock.now += 42
    summary = json.loads(json.dumps(t.step_summary("catalog")))
    assert summary["step"] == "1:weight-5"
    assert summary["elapsed_s"] == 42
    assert summary["backends"]["monolith"]["requests"] == 95
    assert summary["backends"]["catalog"]["error_rate"] == 1.0
    assert summary["diffs"]["compared"] == 1


def test_prometheus_text_parses_with_expected_counts_and_labels() -> None:
    t = Telemetry()
    for _ in range(3):
        hit(t, duration_s=0.003, bytes_in=10, bytes_out=1000)
    hit(t, duration_s=0.7, status=503, upstream_s=None)
    hit(t, backend="catalog", step="2:weight-25", method="POST", duration_s=20.0, status=201)
    text = t.prometheus_text()
    assert text.endswith("\n")
    fams = families(text)
    assert fams["http_server_request_duration_seconds"].type == "histogram"
    assert fams["http_server_requests"].type == "counter"
    base = {"route": "catalog", "backend": "monolith", "step": "stable", "method": "GET"}
    ok = {**base, "status_class": "2xx"}
    samples = [(s.name, s.labels, s.value) for s in fams["http_server_request_duration_seconds"].samples]
    assert ("http_server_request_duration_seconds_bucket", {**ok, "le": "0.005"}, 3.0) in samples
    assert ("http_server_request_duration_seconds_count", ok, 3.0) in samples
    err = {**base, "status_class": "5xx"}
    assert ("http_server_request_duration_seconds_bucket", {**err, "le": "0.5"}, 0.0) in samples
    assert ("http_server_request_duration_seconds_bucket", {**err, "le": "1.0"}, 1.0) in samples
    slow = {"route": "catalog", "backend": "catalog", "step": "2:weight-25", "method": "POST", "status_class": "2xx"}
    assert ("http_server_request_duration_seconds_bucket", {**slow, "le": "10.0"}, 0.0) in samples
    assert ("http_server_request_duration_seconds_bucket", {**slow, "le": "+Inf"}, 1.0) in samples
    sums = {tuple(sorted(s.labels.items())): s.value for s in fams["http_server_request_duration_seconds"].samples
            if s.name.endswith("_sum")}
    assert sums[tuple(sorted(ok.items()))] == pytest.approx(0.009)
    counts = {s.labels["status_class"]: s.value for s in fams["http_server_requests"].samples
              if s.labels["backend"] == "monolith"}
    assert counts == {"2xx": 3, "5xx": 1}
    body_in = [s for s in fams["http_server_request_body_size_bytes"].samples if s.labels == ok]
    body_out = [s for s in fams["http_server_response_body_size_bytes"].samples if s.labels == ok]
    assert body_in[0].value == 30 and body_out[0].value == 3000
    # Upstream latency only for requests that reached a backend.
    upstream = [s for s in fams["http_client_request_duration_seconds"].samples if s.name.endswith("_count")]
    assert sum(s.value for s in upstream) == 4
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            assert line.split()[3] in ("histogram", "counter")


def test_label_values_are_escaped() -> None:
    t = Telemetry()
    nasty = 'we"ird\\step\nx'
    hit(t, step=nasty)
    fams = families(t.prometheus_text())
    assert {s.labels["step"] for s in fams["http_server_requests"].samples} == {nasty}


def test_cardinality_methods_normalized_and_raw_paths_never_labels() -> None:
    t = Telemetry()
    for method in ("GET", "get", "PROPFIND", "BREW", "DELETE", "X" * 500):
        hit(t, method=method)
    for i in range(100):
        hit(t, route="catalog")  # the proxy passes the route NAME; whatever path matched is not seen here
    text = t.prometheus_text()
    methods = {s.labels["method"] for s in families(text)["http_server_requests"].samples}
    assert methods == {"GET", "DELETE", "other"}
    assert "/catalog" not in text and "X" * 20 not in text
    label_names = {name for s in families(text)["http_server_requests"].samples for name in s.labels}
    assert label_names == {"route", "backend", "step", "method", "status_class"}


def test_label_sets_beyond_the_limit_fold_into_overflow() -> None:
    t = Telemetry(max_series=10)
    for i in range(50):
        hit(t, route=f"route-{i}")
    fams = families(t.prometheus_text())
    samples = fams["http_server_requests"].samples
    assert len(samples) == 11  # ten label sets, then one overflow set for this method x status class
    assert sum(s.value for s in samples) == 50  # nothing lost, only folded
    assert any(s.labels["route"] == OVERFLOW for s in samples)
    assert t.overflowed == 40


def test_invented_methods_do_not_grow_the_tables() -> None:
    t = Telemetry(max_series=5)
    for i in range(1000):
        hit(t, method=f"M{i}")
    hit(t, method="GET")  # a real label set still gets its own series
    samples = families(t.prometheus_text())["http_server_requests"].samples
    assert {(s.labels["method"], s.value) for s in samples} == {("other", 1000), ("GET", 1)}
    assert t.overflowed == 0
