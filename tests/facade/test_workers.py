"""``facade serve --workers N``: one supervisor, N worker processes, one snapshot version, one telemetry store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from facade.cli.console import EXIT_INVALID
from facade.config import MAX_WORKERS, parse_workers
from facade.telemetry import Telemetry
from facade.telemetry.histogram import LogLinearHistogram
from tests.facade.migration.stack import TOKEN, Switchable, config_text
from tests.servers import serve_app

REPO = Path(__file__).resolve().parents[2]
AUTH = {"authorization": f"Bearer {TOKEN}"}
PLAN = """\
    name: shop
    route: catalog
    from: monolith
    to: catalog
    steps:
      - weight: 25
      - weight: 50
      - weight: 100
    """


# -- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(1, 1), ("2", 2), (64, 64), ("auto", 8)])
def test_parse_workers_accepts(value: object, expected: int) -> None:
    assert parse_workers(value, cores=8) == expected


def test_parse_workers_auto_is_capped() -> None:
    assert parse_workers("auto", cores=500) == MAX_WORKERS


@pytest.mark.parametrize("value", [0, -1, 65, "0", "-1", "65", "many", 1.5, True, None])
def test_parse_workers_refuses(value: object) -> None:
    with pytest.raises(ValueError, match="workers must be"):
        parse_workers(value)


def test_telemetry_delta_absorbed_sums_histograms_and_counts() -> None:
    worker_a, worker_b, supervisor = Telemetry(), Telemetry(), Telemetry()
    supervisor.begin_step("catalog", "s1")
    shipped_a: dict[object, object] = {}
    shipped_b: dict[object, object] = {}
    for i in range(30):
        worker_a.record(route="catalog", backend="new", step="s1", method="GET", status=200,
                        duration_s=0.001, upstream_s=0.001, bytes_in=0, bytes_out=10)
        worker_b.record(route="catalog", backend="new", step="s1", method="GET", status=500 if i % 3 == 0 else 200,
                        duration_s=0.100, upstream_s=None, bytes_in=0, bytes_out=10)
        if i % 10 == 9:  # batches, as a worker ships them
            supervisor.absorb(worker_a.take_delta(shipped_a))
            supervisor.absorb(worker_b.take_delta(shipped_b))
    worker_a.record_diff(route="catalog", step="s1", differing=True)
    supervisor.absorb(worker_a.take_delta(shipped_a))
    assert worker_a.take_delta(shipped_a) == {"series": [], "diffs": [], "overflowed": 0}  # nothing new
    stats = supervisor.side_stats("catalog", "new")
    assert (stats.requests, stats.errors) == (60, 10)  # errors of one worker alone count
    # p50 from worker a's fast half, p99 from worker b's slow half: summed buckets, not averaged quantiles.
    assert stats.p50_ms == pytest.approx(1.0, rel=0.01)
    assert stats.p99_ms == pytest.approx(100.0, rel=0.01)
    assert supervisor.side_stats("catalog", "new", window=60).requests == 60
    assert supervisor.diff_counts("catalog").compared == 1


# -- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "65", "lots"])
async def test_serve_refuses_bad_worker_counts(tmp_path: Path, value: str) -> None:
    (tmp_path / "facade.yaml").write_text(config_text("http://127.0.0.1:9", "http://127.0.0.1:9").replace(
        "migrations: migrations/\n", ""))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "facade", "serve", "-c", str(tmp_path / "facade.yaml"), f"--workers={value}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(tmp_path),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == EXIT_INVALID
    assert b"--workers" in err and b"workers must be" in err, err
    assert not out


async def test_config_workers_out_of_range_is_a_config_error(tmp_path: Path) -> None:
    from facade.config import check_config

    path = tmp_path / "facade.yaml"
    path.write_text(config_text("http://127.0.0.1:9", "http://127.0.0.1:9").replace(
        "migrations: migrations/\n", "workers: 65\n"))
    config, problems = check_config(str(path))
    assert config is None
    assert any("workers" in str(p) and "1..64" in str(p) and f"{path}:" in str(p) for p in problems), problems


# -- real processes -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def supervisor(
    tmp_path: Path, workers: int = 2, *, env_extra: dict[str, str] | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, str]]:
    """``python -m facade serve --workers N`` on ephemeral ports; yields (process, url, admin_url) once ready."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    with open(tmp_path / "serve.log", "wb") as log:  # noqa: ASYNC230 -- creating an empty log file, once
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "facade", "serve", "-c", str(tmp_path / "facade.yaml"), "--no-watch",
            "--workers", str(workers), "--log-level", "warning",
            stdout=asyncio.subprocess.PIPE, stderr=log, cwd=str(tmp_path), env=env,
        )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("facade ready:"), (line, (tmp_path / "serve.log").read_text())
        url = line.split("listening on ", 1)[1].split(" ", 1)[0].strip(",")
        admin = line.rsplit("admin on ", 1)[1].strip()
        yield proc, url, admin
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


async def _load(url: str, stop: asyncio.Event, results: dict[str, int], *, new_connections: bool = False) -> None:
    """One client sending GETs until ``stop`` (bounded: at most 20 000 requests)."""
    limits = httpx.Limits(max_keepalive_connections=0 if new_connections else 4)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:
        for _ in range(20_000):
            if stop.is_set():
                return
            try:
                r = await client.get("/catalog/item")
                key = r.headers.get("x-served-by", str(r.status_code)) if r.status_code == 200 else str(r.status_code)
            except httpx.HTTPError as exc:
                key = f"error:{type(exc).__name__}"
            results[key] = results.get(key, 0) + 1


async def _poll(check: object, timeout: float = 15.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()  # type: ignore[operator]
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_two_workers_migrate_under_load_with_one_evidence_store(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-shop.yaml").write_text(textwrap.dedent(PLAN))
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        (tmp_path / "facade.yaml").write_text(config_text(old_url, new_url))
        async with supervisor(tmp_path) as (_proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=30) as admin:
            view = (await admin.get("/workers")).json()
            assert [w["version"] for w in view["workers"]] == [view["version"]] * 2
            stop = asyncio.Event()
            results: dict[str, int] = {}
            # New connection per request: the kernel spreads them over both workers.
            load = [asyncio.create_task(_load(url, stop, results, new_connections=True)) for _ in range(4)]
            try:
                for action, percent in (("start", 25), ("next", 50), ("next", 100)):
                    r = await admin.post(f"/migrations/shop/{action}", json={"actor": "t", "reason": action})
                    assert r.status_code == 200, r.text
                    # Answered only once both workers run the new version:
                    view = (await admin.get("/workers")).json()
                    assert [w["version"] for w in view["workers"]] == [view["version"]] * 2, view
                    step: dict[str, int] = {}
                    await _load_n(url, step, 200)
                    share = step.get("catalog", 0) / 200
                    assert abs(share - percent / 100) <= 0.15, (action, step)
                    assert sum(step.values()) == step.get("catalog", 0) + step.get("monolith", 0)
                await asyncio.sleep(1.0)
            finally:
                stop.set()
                await asyncio.gather(*load)
            assert results and all(k in ("catalog", "monolith") for k in results), results
            sent = sum(results.values()) + 600

            async def counted() -> bool:
                workers = (await admin.get("/workers")).json()["workers"]
                return sum(w["requests"] for w in workers) >= sent

            assert await _poll(counted), (await admin.get("/workers")).json()
            workers = (await admin.get("/workers")).json()["workers"]
            assert sum(w["requests"] for w in workers) == sent
            assert all(w["requests"] > 0 for w in workers), workers  # both workers served
            # Each worker's own split, per step, is the plan's (read from its counters, not the sum).
            for w in workers:
                steps = {k: v for k, v in w["served"]["catalog"].items() if "weight" in k}  # "": before start
                assert len(steps) == 3, w["served"]
                for step, backends in steps.items():
                    percent = int(step.rsplit(" ", 1)[1])  # "shop step 2: weight 50"
                    total = sum(backends.values())
                    assert total > 20, (w["pid"], step, backends)
                    assert abs(backends.get("catalog", 0) / total - percent / 100) <= 0.2, (w["pid"], step, backends)
            metrics = (await admin.get("/metrics")).text
            total = sum(
                float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith("http_server_requests_total{")
            )
            assert total == sent
            # The compare report counts every worker's requests too.
            report = (await admin.get("/compare", params={"route": "catalog", "window": "5m"})).json()
            assert report["old"]["requests"] + report["new"]["requests"] == sent, report


async def _load_n(url: str, results: dict[str, int], n: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        for _ in range(n):
            r = await c.get("/catalog/item")
            assert r.status_code == 200
            results[r.headers["x-served-by"]] = results.get(r.headers["x-served-by"], 0) + 1


@pytest.mark.slow
async def test_kill_9_of_a_worker_is_replaced_on_the_current_step(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-shop.yaml").write_text(textwrap.dedent(PLAN))
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        (tmp_path / "facade.yaml").write_text(config_text(old_url, new_url))
        async with supervisor(tmp_path) as (proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=30) as admin:
            for action in ("start", "next", "next"):  # weight 100: every request to catalog
                assert (await admin.post(f"/migrations/shop/{action}", json={})).status_code == 200
            before = (await admin.get("/workers")).json()
            victim = before["workers"][0]
            stop = asyncio.Event()
            results: dict[str, int] = {}
            load = [asyncio.create_task(_load(url, stop, results, new_connections=True)) for _ in range(2)]
            await asyncio.sleep(0.5)
            os.kill(victim["pid"], signal.SIGKILL)
            killed_at = time.monotonic()

            async def replaced() -> dict[str, object] | None:
                view = (await admin.get("/workers")).json()
                w = view["workers"][0]
                return view if w["pid"] != victim["pid"] and w["version"] == before["version"] else None

            view = await _poll(replaced, 10)
            took = time.monotonic() - killed_at
            # The load goes on until 50 more requests succeeded after the replacement: polled, not a fixed
            # 0.5 s (on a loaded machine two clients made only ~17 requests in the whole window).
            served = results.get("catalog", 0)

            async def served_more() -> bool:
                return results.get("catalog", 0) >= served + 50

            await _poll(served_more, 20)
            stop.set()
            await asyncio.gather(*load)
            assert view, (await admin.get("/workers")).json()
            assert view["restarts"] == 1  # type: ignore[index]
            # The warm spare took the slot (imports done: it binds and acknowledges at once).
            assert before["spare"] is not None and view["workers"][0]["pid"] == before["spare"]  # type: ignore[index]
            # New connections kept succeeding: a few requests on the killed worker's connections may fail.
            failed = sum(v for k, v in results.items() if k != "catalog")
            assert results.get("catalog", 0) > 50 and failed <= 10, results
            print(f"replacement acknowledged after {took:.2f} s; failed requests: {failed} of {sum(results.values())}")
            # The replacement serves the current step (weight 100), not the config's initial state.
            mine: dict[str, int] = {}
            await _load_n(url, mine, 100)
            assert mine == {"catalog": 100}
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 40) == 0
            assert not _alive(view["workers"][0]["pid"]) and not _alive(view["workers"][1]["pid"])  # type: ignore[index]


@pytest.mark.slow
async def test_reload_under_load_reaches_both_workers_before_the_answer(tmp_path: Path) -> None:
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        text = config_text(old_url, new_url).replace("migrations: migrations/\n", "")
        (tmp_path / "facade.yaml").write_text(text)
        async with supervisor(tmp_path) as (proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=30) as admin:
            stop = asyncio.Event()
            results: dict[str, int] = {}
            load = [asyncio.create_task(_load(url, stop, results, new_connections=True)) for _ in range(4)]
            try:
                await asyncio.sleep(0.3)
                (tmp_path / "facade.yaml").write_text(text.replace("backend: monolith\n  - name: default",
                                                                   "backend: catalog\n  - name: default"))
                r = await admin.post("/reload")
                assert r.status_code == 200 and r.json()["changed"], r.text
                view = (await admin.get("/workers")).json()
                assert [w["version"] for w in view["workers"]] == [r.json()["version"]] * 2, view
                after: dict[str, int] = {}
                await _load_n(url, after, 100)
                assert after == {"catalog": 100}
                # SIGHUP reloads every worker too (back to the monolith).
                (tmp_path / "facade.yaml").write_text(text)
                proc.send_signal(signal.SIGHUP)

                async def back() -> bool:
                    v = (await admin.get("/workers")).json()
                    return v["version"] == r.json()["version"] + 1 and all(
                        w["version"] == v["version"] for w in v["workers"])

                assert await _poll(back)
                again: dict[str, int] = {}
                await _load_n(url, again, 50)
                assert again == {"monolith": 50}
            finally:
                stop.set()
                await asyncio.gather(*load)
            assert set(results) <= {"catalog", "monolith"} and sum(results.values()) > 50, results


@pytest.mark.slow
async def test_supervisor_killed_takes_its_workers_down(tmp_path: Path) -> None:
    (tmp_path / "facade.yaml").write_text(
        config_text("http://127.0.0.1:9", "http://127.0.0.1:9").replace("migrations: migrations/\n", ""))
    async with supervisor(tmp_path) as (proc, _url, admin_url):
        async with httpx.AsyncClient(base_url=admin_url, timeout=10) as admin:
            pids = [w["pid"] for w in (await admin.get("/workers")).json()["workers"]]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        proc.kill()
        await proc.wait()

        async def gone() -> bool:
            return not any(_alive(p) for p in pids)

        assert await _poll(gone, 5), pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not reaped yet (its parent is gone too: init reaps it).
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


GATED = """\
    name: shop
    route: catalog
    from: monolith
    to: catalog
    steps:
      - weight: 50
        gates: {error_rate: {max_delta: 1%}, min_requests: 20}
      - weight: 100
    """


@pytest.mark.slow
async def test_gates_fail_when_only_one_worker_served_the_errors(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-shop.yaml").write_text(textwrap.dedent(GATED))
    new = Switchable("catalog")
    async with serve_app(Switchable("monolith")) as old_url, serve_app(new) as new_url:
        (tmp_path / "facade.yaml").write_text(config_text(old_url, new_url))
        async with supervisor(tmp_path) as (_proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=30) as admin:
            assert (await admin.post("/migrations/shop/start", json={})).status_code == 200
            new.fail = True
            before = {w["pid"]: w["requests"] for w in (await admin.get("/workers")).json()["workers"]}
            # One keep-alive connection: one worker serves every request, errors included.
            seen: dict[int, int] = {}
            async with httpx.AsyncClient(base_url=url, timeout=10, limits=httpx.Limits(max_connections=1)) as client:
                for _ in range(120):
                    r = await client.get("/catalog/item")
                    seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert seen.get(500, 0) > 20 and seen.get(200, 0) > 20, seen

            async def judged() -> dict[str, object] | None:
                status = (await admin.get("/migrations/shop")).json()
                return status if status["gates"]["status"] != "inconclusive" else None

            status = await _poll(judged)
            assert status, (await admin.get("/migrations/shop")).json()
            gates = {g["name"]: g for g in status["gates"]["results"]}  # type: ignore[index]
            assert status["gates"]["status"] == "fail", status  # type: ignore[index]
            assert gates["error_rate.max_delta"]["status"] == "fail"

            async def all_counted() -> bool:
                workers = (await admin.get("/workers")).json()["workers"]
                return sum(w["requests"] - before[w["pid"]] for w in workers) >= 120

            assert await _poll(all_counted)
            after = {w["pid"]: w["requests"] - before[w["pid"]] for w in (await admin.get("/workers")).json()["workers"]}
            assert sorted(after.values()) == [0, 120], after  # only one worker served them
            refused = await admin.post("/migrations/shop/next", json={})
            assert refused.status_code == 409 and refused.json()["code"] == "gate_failed"


@pytest.mark.slow
async def test_sticky_cohorts_agree_across_workers(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-shop.yaml").write_text(
        textwrap.dedent(PLAN).replace("steps:", "sticky: {cookie: session_id}\nsteps:"))
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        (tmp_path / "facade.yaml").write_text(config_text(old_url, new_url))
        async with supervisor(tmp_path) as (_proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=30) as admin:
            for action in ("start", "next"):  # weight 50
                assert (await admin.post(f"/migrations/shop/{action}", json={})).status_code == 200
            sides: dict[str, set[str]] = {}
            for round_ in range(3):
                # A new connection per request: the kernel picks a worker each time.
                async with httpx.AsyncClient(base_url=url, timeout=10,
                                             limits=httpx.Limits(max_keepalive_connections=0)) as client:
                    for i in range(40):
                        r = await client.get("/catalog/item", headers={"cookie": f"session_id=user-{i}"})
                        assert r.status_code == 200, (round_, r.text)
                        sides.setdefault(f"user-{i}", set()).add(r.headers["x-served-by"])
            assert all(len(s) == 1 for s in sides.values()), sides
            assert {next(iter(s)) for s in sides.values()} == {"monolith", "catalog"}

            async def both_served() -> bool:
                workers = (await admin.get("/workers")).json()["workers"]
                return sum(w["requests"] for w in workers) >= 120

            assert await _poll(both_served)
            assert all(w["requests"] > 0 for w in (await admin.get("/workers")).json()["workers"])


class _Checked:
    """A backend whose /healthz can be told to fail; counts the health checks it receives."""

    def __init__(self) -> None:
        self.healthy = True
        self.checks = 0

    async def __call__(self, scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] != "http":
            return
        status = 200
        if scope["path"] == "/healthz":
            self.checks += 1
            status = 200 if self.healthy else 503
        await send({"type": "http.response.start", "status": status, "headers": [(b"x-served-by", b"checked")]})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


@pytest.mark.slow
async def test_health_checks_run_once_and_reach_every_worker(tmp_path: Path) -> None:
    backend = _Checked()
    async with serve_app(backend) as backend_url:
        (tmp_path / "facade.yaml").write_text(textwrap.dedent(f"""\
            listen: 127.0.0.1:0
            admin: {{listen: 127.0.0.1:0, token: {TOKEN}}}
            services:
              app:
                endpoints: [{backend_url}]
                health_check: {{path: /healthz, interval: 500ms, unhealthy_threshold: 1}}
            routes:
              - name: default
                match: {{path: {{prefix: /}}}}
                backend: app
            """))
        async with supervisor(tmp_path, workers=2) as (_proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, timeout=10) as admin:
            checks_before = backend.checks
            await asyncio.sleep(1.5)  # ~3 rounds of the supervisor's checks
            rounds = backend.checks - checks_before
            # One checker (the supervisor), not three (supervisor + 2 workers): one per 0.5 s, with jitter.
            assert 1 <= rounds <= 5, rounds
            backend.healthy = False

            async def refused_by_both() -> bool:
                # New connections land on both workers; neither checks, so both must have the result.
                async with httpx.AsyncClient(base_url=url, timeout=5,
                                             limits=httpx.Limits(max_keepalive_connections=0)) as client:
                    codes = {(await client.get("/x")).status_code for _ in range(20)}
                return codes == {503}

            assert await _poll(refused_by_both, 10)

            async def both_answered() -> bool:  # the 503s were served by both workers (their telemetry)
                return all(w["requests"] > 0 for w in (await admin.get("/workers")).json()["workers"])

            assert await _poll(both_answered), (await admin.get("/workers")).json()


@pytest.mark.slow
async def test_shadow_diffs_of_both_workers_reach_compare_and_the_ring(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-shop.yaml").write_text(textwrap.dedent(PLAN).replace(
        "steps:\n", "steps:\n  - shadow: {percent: 100}\n"))
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        (tmp_path / "facade.yaml").write_text(config_text(old_url, new_url))
        async with supervisor(tmp_path) as (_proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=30) as admin:
            assert (await admin.post("/migrations/shop/start", json={})).status_code == 200
            served: dict[str, int] = {}
            await _load_n(url, served, 60)  # new connection each: both workers mirror
            assert served == {"monolith": 60}

            async def compared() -> dict[str, object] | None:
                report = (await admin.get("/compare", params={"route": "catalog"})).json()
                return report if report["diffs"]["compared"] >= 60 else None

            report = await _poll(compared)
            assert report, (await admin.get("/compare", params={"route": "catalog"})).json()
            # The echo bodies name the backend: every comparison differs, from whichever worker.
            found = report["diffs"]  # type: ignore[index]
            assert (found["compared"], found["differing"], found["diff_rate"]) == (60, 60, 1.0), found
            diffs = (await admin.get("/diffs", params={"route": "catalog", "limit": 100})).json()
            assert diffs["seen"] == 60 and len(diffs["samples"]) == min(60, diffs["kept"]), diffs["seen"]
            assert all(w["requests"] > 0 for w in (await admin.get("/workers")).json()["workers"])


@pytest.mark.slow
async def test_one_shared_socket_mode_serves_on_every_worker(tmp_path: Path) -> None:
    async with serve_app(Switchable("monolith")) as old_url:
        (tmp_path / "facade.yaml").write_text(config_text(old_url, old_url).replace("migrations: migrations/\n", ""))
        async with supervisor(tmp_path, env_extra={"FACADE_WORKERS_SOCKET": "shared"}) as (proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, timeout=10) as admin:
            victim = (await admin.get("/workers")).json()["workers"][0]["pid"]
            os.kill(victim, signal.SIGKILL)  # the accept queue is the supervisor's: nothing queued is lost
            seen: dict[str, int] = {}
            await _load_n(url, seen, 100)
            assert seen == {"monolith": 100}

            async def both_served() -> bool:
                workers = (await admin.get("/workers")).json()["workers"]
                return sum(w["requests"] for w in workers) >= 100 and victim not in [w["pid"] for w in workers]

            assert await _poll(both_served), (await admin.get("/workers")).json()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 40) == 0


def _requests_total(metrics: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("http_server_requests_total{"))


JUDGED = """\
    name: shop
    route: catalog
    from: monolith
    to: catalog
    steps:
      - weight: 50
        gates: {error_rate: {max_delta: 1%}, min_requests: 10}
      - weight: 100
    """


@pytest.mark.slow
async def test_gates_and_reports_asked_right_after_a_burst_count_every_request(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-shop.yaml").write_text(textwrap.dedent(JUDGED))
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        (tmp_path / "facade.yaml").write_text(config_text(old_url, new_url))
        async with supervisor(tmp_path) as (_proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=30) as admin:
            assert (await admin.post("/migrations/shop/start", json={})).status_code == 200
            sent = 0
            for burst in range(3):
                served: dict[str, int] = {}
                # Four clients, a new connection per request: both workers serve the burst.
                await asyncio.gather(*(_load_n(url, served, 50) for _ in range(4)))
                sent += 200
                # Asked at once, no polling: the workers' last (unshipped) requests must be in every answer.
                report = (await admin.get("/compare", params={"route": "catalog", "window": "5m"})).json()
                assert report["old"]["requests"] + report["new"]["requests"] == sent, (burst, report)
                assert "partial" not in report
                assert report["new"]["requests"] == sum(
                    w["served"]["catalog"]["shop step 1: weight 50"].get("catalog", 0)
                    for w in (await admin.get("/workers")).json()["workers"]
                )
                status = (await admin.get("/migrations/shop")).json()
                gates = {g["name"]: g for g in status["gates"]["results"]}
                assert gates["min_requests"]["value"] == report["new"]["requests"], gates
                assert status["gates"]["status"] == "pass", status["gates"]
                assert _requests_total((await admin.get("/metrics")).text) == sent
            workers = (await admin.get("/workers")).json()["workers"]
            assert all(w["requests"] > 0 for w in workers) and sum(w["requests"] for w in workers) == sent


@pytest.mark.slow
async def test_a_worker_that_does_not_answer_makes_the_verdict_partial(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-shop.yaml").write_text(textwrap.dedent(JUDGED))
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        (tmp_path / "facade.yaml").write_text(config_text(old_url, new_url))
        async with supervisor(tmp_path) as (_proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=30) as admin:
            assert (await admin.post("/migrations/shop/start", json={})).status_code == 200
            served: dict[str, int] = {}
            await _load_n(url, served, 80)
            frozen = (await admin.get("/workers")).json()["workers"][0]["pid"]
            os.kill(frozen, signal.SIGSTOP)  # alive, but answers nothing: its next batch cannot arrive
            try:
                status = (await admin.get("/migrations/shop")).json()
                gates = {g["name"]: g for g in status["gates"]["results"]}
                # Enough requests and no errors, but one worker's latest telemetry is missing: not a pass.
                assert status["gates"]["status"] == "inconclusive", status["gates"]
                assert gates["telemetry.complete"]["status"] == "inconclusive"
                assert f"pid {frozen}" in gates["telemetry.complete"]["message"]
                report = (await admin.get("/compare", params={"route": "catalog"})).json()
                assert report["partial"]["missing"] == [f"worker 0 (pid {frozen})"], report
                cli = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "facade", "compare", "catalog", "--admin", admin_url, "--token", TOKEN,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(tmp_path),
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                )
                out, err = await asyncio.wait_for(cli.communicate(), 60)
                assert cli.returncode == 0, err
                assert f"partial: the latest telemetry of worker 0 (pid {frozen}) is missing" in out.decode(), out
                refused = await admin.post("/migrations/shop/next", json={})
                assert refused.status_code == 409, refused.text
            finally:
                os.kill(frozen, signal.SIGCONT)

            async def whole() -> dict[str, object] | None:
                status = (await admin.get("/migrations/shop")).json()
                return status if status["gates"]["status"] == "pass" else None

            status = await _poll(whole)
            assert status, (await admin.get("/migrations/shop")).json()
            assert "telemetry.complete" not in {g["name"] for g in status["gates"]["results"]}  # type: ignore[index]
            report = (await admin.get("/compare", params={"route": "catalog"})).json()
            assert report["old"]["requests"] + report["new"]["requests"] == 80 and "partial" not in report
            assert (await admin.post("/migrations/shop/next", json={})).status_code == 200


def test_shadow_sender_deltas_sum_counters_latencies_and_noise() -> None:
    from facade.shadow import ShadowSender
    from facade.upstream import Upstreams

    worker, supervisor_sender = ShadowSender(upstreams=Upstreams([])), ShadowSender(upstreams=Upstreams([]))
    shipped: dict[object, object] = {}
    worker.results[("catalog", "compared")] += 3
    worker.dropped[("catalog", "queue_full")] += 1
    worker.latency[("catalog", "s1")] = hist = LogLinearHistogram.of([0.010, 0.020])
    worker.noise.add("catalog", ["$.nonce"])
    assert supervisor_sender.absorb(worker.take_delta(shipped)) == {"catalog": frozenset({"$.nonce"})}
    worker.results[("catalog", "compared")] += 2
    hist.record(0.030)
    worker.noise.add("catalog", ["$.nonce", "$.at"])
    # Only what is new travels: a path already shipped is not new again.
    assert supervisor_sender.absorb(worker.take_delta(shipped)) == {"catalog": frozenset({"$.at"})}
    assert worker.take_delta(shipped) == {"counters": {}, "latency": [], "noise": {}}
    assert supervisor_sender.results[("catalog", "compared")] == 5
    assert supervisor_sender.dropped[("catalog", "queue_full")] == 1
    assert supervisor_sender.latency[("catalog", "s1")].counts == hist.counts
    assert supervisor_sender.noise.paths("catalog") == {"$.nonce", "$.at"}


def test_recent_errors_since_and_absorb() -> None:
    from facade.error_log import RecentErrors

    worker_errors, supervisor_errors = RecentErrors(size=3), RecentErrors()
    for i in range(5):
        worker_errors.add(request_id=f"r{i}", status=502, reason="connect", detail="refused", route="r", backend="b")
    assert [e["request_id"] for e in worker_errors.since(0)] == ["r2", "r3", "r4"]  # what the ring still keeps
    assert [e["request_id"] for e in worker_errors.since(4)] == ["r4"] and worker_errors.since(5) == []
    supervisor_errors.absorb(worker_errors.since(3), worker=1)
    assert [(e["request_id"], e["worker"]) for e in supervisor_errors.view()] == [("r4", 1), ("r3", 1)]


async def _one_off(url: str, n: int, **headers: str) -> dict[int, int]:
    """``n`` GETs, a new connection each (both workers serve them); status -> count."""
    seen: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        for _ in range(n):
            status = (await c.get("/catalog/item", headers=headers)).status_code
            seen[status] = seen.get(status, 0) + 1
    return seen


@pytest.mark.slow
async def test_errors_and_listener_counters_count_every_worker(tmp_path: Path) -> None:
    from tests.facade.test_shadow import closed_port_url

    (tmp_path / "facade.yaml").write_text(config_text(closed_port_url(), closed_port_url()).replace(
        "migrations: migrations/\n", ""))
    async with supervisor(tmp_path) as (_proc, url, admin_url), \
            httpx.AsyncClient(base_url=admin_url, timeout=10) as admin:
        assert await _one_off(url, 40, x_legacy_id="7") == {502: 40}  # refused upstream, an underscore header
        # Asked at once: the flush brings each worker's last failures and counters.
        errors = (await admin.get("/errors")).json()["errors"]
        assert len(errors) == 40 and {e["status"] for e in errors} == {502}
        assert {e["worker"] for e in errors} == {0, 1}, errors  # both workers' failures, in one view
        one = errors[7]["request_id"]
        assert [e["request_id"] for e in (await admin.get("/errors", params={"request_id": one})).json()["errors"]] \
            == [one]
        metrics = (await admin.get("/metrics")).text
        assert 'facade_request_headers_dropped_total{reason="underscore"} 40' in metrics, metrics
    # A request the listener refuses (userinfo in an absolute-form target) is counted too, whichever worker refused it.
    (tmp_path / "facade.yaml").write_text(config_text(closed_port_url(), closed_port_url()).replace(
        "migrations: migrations/\n", ""))
    async with supervisor(tmp_path) as (_proc, url, admin_url), \
            httpx.AsyncClient(base_url=admin_url, timeout=10) as admin:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        for _ in range(10):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET http://user@other.example/catalog/item HTTP/1.1\r\nhost: other.example\r\n\r\n")
            await writer.drain()
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 400")
            writer.close()
            await writer.wait_closed()
        metrics = (await admin.get("/metrics")).text
        assert 'facade_requests_rejected_total{reason="absolute_form"} 10' in metrics, metrics


def _noisy_app(name: str) -> object:
    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] != "http":
            return
        body = json.dumps({"nonce": uuid.uuid4().hex, "name": "same"}).encode()
        await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                    "headers": [(b"content-type", b"application/json"), (b"x-served-by", name.encode())]})
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]

    return app


@pytest.mark.slow
async def test_shadow_counters_and_learned_noise_of_every_worker(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-shop.yaml").write_text(textwrap.dedent(PLAN).replace(
        "steps:\n", "steps:\n  - shadow: {percent: 100}\n"))
    async with serve_app(_noisy_app("monolith")) as old_url, serve_app(_noisy_app("catalog")) as new_url:
        (tmp_path / "facade.yaml").write_text(config_text(old_url, new_url))
        async with supervisor(tmp_path) as (_proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=30) as admin:
            assert (await admin.post("/migrations/shop/start", json={})).status_code == 200
            assert await _one_off(url, 40) == {200: 40}

            async def mirrored() -> dict[str, object] | None:
                stats = (await admin.get("/shadow")).json()
                return stats if stats["totals"]["mirrored"] >= 40 else None

            stats = await _poll(mirrored)
            assert stats, (await admin.get("/shadow")).json()
            assert stats["totals"]["mirrored"] == 40 and stats["totals"]["dropped"] == 0  # type: ignore[index]
            route = stats["routes"]["catalog"]  # type: ignore[index]
            assert route["noise_copies"] == 40 and route["noise_paths"] == ["$.nonce"], route
            assert sum(v["count"] for v in route["candidate_latency_ms"].values()) == 40, route
            # The nonce differs in every answer: learned as noise, no comparison counts it as a difference.
            report = (await admin.get("/compare", params={"route": "catalog"})).json()
            assert (report["diffs"]["compared"], report["diffs"]["differing"]) == (40, 0), report["diffs"]
            assert (await admin.get("/diffs", params={"route": "catalog"})).json()["noise_paths"] == ["$.nonce"]
            workers = (await admin.get("/workers")).json()["workers"]
            assert all(w["requests"] > 0 for w in workers)
            assert all(w["shadow"]["queue_depth"] == 0 and w["shadow"]["in_flight"] == 0 for w in workers), workers
            metrics = (await admin.get("/metrics")).text
            assert sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                       if line.startswith("facade_shadow_requests_total{")) == 40


async def _closing_app(scope: dict[str, object], receive: object, send: object) -> None:
    """Answers and closes the connection: every proxied request is a new mTLS handshake."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                "headers": [(b"x-served-by", b"catalog"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


@pytest.mark.slow
async def test_workers_originate_mesh_mtls_with_the_supervisors_rotating_edge_svid(tmp_path: Path) -> None:
    from facade.mesh.spiffe import SpiffeId
    from mesh.ca import CertificateAuthority
    from tests.mesh.pki import issue

    trust_domain, catalog_id = "shop.local", "spiffe://shop.local/ns/shop/sa/catalog"
    # The CA the supervisor will load (it keeps it: workers never see its key), and the catalog's SVID.
    ca = CertificateAuthority.init(tmp_path / "state", trust_domain)
    catalog = issue(ca, SpiffeId.parse(catalog_id))
    (tmp_path / "catalog.crt").write_bytes(catalog.cert_pem)
    (tmp_path / "catalog.key").write_bytes(catalog.key_pem())
    (tmp_path / "bundle.pem").write_bytes(ca.trust_bundle_pem)
    ttl = 4.0
    # The backend demands a client certificate from the mesh CA: an expired or missing edge SVID fails.
    async with serve_app(_closing_app, ssl_certfile=str(tmp_path / "catalog.crt"),
                         ssl_keyfile=str(tmp_path / "catalog.key"), ssl_ca_certs=str(tmp_path / "bundle.pem"),
                         ssl_cert_reqs=ssl.CERT_REQUIRED) as backend_url:
        (tmp_path / "facade.yaml").write_text(textwrap.dedent(f"""\
            listen: 127.0.0.1:0
            admin: {{listen: 127.0.0.1:0, token: {TOKEN}}}
            state_dir: state
            services:
              catalog: {{endpoints: ["{backend_url}"], identity: "{catalog_id}"}}
            routes:
              - name: all
                match: {{path: {{prefix: /}}}}
                backend: catalog
            mesh:
              trust_domain: {trust_domain}
              ca: {{svid_ttl: {ttl:g}s}}
            """))
        async with supervisor(tmp_path) as (_proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, timeout=10) as admin:
            assert await _one_off(url, 40) == {200: 40}
            # Keep sending past two lifetimes of the edge SVID: each worker must present the supervisor's
            # rotated SVID on every new handshake, or the backend refuses it once the first one expired.
            seen: dict[int, int] = {}
            deadline = time.monotonic() + 2.5 * ttl
            for _ in range(400):
                if time.monotonic() > deadline:
                    break
                for status, n in (await _one_off(url, 4)).items():
                    seen[status] = seen.get(status, 0) + n
                await asyncio.sleep(0.1)
            assert time.monotonic() > deadline and set(seen) == {200}, seen
            workers = (await admin.get("/workers")).json()["workers"]
            assert len(workers) == 2 and all(w["requests"] > 0 for w in workers), workers


def _metric_value(metrics: str, series: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(series + " ")]
    assert len(values) == 1, f"{series} not exposed once:\n{metrics}"
    return values[0]


@pytest.mark.slow
async def test_rate_limit_and_resilience_counters_are_summed_over_workers(tmp_path: Path) -> None:
    from tests.backends import EchoApp
    from tests.facade.test_shadow import closed_port_url

    app = EchoApp("echo")
    async with serve_app(app) as echo:
        (tmp_path / "facade.yaml").write_text(textwrap.dedent(f"""\
            listen: 127.0.0.1:0
            admin: {{listen: 127.0.0.1:0, token: {TOKEN}}}
            services:
              ok: {{endpoints: [{echo}]}}
              broken: {{endpoints: [{closed_port_url()}], retries: {{attempts: 1, retry_on: [connect-failure]}}}}
              erring:
                endpoints: [{echo}]
                retries: {{attempts: 0}}
                outlier_detection: {{consecutive_5xx: 1, max_ejection_percent: 100}}
              narrow:
                endpoints: [{echo}]
                timeouts: {{connect: 30s}}
                retries: {{attempts: 0}}
                connection_pool: {{max_connections: 1, max_pending_requests: 0}}
            routes:
              - name: limited
                match: {{path: {{prefix: /limited}}}}
                backend: ok
                rate_limit: {{requests_per_unit: 5, unit: hour, key: route}}
              - name: erring
                match: {{path: {{prefix: /status}}}}
                backend: erring
              - name: narrow
                match: {{path: {{prefix: /slow}}}}
                backend: narrow
              - name: broken
                match: {{path: {{prefix: /}}}}
                backend: broken
            """))
        async with supervisor(tmp_path) as (_proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=30) as admin, \
                httpx.AsyncClient(base_url=url, timeout=20, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            # Each worker has its own bucket of 5: more than 5 allowed means both workers' counts are in the sum.
            seen: dict[int, int] = {}
            for _ in range(200):
                status = (await c.get("/limited")).status_code
                seen[status] = seen.get(status, 0) + 1
                if seen.get(200, 0) > 5 and seen.get(429, 0) > 0:
                    break
            assert set(seen) == {200, 429} and 5 < seen[200] <= 10, seen
            # Every request to the closed port is retried once, whichever worker took it.
            assert {(await c.get("/x")).status_code for _ in range(20)} == {502}
            # A 500 ejects the one endpoint in the worker that saw it (ejection is per worker).
            assert {(await c.get("/status/500")).status_code for _ in range(20)} <= {500, 503}
            # Concurrent slow requests: a worker with its one connection busy refuses the next at once.
            slow = await asyncio.gather(*(c.get("/slow", params={"ms": "1500"}) for _ in range(8)))
            overflowed = sum(r.status_code == 503 for r in slow)
            assert overflowed > 0 and {r.status_code for r in slow} == {200, 503}, [r.status_code for r in slow]

            metrics = (await admin.get("/metrics")).text
            assert _metric_value(metrics, 'facade_ratelimit_requests_total{route="limited",decision="allowed"}') \
                == seen[200]
            assert _metric_value(metrics, 'facade_ratelimit_requests_total{route="limited",decision="limited"}') \
                == seen[429]
            assert _metric_value(metrics, 'facade_ratelimit_keys{route="limited"}') == 2  # one bucket per worker
            assert _metric_value(metrics, 'facade_upstream_retries_total{service="broken"}') == 20
            assert _metric_value(metrics, 'facade_upstream_pending_overflow_total{service="narrow"}') == overflowed
            workers = (await admin.get("/workers")).json()["workers"]
            saw_500 = sum(1 for w in workers if sum(n for step in w["served"].get("erring", {}).values()
                                                    for n in step.values()))
            assert saw_500 >= 1
            assert _metric_value(metrics, 'facade_upstream_ejections_total{service="erring",detector="consecutive"}') \
                == saw_500


def test_owned_counters_delta_starts_a_replaced_owner_from_zero() -> None:
    from facade.ratelimit import RateLimits
    from facade.worker import owned_counters_delta

    worker, summed = RateLimits(), RateLimits()
    shipped: dict[object, object] = {}
    old, new = object(), object()
    summed.absorb(owned_counters_delta({"r": (old, {"allowed": 7, "limited": 2})}, shipped, "ratelimit"))
    assert owned_counters_delta({"r": (old, {"allowed": 7, "limited": 2})}, shipped, "ratelimit") == {}
    summed.absorb(owned_counters_delta({"r": (old, {"allowed": 9, "limited": 2})}, shipped, "ratelimit"))
    # A reload changed the route's rate_limit: a new limiter, counting from 0 (3 is new, not 3 - 9).
    summed.absorb(owned_counters_delta({"r": (new, {"allowed": 3, "limited": 0})}, shipped, "ratelimit"))
    summed.report_keys(101, {"r": 1})
    summed.report_keys(102, {"r": 1})
    summed.report_keys(101, None)  # that worker exited: its buckets are gone
    text = summed.prometheus_text() + worker.prometheus_text()
    assert 'facade_ratelimit_requests_total{route="r",decision="allowed"} 12' in text, text
    assert 'facade_ratelimit_requests_total{route="r",decision="limited"} 2' in text
    assert 'facade_ratelimit_keys{route="r"} 1' in text
