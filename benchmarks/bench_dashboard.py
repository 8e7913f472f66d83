"""Cost of the dashboard's sampling round (every 2 s on the event loop) and of its carve-out view.

    python3 benchmarks/bench_dashboard.py [--routes 50] [--rounds 20]

A telemetry with ``--routes`` routes x 2 backends, every per-second slot of the rolling window
holding traffic; prints milliseconds per sampling round (``sample`` of every route) and per
``carve_out`` over a full history. Numbers, not assertions: compare across commits on one machine.
"""

from __future__ import annotations

import argparse
import time

from facade.dashboard.history import DEFAULT_INTERVAL, History, carve_out, sample
from facade.telemetry import Telemetry


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--routes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    now = [10_000.0]
    telemetry = Telemetry(clock=lambda: now[0])
    routes = [f"route-{i}" for i in range(args.routes)]
    for second in range(300):  # fill the whole rolling ring
        now[0] = 10_000.0 + second
        for route in routes:
            for backend in ("monolith", "catalog"):
                for status in (200, 200, 503):
                    telemetry.record(route=route, backend=backend, step="s", method="GET", status=status,
                                     duration_s=0.001 * (1 + second % 50), upstream_s=None, bytes_in=0, bytes_out=0)
    history = History()
    started = time.perf_counter()
    for i in range(args.rounds):
        for route in routes:
            history.add(route, sample(telemetry, route, at=float(i), interval=DEFAULT_INTERVAL))
    per_round = (time.perf_counter() - started) / args.rounds
    for i in range(args.rounds, history.points):  # a full history for carve_out
        for route in routes:
            history.add(route, sample(telemetry, route, at=float(i), interval=DEFAULT_INTERVAL))
    started = time.perf_counter()
    carve_out(history, frozenset({"catalog"}))
    carve = time.perf_counter() - started
    print(f"sampling round, {args.routes} routes x 2 backends: {per_round * 1000:.2f} ms "
          f"(every {DEFAULT_INTERVAL:g} s: {per_round / DEFAULT_INTERVAL * 100:.2f} % of one core)")
    print(f"carve_out over a full history ({history.points} points x {args.routes} routes): {carve * 1000:.1f} ms")


if __name__ == "__main__":
    main()
