"""The ``mtls: strict`` migration step end to end: a real facade (control plane + migrations), a real
sidecar in front of the carved service, real plaintext and mTLS traffic."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from facade.mesh.controlplane import MeshFeature
from facade.mesh.sidecar import Sidecar
from facade.runtime import FacadeRuntime
from tests.backends import EchoApp
from tests.harness import run_facade
from tests.mesh.stack import port_of, run_sidecar
from tests.mesh.test_sidecar_inbound import request
from tests.servers import bind_loopback, serve_app

TOKEN = "s3cret"
TD = "shop.local"

PLAN = """\
    name: shop
    route: catalog
    from: monolith
    to: catalog
    steps:
      - weight: 100
      - mtls: strict
      - pause: check the sidecar logs
    """


def config_text(monolith: str, sidecar_port: int) -> str:
    return textwrap.dedent(f"""\
        listen: 127.0.0.1:0
        admin: {{listen: 127.0.0.1:0, token: {TOKEN}}}
        state_dir: state
        services:
          monolith: {{endpoints: [{monolith}]}}
          catalog: {{endpoints: ["https://127.0.0.1:{sidecar_port}"], identity: "spiffe://{TD}/ns/shop/sa/catalog"}}
        routes:
          - name: catalog
            match: {{path: {{prefix: /catalog}}}}
            backend: monolith
        migrations: migrations/
        mesh:
          trust_domain: {TD}
          mode: PERMISSIVE
        """)


@dataclass
class MtlsStack:
    runtime: FacadeRuntime
    mesh: MeshFeature
    sidecar: Sidecar
    port: int  # the sidecar's inbound port
    admin: httpx.AsyncClient
    client: httpx.AsyncClient

    async def act(self, action: str, **body: Any) -> httpx.Response:
        return await self.admin.post(f"/migrations/shop/{action}", json=body)

    async def gates(self) -> dict[str, Any]:
        r = await self.admin.get("/migrations/shop", params={"journal": 0})
        assert r.status_code == 200, r.text
        gates: dict[str, Any] = r.json()["gates"]
        return gates


async def until(predicate: Callable[[], object], *, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def gates_become(s: MtlsStack, status: str, *, at_least: float = 0.0) -> dict[str, Any]:
    for _ in range(250):  # bounded: reports arrive every 0.1 s
        gates = await s.gates()
        if gates["status"] == status and (gates["results"][0]["value"] or 0.0) >= at_least:
            return gates
        await asyncio.sleep(0.02)
    raise AssertionError(f"gates never became {status}: {gates}")


@contextlib.asynccontextmanager
async def mtls_stack(tmp_path: Path) -> AsyncIterator[MtlsStack]:
    (tmp_path / "migrations").mkdir(exist_ok=True)
    (tmp_path / "migrations" / "001-plan.yaml").write_text(textwrap.dedent(PLAN))
    sock = bind_loopback()
    port = port_of(sock)
    auth = {"authorization": f"Bearer {TOKEN}"}
    async with (
        serve_app(EchoApp("monolith")) as monolith,
        serve_app(EchoApp("catalog")) as app,
        run_facade(tmp_path, config_text(monolith, port), features=True) as rt,
    ):
        mesh = rt.feature(MeshFeature)
        async with (
            run_sidecar(mesh, rt, "catalog", app=app, inbound_sock=sock, report_interval=0.1) as sidecar,
            httpx.AsyncClient(base_url=rt.admin_url, timeout=10, headers=auth) as admin,
            httpx.AsyncClient(base_url=rt.url, timeout=10) as client,
        ):
            yield MtlsStack(rt, mesh, sidecar, port, admin, client)


def sidecar_mode(s: MtlsStack) -> str | None:
    return s.sidecar.doc.mode if s.sidecar.doc is not None else None


async def test_mtls_step_switches_to_strict_gates_on_plaintext_and_rollback_restores(tmp_path: Path) -> None:
    async with mtls_stack(tmp_path) as s:
        assert (await s.act("start")).status_code == 200
        # Step 1 (weight 100): the facade reaches catalog over mTLS; plaintext is still served (PERMISSIVE).
        assert (await s.client.get("/catalog/x")).json()["name"] == "catalog"
        assert (await request(s.port, None, "/direct")).status == 200

        # Step 2 (mtls: strict): the sidecar goes STRICT; a plaintext request is refused; routing unchanged.
        assert (await s.act("next")).status_code == 200
        await until(lambda: sidecar_mode(s) == "STRICT")
        assert (await request(s.port, None, "/direct")).status is None
        assert (await s.client.get("/catalog/x")).json()["name"] == "catalog"
        gates = await gates_become(s, "fail")
        (result,) = gates["results"]
        assert result["name"] == "plaintext_requests.max" and result["value"] >= 1
        refused = await s.act("next")
        assert refused.status_code == 409 and refused.json()["code"] == "gate_failed"
        # The plaintext client keeps trying: still failing.
        assert (await request(s.port, None, "/direct")).status is None
        assert (await gates_become(s, "fail", at_least=2))["results"][0]["value"] == 2

        # Rollback to step 1: the configured mode (PERMISSIVE) comes back; plaintext is served again.
        assert (await s.act("rollback")).status_code == 200
        await until(lambda: sidecar_mode(s) == "PERMISSIVE")
        assert (await request(s.port, None, "/direct")).status == 200

        # Enter the step again with only mTLS traffic: a new window, zero plaintext attempts, the gate passes.
        assert (await s.act("next")).status_code == 200
        await until(lambda: sidecar_mode(s) == "STRICT")
        for _ in range(5):
            assert (await s.client.get("/catalog/x")).status_code == 200
        gates = await gates_become(s, "pass")
        assert gates["results"][0]["value"] == 0
        assert s.sidecar.config_view()["connections"]["tls_requests"] >= 6
        # Moving on (and completing) keeps STRICT.
        assert (await s.act("next")).status_code == 200
        assert (await s.act("next")).status_code == 200
        assert (await s.admin.get("/migrations/shop")).json()["state"] == "completed"
        await asyncio.sleep(0.2)
        assert sidecar_mode(s) == "STRICT" and s.mesh.mode_overrides == {"catalog": "STRICT"}


async def test_restart_reapplies_strict_from_the_durable_state(tmp_path: Path) -> None:
    async with mtls_stack(tmp_path) as s:
        await s.act("start")
        await s.act("next")
        await until(lambda: sidecar_mode(s) == "STRICT")
    # A new facade process on the same state dir: the step's STRICT mode comes back before any action.
    sock = bind_loopback()
    async with (
        serve_app(EchoApp("monolith")) as monolith,
        serve_app(EchoApp("catalog")) as app,
        run_facade(tmp_path, config_text(monolith, port_of(sock)), features=True) as rt,
    ):
        mesh = rt.feature(MeshFeature)
        assert mesh.mode_overrides == {"catalog": "STRICT"}
        assert mesh.documents["catalog"].mode == "STRICT"
        async with run_sidecar(mesh, rt, "catalog", app=app, inbound_sock=sock, report_interval=0.1) as sidecar:
            assert sidecar.doc is not None and sidecar.doc.mode == "STRICT"
            assert (await request(port_of(sock), None, "/direct")).status is None
            # The report of the refused attempt reaches the restarted control plane: the gate fails.
            r = None
            for _ in range(250):
                r = mesh.plaintext_seen("catalog", since=0.0)
                if r:
                    break
                await asyncio.sleep(0.02)
            assert r == 1
