"""``facade serve`` as a real process: kill -9 mid-migration, restart, and the same step is served."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from facade.cli.console import EXIT_INVALID
from tests.facade.migration.stack import TOKEN, Switchable, config_text
from tests.servers import serve_app

REPO = Path(__file__).resolve().parents[3]
PLAN = """\
    name: shop
    route: catalog
    from: monolith
    to: catalog
    sticky: {cookie: session_id}
    steps:
      - shadow: {percent: 100}
      - weight: 25
      - weight: 50
      - weight: 100
    """
USERS = [f"user-{i}" for i in range(60)]


@contextlib.asynccontextmanager
async def facade_process(tmp_path: Path, log_name: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, str]]:
    """``python -m facade serve`` on ephemeral ports; yields (process, url, admin_url) once it is ready."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(tmp_path / log_name, "wb") as log:  # noqa: ASYNC230 -- creating an empty log file, once
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "facade", "serve", "-c", str(tmp_path / "facade.yaml"), "--no-watch",
            stdout=asyncio.subprocess.PIPE, stderr=log, cwd=str(tmp_path), env=env,
        )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("facade ready:"), (line, (tmp_path / log_name).read_text())
        # "facade ready: listening on URL, admin on URL"
        url = line.split("listening on ", 1)[1].split(",", 1)[0].strip()
        admin = line.rsplit("admin on ", 1)[1].strip()
        yield proc, url, admin
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


async def _sides(url: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        sides = {}
        for user in USERS:
            r = await client.get("/catalog/item", headers={"cookie": f"session_id={user}"})
            assert r.status_code == 200
            sides[user] = r.headers["x-served-by"]
        return sides


@pytest.mark.slow
async def test_kill_9_and_restart_serves_the_same_step(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-shop.yaml").write_text(textwrap.dedent(PLAN))
    auth = {"authorization": f"Bearer {TOKEN}"}
    async with serve_app(Switchable("monolith")) as old_url, serve_app(Switchable("catalog")) as new_url:
        (tmp_path / "facade.yaml").write_text(config_text(old_url, new_url))

        async with facade_process(tmp_path, "first.log") as (proc, url, admin_url):
            async with httpx.AsyncClient(base_url=admin_url, headers=auth, timeout=10) as admin:
                for action in ("start", "next", "next"):
                    r = await admin.post(f"/migrations/shop/{action}", json={"actor": "ann", "reason": action})
                    assert r.status_code == 200, r.text
            before = await _sides(url)
            assert set(before.values()) == {"monolith", "catalog"}
            proc.kill()  # SIGKILL: no drain, no goodbye
            await asyncio.wait_for(proc.wait(), 10)
        assert (tmp_path / "state" / "migrations.sqlite3").exists()

        async with facade_process(tmp_path, "second.log") as (proc, url, admin_url):
            async with httpx.AsyncClient(base_url=admin_url, timeout=10) as admin:
                status = (await admin.get("/migrations/shop")).json()
                routes = (await admin.get("/routes")).json()["routes"]
            assert (status["state"], status["step"], status["version"]) == ("running", 3, 3)
            assert status["routing"]["catalog"]["to_percent"] == 50.0
            # The journal counts steps as the status does (and `facade migrate plan` lists them): 1-based.
            assert [(e["action"], e["actor"], e["to_step"]) for e in status["journal"]] == [
                ("start", "ann", 1), ("next", "ann", 2), ("next", "ann", 3),
            ]
            catalog = next(r for r in routes if r["name"] == "catalog")
            assert catalog["migration"]["step"] == "shop step 3: weight 50"
            assert await _sides(url) == before  # every user on the same side as before the crash
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 15) == 0


@pytest.mark.slow
async def test_serve_refuses_to_start_on_an_invalid_plan(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-shop.yaml").write_text(textwrap.dedent(PLAN).replace("weight: 25", "weight: 250"))
    (tmp_path / "facade.yaml").write_text(config_text("http://127.0.0.1:9", "http://127.0.0.1:9"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "facade", "serve", "-c", str(tmp_path / "facade.yaml"), "--no-watch",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(tmp_path), env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == EXIT_INVALID
    assert b"facade ready" not in out
    assert "001-shop.yaml:8:13: steps[1].weight: must be 0-100, got 250" in err.decode(), err.decode()[-2000:]
