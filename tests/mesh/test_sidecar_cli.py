"""``facade mesh sidecar`` as a real process against a real facade: ready line, serving, clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from facade.cli.console import EXIT_INVALID, EXIT_OK, EXIT_REFUSED
from tests.backends import EchoApp
from tests.servers import serve_app

from .pki import TD
from .stack import mesh_facade
from .test_sidecar_inbound import request

REPO = Path(__file__).resolve().parents[2]


def yaml(tmp_path: Path) -> str:
    return f"""
    state_dir: {tmp_path}/state
    admin: {{token: t}}
    services:
      catalog: {{endpoints: ["https://127.0.0.1:1"], identity: "spiffe://{TD}/ns/shop/sa/catalog"}}
    routes:
      - {{name: all, match: {{path: {{prefix: /}}}}, backend: catalog}}
    mesh: {{trust_domain: {TD}}}
    """


async def spawn(*args: str) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("FACADE_MESH_TOKEN", None)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "facade",
        "mesh",
        "sidecar",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(REPO),
    )


async def test_sidecar_process_bootstraps_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    async with serve_app(EchoApp("catalog")) as app_url, mesh_facade(tmp_path, yaml(tmp_path)) as (rt, feature):
        token, _ = feature.issue_token("catalog")
        proc = await spawn(
            "--service",
            "catalog",
            "--control-plane",
            rt.admin_url,
            "--bootstrap-token",
            token,
            "--inbound",
            "127.0.0.1:0",
            "--app",
            app_url,
            "--admin",
            "127.0.0.1:0",
            "--poll-wait",
            "1s",
            "--json",
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
            ready = json.loads(line)
            assert ready["spiffe_id"] == f"spiffe://{TD}/ns/shop/sa/catalog"
            port = int(ready["inbound"].rsplit(":", 1)[1])
            answer = await request(port, None, "/hello")  # PERMISSIVE (the default): plaintext is served
            assert answer.status == 200 and answer.body["raw_path"] == "/hello"
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), timeout=20)
        assert code == EXIT_OK


async def test_a_used_or_wrong_token_is_refused_and_missing_options_are_usage_errors(tmp_path: Path) -> None:
    async with mesh_facade(tmp_path, yaml(tmp_path)) as (rt, _):
        proc = await spawn(
            "--service",
            "catalog",
            "--control-plane",
            rt.admin_url,
            "--bootstrap-token",
            "v1.x.y",
            "--outbound",
            "127.0.0.1:0",
        )
        _, err = await asyncio.wait_for(proc.communicate(), timeout=20)
        assert proc.returncode == EXIT_REFUSED
        assert b"401" in err
    proc = await spawn("--service", "catalog", "--control-plane", "http://127.0.0.1:1", "--bootstrap-token", "t")
    await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == EXIT_INVALID


@pytest.mark.parametrize("flag", ["--inbound"])
async def test_inbound_without_app_is_a_usage_error(flag: str) -> None:
    proc = await spawn(
        "--service", "catalog", "--control-plane", "http://127.0.0.1:1", "--bootstrap-token", "t", flag, "127.0.0.1:0"
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == EXIT_INVALID
    assert b"--app" in err
