"""Take docs/img/dashboard.png: the dashboard during a migration, in headless Chromium.

    PYTHONPATH=. python3 docs/dashboard_screenshot.py [docs/img/dashboard.png]

Runs a facade in-process with a monolith and a carved-out catalog (the test suite's helpers), starts
a migration (shadow, then 25 %), sends traffic for about half a minute so the charts, gates and diff
samples have data, and screenshots the whole page. Needs Debian's chromium and chromium-driver.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.facade.dashboard.browser import chromium, missing, wait
from tests.facade.migration.stack import TOKEN, migration_stack

PLAN = """\
    name: extract-catalog
    route: catalog
    from: monolith
    to: catalog
    steps:
      - shadow: {percent: 100}
        hold: 10s
      - weight: 25
        hold: 2m
        gates: {error_rate: {max_delta: 1%}, latency_p99: {max_ratio: 1.5}, min_requests: 200}
      - pause: approve before full cutover
      - weight: 100
    """


async def _traffic(client: httpx.AsyncClient, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    paths = ("/catalog/products/1", "/catalog/same", "/orders/7")
    n = 0
    while time.monotonic() < deadline:
        await client.get(paths[n % 3], headers={"cookie": "session_id=abc"})
        n += 1
        await asyncio.sleep(0.01)


async def main(out: Path) -> None:
    why = missing()
    if why:
        raise SystemExit(why)
    with tempfile.TemporaryDirectory() as tmp:
        async with migration_stack(Path(tmp), PLAN) as s:
            await s.act("extract-catalog", "start", actor="ann", reason="catalog service deployed")
            await _traffic(s.client, 12)
            await s.act("extract-catalog", "next", actor="ann", reason="no diffs that matter")
            await _traffic(s.client, 20)
            with chromium(width=1400, height=1000) as driver:
                await asyncio.to_thread(driver.get, s.runtime.admin_url + "/ui")
                traffic = asyncio.create_task(_traffic(s.client, 8))
                await asyncio.to_thread(
                    wait, driver, lambda d: d.find_elements("css selector", '#charts svg[data-metric="rps"] circle'))
                await asyncio.to_thread(driver.find_element("id", "token").send_keys, TOKEN)
                await asyncio.to_thread(driver.find_element("id", "token-save").click)
                await traffic
                await asyncio.sleep(3.5)  # one more refresh of every section after the last requests
                height = await asyncio.to_thread(driver.execute_script, "return document.body.scrollHeight")
                await asyncio.to_thread(driver.set_window_size, 1400, int(height) + 120)
                await asyncio.sleep(0.5)
                await asyncio.to_thread(driver.save_screenshot, str(out))
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/dashboard.png")))
