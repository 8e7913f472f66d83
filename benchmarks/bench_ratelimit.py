"""What a route's rate limit costs the hot path, configured and absent (in-process, no sockets).

    python benchmarks/bench_ratelimit.py [--repeat 7] [--number 200000]

Times the proxy's own step (``Proxy._rate_limited``: key, bucket, decision) for each key kind
against the check every request of a route without a limit pays (``route.rate_limit is not None``),
in ns per request, median of ``--repeat`` timeit runs. The end-to-end view is ``bench_proxy.py
--only facade,facade-rl`` (the same facade with a limit that never refuses).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from typing import Any

from facade.config import RateLimit, Route, RouteMatch, WeightedBackend
from facade.proxy import Proxy


class _Snap:
    """The one thing the rate limit reads from a snapshot: which peers are trusted proxies."""

    @staticmethod
    def is_trusted(ip: str) -> bool:
        return False


def _route(spec: RateLimit | None) -> Route:
    return Route(name="r", matches=(RouteMatch(),), backends=(WeightedBackend("a"),), rate_limit=spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args(argv)
    scope: dict[str, Any] = {
        "client": ("127.0.0.1", 50000),
        "headers": [(b"host", b"shop.local"), (b"user-agent", b"bench"), (b"accept", b"*/*"), (b"x-api-key", b"k1")],
    }
    proxy = Proxy(None)  # type: ignore[arg-type]  # the holder is not read by _rate_limited
    snap = _Snap()
    huge = 10**12  # never refuses: the cost of admitting, the common case
    cases: dict[str, Any] = {}
    absent = _route(None)
    cases["absent (one attribute check)"] = lambda: absent.rate_limit is not None
    for key in ("route", "client_ip", "header"):
        route = _route(RateLimit(requests_per_unit=huge, key=key, header="x-api-key" if key == "header" else ""))  # type: ignore[arg-type]
        cases[f"configured, key {key}"] = lambda route=route: proxy._rate_limited(snap, route, scope)  # type: ignore[arg-type]
    print(f"python {sys.version.split()[0]}, median of {args.repeat} x {args.number} calls, ns per request")
    for label, fn in cases.items():
        runs = timeit.repeat(fn, repeat=args.repeat, number=args.number)
        print(f"{label:32s} {statistics.median(runs) / args.number * 1e9:8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
