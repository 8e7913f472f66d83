"""The control plane on the facade's admin listener: versioned long-poll, reload gating, tokens, renewal,
mode overrides, and a sidecar that keeps its last good config when the control plane goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from facade.mesh.ca import CertificateAuthority
from facade.mesh.controlplane import MeshFeature
from facade.mesh.identity import WorkloadIdentity
from facade.mesh.sidecar import Sidecar
from facade.mesh.spiffe import SpiffeId
from facade.mesh.svid_auth import sign_request
from facade.runtime import FacadeRuntime
from tests.backends import EchoApp
from tests.servers import bind_loopback, serve_app

from .pki import TD, issue
from .stack import mesh_facade, port_of, run_sidecar
from .test_sidecar_inbound import request

CATALOG = SpiffeId.workload(TD, "shop", "catalog")
ADMIN = "cp-admin-token"

DENY_ADMIN = """
    - name: deny-admin
      action: DENY
      rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
"""


def config_text(tmp_path: Path, port: int, *, policies: str = "", mode: str = "PERMISSIVE", extra: str = "") -> str:
    return textwrap.dedent(f"""
    state_dir: {tmp_path}/state
    admin: {{token: {ADMIN}}}
    services:
      catalog: {{endpoints: ["https://127.0.0.1:{port}"], identity: "{CATALOG}"}}
    routes:
      - {{name: all, match: {{path: {{prefix: /}}}}, backend: catalog}}
    mesh:
      trust_domain: {TD}
      mode: {mode}
    {extra}
      policies:
    """) + textwrap.indent(textwrap.dedent(policies) or "    []\n", "    ")


@dataclass
class Env:
    runtime: FacadeRuntime
    feature: MeshFeature
    sidecar: Sidecar
    app: EchoApp
    port: int
    path: Path

    async def rewrite(self, text: str) -> bool:
        self.path.write_text(text)
        return (await self.runtime.reload("test")).ok


@contextlib.asynccontextmanager
async def env(tmp_path: Path, **kwargs: str) -> AsyncIterator[Env]:
    app = EchoApp("catalog")
    sock = bind_loopback()
    port = port_of(sock)
    async with (
        serve_app(app) as app_url,
        mesh_facade(tmp_path, config_text(tmp_path, port, **kwargs)) as (rt, feature),
        run_sidecar(feature, rt, "catalog", app=app_url, inbound_sock=sock, poll_wait=5.0) as sidecar,
    ):
        yield Env(rt, feature, sidecar, app, port, tmp_path / "facade.yaml")


async def until(predicate: object, *, timeout: float = 5.0) -> None:
    """Wait (bounded) until ``predicate()`` is true."""
    for _ in range(int(timeout / 0.02)):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_long_poll_returns_the_new_version_at_once_and_the_sidecar_applies_it(tmp_path: Path) -> None:
    async with env(tmp_path) as e:
        assert e.sidecar.doc is not None and e.sidecar.doc.version == 1
        assert (await request(e.port, None, "/admin/x")).status == 200
        auth = {"authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=e.runtime.admin_url, headers=auth) as client:
            poll = asyncio.create_task(
                client.get("/mesh/config", params={"service": "catalog", "version": 1, "wait": "10s"})
            )
            await asyncio.sleep(0.1)
            assert not poll.done()  # it waits
            assert await e.rewrite(config_text(tmp_path, e.port, policies=DENY_ADMIN))
            r = await asyncio.wait_for(poll, timeout=3)
            assert r.status_code == 200
            assert r.json()["version"] == 2
            assert [p["name"] for p in r.json()["policies"]] == ["deny-admin"]
        await until(lambda: e.sidecar.doc is not None and e.sidecar.doc.version == 2)
        # Everything swapped together: document, gate state, both Proxy snapshots.
        assert [p.name for p in e.sidecar.gate_state.policies] == ["deny-admin"]
        assert e.sidecar._in_holder is not None and e.sidecar._in_holder.current.version == 2
        assert e.sidecar._out_holder is not None and e.sidecar._out_holder.current.version == 2
        assert (await request(e.port, None, "/admin/x")).status == 403


async def test_unchanged_version_answers_304_after_the_wait_and_bad_queries_are_refused(tmp_path: Path) -> None:
    async with env(tmp_path) as e:
        auth = {"authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=e.runtime.admin_url, headers=auth) as client:
            r = await client.get("/mesh/config", params={"service": "catalog", "version": 1, "wait": "200ms"})
            assert r.status_code == 304
            assert r.headers["x-mesh-version"] == "1"
            assert (await client.get("/mesh/config", params={"service": "nope"})).status_code == 404
            assert (await client.get("/mesh/config", params={"service": "catalog", "version": "x"})).status_code == 400
        # A reload that changes nothing the sidecar sees keeps the version.
        assert await e.rewrite(config_text(tmp_path, e.port) + "\n# comment\n")
        assert e.feature.version == 1


async def test_an_invalid_policy_is_refused_by_reload_and_never_reaches_a_sidecar(tmp_path: Path) -> None:
    async with env(tmp_path, policies=DENY_ADMIN) as e:
        bad = """
            - name: broken
              action: DENNY
              rules: [{to: [{operation: {pathz: ["/x"]}}]}]
        """
        e.path.write_text(config_text(tmp_path, e.port, policies=bad))
        result = await e.runtime.reload("test")
        assert not result.ok
        texts = [str(p) for p in result.problems]
        assert any("facade.yaml:" in t and "action" in t for t in texts), texts
        assert any("did you mean 'paths'" in t for t in texts), texts
        assert e.feature.version == 1
        await asyncio.sleep(0.2)
        assert e.sidecar.doc is not None and e.sidecar.doc.version == 1
        assert (await request(e.port, None, "/admin/x")).status == 403  # the old policy still holds


async def test_a_contradicting_identity_is_refused_by_check_config(tmp_path: Path) -> None:
    async with env(tmp_path) as e:
        extra = f"  services: {{catalog: {{identity: spiffe://{TD}/ns/other/sa/catalog}}}}"
        assert not await e.rewrite(config_text(tmp_path, e.port, extra=extra))
        assert "contradicts" in str(e.runtime.last_reload.problems[0])
        assert e.feature.version == 1


async def test_mode_override_for_the_mtls_migration_step_reaches_the_sidecar(tmp_path: Path) -> None:
    async with env(tmp_path) as e:
        assert (await request(e.port, None, "/x")).status == 200
        version = e.feature.set_mode("catalog", "STRICT")
        assert version == 2
        await until(lambda: e.sidecar.doc is not None and e.sidecar.doc.mode == "STRICT")
        assert (await request(e.port, None, "/x")).status is None  # plaintext now refused
        e.feature.set_mode("catalog", None)
        await until(lambda: e.sidecar.doc is not None and e.sidecar.doc.mode == "PERMISSIVE")
        assert (await request(e.port, None, "/x")).status == 200


async def test_tokens_need_the_admin_token_and_are_single_use(tmp_path: Path) -> None:
    async with env(tmp_path) as e, httpx.AsyncClient(base_url=e.runtime.admin_url) as client:
        assert (await client.post("/mesh/tokens", json={"service": "catalog"})).status_code == 401
        auth = {"authorization": f"Bearer {ADMIN}"}
        assert (await client.post("/mesh/tokens", json={"service": "nope"}, headers=auth)).status_code == 404
        r = await client.post("/mesh/tokens", json={"service": "catalog", "ttl": "5m"}, headers=auth)
        assert r.status_code == 200
        assert r.json()["spiffe_id"] == str(CATALOG)
        _, csr = WorkloadIdentity.new_csr(CATALOG)
        body = {"token": r.json()["token"], "csr": csr.decode()}
        signed = await client.post("/mesh/ca/sign", json=body)
        assert signed.status_code == 200
        assert signed.json()["spiffe_id"] == str(CATALOG)
        assert (await client.post("/mesh/ca/sign", json=body)).status_code == 401


async def test_renewal_needs_a_valid_svid_and_proof_of_its_key(tmp_path: Path) -> None:
    async with env(tmp_path) as e:
        ca = e.feature.ca
        assert ca is not None
        current = issue(ca, CATALOG)
        _, csr = WorkloadIdentity.new_csr(CATALOG)

        def renew(identity: WorkloadIdentity, signer: ec.EllipticCurvePrivateKey) -> tuple[bytes, dict[str, str]]:
            content = json.dumps({"csr": csr.decode()}).encode()
            holder = WorkloadIdentity(spiffe_id=identity.spiffe_id, key=signer, chain=identity.chain)
            return content, {"authorization": sign_request(holder, "POST", "/mesh/ca/renew", {}, content)}

        async with httpx.AsyncClient(base_url=e.runtime.admin_url) as client:
            content, headers = renew(current, current.key)
            ok = await client.post("/mesh/ca/renew", content=content, headers=headers)
            assert ok.status_code == 200, ok.text
            assert ok.json()["spiffe_id"] == str(CATALOG)
            replayed = await client.post("/mesh/ca/renew", content=content, headers=headers)
            assert replayed.status_code == 401 and "replayed" in replayed.json()["error"]
            thief = ec.generate_private_key(ec.SECP256R1())
            content, headers = renew(current, thief)
            assert (await client.post("/mesh/ca/renew", content=content, headers=headers)).status_code == 401
            foreign = issue(CertificateAuthority.create(TD), CATALOG)
            content, headers = renew(foreign, foreign.key)
            assert (await client.post("/mesh/ca/renew", content=content, headers=headers)).status_code == 401
            assert (await client.post("/mesh/ca/renew", json={"csr": "x"})).status_code == 401
        # The sidecar's own renewal path works end to end.
        before = e.sidecar.identity
        await e.sidecar.rotate()
        assert e.sidecar.identity is not before and e.sidecar.rotations == 1


async def test_unreachable_control_plane_keeps_the_last_good_config_and_says_so(tmp_path: Path) -> None:
    async with env(tmp_path, policies=DENY_ADMIN) as e:
        await e.runtime.stop()  # the facade (and its control plane) goes away; the sidecar stays
        await until(lambda: not e.sidecar.control_plane_reachable)
        async with httpx.AsyncClient() as client:
            view = (await client.get(e.sidecar.admin_url + "/config")).json()
            metrics = (await client.get(e.sidecar.admin_url + "/metrics")).text
        assert view["control_plane"]["reachable"] is False
        assert "unreachable" in view["control_plane"]["last_error"]
        assert view["version"] == 1 and view["policies"] == ["deny-admin"]
        assert "mesh_sidecar_control_plane_reachable 0.0" in metrics
        assert (await request(e.port, None, "/admin/x")).status == 403  # the last good policy still holds
        assert (await request(e.port, None, "/items")).status == 200


async def test_a_service_removed_from_the_config_keeps_its_last_good_document_and_says_why(tmp_path: Path) -> None:
    async with env(tmp_path, policies=DENY_ADMIN) as e:
        text = (
            config_text(tmp_path, e.port, policies=DENY_ADMIN)
            .replace(
                f'catalog: {{endpoints: ["https://127.0.0.1:{e.port}"], identity: "{CATALOG}"}}',
                'monolith: {endpoints: ["http://127.0.0.1:1"]}',
            )
            .replace("backend: catalog", "backend: monolith")
        )
        assert await e.rewrite(text)
        await until(lambda: e.sidecar.last_error is not None)
        view = e.sidecar.config_view()
        assert view["control_plane"]["reachable"] is True  # reachable, but refusing this service
        assert "404" in view["control_plane"]["last_error"]
        assert view["version"] == 1
        assert (await request(e.port, None, "/admin/x")).status == 403
