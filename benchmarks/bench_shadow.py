"""Shadow traffic on vs off: what mirroring every request costs the primary path.

    python benchmarks/bench_shadow.py [--duration 5] [--connections 1,32] [--repeat 1] [--candidate same|separate]
        [--sender process|inline] [--json OUT]

One backend (benchmarks/backend.py under uvicorn + httptools + uvloop); the facade runs in its
own process with the route in a migration split whose primary and candidate are two services
pointing at that same backend (unless ``--candidate separate``), so the only difference between the
modes is the mirroring:

- ``off``: the split with ``shadow_percent: 0`` (the same decision path, no copies);
- ``on``: ``shadow_percent: 100``, diffing, no noise learning (one copy per request);
- ``on+noise``: ``shadow_percent: 100`` with Diffy noise learning (two copies per request).

Every mode's facade runs for the whole benchmark and the modes take turns within each repeat
(off, on, ... for c=1, then again), so that a neighbour's load on a shared machine falls on all
modes alike: quote the ratios to ``off``, not the absolute figures. ``--candidate separate`` puts the
candidate on a second backend process (as in a real migration), so that the copies do not queue in
front of the primary's requests inside one single-threaded backend.

Load comes from wrk when present, else a bounded aiohttp client (bench_proxy's). Prints primary
req/s, p50 and p99 side by side, the facade process's CPU µs per primary request (steadier than
req/s on a shared box), and the sender's counters (compared / dropped): at saturating load the
bounded queue fills and copies are dropped, by design, instead of slowing the primary. The CPU a
mirrored copy costs the facade's process is (CPU per request on - CPU per request off) / copies per
request.

``--sender process`` (the default, as under ``facade serve``) sends the copies from the shadow sender
process (``shadow.sender``, docs/shadow.md): its CPU is measured apart (``child us/copy``: what a copy
really costs, on the other core) and ``via child`` is the share of copies it took; ``--sender inline``
sends them from the facade's event loop, as before.
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
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_proxy import cpu_seconds, free_port, process, run_python_load, run_wrk

MODES = ("off", "on", "on+noise")


def facade_conf(tmp: Path, port: int, admin: int, backend: int, candidate: int | None = None) -> Path:
    conf = tmp / f"facade-shadow-{port}.yaml"
    conf.write_text(f"""
listen: 127.0.0.1:{port}
admin: {{listen: 127.0.0.1:{admin}}}
services:
  primary: {{endpoints: [http://127.0.0.1:{backend}]}}
  candidate: {{endpoints: [http://127.0.0.1:{candidate or backend}]}}
routes:
  - name: all
    match: {{path: {{prefix: /}}}}
    backend: primary
""")
    return conf


async def serve(config_path: str, mode: str, sender: str) -> None:
    """The facade under test, in this process: shadow feature attached (unless off), split in force."""
    from facade.config import load_config
    from facade.runtime import FacadeRuntime
    from facade.shadow import ShadowFeature
    from facade.split import Split

    runtime = FacadeRuntime(load_config(config_path), config_path=config_path, watch_interval=None)
    ShadowFeature.attach(runtime, sender=sender, learn_noise=mode == "on+noise")
    runtime.install_signal_handlers(asyncio.get_running_loop())
    await runtime.start()
    percent = 0.0 if mode == "off" else 100.0
    split = Split(primary="primary", candidate="candidate", shadow_percent=percent, step_label="0:shadow")
    runtime.swap(splits={"all": split})
    await runtime.wait_stopped()


def wait_sender_process(admin_port: int, url: str, load: Any, timeout: float = 30.0) -> None:
    """Mirror a little until the shadow sender process is ready (copies go inline while it starts)."""
    deadline = time.monotonic() + timeout
    while not (shadow_stats(admin_port).get("process") or {}).get("ready"):
        if time.monotonic() > deadline:
            raise SystemExit("the shadow sender process did not start (see the facade's log)")
        load(url, 1, 1.0)


def shadow_stats(admin_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/shadow", timeout=5) as response:
        data: dict[str, Any] = json.load(response)
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default 5)")
    parser.add_argument("--connections", default="1,32", help="comma list (default 1,32)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration; the median is kept")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    parser.add_argument("--candidate", choices=("same", "separate"), default="same",
                        help="the candidate service on the primary's backend process (default) or a second one")
    parser.add_argument("--sender", choices=("process", "inline"), default="process",
                        help="where copies leave from (shadow.sender; default process, as under facade serve)")
    parser.add_argument("--pin", action="store_true",
                        help="with --candidate separate: the primary's path (wrk, the facades, the primary's backend) "
                             "on the first CPU, the copies' path (the sender process, the candidate's backend) on the "
                             "second, as on a machine with a core to spare for the copies")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--serve", nargs=3, metavar=("CONFIG", "MODE", "SENDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(serve(args.serve[0], args.serve[1], args.serve[2]))
        return 0

    conns = [int(c) for c in args.connections.split(",")]
    if args.pin:
        if args.candidate != "separate" or len(os.sched_getaffinity(0)) < 2:
            parser.error("--pin needs --candidate separate and two CPUs")
        cpus = sorted(os.sched_getaffinity(0))
        primary_cpu, copy_cpu = {cpus[0]}, {cpus[1]}
        os.sched_setaffinity(0, primary_cpu)  # inherited by wrk, the backends and the facades started below
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    load = run_wrk if shutil.which("wrk") else run_python_load
    tmp = Path(tempfile.mkdtemp(prefix="facade-bench-shadow-"))

    def backend_argv(port: int) -> list[str]:
        return [sys.executable, "-m", "uvicorn", "benchmarks.backend:app", "--port", str(port),
                "--http", "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning"]

    results: dict[str, dict[int, dict[str, float]]] = {}
    counters: dict[str, dict[str, Any]] = {}
    runs: dict[tuple[str, int], list[dict[str, float]]] = {(m, c): [] for m in modes for c in conns}
    with contextlib.ExitStack() as stack:
        backend = free_port()
        stack.enter_context(process(backend_argv(backend), backend, tmp / "backend.log"))
        candidate = None
        if args.candidate == "separate":
            candidate = free_port()
            candidate_proc = stack.enter_context(process(backend_argv(candidate), candidate, tmp / "candidate.log"))
            if args.pin:
                os.sched_setaffinity(candidate_proc.pid, copy_cpu)
        facades: dict[str, tuple[Any, int, str]] = {}
        for mode in modes:
            port, admin = free_port(), free_port()
            conf = facade_conf(tmp, port, admin, backend, candidate)
            argv = [sys.executable, str(Path(__file__).resolve()), "--serve", str(conf), mode, args.sender]
            proc = stack.enter_context(process(argv, port, tmp / f"facade-{mode}.log"))
            url = f"http://127.0.0.1:{port}/catalog/products/1"
            load(url, 8, 1.0)  # warm-up: pools and connections
            if mode != "off" and args.sender == "process":
                wait_sender_process(admin, url, load)  # it starts on the first copy
                if args.pin:
                    os.sched_setaffinity(shadow_stats(admin)["process"]["pid"], copy_cpu)
            facades[mode] = (proc, admin, url)
        for _ in range(args.repeat):
            for c in conns:
                for mode in modes:
                    proc, admin, url = facades[mode]
                    stats0 = shadow_stats(admin)
                    child = (stats0.get("process") or {}).get("pid")  # the sender process: its CPU apart
                    cpu0, child0 = cpu_seconds(proc.pid, children=False), cpu_seconds(child, children=False)
                    run = load(url, c, args.duration)
                    time.sleep(0.5)  # copies still queued finish (and cost their CPU) before the reading
                    cpu1, child1 = cpu_seconds(proc.pid, children=False), cpu_seconds(child, children=False)
                    stats1 = shadow_stats(admin)
                    served = max(run["rps"] * args.duration, 1.0)
                    copies = stats1["totals"]["mirrored"] - stats0["totals"]["mirrored"]
                    run["cpu_us"] = (cpu1 - cpu0) / served * 1e6
                    run["copies_per_request"] = copies / served
                    run["child_us_per_copy"] = (child1 - child0) / copies * 1e6 if copies and child else 0.0
                    run["process_share"] = ((stats1["copies"]["process"] - stats0["copies"]["process"]) / copies
                                            if copies else 0.0)
                    runs[(mode, c)].append(run)
                    print(f"  {mode:9s} c={c:<3d} {run['rps']:9.0f} req/s  p50 {run['p50_ms']:.3f} ms  "
                          f"p99 {run['p99_ms']:.3f} ms  cpu {run['cpu_us']:.0f} us/req  "
                          f"child {run['child_us_per_copy']:.0f} us/copy", file=sys.stderr, flush=True)
        for mode in modes:
            results[mode] = {c: {k: statistics.median(r[k] for r in runs[(mode, c)]) for k in runs[(mode, c)][0]}
                             for c in conns}
            counters[mode] = shadow_stats(facades[mode][1])["totals"]

    print()
    print(f"{len(modes)} modes x {args.repeat} run(s) x {args.duration:g}s each, median; load: "
          f"{'wrk -t1' if load is run_wrk else 'python aiohttp'}; candidate on the {args.candidate} backend process, "
          "modes interleaved" + ("; pinned: primary path on one CPU, copies' path on the other" if args.pin else ""))
    print(f"copies from: {args.sender}; cpu us/req and us/copy: the facade process alone; child us/copy: the "
          "sender process's CPU per copy; via child: share of the copies handed to it")
    print(f"{'mode':9s} {'conns':>5s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'vs off':>7s} "
          f"{'p50/off':>7s} {'cpu us/req':>10s} {'us/copy':>8s} {'child us/copy':>13s} {'via child':>9s}")
    for mode, by_c in results.items():
        for c, r in by_c.items():
            base = results.get("off", {}).get(c)
            ratio = f"{r['rps'] / base['rps']:.2f}x" if base else ""
            p50 = f"{r['p50_ms'] / base['p50_ms']:.2f}x" if base else ""
            per_copy = ""
            if base and r["copies_per_request"] > 0:
                per_copy = f"{(r['cpu_us'] - base['cpu_us']) / r['copies_per_request']:.0f}"
            print(f"{mode:9s} {c:5d} {r['rps']:9.0f} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {ratio:>7s} "
                  f"{p50:>7s} {r['cpu_us']:10.0f} {per_copy:>8s} {r['child_us_per_copy']:13.0f} "
                  f"{r['process_share']:9.0%}")
    print()
    print("shadow sender totals per mode (whole run incl. warm-up):")
    for mode, totals in counters.items():
        print(f"  {mode:9s} mirrored {totals['mirrored']:>8d}  compared {totals['compared']:>8d}  "
              f"dropped {totals['dropped']:>8d}  errors {totals['error'] + totals['timeout'] + totals['unavailable']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "shadow": counters}, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
