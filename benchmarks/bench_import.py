"""How long ``facade import`` takes on large inputs: nginx configs with many servers and locations,
Istio files with many VirtualService routes.

    python benchmarks/bench_import.py [--sizes 100,1000,5000] [--repeat 3]

Each size is a number of locations (nginx: 10 per server, a mix of exact, prefix, ^~ and regex
locations) or of http routes (Istio: 10 per VirtualService, subsets and weighted destinations).
The figure is the median wall time of the whole import (parse, translate, emit, and the check with
the facade's own config loader) over ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facade.importers import check_emitted, emit, import_istio, import_nginx


def nginx_conf(locations: int) -> str:
    servers = []
    for s in range(max(1, locations // 10)):
        locs = [
            f"location = /s{s}/health {{ return 200 ok; }}",
            f"location / {{ proxy_pass http://app{s % 20}; }}",
            f"location /api/ {{ proxy_pass http://app{s % 20}/v2/; proxy_set_header X-Server s{s}; }}",
            f"location ^~ /static/ {{ proxy_pass http://app{(s + 1) % 20}; }}",
            f"location /static/big/ {{ proxy_pass http://app{(s + 2) % 20}; }}",
            r"location ~ \.php$ { proxy_pass http://app0; }",
            r"location ~* \.(png|jpg)$ { proxy_pass http://app1; }",
            "location /old/ { return 301 /new/; }",
            f"location /a{s} {{ proxy_pass http://app{s % 20}; }}",
            f"location /b{s}/ {{ proxy_pass http://app{s % 20}; }}",
        ]
        names = f"s{s}.example.test" + (f" *.w{s}.example.test" if s % 3 == 0 else "")
        servers.append(f"server {{ listen 80; server_name {names}; {' '.join(locs)} }}")
    upstreams = [f"upstream app{i} {{ server 10.0.{i}.1:8080 weight=2; server 10.0.{i}.2:8080; }}" for i in range(20)]
    return "http {\n" + "\n".join(upstreams + servers) + "\n}\n"


def istio_yaml(routes: int) -> str:
    service_entry = (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: app}\nspec:\n"
        "  hosts: [app.internal]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n"
        "  endpoints: [{address: 10.0.0.1, labels: {v: v1}}, {address: 10.0.0.2, labels: {v: v2}}]\n"
    )
    rule = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: app}\nspec:\n"
        "  host: app.internal\n  subsets: [{name: v1, labels: {v: v1}}, {name: v2, labels: {v: v2}}]\n"
    )
    docs = [service_entry, rule]
    for v in range(max(1, routes // 10)):
        http = []
        for r in range(10):
            http.append(
                f"  - name: r{r}\n    match: [{{uri: {{prefix: /p{r}/}}, headers: {{x-t: {{exact: '{r}'}}}}}}]\n"
                "    route:\n    - {destination: {host: app.internal, subset: v1}, weight: 90}\n"
                "    - {destination: {host: app.internal, subset: v2}, weight: 10}\n"
            )
        docs.append(
            f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs{v}}}\nspec:\n"
            f"  hosts: [h{v}.example.test]\n  http:\n" + "".join(http)
        )
    return "---\n".join(docs)


def one_import(kind: str, source: str, counted: list[int], tmp: str) -> None:
    imported = import_nginx(source) if kind == "nginx" else import_istio([source])
    assert not imported.errors, imported.errors[:3]
    problems = check_emitted(emit(imported, header="bench"), str(Path(tmp) / "facade.yaml"))
    assert not [p for p in problems if p.severity == "error"], problems[:3]
    counted.append(len(imported.routes))


def timed(run: Callable[[], None], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'input':<8} {'size':>6} {'routes':>7} {'seconds':>8}")
        for size in (int(s) for s in args.sizes.split(",")):
            conf = Path(tmp) / "nginx.conf"
            conf.write_text(nginx_conf(size))
            routes = Path(tmp) / "istio.yaml"
            routes.write_text(istio_yaml(size))
            for kind, source in (("nginx", str(conf)), ("istio", str(routes))):
                counted: list[int] = []
                seconds = timed(lambda k=kind, s=source, c=counted: one_import(k, s, c, tmp), args.repeat)
                print(f"{kind:<8} {size:>6} {counted[-1]:>7} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
