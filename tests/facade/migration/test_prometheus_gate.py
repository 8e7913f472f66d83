"""The ``prometheus`` gate source against a real Prometheus (Debian's package) scraping the facade's /metrics.

Each test starts its own prometheus process: a temp config, TSDB in tmp, loopback port, 1 s scrapes.
Without the binary the tests skip (``.ci/run`` installs it in CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.facade.migration.stack import Stack, migration_stack
from tests.servers import free_ports

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus binary (apt-get install prometheus; "
                       ".ci/run installs it in CI)"),
]

CATALOG = 'route="catalog",backend="catalog"'
PLAN = """\
name: shop
route: catalog
from: monolith
to: catalog
steps:
  - weight: 50
    gates:
      prometheus:
        - {{name: served, url: "{url}", query: 'sum(http_server_requests_total{{{catalog}}})', min: 20}}
        - {{name: errors, url: "{url}", timeout: 2s, max: 0,
           query: 'sum(http_server_requests_total{{{catalog},status_class="5xx"}}) or vector(0)'}}
  - weight: 60
    gates:
      prometheus:
        - {{name: errors, url: "{url}", max: 0,
           query: 'sum(http_server_requests_total{{{catalog},status_class="5xx"}}) or vector(0)'}}
  - weight: 100
"""


def free_port() -> int:
    (port,) = free_ports(1)  # below the ephemeral range: see tests.servers.free_ports
    return port


@contextlib.asynccontextmanager
async def run_prometheus(tmp_path: Path, port: int, targets: list[str]) -> AsyncIterator[str]:
    assert PROMETHEUS is not None
    config = tmp_path / "prometheus.yml"
    listed = ", ".join(f'"{t}"' for t in targets)
    config.write_text(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n"
                      f"scrape_configs:\n  - job_name: facade\n    static_configs: [{{targets: [{listed}]}}]\n")
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "prometheus.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
            deadline = time.monotonic() + 30
            while True:
                assert process.returncode is None, (tmp_path / "prometheus.log").read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/-/ready")).status_code == 200:
                        break
                assert time.monotonic() < deadline, "prometheus did not become ready in 30 s"
                await asyncio.sleep(0.1)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.wait(), 10)
        log.close()


async def gates_when(s: Stack, wanted: dict[str, str], deadline: float = 30.0) -> dict[str, Any]:
    """Poll the status until the named gates have the wanted statuses (scrapes come every second)."""
    end = time.monotonic() + deadline
    while True:
        status = await s.status("shop", journal=0)
        results = {r["name"]: r for r in status["gates"]["results"]}
        if all(results.get(name, {}).get("status") == want for name, want in wanted.items()):
            return results
        assert time.monotonic() < end, f"gates never reached {wanted}: {results}"
        await asyncio.sleep(0.25)


async def traffic(s: Stack, n: int) -> None:
    for _ in range(n):
        await s.client.get("/catalog/item")


async def test_a_promql_gate_passes_and_fails_on_the_traffic_sent(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with migration_stack(tmp_path, PLAN.format(url=url, catalog=CATALOG)) as s:
        admin = urlsplit(s.runtime.admin_url).netloc
        assert (await s.act("shop", "start")).status_code == 200
        # Prometheus not running yet: unreachable is inconclusive, and `next` is refused, not failed.
        results = await gates_when(s, {"prometheus.served": "inconclusive", "prometheus.errors": "inconclusive"})
        assert "is unreachable" in results["prometheus.served"]["message"]
        refused = await s.act("shop", "next")
        assert refused.status_code == 409 and refused.json()["gates"]["status"] == "inconclusive"

        async with run_prometheus(tmp_path, port, [admin]):
            # Scraped, but the candidate served nothing yet: no series is inconclusive.
            await traffic(s, 1)
            await gates_when(s, {"prometheus.errors": "pass"})
            # Healthy traffic: about half of 100 requests land on catalog, over the min of 20.
            await traffic(s, 100)
            results = await gates_when(s, {"prometheus.served": "pass", "prometheus.errors": "pass"})
            assert results["prometheus.served"]["value"] >= 20 and results["prometheus.errors"]["value"] == 0
            moved = await s.act("shop", "next")
            assert moved.status_code == 200, moved.text
            journal = {r["name"]: r for r in moved.json()["journal"][-1]["gates"]["results"]}
            assert journal["prometheus.served"]["status"] == "pass"  # the values the move was made on

            # The candidate starts failing: the fleet-wide 5xx count breaks the next step's gate.
            s.new.fail = True
            await traffic(s, 40)
            results = await gates_when(s, {"prometheus.errors": "fail"})
            assert results["prometheus.errors"]["value"] > 0
            refused = await s.act("shop", "next")
            assert refused.status_code == 409 and refused.json()["gates"]["status"] == "fail"
            assert (await s.status("shop", journal=0))["step"] == 2


async def test_prometheus_scraping_two_facades_gives_a_fleet_wide_value(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    text = PLAN.format(url=url, catalog=CATALOG)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with migration_stack(tmp_path / "a", text) as a, migration_stack(tmp_path / "b", text) as b:
        targets = [urlsplit(x.runtime.admin_url).netloc for x in (a, b)]
        async with run_prometheus(tmp_path, port, targets):
            for stack in (a, b):
                assert (await stack.act("shop", "start")).status_code == 200
            # Neither instance alone sends 20 requests to catalog; the two together do.
            for stack in (a, b):
                for _ in range(200):  # bounded: at 50 % this takes about 24 requests
                    if stack.runtime.telemetry.side_stats("catalog", "catalog").requests >= 12:
                        break
                    await traffic(stack, 1)
            served_a = a.runtime.telemetry.side_stats("catalog", "catalog").requests
            served_b = b.runtime.telemetry.side_stats("catalog", "catalog").requests
            assert served_a == served_b == 12
            results = await gates_when(a, {"prometheus.served": "pass"})
            assert results["prometheus.served"]["value"] == served_a + served_b
            assert (await a.act("shop", "next")).status_code == 200  # instance a advances on the fleet's evidence
