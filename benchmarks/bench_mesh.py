"""Mesh benchmark: facade -> sidecar (mTLS, policy, XFCC) -> app versus facade -> app in plain HTTP.

    python benchmarks/bench_mesh.py [--duration 5] [--connections 1,32] [--repeat 1] [--json OUT]

Processes (each its own, like a deployment): the backend (uvicorn + httptools + uvloop, a raw
ASGI app with a small body, ``benchmarks.backend``); a plain facade (``facade serve``) routing
to it; a mesh facade (the same runtime with ``mesh.controlplane.MeshFeature`` attached: control
plane + edge identity) routing to a sidecar over mTLS; the sidecar (``facade mesh sidecar``,
STRICT, one DENY policy evaluated per request) in front of the same backend. Load comes from wrk
when present, else a bounded aiohttp client. Each configuration runs ``--repeat`` times and the
median is kept (the machine is shared). Prints req/s, p50 and p99 side by side and the ratios:
mesh / plain throughput and the p50 the sidecar hop adds.

``--serve-mesh-facade CONFIG`` is internal: it runs the mesh facade process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_proxy import free_port, process, run_python_load, run_wrk, wait_port

TD = "bench.local"
APP_ID = f"spiffe://{TD}/ns/default/sa/app"
ADMIN_TOKEN = "bench-admin-token"


def mesh_facade_conf(tmp: Path, port: int, admin: int, sidecar: int) -> Path:
    conf = tmp / "mesh-facade.yaml"
    conf.write_text(f"""
listen: 127.0.0.1:{port}
admin: {{listen: 127.0.0.1:{admin}, token: {ADMIN_TOKEN}}}
state_dir: {tmp}/state
services:
  app: {{endpoints: [https://127.0.0.1:{sidecar}], identity: "{APP_ID}"}}
routes:
  - {{name: all, match: {{path: {{prefix: /}}}}, backend: app}}
mesh:
  trust_domain: {TD}
  mode: STRICT
  policies:
    - name: deny-admin
      action: DENY
      rules: [{{to: [{{operation: {{paths: ["/admin", "/admin/*"]}}}}]}}]
""")
    return conf


def plain_facade_conf(tmp: Path, port: int, admin: int, backend: int) -> Path:
    conf = tmp / "plain-facade.yaml"
    conf.write_text(f"""
listen: 127.0.0.1:{port}
admin: {{listen: 127.0.0.1:{admin}}}
services:
  app: {{endpoints: [http://127.0.0.1:{backend}]}}
routes:
  - {{name: all, match: {{path: {{prefix: /}}}}, backend: app}}
""")
    return conf


def serve_mesh_facade(config_path: str) -> int:
    """The mesh facade process: FacadeRuntime + MeshFeature (what ``facade serve`` does once the lead wires it)."""
    import uvloop

    from facade.config import load_config
    from facade.mesh.controlplane import MeshFeature
    from facade.runtime import FacadeRuntime

    async def main() -> int:
        runtime = FacadeRuntime(load_config(config_path), config_path=config_path, watch_interval=None)
        MeshFeature.attach(runtime)
        runtime.install_signal_handlers(asyncio.get_running_loop())
        await runtime.start()
        print("ready", flush=True)
        await runtime.wait_stopped()
        return 0

    return int(uvloop.run(main()))


def bootstrap_token(admin: int) -> str:
    import httpx

    r = httpx.post(
        f"http://127.0.0.1:{admin}/mesh/tokens",
        json={"service": "app", "ttl": "10m"},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    r.raise_for_status()
    return str(r.json()["token"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default 5)")
    parser.add_argument("--connections", default="1,32", help="comma list (default 1,32)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration; the median is kept")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--serve-mesh-facade", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_mesh_facade:
        return serve_mesh_facade(args.serve_mesh_facade)
    conns = [int(c) for c in args.connections.split(",")]
    load = run_wrk if shutil.which("wrk") else run_python_load
    if load is run_python_load:
        print("wrk not found: using the Python load generator (numbers are lower and noisier)", file=sys.stderr)

    tmp = Path(tempfile.mkdtemp(prefix="facade-bench-mesh-"))
    backend = free_port()
    backend_argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.backend:app",
        "--port",
        str(backend),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    plain_port, plain_admin = free_port(), free_port()
    plain_argv = [
        sys.executable,
        "-m",
        "facade",
        "serve",
        "-c",
        str(plain_facade_conf(tmp, plain_port, plain_admin, backend)),
        "--no-watch",
        "--log-level",
        "warning",
    ]
    mesh_port, mesh_admin, sidecar_port = free_port(), free_port(), free_port()
    mesh_argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve-mesh-facade",
        str(mesh_facade_conf(tmp, mesh_port, mesh_admin, sidecar_port)),
    ]

    results: dict[str, dict[int, dict[str, float]]] = {}

    def measure(name: str, port: int) -> None:
        url = f"http://127.0.0.1:{port}/bench"
        load(url, 8, 1.0)  # warm-up: pools and TLS sessions established
        results[name] = {}
        for c in conns:
            runs = [load(url, c, args.duration) for _ in range(args.repeat)]
            results[name][c] = r = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
            print(
                f"  {name:6s} c={c:<3d} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms"
                f"  non-2xx {r['non_2xx']:.0f}",
                file=sys.stderr,
                flush=True,
            )

    with process(backend_argv, backend, tmp / "backend.log"):
        with process(plain_argv, plain_port, tmp / "plain.log"):
            measure("plain", plain_port)
        with process(mesh_argv, mesh_port, tmp / "mesh-facade.log"):
            wait_port(mesh_admin)
            sidecar_argv = [
                sys.executable,
                "-m",
                "facade",
                "mesh",
                "sidecar",
                "--service",
                "app",
                "--control-plane",
                f"http://127.0.0.1:{mesh_admin}",
                "--bootstrap-token",
                bootstrap_token(mesh_admin),
                "--inbound",
                f"127.0.0.1:{sidecar_port}",
                "--app",
                f"http://127.0.0.1:{backend}",
            ]
            with process(sidecar_argv, sidecar_port, tmp / "sidecar.log"):
                measure("mesh", mesh_port)

    print()
    print(
        f"machine: {os.cpu_count()} cores; {args.repeat} run(s) x {args.duration:g}s each, median; load: "
        f"{'wrk -t1' if load is run_wrk else 'python aiohttp'}"
    )
    print(f"{'path':32s} {'conns':>5s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}")
    labels = {"plain": "facade -> app (HTTP)", "mesh": "facade -> sidecar (mTLS) -> app"}
    for c in conns:
        for name in ("plain", "mesh"):
            r = results[name][c]
            print(f"{labels[name]:32s} {c:5d} {r['rps']:9.0f} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f}")
    print()
    for c in conns:
        p, m = results["plain"][c], results["mesh"][c]
        print(
            f"c={c}: mesh/plain throughput {m['rps'] / p['rps']:.2f}x; sidecar hop adds p50 "
            f"{m['p50_ms'] - p['p50_ms']:+.3f} ms, p99 {m['p99_ms'] - p['p99_ms']:+.3f} ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    with contextlib.suppress(OSError):
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
