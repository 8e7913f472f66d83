"""Per-request cost of ``Telemetry.record`` (the proxy calls it once per request).

    python3 benchmarks/bench_telemetry.py [--n 200000] [--rounds 5]
    python3 benchmarks/bench_telemetry.py --pairs 1000 [--rate 20] [--seconds 320] [--tracemalloc]

Prints nanoseconds per call for a steady-state mix (a few routes, backends, methods and statuses, so
the label-set lookup hits the cache as in production), and the cost of a ``/metrics`` render and of a
rolling-window query over a full ring. Numbers, not assertions: compare across commits on one machine.

``--pairs N`` measures memory instead: N busy route x backend pairs, each recording ``--rate``
requests a second (log-normal latencies, median 20 ms, ~2-200 ms) for ``--seconds`` simulated
seconds (a fake clock: past the 300 s horizon, so every ring is full), then prints the process's RSS
before and after, the bytes the telemetry holds (tracemalloc, with ``--tracemalloc``: slower), the
rolling budget's own count, and the cost of a 60 s and a 300 s window query.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import time
import tracemalloc
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


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_pairs(pairs: int, rate: int, seconds: int, trace: bool, budget_mib: float | None = None) -> None:
    """Memory of the rolling history with ``pairs`` busy route x backend pairs."""
    rng = random.Random(11)
    durations = [rng.lognormvariate(math.log(0.02), 0.8) for _ in range(100_003)]
    gc.collect()
    rss_before = _rss_bytes()
    if trace:
        tracemalloc.start()
    now = [0.0]
    options = {} if budget_mib is None else {"rolling_budget": int(budget_mib * 1024 * 1024)}
    telemetry = Telemetry(clock=lambda: now[0], **options)
    record = telemetry.record
    names = [(f"route-{i // 4}", f"backend-{i % 4}") for i in range(pairs)]
    d = 0
    started = time.perf_counter()
    for second in range(seconds):
        for r in range(rate):
            now[0] = second + r / rate
            for route, backend in names:
                record(route=route, backend=backend, step="s", method="GET", status=200,
                       duration_s=durations[d], upstream_s=None, bytes_in=0, bytes_out=100)
                d = d + 1 if d < 100_002 else 0
    elapsed = time.perf_counter() - started
    traced = tracemalloc.get_traced_memory()[0] if trace else None
    if trace:
        tracemalloc.stop()
    gc.collect()
    rss_after = _rss_bytes()
    t0 = time.perf_counter()
    stats60 = telemetry.side_stats(names[0][0], names[0][1], window=60)
    q60 = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    stats300 = telemetry.side_stats(names[0][0], names[0][1], window=300)
    q300 = (time.perf_counter() - t0) * 1000
    budget = getattr(telemetry, "rolling_budget", None)
    mib = 1024 * 1024
    print(f"{pairs} pairs x {rate} req/s x {seconds} s ({pairs * rate * seconds:,} records, "
          f"{elapsed / (pairs * rate * seconds) * 1e9:.0f} ns each)")
    print(f"  RSS {rss_before / mib:.1f} -> {rss_after / mib:.1f} MiB (+{(rss_after - rss_before) / mib:.1f} MiB, "
          f"{(rss_after - rss_before) / pairs / 1024:.1f} KiB a pair)")
    if traced is not None:
        print(f"  tracemalloc: {traced / mib:.1f} MiB held by the telemetry ({traced / pairs / 1024:.1f} KiB a pair)")
    if budget is not None:
        print(f"  rolling budget: {budget.used / mib:.1f} of {budget.limit / mib:.0f} MiB charged, "
              f"{budget.evictions} evictions")
    print(f"  window query: 60 s {q60:.2f} ms ({stats60.requests} requests), "
          f"300 s {q300:.2f} ms ({stats300.requests} requests)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5, help="report the best and the median round")
    parser.add_argument("--pairs", type=int, default=0, help="measure memory with this many busy pairs instead")
    parser.add_argument("--rate", type=int, default=20, help="requests a second per pair (with --pairs)")
    parser.add_argument("--seconds", type=int, default=320, help="simulated seconds (with --pairs)")
    parser.add_argument("--tracemalloc", action="store_true", help="also count bytes with tracemalloc (slower)")
    parser.add_argument("--budget-mib", type=float, help="rolling_budget in MiB (default: the Telemetry default)")
    args = parser.parse_args()
    if args.pairs:
        bench_pairs(args.pairs, args.rate, args.seconds, args.tracemalloc, args.budget_mib)
        return
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
