"""The dashboard without a browser: the pure parts as tables, then its routes on a real facade."""

from __future__ import annotations

import asyncio
import html
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from facade.dashboard import DashboardFeature, History, Point, carve_out
from facade.dashboard.feature import CSP
from facade.dashboard.history import sample
from facade.dashboard.render import render_diffs, render_migrations, render_routes
from facade.stats import SideStats
from facade.telemetry import Telemetry
from tests.facade.migration.stack import TOKEN, migration_stack
from tests.harness import run_facade
from tests.servers import serve_app

PLAN = """\
    name: extract-catalog
    route: catalog
    from: monolith
    to: catalog
    steps:
      - weight: 50
      - pause: approve before full cutover
      - weight: 100
    """


def _point(at: float, **requests: int) -> Point:
    return Point(at, 2.0, {b: SideStats(requests=n) for b, n in requests.items()})


# -- history and carve-out (pure) -------------------------------------------------------------------


def test_sample_reads_the_rolling_window_of_each_backend() -> None:
    now = [1000.5]
    telemetry = Telemetry(clock=lambda: now[0])
    for backend, status in (("monolith", 200), ("monolith", 500), ("catalog", 200)):
        telemetry.record(route="catalog", backend=backend, step="s1", method="GET", status=status,
                         duration_s=0.010, upstream_s=0.009, bytes_in=0, bytes_out=10)
    telemetry.record_diff(route="catalog", step="s1", differing=True)
    point = sample(telemetry, "catalog", at=5.0, interval=2.0)
    doc = point.to_json()
    assert doc["backends"]["monolith"]["requests"] == 2 and doc["backends"]["monolith"]["rps"] == 1.0
    assert doc["backends"]["monolith"]["error_rate"] == 0.5
    assert doc["backends"]["catalog"]["requests"] == 1 and doc["backends"]["catalog"]["p50_ms"] is not None
    assert (doc["compared"], doc["differing"], doc["diff_rate"]) == (1, 1, 1.0)
    now[0] += 3.0  # the requests have left the two-second window
    later = sample(telemetry, "catalog", at=8.0, interval=2.0).to_json()
    assert later["backends"]["monolith"]["requests"] == 0 and later["compared"] == 0


def test_history_is_bounded_in_points_and_routes() -> None:
    history = History(points=3, max_routes=2)
    for i in range(5):
        history.add("a", _point(float(i), monolith=i))
    history.add("b", _point(1.0))
    history.add("c", _point(1.0))  # over the route bound: not kept
    assert [p.at for p in history.series("a")] == [2.0, 3.0, 4.0]
    assert [p.at for p in history.series("a", since=2.0)] == [3.0, 4.0]
    assert history.routes() == ["a", "b"]
    assert history.changes == 6  # the point not kept changed nothing
    history.keep(["b"])
    assert history.routes() == ["b"] and history.changes == 7
    with pytest.raises(ValueError):
        History(points=0)


def test_carve_out_share_per_route_and_in_total() -> None:
    history = History()
    history.add("catalog", _point(10.0, monolith=75, catalog=25))
    history.add("default", _point(10.0, monolith=100))
    history.add("catalog", _point(12.0, catalog=40))
    history.add("default", _point(12.0, monolith=60))
    history.add("quiet", _point(12.0))
    doc = carve_out(history, frozenset({"catalog"}))
    assert doc["carved_services"] == ["catalog"]
    assert doc["routes"]["catalog"]["points"] == [[10.0, 0.25], [12.0, 1.0]]
    assert doc["routes"]["catalog"]["requests"] == 140
    assert doc["routes"]["quiet"]["points"] == [[12.0, None]]
    assert doc["total"] == [[10.0, 25 / 200], [12.0, 40 / 100]]
    assert carve_out(history, frozenset())["total"] == [[10.0, 0.0], [12.0, 0.0]]


# -- rendering (pure): everything user-controlled is text ---------------------------------------------

EVIL = '<script>alert("x")</script>'


def test_routes_and_diffs_escape_names_and_values() -> None:
    routes = render_routes([{"name": EVIL, "match": [{"path": {"prefix": "/<img src=x>"}, "hosts": ['"a.b']}],
                             "backends": [{"service": "monolith", "weight": 100, "pool": None}]}])
    assert "<script>" not in routes and "<img" not in routes
    assert html.escape(EVIL) in routes and "&lt;img src=x&gt;" in routes and "&quot;a.b" in routes
    diffs = render_diffs({"route": EVIL, "seen": 1, "samples": [{
        "at": 1.0, "request": "GET /catalog/<b>", "step": EVIL, "status": {"primary": 200, "candidate": 200},
        "differences": [{"path": "$.name", "kind": "changed", "primary": "<i>old</i>", "candidate": {"x": "</td>"}}],
        "omitted": 2}]})
    assert "<script>" not in diffs and "<i>" not in diffs and "</td>\"" not in diffs
    assert "&lt;i&gt;old&lt;/i&gt;" in diffs and "… and 2 more" in diffs


def test_migration_card_buttons_carry_the_status_version_and_follow_the_phase() -> None:
    status = {"name": EVIL, "routes": ["catalog"], "from": "monolith", "to": "catalog", "state": "running",
              "step": 2, "steps": 3, "step_summary": "pause (approve)", "auto": False, "version": 7,
              "reason": EVIL, "hold_left": None, "routing": {}, "gates": None, "journal": []}
    card = render_migrations([status])
    assert "<script>" not in card
    assert card.count('data-version="7"') == 7  # the card and each of its six buttons
    enabled = {a for a in ("start", "next", "pause", "resume", "rollback", "abort")
               if f'data-action="{a}" data-version="7" data-step="2">' in card}
    assert enabled == {"next", "pause", "resume", "rollback", "abort"}  # resume approves the pause step
    paused = render_migrations([status | {"state": "paused", "step_summary": "weight 50"}])
    assert {a for a in ("next", "pause", "resume", "rollback") if f'data-action="{a}" data-version="7" data-step="2">'
            in paused} == {"resume", "rollback"}


# -- on a real facade ----------------------------------------------------------------------------------


def _dashboard(runtime: object) -> DashboardFeature:
    feature = runtime.feature(DashboardFeature)
    assert feature is not None
    return feature


async def test_page_shows_routes_and_the_migration_step_with_a_strict_csp(tmp_path: Path) -> None:
    async with migration_stack(tmp_path, PLAN) as s:
        assert (await s.act("extract-catalog", "start")).status_code == 200
        r = await s.admin.get("/ui")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert r.headers["content-security-policy"] == CSP and "script-src 'self'" in CSP
        assert "unsafe-inline" not in CSP and r.headers["x-frame-options"] == "DENY"
        page = r.text
        assert '<tr data-route="catalog">' in page and '<tr data-route="default">' in page
        assert 'data-plan="extract-catalog" data-state="running" data-step="1"' in page
        assert "step 1 of 3: weight 50" in page
        assert "<script>" not in page.replace('<script src="/ui/static/dashboard.js" defer></script>', "")
        js = await s.admin.get("/ui/static/dashboard.js")
        assert js.status_code == 200 and "refreshSections" in js.text
        assert js.headers["content-type"].startswith("text/javascript")
        assert (await s.admin.get("/ui/static/..%2Ffeature.py")).status_code == 404
        assert (await s.admin.get("/ui/fragment/nothing")).status_code == 404
        routes = await s.admin.get("/ui/fragment/routes")
        assert "extract-catalog step 1: weight 50" in routes.text


async def test_series_and_carve_out_follow_the_traffic_and_the_steps(tmp_path: Path) -> None:
    async with migration_stack(tmp_path, PLAN) as s:
        dash = _dashboard(s.runtime)
        assert (await s.act("extract-catalog", "start")).status_code == 200
        # Poll: a sample covers the last two seconds; on a loaded machine a burst may straddle it.
        deadline = time.monotonic() + 10
        sent = 0
        while time.monotonic() < deadline:
            for _ in range(40):
                assert (await s.client.get("/catalog/item")).status_code == 200
            sent += 40
            dash.sample_now()
            doc = (await s.admin.get("/ui/series", params={"route": "catalog"})).json()
            last = doc["points"][-1]["backends"]
            if last.get("monolith", {}).get("requests") and last.get("catalog", {}).get("requests"):
                break
        assert (doc["old"], doc["new"], doc["plan"]) == ("monolith", "catalog", "extract-catalog")
        assert last["monolith"]["requests"] > 0 and last["catalog"]["requests"] > 0
        assert last["monolith"]["requests"] + last["catalog"]["requests"] <= sent
        assert last["catalog"]["rps"] == last["catalog"]["requests"] / 2.0
        assert [m["label"] for m in doc["marks"]] == ["start → running step 1"]
        share_before = (await s.admin.get("/ui/carveout")).json()["routes"]["catalog"]["points"][-1][1]
        assert 0 < share_before < 1

        assert (await s.act("extract-catalog", "next")).status_code == 200  # to the pause step: still 50 %
        assert (await s.act("extract-catalog", "resume")).status_code == 200  # approved: 100 %
        # Poll: a sample covers the last two seconds, so requests of the 50 % step leave it after a while.
        deadline = time.monotonic() + 10
        share = None
        while share != 1.0 and time.monotonic() < deadline:
            for _ in range(5):
                assert (await s.client.get("/catalog/item")).headers["x-served-by"] == "catalog"
            dash.sample_now()
            share = (await s.admin.get("/ui/carveout")).json()["routes"]["catalog"]["points"][-1][1]
            await asyncio.sleep(0.2)
        assert share == 1.0
        fragment = (await s.admin.get("/ui/fragment/carveout")).text
        assert '<tr data-route="catalog"><td>catalog</td><td class="share">100.0%</td>' in fragment
        doc = (await s.admin.get("/ui/series", params={"route": "catalog"})).json()
        assert [m["label"] for m in doc["marks"]][-1] == "resume → running step 3"
        assert (await s.admin.get("/ui/series", params={"route": "nope"})).status_code == 404
        assert (await s.admin.get("/ui/series", params={"route": "catalog", "since": "x"})).status_code == 400


class _Secretive:
    """Answers JSON with a secret that differs per backend, and a name that differs too."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = json.dumps({"name": self.name, "token": f"{self.name}-secret-<b>", "same": 1}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


async def test_diff_samples_on_the_page_are_redacted_like_the_api(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001.yaml").write_text(textwrap.dedent("""\
        name: extract-catalog
        route: catalog
        from: monolith
        to: catalog
        steps:
          - shadow: {percent: 100}
          - weight: 100
        """))
    async with serve_app(_Secretive("monolith")) as old, serve_app(_Secretive("catalog")) as new:
        text = f"""\
            listen: 127.0.0.1:0
            admin: {{listen: 127.0.0.1:0, token: {TOKEN}}}
            state_dir: state
            shadow: {{learn_noise: false, redact: {{fields: [token]}}}}
            services:
              monolith: {{endpoints: [{old}]}}
              catalog: {{endpoints: [{new}]}}
            routes:
              - name: catalog
                match: {{path: {{prefix: /catalog}}}}
                backend: monolith
            migrations: migrations/
            """
        auth = {"authorization": f"Bearer {TOKEN}"}
        async with (
            run_facade(tmp_path, text, features=True) as rt,
            httpx.AsyncClient(base_url=rt.admin_url, timeout=10, headers=auth) as admin,
            httpx.AsyncClient(base_url=rt.url, timeout=10) as client,
        ):
            assert (await admin.post("/migrations/extract-catalog/start", json={})).status_code == 200
            deadline = time.monotonic() + 10
            api: dict[str, Any] = {"samples": []}
            while not api["samples"] and time.monotonic() < deadline:  # copies are compared in the background
                assert (await client.get("/catalog/item?q=1")).status_code == 200
                api = (await admin.get("/diffs", params={"route": "catalog"})).json()
                await asyncio.sleep(0.05)
            fields = {d["path"]: d for d in api["samples"][0]["differences"]}
            assert fields["$.token"]["primary"] == "[redacted]"  # what the API shows
            page = (await admin.get("/ui/fragment/diffs", params={"route": "catalog"})).text
            assert "secret" not in page and "[redacted]" in page
            assert '<td class="old">monolith</td><td class="new">catalog</td>' in page
            assert "GET /catalog/item?q=1" in page
