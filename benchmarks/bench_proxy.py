"""Side-by-side proxy benchmark: direct vs facade vs nginx vs haproxy, one machine, one run.

    python benchmarks/bench_proxy.py [--duration 10] [--connections 1,32] [--repeat 3] [--json OUT]

Contenders: direct (no proxy), facade, facade-rl (the facade with a route rate limit that never
refuses: the cost of the check), facade-w2 (``--workers 2``: a supervisor and two worker
processes, docs/workers.md; its CPU counts all three, and ``sup us/req`` is the supervisor's share:
telemetry aggregation and control plane), facade-w2-shared (the same, accepting from one
inherited socket instead of one SO_REUSEPORT socket per worker), minimal (benchmarks/minimal_proxy.py: raw ASGI + aiohttp
with none of the facade's work: the floor of the chosen stack), nginx, haproxy.
Every contender proxies to the same backend (uvicorn + httptools + uvloop, a raw ASGI app
answering a small body; ``--backend nginx``: nginx returning the same body, which leaves more of the
shared cores to the contenders). Every contender is up for the whole run and they take turns within each
repeat, so a neighbour's load falls on all of them alike. Load comes from wrk (Debian package) when present, else from a
bounded aiohttp client. nginx and haproxy run only when installed; each runs ONE worker
process, like the facade, so the comparison is per core. Each configuration runs ``--repeat``
times and the median is reported, because this machine is shared and noisy.

Prints a table (req/s, p50, p99 and CPU µs per request of the proxy's processes, per contender
and connection count) and the ratios the targets are stated in: facade throughput / nginx at 32 connections, and facade p50 - direct
p50 at 1 connection.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


@contextlib.contextmanager
def process(argv: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        wait_port(port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def cpu_seconds(pid: int | None, *, children: bool = True) -> float:
    """CPU time (user + system) of a process and its children so far; 0.0 without psutil.

    CPU per request is steadier than req/s on a shared box: it does not depend on who else got the
    cores during the run.
    """
    if pid is None:
        return 0.0
    try:
        import psutil
    except ImportError:
        return 0.0
    try:
        procs = [psutil.Process(pid)]
        if children:
            procs += procs[0].children(recursive=True)  # nginx: master + worker; facade: supervisor + workers
        return sum(t.user + t.system for t in (p.cpu_times() for p in procs))
    except psutil.Error:
        return 0.0


def measured(load: Any, pid: int | None, url: str, connections: int, duration: float) -> dict[str, float]:
    before, before_own = cpu_seconds(pid), cpu_seconds(pid, children=False)
    r = load(url, connections, duration)
    spent, own = cpu_seconds(pid) - before, cpu_seconds(pid, children=False) - before_own
    r["cpu_us"] = spent / (r["rps"] * duration) * 1e6 if r["rps"] and spent else 0.0
    # The main process alone: with workers, the supervisor (what aggregating telemetry costs).
    r["own_cpu_us"] = own / (r["rps"] * duration) * 1e6 if r["rps"] and own else 0.0
    return r


def run_wrk(url: str, connections: int, duration: float) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.MULTILINE))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p50_ms": _ms(lat["50"]),
        "p99_ms": _ms(lat["99"]),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 1.0 if socket_errors else 0.0,
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_python_load(url: str, connections: int, duration: float) -> dict[str, float]:
    """Fallback load generator when wrk is absent (slower: it measures the client as much as the proxy)."""
    import asyncio

    import aiohttp

    async def main() -> dict[str, float]:
        latencies: list[float] = []
        deadline = time.monotonic() + duration
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
            async def worker() -> None:
                while time.monotonic() < deadline:
                    t0 = time.perf_counter()
                    async with session.get(url) as r:
                        await r.read()
                    latencies.append((time.perf_counter() - t0) * 1000)
            await asyncio.gather(*(worker() for _ in range(connections)))
        latencies.sort()
        return {"rps": len(latencies) / duration, "p50_ms": latencies[len(latencies) // 2],
                "p99_ms": latencies[int(len(latencies) * 0.99)], "non_2xx": 0.0, "socket_errors": 0.0}

    return asyncio.run(main())


def nginx_conf(tmp: Path, port: int, backend: int) -> Path:
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
""")
    return conf


def nginx_backend_conf(tmp: Path, port: int) -> Path:
    """nginx as the backend: one worker answering the Python backend's body, keep-alive without a request cap."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.backend import BODY

    conf = tmp / "nginx-backend.conf"
    (tmp / "backend-nginx").mkdir(exist_ok=True)
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/backend-nginx.pid;
error_log {tmp}/backend-nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path {tmp}/backend-nginx/body; proxy_temp_path {tmp}/backend-nginx/proxy;
    fastcgi_temp_path {tmp}/backend-nginx/fcgi; uwsgi_temp_path {tmp}/backend-nginx/uwsgi;
    scgi_temp_path {tmp}/backend-nginx/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type application/json; return 200 '{BODY.decode()}'; }}
    }}
}}
""")
    return conf


def haproxy_conf(tmp: Path, port: int, backend: int) -> Path:
    conf = tmp / "haproxy.cfg"
    conf.write_text(f"""
global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    http-reuse always
    option forwardfor
    server s1 127.0.0.1:{backend}
""")
    return conf


def facade_conf(tmp: Path, port: int, admin: int, backend: int, name: str = "facade.yaml", route_extra: str = "") -> Path:
    conf = tmp / name
    conf.write_text(f"""
listen: 127.0.0.1:{port}
admin: {{listen: 127.0.0.1:{admin}}}
services:
  backend: {{endpoints: [http://127.0.0.1:{backend}]}}
routes:
  - name: all
    match: {{path: {{prefix: /}}}}
    backend: backend
{route_extra}""")
    return conf


def worker_spread(admin_port: int) -> list[int]:
    """Requests each worker served so far (its telemetry, as the supervisor absorbed it): how evenly
    the kernel spreads connections over the workers' SO_REUSEPORT sockets."""
    import urllib.request

    time.sleep(1.5)  # the last telemetry batch (every 0.5 s)
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/workers", timeout=5) as answer:
        return [w["requests"] for w in json.loads(answer.read())["workers"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement (default 8)")
    parser.add_argument("--connections", default="1,32", help="comma list (default 1,32)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration; the median is kept")
    parser.add_argument("--only", default="", help="comma list of contenders (direct,facade,facade-rl,facade-w2,facade-w2-shared,minimal,lean,nginx,haproxy)")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--backend", choices=("uvicorn", "nginx"), default="uvicorn",
                        help="what answers behind every contender: the Python backend (default) or nginx returning "
                             "the same body (a backend that takes less of the shared cores)")
    args = parser.parse_args()
    conns = [int(c) for c in args.connections.split(",")]
    load = run_wrk if shutil.which("wrk") else run_python_load
    if load is run_python_load:
        print("wrk not found: using the Python load generator (numbers are lower and noisier)", file=sys.stderr)

    tmp = Path(tempfile.mkdtemp(prefix="facade-bench-"))
    backend = free_port()
    backend_argv = [sys.executable, "-m", "uvicorn", "benchmarks.backend:app", "--port", str(backend),
                    "--http", "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning"]
    if args.backend == "nginx":
        if not shutil.which("nginx"):
            parser.error("--backend nginx: nginx is not installed (apt-get install nginx)")
        backend_argv = ["nginx", "-c", str(nginx_backend_conf(tmp, backend)), "-p", str(tmp)]
    contenders: dict[str, tuple[list[str], int]] = {"direct": ([], backend)}
    fport, aport = free_port(), free_port()
    contenders["facade"] = ([sys.executable, "-m", "facade", "serve", "-c", str(facade_conf(tmp, fport, aport, backend)),
                             "--no-watch", "--log-level", "warning"], fport)
    rport, raport = free_port(), free_port()
    # The same facade with a per-client rate limit too high to refuse anything: what the check costs.
    limit = "    rate_limit: {requests_per_unit: 1000000000, key: client_ip}\n"
    contenders["facade-rl"] = ([sys.executable, "-m", "facade", "serve", "-c",
                                str(facade_conf(tmp, rport, raport, backend, name="facade-rl.yaml", route_extra=limit)),
                                "--no-watch", "--log-level", "warning"], rport)
    wport, waport = free_port(), free_port()
    contenders["facade-w2"] = ([sys.executable, "-m", "facade", "serve", "-c",
                                str(facade_conf(tmp, wport, waport, backend, name="facade-w2.yaml")),
                                "--no-watch", "--log-level", "warning", "--workers", "2"], wport)
    sport, saport = free_port(), free_port()
    contenders["facade-w2-shared"] = ([sys.executable, "-m", "facade", "serve", "-c",
                                       str(facade_conf(tmp, sport, saport, backend, name="facade-w2s.yaml")),
                                       "--no-watch", "--log-level", "warning", "--workers", "2"], sport)
    mport = free_port()
    contenders["minimal"] = ([sys.executable, "-m", "uvicorn", "benchmarks.minimal_proxy:app", "--port", str(mport),
                              "--http", "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
                              "--no-server-header", "--no-date-header"], mport)
    lport = free_port()
    contenders["lean"] = ([sys.executable, "-m", "uvicorn", "benchmarks.lean_proxy:app", "--port", str(lport),
                           "--http", "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
                           "--no-server-header", "--no-date-header"], lport)
    if shutil.which("nginx"):
        nport = free_port()
        contenders["nginx"] = (["nginx", "-c", str(nginx_conf(tmp, nport, backend)), "-p", str(tmp)], nport)
    if shutil.which("haproxy"):
        hport = free_port()
        contenders["haproxy"] = (["haproxy", "-f", str(haproxy_conf(tmp, hport, backend))], hport)
    if args.only:
        wanted = set(args.only.split(","))
        contenders = {k: v for k, v in contenders.items() if k in wanted}

    results: dict[str, dict[int, dict[str, float]]] = {}
    spreads: dict[str, list[int]] = {}
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        backend_proc = stack.enter_context(process(backend_argv, backend, tmp / "backend.log"))
        procs: dict[str, subprocess.Popen[bytes]] = {}
        for name, (argv, port) in contenders.items():
            env = dict(os.environ, BACKEND=f"http://127.0.0.1:{backend}")
            if name == "facade-w2-shared":  # one inherited listening socket instead of SO_REUSEPORT
                env["FACADE_WORKERS_SOCKET"] = "shared"
            procs[name] = stack.enter_context(process(argv, port, tmp / f"{name}.log", env)) if argv else backend_proc
            load(f"http://127.0.0.1:{port}/bench", 8, 1.0)  # warm-up: pools, caches and connections
        # Every contender stays up for the whole run and they take turns within each repeat, so that a
        # neighbour's load on a shared machine falls on all of them alike: the ratios are what to quote.
        for _ in range(args.repeat):
            for c in conns:
                for name, (_argv, port) in contenders.items():
                    r = measured(load, procs[name].pid, f"http://127.0.0.1:{port}/bench", c, args.duration)
                    runs.setdefault((name, c), []).append(r)
                    print(f"  {name:8s} c={c:<3d} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms"
                          f"  cpu {r['cpu_us']:.0f} us/req (main process {r['own_cpu_us']:.1f})",
                          file=sys.stderr, flush=True)
        for (name, c), rs in runs.items():
            results.setdefault(name, {})[c] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        for name in ("facade-w2", "facade-w2-shared"):
            if name in contenders:
                spreads[name] = worker_spread(waport if name == "facade-w2" else saport)

    print()
    print(f"machine: {os.cpu_count()} cores; {args.repeat} runs x {args.duration:g}s each, median; load: "
          f"{'wrk -t1' if load is run_wrk else 'python aiohttp'}")
    print(f"{'contender':10s} {'conns':>5s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'vs direct':>9s} {'cpu us/req':>10s}")
    for name, by_c in results.items():
        for c, r in by_c.items():
            base = results.get("direct", {}).get(c, {}).get("rps")
            ratio = f"{r['rps'] / base:.2f}x" if base else ""
            print(f"{name:10s} {c:5d} {r['rps']:9.0f} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {ratio:>9s} {r['cpu_us']:10.0f}")
    print("(cpu us/req: the contender's own processes; for direct, the backend's)")
    print()
    f, n, d = results.get("facade", {}), results.get("nginx", {}), results.get("direct", {})
    if f and n and 32 in f and 32 in n:
        print(f"facade / nginx throughput at 32 connections: {f[32]['rps'] / n[32]['rps']:.2f}x (target >= 0.30x)")
    if f and d and 1 in f and 1 in d:
        print(f"facade p50 added over direct at 1 connection: {f[1]['p50_ms'] - d[1]['p50_ms']:.3f} ms (target <= 0.35 ms)")
    w = results.get("facade-w2", {})
    for name, spread in spreads.items():
        print(f"{name} requests per worker: {spread}")
    for c in sorted(set(f) & set(w)):
        print(f"facade-w2 / facade at {c} connections: {w[c]['rps'] / f[c]['rps']:.2f}x throughput (target >= 1.4x), "
              f"cpu {w[c]['cpu_us']:.0f} vs {f[c]['cpu_us']:.0f} us/req ({w[c]['cpu_us'] / f[c]['cpu_us'] - 1:+.0%}), "
              f"supervisor {w[c]['own_cpu_us']:.1f} us/req ({w[c]['own_cpu_us'] / w[c]['cpu_us']:.1%} of the CPU)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
