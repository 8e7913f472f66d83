"""Per-request cost of ``Telemetry.record`` (the proxy calls it once per request).

    python3 benchmarks/bench_telemetry.py [--n 200000] [--rounds 5]

Prints nanoseconds per call for a steady-state mix (a few routes, backends, methods and statuses, so
the label-set lookup hits the cache as in production), and the cost of a ``/metrics`` render and of a
rolling-window query over a full ring. Numbers, not assertions: compare across commits on one machine.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from facade.telemetry import Telemetry


def bench_record(n: int) -> float:
    telemetry = Telemetry()
    rng = random.Random(7)
    # Pre-generate the arguments so the loop measures record(), not the random module.
    calls: list[dict[str, Any]] = [
        {
            "route": rng.choice(("catalog", "orders", "users")),
            "backend": rng.choice(("monolith", "catalog")),
            "step": "3:weight-25",
            "method": rng.choice(("GET", "GET", "GET", "POST")),
            "status": rng.choice((200, 200, 200, 200, 404, 503)),
            "duration_s": rng.expovariate(1 / 0.02),
            "upstream_s": rng.expovariate(1 / 0.015),
            "bytes_in": 0,
            "bytes_out": rng.randrange(100, 5000),
        }
        for _ in range(10_000)
    ]
    for kwargs in calls:  # warm the caches
        telemetry.record(**kwargs)
    record = telemetry.record
    started = time.perf_counter_ns()
    for i in range(n):
        record(**calls[i % 10_000])
    elapsed = time.perf_counter_ns() - started
    return elapsed / n


def bench_empty_loop(n: int) -> float:
    calls = [{"a": 1} for _ in range(10_000)]

    def noop(**kwargs: object) -> None:
        return None

    started = time.perf_counter_ns()
    for i in range(n):
        noop(**calls[i % 10_000])
    return (time.perf_counter_ns() - started) / n


def bench_queries() -> tuple[float, float]:
    now = [0.0]
    telemetry = Telemetry(clock=lambda: now[0])
    rng = random.Random(3)
    for second in range(300):
        now[0] = float(second)
        for _ in range(200):
            telemetry.record(route="catalog", backend="catalog", step="s", method="GET", status=200,
                             duration_s=rng.expovariate(1 / 0.02), upstream_s=None, bytes_in=0, bytes_out=100)
    started = time.perf_counter()
    telemetry.side_stats("catalog", "catalog", window=300)
    window_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    telemetry.prometheus_text()
    metrics_ms = (time.perf_counter() - started) * 1000
    return window_ms, metrics_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5, help="report the best and the median round")
    args = parser.parse_args()
    # The machine is shared: the best round is the cost, the median shows the noise.
    rounds = sorted(bench_record(args.n) for _ in range(args.rounds))
    baseline = min(bench_empty_loop(args.n) for _ in range(args.rounds))
    window_ms, metrics_ms = bench_queries()
    best, median = rounds[0], rounds[len(rounds) // 2]
    print(f"Telemetry.record: {best:.0f} ns/call best, {median:.0f} median "
          f"({best - baseline:.0f} ns over an empty kwargs call)")
    print(f"side_stats(window=300) over 300 full slots: {window_ms:.2f} ms")
    print(f"prometheus_text() with 1 series: {metrics_ms:.2f} ms")


if __name__ == "__main__":
    main()
