"""Two facades sharing one PostgreSQL state store (``state_store: postgresql://...``), as replicas run.

Each facade is real (listener + admin on loopback ephemeral ports) in front of the same monolith and
carved-out service; the store is a throwaway PostgreSQL cluster (``conftest.postgres_cluster``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from facade.cli import main
from facade.cli.console import EXIT_OK
from facade.runtime import FacadeRuntime
from tests.facade.migration.stack import TOKEN, Switchable, config_text
from tests.harness import run_facade
from tests.postgres import PostgresCluster
from tests.servers import serve_app

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'facade[postgres]')")

REPO = Path(__file__).resolve().parents[3]
AUTH = {"authorization": f"Bearer {TOKEN}"}
PLAN = """\
    name: shop
    route: catalog
    from: monolith
    to: catalog
    steps:
      - weight: 100
      - {weight: 0, rollback: true}
      - weight: 100
    """
GATED_PLAN = """\
    name: shop
    route: catalog
    from: monolith
    to: catalog
    steps:
      - weight: 100
        gates: {min_requests: 40, error_rate: {max: 50%}}
      - weight: 100
    """
AUTO_PLAN = """\
    name: shop
    route: catalog
    from: monolith
    to: catalog
    interval: 0.3s
    steps:
    """ + "".join(f"  - {{weight: {w}, hold: 1s}}\n    " for w in (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100))


def _prepare(folder: Path, plan: str) -> Path:
    (folder / "migrations").mkdir(parents=True)
    (folder / "migrations" / "001-shop.yaml").write_text(textwrap.dedent(plan))
    return folder


async def _until(check: Callable[[], Awaitable[bool]], *, within: float, what: str) -> float:
    """Poll ``check`` until true; the seconds it took. Fails after ``within`` seconds."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.02)


async def _served_by(client: httpx.AsyncClient) -> str:
    r = await client.get("/catalog/item")
    assert r.status_code == 200, r.text
    return str(r.headers["x-served-by"])


class Replica:
    def __init__(self, runtime: FacadeRuntime, client: httpx.AsyncClient, admin: httpx.AsyncClient) -> None:
        self.runtime, self.client, self.admin = runtime, client, admin

    async def served_by(self) -> str:
        return await _served_by(self.client)

    async def status(self) -> dict[str, Any]:
        r = await self.admin.get("/migrations/shop")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc

    async def act(self, action: str, **body: Any) -> httpx.Response:
        return await self.admin.post(f"/migrations/shop/{action}", json={"actor": "test", **body})


@contextlib.asynccontextmanager
async def replicas(tmp_path: Path, url: str, plan: str = PLAN) -> AsyncIterator[tuple[Replica, Replica]]:
    """Two facades (own folders and state_dir, same plan) on one shared store."""
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        text = config_text(old_url, new_url) + f"state_store: {url}\n"
        async with contextlib.AsyncExitStack() as stack:
            pair = []
            for name in ("a", "b"):
                runtime = await stack.enter_async_context(
                    run_facade(_prepare(tmp_path / name, plan), text, features=True))
                client = await stack.enter_async_context(httpx.AsyncClient(base_url=runtime.url, timeout=10))
                admin = await stack.enter_async_context(
                    httpx.AsyncClient(base_url=runtime.admin_url, timeout=10, headers=AUTH))
                pair.append(Replica(runtime, client, admin))
            yield pair[0], pair[1]


async def test_a_transition_on_one_replica_is_routed_by_the_other(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with replicas(tmp_path, postgres_url) as (a, b):
        assert await b.served_by() == "monolith"
        r = await a.act("start")
        assert r.status_code == 200, r.text
        assert await a.served_by() == "catalog"  # the committing replica routes it before answering

        async def b_follows() -> bool:
            return await b.served_by() == "catalog"

        await _until(b_follows, within=10, what="replica b routes step 1 (weight 100)")
        status = await b.status()
        assert (status["state"], status["step"], status["version"]) == ("running", 1, 1)
        assert [e["action"] for e in status["journal"]] == ["start"]  # the one journal, read from b

        # Both replicas report what they route; each one's status lists both.
        async def both_listed() -> bool:
            doc = await a.status()
            return sorted((i["admin"], i["version"]) for i in doc["instances"]) == sorted(
                [(a.runtime.admin_url, 1), (b.runtime.admin_url, 1)])

        await _until(both_listed, within=10, what="a's status lists both replicas at version 1")
        assert (await a.status())["store_error"] is None
        # `facade migrate status` shows each instance and the step it routes.
        capsys.readouterr()
        argv = ["migrate", "status", "shop", "--admin", b.runtime.admin_url, "-c", os.devnull]
        assert await asyncio.to_thread(main, argv) == EXIT_OK
        out = capsys.readouterr().out
        assert "instances:" in out and "INSTANCE" in out, out
        for replica in (a, b):
            row = next(line for line in out.splitlines() if replica.runtime.admin_url in line)
            assert "running 1" in row and "(behind)" not in row, out


async def test_concurrent_next_on_both_replicas_makes_one_transition(tmp_path: Path, postgres_url: str) -> None:
    async with replicas(tmp_path, postgres_url) as (a, b):
        assert (await a.act("start")).status_code == 200

        async def b_at_version_1() -> bool:
            return (await b.status())["version"] == 1

        await _until(b_at_version_1, within=10, what="b follows the start")
        for round_ in range(3):  # each round: both replicas decide from the same version at once
            version = (await a.status())["version"]
            answers = await asyncio.gather(a.act("next", force=True, reason=f"race {round_}"),
                                           b.act("next", force=True, reason=f"race {round_}"))
            codes = sorted(r.status_code for r in answers)
            assert codes == [200, 409], [r.text for r in answers]
            refused = next(r for r in answers if r.status_code == 409).json()
            assert refused["code"] == "conflict"
            assert (await a.status())["version"] == version + 1
            if round_ < 2:
                assert (await a.act("rollback")).status_code == 200  # back, for the next round

                async def b_caught_up(v: int = version + 2) -> bool:
                    return (await b.status())["version"] == v

                await _until(b_caught_up, within=10, what="b follows the rollback")
        journal = (await a.status())["journal"]
        assert [e["action"] for e in journal] == ["start", "next", "rollback", "next", "rollback", "next"]


async def test_a_replicas_own_commits_are_never_undone_by_its_follower(tmp_path: Path, postgres_url: str) -> None:
    """A re-read that began before this replica's commit returns an older version: it must not win."""
    async with replicas(tmp_path, postgres_url) as (a, b):
        assert (await a.act("start")).status_code == 200
        for i in range(30):  # back to back, while the follower re-reads every second and on every NOTIFY
            r = await a.act("next" if i % 2 == 0 else "rollback")
            assert r.status_code == 200, (i, r.text)
        assert (await a.status())["version"] == 31

        async def b_at_31() -> bool:
            return (await b.status())["version"] == 31

        await _until(b_at_31, within=10, what="b follows every transition")


async def test_gates_count_every_replicas_traffic(tmp_path: Path, postgres_url: str) -> None:
    async with replicas(tmp_path, postgres_url, GATED_PLAN) as (a, b):
        assert (await a.act("start")).status_code == 200

        async def b_on_catalog() -> bool:
            return await b.served_by() == "catalog"

        await _until(b_on_catalog, within=10, what="b follows the start")
        for _ in range(25):  # 25 + 25 requests (and b's probes above): each replica alone is short of 40
            assert await a.served_by() == "catalog"
            assert await b.served_by() == "catalog"
        local = a.runtime.telemetry.side_stats("catalog", "catalog").requests
        assert local < 40  # a's own window alone would leave min_requests inconclusive

        async def summed() -> bool:
            gates = (await a.status())["gates"]
            return gates["status"] == "pass"

        await _until(summed, within=10, what="a's gates see b's published requests too")
        gates = (await a.status())["gates"]
        counted = next(r for r in gates["results"] if r["name"] == "min_requests")["value"]
        assert counted >= 50, gates
        r = await a.act("next")  # gates pass on the sum: no --force needed
        assert r.status_code == 200, r.text


@pytest.mark.slow
async def test_a_store_outage_keeps_routing_refuses_transitions_and_recovers(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    async with replicas(tmp_path, postgres_url) as (a, b):
        assert (await a.act("start")).status_code == 200

        async def b_on_catalog() -> bool:
            return await b.served_by() == "catalog"

        await _until(b_on_catalog, within=10, what="b follows the start")
        await asyncio.to_thread(postgres_cluster.stop)
        await asyncio.sleep(1.5)  # more than a follow interval: both replicas have met the outage
        # Routing stays on the step in force: never the config's initial state (the monolith).
        for replica in (a, b):
            assert {await replica.served_by() for _ in range(20)} == {"catalog"}
        refused = await b.act("next", force=True, reason="during the outage")
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "unavailable"
        assert "unreachable" in refused.json()["error"] and "stays at its current step" in refused.json()["error"]
        status = await a.status()  # the status still answers, from what this replica routes
        assert status["version"] == 1 and "unreachable" in status["store_error"]

        await asyncio.to_thread(postgres_cluster.start)

        async def next_goes_through() -> bool:
            return (await b.act("next", force=True, reason="after the outage")).status_code == 200

        await _until(next_goes_through, within=15, what="a transition commits once the store is back")

        async def a_follows() -> bool:
            return await a.served_by() == "monolith" and (await a.status())["store_error"] is None

        await _until(a_follows, within=10, what="a reconnects by itself and follows step 2 (weight 0)")


@contextlib.asynccontextmanager
async def facade_process(folder: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, str]]:
    """``python -m facade serve`` in ``folder``; yields (process, url, admin_url) once ready."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(folder / "serve.log", "wb") as log:  # noqa: ASYNC230 -- creating an empty log file, once
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "facade", "serve", "-c", str(folder / "facade.yaml"), "--no-watch",
            stdout=asyncio.subprocess.PIPE, stderr=log, cwd=str(folder), env=env,
        )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("facade ready:"), (line, (folder / "serve.log").read_text())
        url = line.split("listening on ", 1)[1].split(",", 1)[0].strip()
        yield proc, url, line.rsplit("admin on ", 1)[1].strip()
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


@pytest.mark.slow
async def test_kill_9_of_the_auto_mode_leader_hands_over_to_the_other(tmp_path: Path, postgres_url: str) -> None:
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        text = config_text(old_url, new_url) + f"state_store: {postgres_url}\n"
        folders = [_prepare(tmp_path / name, AUTO_PLAN) for name in ("a", "b")]
        for folder in folders:
            (folder / "facade.yaml").write_text(text)
        async with (
            facade_process(folders[0]) as (proc_a, _, admin_a),
            facade_process(folders[1]) as (proc_b, _, admin_b),
            httpx.AsyncClient(timeout=10, headers=AUTH) as http,
        ):
            r = await http.post(f"{admin_a}/migrations/shop/auto", json={"actor": "test"})
            assert r.status_code == 200, r.text

            async def advanced_twice() -> bool:
                return int((await http.get(f"{admin_b}/migrations/shop")).json()["version"]) >= 3

            await _until(advanced_twice, within=30, what="auto mode advances twice")
            logs = {name: (folder / "serve.log").read_text() for name, folder in zip("ab", folders, strict=True)}
            leaders = [name for name, log in logs.items() if "leads now" in log]
            assert len(leaders) == 1, logs  # exactly one replica's auto mode acts
            leader, survivor_admin = (proc_a, admin_b) if leaders == ["a"] else (proc_b, admin_a)
            leader.kill()  # SIGKILL: no goodbye, its session (and the lock) dies with the socket
            await asyncio.wait_for(leader.wait(), 10)
            killed_at = int((await http.get(f"{survivor_admin}/migrations/shop")).json()["version"])

            async def survivor_continues() -> bool:
                doc = (await http.get(f"{survivor_admin}/migrations/shop")).json()
                return int(doc["version"]) >= killed_at + 2

            await _until(survivor_continues, within=30, what="the other replica continues auto mode")
            journal = (await http.get(f"{survivor_admin}/migrations/shop", params={"journal": 100})).json()["journal"]
            versions = [e["version"] for e in journal]
            assert versions == list(range(1, len(versions) + 1))  # one transition per version, none lost
            survivor_log = (folders[1] if leaders == ["a"] else folders[0]) / "serve.log"
            assert "leads now" in survivor_log.read_text()


SPLIT_PLAN = """\
    name: shop
    route: catalog
    from: monolith
    to: catalog
    steps:
      - weight: 50
      - weight: 100
    """


@pytest.mark.slow
async def test_compare_sums_every_replicas_published_window(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two `facade serve` processes on one PostgreSQL: `facade compare` counts the requests both served."""
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        text = config_text(old_url, new_url) + f"state_store: {postgres_url}\n"
        folders = [_prepare(tmp_path / name, SPLIT_PLAN) for name in ("a", "b")]
        for folder in folders:
            (folder / "facade.yaml").write_text(text)
        async with (
            facade_process(folders[0]) as (_, url_a, admin_a),
            facade_process(folders[1]) as (_, url_b, admin_b),
            httpx.AsyncClient(timeout=10, headers=AUTH) as http,
        ):
            r = await http.post(f"{admin_a}/migrations/shop/start", json={"actor": "test"})
            assert r.status_code == 200, r.text

            async def both_on_step_1() -> bool:
                versions = [(await http.get(f"{admin}/migrations/shop", params={"journal": 0})).json()["version"]
                            for admin in (admin_a, admin_b)]
                return versions == [1, 1]

            await _until(both_on_step_1, within=15, what="both replicas route step 1")
            sent = {url_a: 30, url_b: 20}  # every request in step 1's window, split across the two
            for url, count in sent.items():
                for i in range(count):
                    answer = await http.get(f"{url}/catalog/item/{i}")
                    assert answer.status_code == 200, answer.text

            async def fleet_counts_all() -> bool:
                doc = (await http.get(f"{admin_a}/compare", params={"route": "catalog"})).json()
                return int(doc["old"]["requests"]) + int(doc["new"]["requests"]) == sum(sent.values())

            await _until(fleet_counts_all, within=20, what="a's compare counts b's published requests too")
            doc = (await http.get(f"{admin_a}/compare", params={"route": "catalog"})).json()
            assert doc["scope"] == "fleet" and doc["store_error"] is None
            assert doc["old"]["requests"] > 0 and doc["new"]["requests"] > 0  # weight 50: both sides served
            parts = {i["instance"].rsplit(":", 1)[1]: i for i in doc["instances"]}
            port_a, port_b = admin_a.rsplit(":", 1)[1], admin_b.rsplit(":", 1)[1]
            assert set(parts) == {port_a, port_b}
            assert (parts[port_a]["requests"], parts[port_a]["live"], parts[port_a]["age_s"]) == (30, True, 0.0)
            assert parts[port_b]["requests"] == 20 and parts[port_b]["live"] is False
            assert parts[port_b]["age_s"] is not None and parts[port_b]["age_s"] >= 0
            # A rolling window is this instance's own numbers, and says so.
            local = (await http.get(f"{admin_a}/compare", params={"route": "catalog", "window": "1m"})).json()
            assert local["scope"] == "local" and local["old"]["requests"] + local["new"]["requests"] == 30

            # The CLI reads the same numbers and names the instances they come from.
            capsys.readouterr()
            argv = ["compare", "catalog", "--admin", admin_b, "-c", os.devnull]
            assert await asyncio.to_thread(main, argv) == EXIT_OK
            out = capsys.readouterr().out
            assert "summed over 2 instance(s)" in out and f":{port_b} 20 req (live)" in out, out
            assert f":{port_a} 30 req (" in out, out
            argv = ["compare", "catalog", "--admin", admin_b, "-c", os.devnull, "--json"]
            assert await asyncio.to_thread(main, argv) == EXIT_OK
            report = json.loads(capsys.readouterr().out)
            assert report["old"]["requests"] + report["new"]["requests"] == 50
