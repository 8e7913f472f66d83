"""Microbenchmark of RouteTable.resolve at 10, 1,000 and 10,000 routes.

    python benchmarks/bench_routing.py [--repeat 7] [--sizes 10,1000,10000]

Two table shapes, both a realistic mix (exact-host and wildcard-host routes, segment prefixes,
exact health paths, a few regexes, header conditions, a fallback per host):

- ``many-hosts``: routes spread over one host per ~50 routes, like a multi-tenant gateway;
- ``one-host``: every route on the same host, so the path index alone separates them.

For each table it times ``resolve()`` for a hit on the last specific route (the worst case for
a linear scan), a hit that falls through to the fallback at the end of the table, a hit
behind a header condition, and a miss (a host nothing serves). Each figure is the median of
``--repeat`` timeit runs, in µs per call; the last table prints the ratio of the largest
size to the smallest, the number the routing module is judged by (target: within 3x), and
the time ``RouteTable.compile`` took (one run; a reload pays it once).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facade.config import Route, RouteMatch, StringMatch, WeightedBackend
from facade.routing import RouteTable

ROUTES_PER_HOST = 50
# The mix of specific routes, cycled; every 50th is a host-scoped regex instead.
KINDS = ["prefix", "prefix", "exact", "prefix", "canary", "prefix-slash", "prefix", "wildcard", "prefix", "exact"]
HEADERS = [
    (b"host", b"t0.shop.local"),
    (b"user-agent", b"bench/1.0"),
    (b"accept", b"*/*"),
    (b"x-request-id", b"7d0c6b8e"),
    (b"cookie", b"session_id=abc"),
]

Request = tuple[str, str, str, list[tuple[bytes, bytes]], bytes]


def _route(i: int, match: RouteMatch) -> Route:
    return Route(name=f"r{i}", matches=(match,), backends=(WeightedBackend("svc"),))


def build_routes(n: int, *, one_host: bool) -> tuple[list[Route], dict[str, Request]]:
    """``n`` routes and the requests to time against them."""
    hosts = 1 if one_host else max(1, n // ROUTES_PER_HOST)
    routes: list[Route] = []
    # A few any-host regex routes at the top, as teams write for legacy URLs.
    for k in range(3):
        routes.append(_route(len(routes), RouteMatch(path_kind="regex", path=rf"/legacy{k}/item-\d+\.html")))
    kinds: list[str] = []
    i = 0
    while len(routes) < n - hosts:
        host = f"t{i % hosts}.shop.local"
        kind = "regex" if i % 50 == 49 else KINDS[i % len(KINDS)]
        if kind == "prefix":
            match = RouteMatch(hosts=(host,), path=f"/svc{i}/api")
        elif kind == "exact":
            match = RouteMatch(hosts=(host,), path_kind="exact", path=f"/svc{i}/healthz")
        elif kind == "canary":
            canary = (("x-canary", StringMatch("exact", "1")),)
            match = RouteMatch(hosts=(host,), path=f"/svc{i}", headers=canary)
        elif kind == "wildcard":
            match = RouteMatch(hosts=(f"*.tenant{i % hosts}.example",), path=f"/w{i}", methods=("GET", "HEAD"))
        elif kind == "regex":
            match = RouteMatch(hosts=(host,), path_kind="regex", path=rf"/svc{i}/orders/\d+")
        else:
            match = RouteMatch(hosts=(host,), path=f"/svc{i}/")
        routes.append(_route(len(routes), match))
        kinds.append(kind)
        i += 1
    last_specific = max(j for j, k in enumerate(kinds) if k == "prefix")
    last_host = f"t{last_specific % hosts}.shop.local"
    canary_i = max(j for j, k in enumerate(kinds) if k == "canary")
    # One fallback per host, at the end: the monolith.
    for h in range(hosts):
        routes.append(_route(len(routes), RouteMatch(hosts=(f"t{h}.shop.local",), path="/")))
    requests: dict[str, Request] = {
        "last-prefix": (last_host, f"/svc{last_specific}/api/items/42", "GET", HEADERS, b"page=2"),
        "fallback": (last_host, "/account/orders", "GET", HEADERS, b""),
        "header": (
            f"t{canary_i % hosts}.shop.local",
            f"/svc{canary_i}/x",
            "GET",
            [*HEADERS, (b"x-canary", b"1")],
            b"",
        ),
        "miss": ("unknown.example", "/svc1/api", "GET", HEADERS, b""),
    }
    return routes, requests


def time_resolve(table: RouteTable, request: Request, *, repeat: int, number: int) -> float:
    host, path, method, headers, query = request
    resolve = table.resolve

    def once() -> object:
        return resolve(host=host, path=path, method=method, headers=headers, query_string=query)

    runs = timeit.Timer(once).repeat(repeat=repeat, number=number)
    return statistics.median(runs) / number * 1e6


def check(table: RouteTable, requests: dict[str, Request]) -> None:
    """The requests must resolve as intended, or the figures time the wrong thing."""
    for label, (host, path, method, headers, query) in requests.items():
        found = table.resolve(host=host, path=path, method=method, headers=headers, query_string=query)
        if label == "miss":
            assert found is None, found
            continue
        assert found is not None, label
        if label == "fallback":
            assert found.route.matches[0].path == "/", found
        elif label == "header":
            assert found.route.matches[0].headers, found
        else:
            assert found.route.matches[0].path.startswith("/svc"), found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20000, help="calls per timeit run")
    parser.add_argument("--sizes", default="10,1000,10000")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    shapes: dict[str, Callable[[int], tuple[list[Route], dict[str, Request]]]] = {
        "many-hosts": lambda n: build_routes(n, one_host=False),
        "one-host": lambda n: build_routes(n, one_host=True),
    }
    print(f"python {sys.version.split()[0]}, median of {args.repeat} x {args.number} calls, µs per resolve()")
    for shape, build in shapes.items():
        figures: dict[int, dict[str, float]] = {}
        compile_ms: dict[int, float] = {}
        for n in sizes:
            routes, requests = build(n)
            started = time.perf_counter()
            table = RouteTable.compile(routes)
            compile_ms[n] = (time.perf_counter() - started) * 1e3
            check(table, requests)
            figures[n] = {
                label: time_resolve(table, request, repeat=args.repeat, number=args.number)
                for label, request in requests.items()
            }
        labels = list(next(iter(figures.values())))
        print(f"\n{shape}")
        print(f"{'routes':>8} " + " ".join(f"{label:>12}" for label in labels) + f" {'compile ms':>12}")
        for n, row in figures.items():
            print(f"{n:>8} " + " ".join(f"{row[label]:>12.2f}" for label in labels) + f" {compile_ms[n]:>12.1f}")
        small, large = min(sizes), max(sizes)
        ratios = " ".join(f"{figures[large][label] / figures[small][label]:>12.2f}" for label in labels)
        print(f"{f'{large}/{small}':>8} {ratios}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
