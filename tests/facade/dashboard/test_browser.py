"""The dashboard in real headless Chromium against a running facade with a migration.

Skipped with the reason when the machine has no browser (``.ci/run`` installs Debian's chromium and
chromium-driver in CI). Every wait polls with a deadline (WebDriverWait).
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import EchoApp
from tests.facade.dashboard.browser import chromium, missing, wait
from tests.facade.migration.stack import TOKEN, Stack, migration_stack
from tests.harness import run_facade
from tests.servers import serve_app

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=str(missing()))]

PLAN = """\
    name: extract-catalog
    route: catalog
    from: monolith
    to: catalog
    steps:
      - weight: 25
      - weight: 100
    """


def _css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def _card(driver: Any) -> Any:
    found = _css(driver, 'article[data-plan="extract-catalog"]')
    return found[0] if found else None


def _click_action(driver: Any, action: str, *, version: int | None = None, reason: str = "") -> str:
    """Click a card's button, accept the confirmation, and return the message the page shows."""
    from selenium.webdriver.support import expected_conditions

    before = driver.find_element("id", "message").text

    def click(d: Any) -> bool:
        # The page replaces the section every few seconds: find and click in one try (a stale
        # element raises, and the wait tries again).
        found = _css(d, f'article[data-plan="extract-catalog"] button[data-action="{action}"]:not([disabled])')
        if not found:
            return False
        if version is not None:  # a page rendered before someone else moved the plan
            d.execute_script("arguments[0].dataset.version = arguments[1]", found[0], str(version))
        found[0].click()
        return True

    wait(driver, click, message=f"no enabled {action} button")
    alert = wait(driver, expected_conditions.alert_is_present(), message="no confirmation asked")
    assert action in alert.text and "extract-catalog" in alert.text
    if reason:
        alert.send_keys(reason)
    alert.accept()
    return str(wait(driver, lambda d: (t := d.find_element("id", "message").text) != before and t,
                    message="no answer shown"))


def _set_token(driver: Any, token: str) -> None:
    driver.find_element("id", "token").send_keys(token)
    driver.find_element("id", "token-save").click()
    wait(driver, lambda d: d.find_element("id", "token-state").text == "token set for this tab")


@contextlib.asynccontextmanager
async def _traffic(client: httpx.AsyncClient, *, limit: int = 3000, seconds: float = 40.0) -> AsyncIterator[None]:
    """Requests to /catalog in the background while the block runs (bounded in count and time)."""
    async def send() -> None:
        deadline = time.monotonic() + seconds
        for _ in range(limit):
            if time.monotonic() > deadline:
                return
            await client.get("/catalog/item")
            await asyncio.sleep(0.01)

    task = asyncio.create_task(send())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _status(s: Stack) -> dict[str, Any]:
    return await s.status("extract-catalog", journal=5)


async def test_page_shows_the_migration_and_pause_needs_the_token(tmp_path: Path) -> None:
    async with migration_stack(tmp_path, PLAN) as s, _traffic(s.client):
        assert (await s.act("extract-catalog", "start")).status_code == 200
        with chromium() as driver:
            await asyncio.to_thread(driver.get, s.runtime.admin_url + "/ui")

            def shows_routes_and_step(d: Any) -> bool:
                rows = {r.get_attribute("data-route"): r.text for r in _css(d, "#routes tr[data-route]")}
                card = _card(d)
                return ("extract-catalog step 1: weight 25" in rows.get("catalog", "") and "default" in rows
                        and card is not None and "step 1 of 2: weight 25" in card.text)

            await asyncio.to_thread(wait, driver, shows_routes_and_step, 15, "routes / step not shown")

            # Without the token the API refuses, the page says so, and nothing changes.
            before = await _status(s)
            said = await asyncio.to_thread(_click_action, driver, "pause")
            assert "refused (401)" in said and "bearer token" in said
            after = await _status(s)
            assert (after["state"], after["version"]) == ("running", before["version"])

            # With the token (typed once, kept in the tab), pause goes through the admin API.
            await asyncio.to_thread(_set_token, driver, TOKEN)
            said = await asyncio.to_thread(_click_action, driver, "pause", reason="latency <looks> odd")
            assert "now paused at step 1 of 2" in said
            paused = await _status(s)
            assert paused["state"] == "paused"
            assert (paused["journal"][-1]["actor"], paused["journal"][-1]["reason"]) == ("dashboard",
                                                                                      "latency <looks> odd")
            await asyncio.to_thread(wait, driver, lambda d: _card(d).get_attribute("data-state") == "paused")

            # A page that did not see the latest version cannot act on it: the API answers conflict.
            said = await asyncio.to_thread(_click_action, driver, "resume", version=paused["version"] - 1)
            assert "refused (409)" in said and f"version {paused['version']}" in said
            assert (await _status(s))["version"] == paused["version"]

            # The chart area plots the traffic this test sends, old and new side by side.
            def plotted(d: Any) -> dict[str, float]:
                dots = _css(d, '#charts svg[data-metric="rps"] circle.pt')
                rates: dict[str, float] = {}
                for dot in dots:
                    name = dot.get_attribute("data-backend")
                    rates[name] = max(rates.get(name, 0.0), float(dot.get_attribute("data-value")))
                return rates if rates.get("monolith", 0) > 0 and rates.get("catalog", 0) > 0 else {}

            rates = await asyncio.to_thread(wait, driver, plotted, 20, "no data points for the traffic sent")
            assert rates["monolith"] > 0 and rates["catalog"] > 0
            # Read inside the wait: the page redraws the charts every few seconds (stale elements retry).
            marks = await asyncio.to_thread(
                wait, driver, lambda d: [m.get_attribute("textContent")
                                         for m in _css(d, '#charts svg[data-metric="rps"] line.mark')],
                15, "step changes are not marked on the time axis")
            assert "pause → paused step 1" in marks[-1]

            # Everything the page loaded came from the admin listener, and it broke neither its own
            # Content-Security-Policy nor any script.
            loaded = await asyncio.to_thread(
                driver.execute_script, "return performance.getEntriesByType('resource').map((e) => e.name)")
            assert loaded and all(url.startswith(s.runtime.admin_url + "/") for url in loaded), loaded
            console = await asyncio.to_thread(driver.get_log, "browser")
            problems = [e["message"] for e in console if e["level"] == "SEVERE" and "/migrations/" not in e["message"]]
            assert problems == [], problems  # the refused actions' 401 / 409 are logged by Chromium, and expected


async def test_carve_out_progress_moves_after_next(tmp_path: Path) -> None:
    async with migration_stack(tmp_path, PLAN) as s, _traffic(s.client):
        assert (await s.act("extract-catalog", "start")).status_code == 200
        with chromium() as driver:
            await asyncio.to_thread(driver.get, s.runtime.admin_url + "/ui")

            def share(d: Any) -> float | None:
                cells = _css(d, '#carve tr[data-route="catalog"] td.share')
                text = cells[0].text if cells else "–"
                return None if text in ("", "–") else float(text.rstrip("%"))

            first = await asyncio.to_thread(wait, driver, lambda d: (v := share(d)) is not None and 0 < v < 100 and v,
                                            20, "no carve-out share while 25 % goes to catalog")
            await asyncio.to_thread(_set_token, driver, TOKEN)
            said = await asyncio.to_thread(_click_action, driver, "next")
            assert "now running at step 2 of 2" in said
            last = await asyncio.to_thread(wait, driver, lambda d: share(d) == 100.0, 20,
                                           "carve-out share did not reach 100 % after next")
            assert last and first < 100.0
            total = await asyncio.to_thread(wait, driver, lambda d: d.find_element("css selector", ".total-share").text)
            assert total == "100.0%"  # only /catalog has traffic


async def test_a_route_named_script_renders_as_text(tmp_path: Path) -> None:
    name = "<script>window.pwned = 1</script>"
    async with serve_app(EchoApp("monolith")) as url:
        text = f"""\
            listen: 127.0.0.1:0
            admin: {{listen: 127.0.0.1:0, token: {TOKEN}}}
            state_dir: state
            services:
              monolith: {{endpoints: [{url}]}}
            routes:
              - name: "{name}"
                match: {{path: {{prefix: "/<img src=x onerror=window.pwned=2>"}}}}
                backend: monolith
            """
        async with run_facade(tmp_path, text, features=True) as rt:
            with chromium() as driver:
                await asyncio.to_thread(driver.get, rt.admin_url + "/ui")
                cell = await asyncio.to_thread(
                    wait, driver, lambda d: "".join(c.text for c in _css(d, "#routes td.name")), 15, "no routes")
                assert cell == name
                option = await asyncio.to_thread(lambda: driver.find_element("css selector", "#route-select option"))
                assert option.text == name
                # Wait for one refresh of the sections (innerHTML from the server), then check nothing ran.
                await asyncio.to_thread(wait, driver, lambda d: d.execute_script("return document.body.dataset.refreshed"))
                assert await asyncio.to_thread(driver.execute_script, "return window.pwned === undefined")
                assert await asyncio.to_thread(lambda: _css(driver, "#routes script, #routes img")) == []

                # A reload that adds a route: the route chooser follows without a page reload.
                added = '  - {name: "<b>orders</b>", match: {path: {prefix: /orders}}, backend: monolith}\n'
                (tmp_path / "facade.yaml").write_text(textwrap.dedent(text) + added)
                async with httpx.AsyncClient(base_url=rt.admin_url, timeout=10) as admin:
                    r = await admin.post("/reload", headers={"authorization": f"Bearer {TOKEN}"})
                    assert r.status_code == 200, r.text
                options = await asyncio.to_thread(
                    wait, driver, lambda d: (o := [e.text for e in _css(d, "#route-select option")]) and len(o) == 2 and o,
                    15, "the route chooser did not follow the reload")
                assert options == [name, "<b>orders</b>"]
