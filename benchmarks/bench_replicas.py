"""Two replicas on one PostgreSQL state store: how long a transition takes, and how long until the other routes it.

    python benchmarks/bench_replicas.py [--rounds 30]

Runs a throwaway PostgreSQL cluster (tests/postgres.py: Debian's binaries, initdb into a temporary
folder) and two facades in one process, each with its own listener and admin port, in front of the
same two backends. Each round posts ``next`` or ``rollback`` (alternately, between a 100 % and a 0 %
step) to replica A and measures:

- ``commit``: the admin API's answer on A (gates, one transaction, the swap on A);
- ``follow``: from that answer until a request through replica B is served by the new side
  (B polled every 2 ms): the NOTIFY, B's re-read and its swap.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx

from tests.backends import EchoApp
from tests.harness import run_facade
from tests.postgres import PostgresCluster
from tests.servers import serve_app

PLAN = """\
    name: shop
    route: catalog
    from: monolith
    to: catalog
    steps:
      - weight: 100
      - {weight: 0, rollback: true}
    """


def config(old: str, new: str, url: str) -> str:
    return textwrap.dedent(f"""\
        listen: 127.0.0.1:0
        admin: {{listen: 127.0.0.1:0, token: t}}
        state_dir: state
        state_store: {url}
        services:
          monolith: {{endpoints: [{old}]}}
          catalog: {{endpoints: [{new}]}}
        routes:
          - name: catalog
            match: {{path: {{prefix: /catalog}}}}
            backend: monolith
        migrations: migrations/
        """)


async def run(rounds: int) -> None:
    cluster = await asyncio.to_thread(PostgresCluster.create)
    try:
        url = await asyncio.to_thread(cluster.new_database)
        with tempfile.TemporaryDirectory() as tmp:
            async with serve_app(EchoApp("monolith")) as old, serve_app(EchoApp("catalog")) as new:
                folders = []
                for name in ("a", "b"):
                    folder = Path(tmp) / name
                    (folder / "migrations").mkdir(parents=True)
                    (folder / "migrations" / "001.yaml").write_text(textwrap.dedent(PLAN))
                    folders.append(folder)
                text = config(old, new, url)
                async with (
                    run_facade(folders[0], text, features=True) as a,
                    run_facade(folders[1], text, features=True) as b,
                    httpx.AsyncClient(base_url=a.admin_url, headers={"authorization": "Bearer t"}) as admin,
                    httpx.AsyncClient(base_url=b.url) as through_b,
                ):
                    commits, follows = [], []
                    actions = ["start"] + ["next", "rollback"] * rounds
                    for i, action in enumerate(actions[: rounds + 1]):
                        want = "catalog" if action in ("start", "rollback") else "monolith"
                        started = time.perf_counter()
                        r = await admin.post("/migrations/shop/" + action, json={"actor": "bench"})
                        answered = time.perf_counter()
                        assert r.status_code == 200, r.text
                        while (await through_b.get("/catalog/x")).headers["x-served-by"] != want:
                            await asyncio.sleep(0.002)
                            if time.perf_counter() - answered > 10:
                                raise SystemExit("replica B did not follow within 10 s")
                        followed = time.perf_counter()
                        if i:  # the first round also connects every pool: left out
                            commits.append((answered - started) * 1000)
                            follows.append((followed - answered) * 1000)
        print(f"{rounds} transitions on replica A, followed by replica B (ms):")
        for name, values in (("commit", commits), ("follow", follows)):
            q = statistics.quantiles(values, n=20)
            print(f"  {name:7} p50 {statistics.median(values):6.1f}  p95 {q[18]:6.1f}  max {max(values):6.1f}")
    finally:
        await asyncio.to_thread(cluster.destroy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    asyncio.run(run(parser.parse_args().rounds))


if __name__ == "__main__":
    main()
