"""Shadow copies sent from a child process (``shadow: {sender: process}``, the default of ``facade serve``).

Real processes on loopback: ``facade serve`` (one process, or ``--workers 2``), its sender child, two
echo backends that answer differently (every comparison differs).
"""

from __future__ import annotations

import asyncio
import marshal
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from facade.cli.console import EXIT_INVALID
from facade.shadow.process import COPY, FRAME, copy_frame
from facade.shadow.sender import ShadowTicket
from facade.split import Split
from tests.facade.migration.stack import TOKEN, Switchable, config_text
from tests.facade.test_workers import PLAN, REPO, _one_off, _poll, supervisor
from tests.servers import serve_app

AUTH = {"authorization": f"Bearer {TOKEN}"}
SHADOW_PLAN = textwrap.dedent(PLAN).replace("steps:\n", "steps:\n  - shadow: {percent: 100}\n")


def test_copy_frame_carries_the_copy_as_plain_values() -> None:
    split = Split(primary="monolith", candidate="catalog", shadow_percent=100.0, step_label="0:shadow")
    ticket = ShadowTicket("catalog", split, "GET", 1024)
    frame = copy_frame(ticket, "/catalog/1?q=2", [("host", "shop"), ("accept", "*/*")], None,
                       200, [(b"content-type", b"application/json")], b'{"id": 1}', False)
    size, kind = FRAME.unpack_from(frame)
    assert (kind, size) == (COPY, len(frame) - FRAME.size)
    assert marshal.loads(frame[FRAME.size:]) == (
        "catalog", "monolith", "catalog", "0:shadow", "GET", 1024, "/catalog/1?q=2",
        [("host", "shop"), ("accept", "*/*")], None, 200, [(b"content-type", b"application/json")], b'{"id": 1}',
        False,
    )


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def _shadow(admin: httpx.AsyncClient) -> dict[str, Any]:
    r = await admin.get("/shadow")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def _child_ready(admin: httpx.AsyncClient, url: str, *, other_than: int | None = None) -> dict[str, Any]:
    """Mirror requests until the sender process is ready (it starts on the first copy); its view."""
    async def ready() -> dict[str, Any] | None:
        if other_than is None:
            await _one_off(url, 1)
        view = (await _shadow(admin))["process"]
        return view if view["ready"] and view["pid"] != other_than else None

    found = await _poll(ready, 30)
    assert found, await _shadow(admin)
    return found  # type: ignore[return-value]


async def _settled(admin: httpx.AsyncClient, mirrored: int) -> dict[str, Any]:
    """``/shadow`` once at least ``mirrored`` copies have a result and none is on its way."""
    async def done() -> dict[str, Any] | None:
        stats = await _shadow(admin)
        total = stats["totals"]["mirrored"]
        fates = total + stats["totals"]["dropped"]  # no capacity drops here: a dropped copy was lost by a child
        return stats if total >= mirrored and fates == sum(stats["copies"].values()) else None

    stats = await _poll(done, 20)
    assert stats, await _shadow(admin)
    return stats  # type: ignore[return-value]


@pytest.mark.slow
async def test_copies_leave_from_the_child_and_its_results_reach_every_view(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-shop.yaml").write_text(SHADOW_PLAN)
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        (tmp_path / "facade.yaml").write_text(config_text(old_url, new_url))
        async with supervisor(tmp_path, workers=1) as (proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=30) as admin:
            assert (await admin.post("/migrations/shop/start", json={})).status_code == 200
            child = await _child_ready(admin, url)
            assert child["pid"] != proc.pid and _alive(child["pid"])
            before = await _settled(admin, 1)
            warm = before["totals"]["mirrored"]
            assert sum(before["copies"].values()) == warm  # the warm-up copies, by whichever path
            assert await _one_off(url, 30) == {200: 30}

            stats = await _settled(admin, warm + 30)
            assert stats["sender"] == "process"
            assert stats["totals"]["mirrored"] == warm + 30 and stats["totals"]["dropped"] == 0, stats["totals"]
            assert stats["copies"]["process"] - before["copies"]["process"] == 30, (before["copies"], stats["copies"])
            route = stats["routes"]["catalog"]
            assert sum(v["count"] for v in route["candidate_latency_ms"].values()) == warm + 30, route
            # The echo bodies name the backend: every comparison differs, and the gates read them.
            report = (await admin.get("/compare", params={"route": "catalog"})).json()
            assert (report["diffs"]["compared"], report["diffs"]["differing"]) == (warm + 30, warm + 30), report
            diffs = (await admin.get("/diffs", params={"route": "catalog", "limit": 100})).json()
            assert diffs["seen"] == warm + 30 and diffs["samples"], diffs
            assert all(s["status"] == {"primary": 200, "candidate": 200} and s["request"] == "GET /catalog/item"
                       for s in diffs["samples"]), diffs["samples"][0]
            metrics = (await admin.get("/metrics")).text
            assert sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                       if line.startswith("facade_shadow_requests_total{")) == warm + 30
            assert f'facade_shadow_copies_total{{path="process"}} {stats["copies"]["process"]}' in metrics


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_mirrored_answers_are_compared_with_the_plan_steps_ignore_rules(tmp_path: Path, workers: int) -> None:
    # Whoever sends the copies compares them as the step says: a single facade's sender process, and with
    # --workers N every worker (the options travel with the snapshot; they used to stay on the supervisor's
    # sender, and the workers diffed with the defaults: every copy "differed" in the ignored fields).
    (tmp_path / "migrations").mkdir()
    # The echo answers differ only in the backend's name and the headers it saw (Host gets -shadow).
    (tmp_path / "migrations" / "001-shop.yaml").write_text(textwrap.dedent(PLAN).replace(
        "steps:\n", 'steps:\n  - shadow: {percent: 100, ignore: ["$.name", "$.headers"], learn_noise: false}\n'))
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        (tmp_path / "facade.yaml").write_text(config_text(old_url, new_url))
        async with supervisor(tmp_path, workers=workers) as (_proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=30) as admin:
            assert (await admin.post("/migrations/shop/start", json={})).status_code == 200
            if workers == 1:
                await _child_ready(admin, url)
            before = await _settled(admin, 1 if workers == 1 else 0)
            assert await _one_off(url, 30) == {200: 30}
            stats = await _settled(admin, before["totals"]["mirrored"] + 30)
            if workers == 1:
                assert stats["copies"]["process"] - before["copies"]["process"] == 30, stats["copies"]
            report = (await admin.get("/compare", params={"route": "catalog"})).json()
            assert report["diffs"]["compared"] == stats["totals"]["mirrored"] >= 30, report["diffs"]
            assert report["diffs"]["differing"] == 0, report["diffs"]


@pytest.mark.slow
async def test_a_killed_child_is_replaced_and_copies_go_inline_meanwhile(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-shop.yaml").write_text(SHADOW_PLAN)
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        (tmp_path / "facade.yaml").write_text(config_text(old_url, new_url))
        async with supervisor(tmp_path, workers=1) as (proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=30) as admin:
            assert (await admin.post("/migrations/shop/start", json={})).status_code == 200
            first = await _child_ready(admin, url)
            os.kill(first["pid"], signal.SIGKILL)

            async def noticed() -> bool:
                return not (await _shadow(admin))["process"]["ready"] or not _alive(first["pid"])

            assert await _poll(noticed, 10)
            before = await _shadow(admin)
            assert await _one_off(url, 10) == {200: 10}  # the primary keeps serving
            second = await _child_ready(admin, url, other_than=first["pid"])
            assert second["restarts"] == 1 and not _alive(first["pid"])
            after = await _shadow(admin)
            assert after["copies"]["inline"] > before["copies"]["inline"], (before["copies"], after["copies"])

            settled = await _settled(admin, after["totals"]["mirrored"])
            assert await _one_off(url, 20) == {200: 20}
            stats = await _settled(admin, settled["totals"]["mirrored"] + 20)
            assert stats["totals"]["mirrored"] == settled["totals"]["mirrored"] + 20, stats["totals"]
            assert stats["copies"]["process"] - settled["copies"]["process"] == 20, stats["copies"]
            assert stats["process"]["pid"] == second["pid"]
            # What the killed child still held is counted, as dropped "lost": every copy has a fate.
            assert set(stats["routes"]["catalog"]["dropped"]) <= {"lost"}, stats["routes"]["catalog"]

            proc.kill()  # kill -9 of the facade: its child goes with it (PR_SET_PDEATHSIG)
            await asyncio.wait_for(proc.wait(), 10)

            async def gone() -> bool:
                return not _alive(second["pid"])

            assert await _poll(gone, 10), f"sender process {second['pid']} outlived the facade"


@pytest.mark.slow
async def test_workers_each_mirror_through_their_child_and_the_supervisor_sums_them(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-shop.yaml").write_text(SHADOW_PLAN)
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        (tmp_path / "facade.yaml").write_text(config_text(old_url, new_url))
        async with supervisor(tmp_path, workers=2) as (_proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=30) as admin:
            assert (await admin.post("/migrations/shop/start", json={})).status_code == 200
            sent = 0

            async def both_children_took_copies() -> bool:
                nonlocal sent
                assert sent < 300, await _shadow(admin)
                assert await _one_off(url, 10) == {200: 10}
                sent += 10
                stats = await _settled(admin, sent)
                # Each worker's child starts on its first copy: process copies from both once both are up.
                return stats["copies"]["process"] >= 20

            assert await _poll(both_children_took_copies, 60), await _shadow(admin)
            stats = await _settled(admin, sent)
            assert stats["totals"]["mirrored"] == sent and stats["totals"]["dropped"] == 0, stats["totals"]
            assert stats["copies"]["process"] + stats["copies"]["inline"] == sent, stats["copies"]
            report = (await admin.get("/compare", params={"route": "catalog"})).json()
            assert (report["diffs"]["compared"], report["diffs"]["differing"]) == (sent, sent), report["diffs"]
            diffs = (await admin.get("/diffs", params={"route": "catalog"})).json()
            assert diffs["seen"] == sent
            workers = (await admin.get("/workers")).json()["workers"]
            assert all(w["requests"] > 0 for w in workers), workers


@pytest.mark.slow
async def test_a_workers_silent_sender_process_makes_the_supervisors_report_partial(tmp_path: Path) -> None:
    # A worker flushes its own sender process before it answers the supervisor's flush: when that child
    # does not answer, the worker says so, and the supervisor's report names it instead of judging as if
    # it had everything.
    import psutil

    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-shop.yaml").write_text(SHADOW_PLAN)
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        (tmp_path / "facade.yaml").write_text(config_text(old_url, new_url))
        async with supervisor(tmp_path, workers=2) as (proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=30) as admin:
            assert (await admin.post("/migrations/shop/start", json={})).status_code == 200

            async def children() -> list[int]:
                # A child took copies (so it is up and answers flushes): the workers' children, by command line.
                assert await _one_off(url, 5) == {200: 5}
                if (await _shadow(admin))["copies"]["process"] == 0:
                    return []
                return [p.pid for p in psutil.Process(proc.pid).children(recursive=True)
                        if "facade.shadow.child" in " ".join(p.cmdline())]

            kids = await _poll(children, 60)
            assert kids, "no worker's shadow sender process took a copy"
            assert (await _poll(lambda: _flushed_whole(admin), 30)), "reports stayed partial with every child up"
            for pid in kids:  # type: ignore[attr-defined]
                os.kill(pid, signal.SIGSTOP)  # alive, answering nothing
            try:
                report = (await admin.get("/compare", params={"route": "catalog"})).json()
                missing = (report.get("partial") or {}).get("missing", [])
                named = [m for m in missing if m.startswith("worker ") and "shadow sender process (pid " in m]
                assert named and all(any(f"(pid {pid})" in m for pid in kids) for m in named), report  # type: ignore[attr-defined]
            finally:
                for pid in kids:  # type: ignore[attr-defined]
                    os.kill(pid, signal.SIGCONT)
            assert await _poll(lambda: _flushed_whole(admin), 30), "still partial once the child answers again"


async def _flushed_whole(admin: httpx.AsyncClient) -> bool:
    report = (await admin.get("/compare", params={"route": "catalog"})).json()
    return not report.get("partial")


@pytest.mark.slow
async def test_sender_inline_keeps_copies_on_the_event_loop(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-shop.yaml").write_text(SHADOW_PLAN)
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        (tmp_path / "facade.yaml").write_text(config_text(old_url, new_url) + "shadow: {sender: inline}\n")
        async with supervisor(tmp_path, workers=1) as (_proc, url, admin_url), \
                httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=30) as admin:
            assert (await admin.post("/migrations/shop/start", json={})).status_code == 200
            assert await _one_off(url, 10) == {200: 10}
            stats = await _settled(admin, 10)
            assert stats["sender"] == "inline" and "process" not in stats
            assert stats["copies"] == {"process": 0, "inline": 10}


async def test_an_unknown_sender_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "facade.yaml").write_text(config_text("http://127.0.0.1:9", "http://127.0.0.1:9").replace(
        "migrations: migrations/\n", "shadow: {sender: thread}\n"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "facade", "serve", "-c", str(tmp_path / "facade.yaml"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(tmp_path),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == EXIT_INVALID, err
    assert b"sender" in err and b"must be one of process, inline" in err and b"'thread'" in err, err
    assert not out


async def test_a_child_that_does_not_read_makes_copies_drop_never_wait(tmp_path: Path) -> None:
    from tests.facade.test_shadow import JsonApp, fixed, shadow_facade, until

    body = {"pad": "x" * 32_768}  # ~32 KiB a copy: the 256 KiB budget plus the socket's buffer fill fast
    async with serve_app(JsonApp(fixed(body))) as m, serve_app(JsonApp(fixed(body))) as c, \
            shadow_facade(tmp_path, m, c, sender="process", max_queued_bytes=256 * 1024, learn_noise=False) \
            as (rt, sender), httpx.AsyncClient(base_url=rt.url, timeout=10) as client:
        assert (await client.get("/catalog/1")).status_code == 200  # the first copy starts the child
        child = sender.child  # type: ignore[attr-defined]
        await until(lambda: child.ready, 30)
        os.kill(child.pid, signal.SIGSTOP)  # alive, reading nothing
        try:
            for _ in range(100):
                assert (await client.get("/catalog/1")).status_code == 200  # the primary never waits
                if sender.dropped[("catalog", "capacity")]:
                    break
            assert sender.dropped[("catalog", "capacity")] > 0, sender.stats()["totals"]
            handed = sender.copies["process"]
            # A report asked now cannot have the child's latest results: it says so.
            async with httpx.AsyncClient(base_url=rt.admin_url, timeout=10) as admin:
                report = (await admin.get("/compare", params={"route": "catalog"})).json()
            assert report["partial"] == {"missing": [f"shadow sender process (pid {child.pid})"]}, report
        finally:
            os.kill(child.pid, signal.SIGCONT)
        # Once it reads again, every copy it was handed gets its fate: a result, or a drop by its own
        # byte budget (the burst arrives at once); none is lost or counted twice.
        await until(lambda: sum(child.accounted.values()) == handed, 20)
        assert (await sender.flush()) == ()
        assert sum(child.accounted.values()) == handed and sender.dropped[("catalog", "lost")] == 0
        assert sender.results[("catalog", "compared")] > sender.copies["inline"]  # the child compared some


def test_a_child_that_keeps_dying_at_start_is_restarted_ever_more_slowly() -> None:
    # Every restart costs an interpreter start-up (~0.5-1 s of CPU): a child that cannot start must not
    # burn a core. A child that ran a while is replaced at once.
    from facade.shadow.process import HEALTHY_RUN_S, RESTART_BACKOFF_MAX_S, restart_delay

    delays = [restart_delay(0.2, n) for n in range(10)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert delays == sorted(delays) and delays[-1] == RESTART_BACKOFF_MAX_S
    assert restart_delay(HEALTHY_RUN_S, 9) == 0.0


async def test_the_child_takes_the_parents_health_checks(tmp_path: Path) -> None:
    # The child's pools run no active checks: it gets the parent's results, so a copy never goes to an
    # endpoint the checks took out (an inline copy, through the parent's pool, would not either).
    from facade.config import load_config
    from facade.runtime import FacadeRuntime
    from facade.shadow import ShadowFeature
    from tests.backends import EchoApp
    from tests.facade.test_shadow import SHADOW_SPLIT, until, write_config
    from tests.servers import bind_loopback

    monolith, up, down = EchoApp("monolith"), EchoApp("up"), EchoApp("down")
    down.health_status = 503
    async with serve_app(monolith) as m, serve_app(up) as u, serve_app(down) as d:
        path = write_config(tmp_path, f"""
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0}}
services:
  monolith: {{endpoints: [{m}]}}
  catalog:
    endpoints: [{u}, {d}]
    health_check: {{path: /healthz, interval: 100ms, timeout: 1s, unhealthy_threshold: 1}}
routes:
  - name: catalog
    match: {{path: {{prefix: /catalog}}}}
    backend: monolith
""")
        runtime = FacadeRuntime(load_config(str(path)), config_path=str(path), watch_interval=None)
        sender = ShadowFeature.attach(runtime, sender="process", learn_noise=False).sender
        await runtime.start(listen_sock=bind_loopback(), admin_sock=bind_loopback())
        try:
            runtime.swap(splits={"catalog": SHADOW_SPLIT})
            pool = runtime.upstreams.get("catalog")
            assert pool is not None
            await until(lambda: not next(ep for ep in pool.endpoints if ep.url == d).available, 10)
            async with httpx.AsyncClient(base_url=runtime.url, timeout=10) as client:
                assert (await client.get("/catalog/0")).status_code == 200  # the first copy starts the child
                child = sender.child  # type: ignore[attr-defined]
                await until(lambda: child.ready, 30)
                # The endpoint was down before the child started: the first health message follows its init
                # on the same ordered channel, before "ready" came back and before any copy was handed over.
                handed = sender.copies["process"]
                for i in range(20):
                    assert (await client.get(f"/catalog/{i}")).status_code == 200
            await until(lambda: sender.copies["process"] - handed == 20, 10)
            await until(lambda: sum(child.accounted.values()) >= sender.copies["process"], 10)
            copies_to_down = [r for r in down.requests if r["raw_path"].startswith("/catalog")]
            assert copies_to_down == [], copies_to_down
            assert sum(1 for r in up.requests if r["raw_path"].startswith("/catalog")) >= 20
        finally:
            await runtime.stop()
