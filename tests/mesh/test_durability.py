"""What the mesh keeps across restarts and pushes while running, with the real CA, control plane and
sidecar: single-use bootstrap tokens (restart, concurrency, expiry), a re-initialised CA's bundle
reaching running sidecars (which then accept peers of the new CA), and an ``mtls: strict`` step's
counts surviving a facade restart in the middle of the step."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from facade.cli import main
from facade.config import load_config
from facade.features import attach_features
from facade.mesh.ca import CertificateAuthority, TokenRejected
from facade.mesh.controlplane import MeshFeature
from facade.mesh.identity import WorkloadIdentity
from facade.mesh.spiffe import SpiffeId
from facade.mesh.svid_auth import sign_request
from facade.mesh.tls import client_context
from facade.runtime import FacadeRuntime
from tests.backends import EchoApp
from tests.servers import bind_loopback, serve_app

from .pki import TD, issue
from .stack import mesh_facade, port_of, run_sidecar
from .test_controlplane import ADMIN, CATALOG, config_text, env
from .test_sidecar_inbound import request

AUTH = {"authorization": f"Bearer {ADMIN}"}
WEB = SpiffeId.workload(TD, "shop", "web")


async def until(predicate: Callable[[], object], *, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout} s")


async def new_token(client: httpx.AsyncClient, ttl: str = "5m") -> dict[str, Any]:
    r = await client.post("/mesh/tokens", json={"service": "catalog", "ttl": ttl}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def sign_body(token: str) -> dict[str, str]:
    _, csr = WorkloadIdentity.new_csr(None)
    return {"token": token, "csr": csr.decode()}


# -- bootstrap tokens ------------------------------------------------------------------------------


async def test_a_token_is_single_use_across_a_control_plane_restart(tmp_path: Path) -> None:
    text = config_text(tmp_path, 1)
    async with mesh_facade(tmp_path, text) as (rt, _), httpx.AsyncClient(base_url=rt.admin_url) as client:
        token = (await new_token(client))["token"]
        first = await client.post("/mesh/ca/sign", json=sign_body(token))
        assert first.status_code == 200 and first.json()["spiffe_id"] == str(CATALOG)
        unused = (await new_token(client))["token"]
    # A new process on the same state directory: the CA is loaded from disk, the used nonce too.
    async with mesh_facade(tmp_path, text) as (rt, _), httpx.AsyncClient(base_url=rt.admin_url) as client:
        again = await client.post("/mesh/ca/sign", json=sign_body(token))
        assert again.status_code == 401 and "already been used" in again.json()["error"]
        # A token issued before the restart and never used still works, once.
        assert (await client.post("/mesh/ca/sign", json=sign_body(unused))).status_code == 200
        assert (await client.post("/mesh/ca/sign", json=sign_body(unused))).status_code == 401


async def test_concurrent_redemptions_of_one_token_give_exactly_one_svid(tmp_path: Path) -> None:
    async with mesh_facade(tmp_path, config_text(tmp_path, 1)) as (rt, _):
        async with httpx.AsyncClient(base_url=rt.admin_url) as client:
            token = (await new_token(client))["token"]
            answers = await asyncio.gather(*(client.post("/mesh/ca/sign", json=sign_body(token)) for _ in range(8)))
        assert sorted(a.status_code for a in answers) == [200] + [401] * 7
    # Two CA objects on one state directory (two processes' worth), in threads, racing one token.
    state = tmp_path / "state"
    cas = [CertificateAuthority.load(state) for _ in range(4)]
    token = cas[0].issue_bootstrap_token(CATALOG)
    outcomes: list[str] = []
    start = threading.Barrier(len(cas))

    def redeem(ca: CertificateAuthority) -> None:
        _, csr = WorkloadIdentity.new_csr(None)
        start.wait(timeout=10)
        try:
            ca.redeem(token, csr)
            outcomes.append("ok")
        except TokenRejected:
            outcomes.append("refused")

    threads = [threading.Thread(target=redeem, args=(ca,)) for ca in cas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(outcomes) == ["ok", "refused", "refused", "refused"]


async def test_an_expired_token_is_refused_and_a_failed_csr_does_not_burn_a_token(tmp_path: Path) -> None:
    async with (
        mesh_facade(tmp_path, config_text(tmp_path, 1)) as (rt, _),
        httpx.AsyncClient(base_url=rt.admin_url) as client,
    ):
        short = await new_token(client, ttl="1s")
        await until(lambda: time.time() > _epoch(short["expires"]) + 0.1, what="token expiry")
        expired = await client.post("/mesh/ca/sign", json=sign_body(short["token"]))
        assert expired.status_code == 401 and "expired" in expired.json()["error"]
        token = (await new_token(client))["token"]
        weak = await client.post("/mesh/ca/sign", json={"token": token, "csr": "not a csr"})
        assert weak.status_code == 422
        assert (await client.post("/mesh/ca/sign", json=sign_body(token))).status_code == 200


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


# -- a re-initialised CA reaches running sidecars ------------------------------------------------------


def _issued_by(identity: WorkloadIdentity, ca: CertificateAuthority) -> bool:
    key = ca.certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    leaf = identity.leaf
    try:
        assert leaf.signature_hash_algorithm is not None
        key.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))
    except InvalidSignature:
        return False
    return True


async def test_a_reinitialised_ca_reaches_the_running_sidecar_which_then_accepts_its_peers(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    async with env(tmp_path) as e, httpx.AsyncClient(base_url=e.runtime.admin_url) as admin:
        old_ca = e.feature.ca
        assert old_ca is not None and e.sidecar.identity is not None
        old_peer = issue(old_ca, WEB)
        old_sidecar_svid = e.sidecar.identity
        assert (await request(e.port, client_context(old_peer, old_ca.trust_bundle_pem), "/x")).status == 200
        version = e.sidecar.doc.version if e.sidecar.doc else 0

        assert main(["mesh", "ca", "init", "--state-dir", state, "--trust-domain", TD, "--force"]) == 0
        new_ca = CertificateAuthority.load(state)
        assert new_ca.certificate != old_ca.certificate and old_ca.certificate in new_ca.roots

        # Pushed, not polled by a restart: the running sidecar gets the new bundle and renews onto the new root.
        await until(lambda: e.sidecar.doc is not None and e.sidecar.doc.version > version, what="new document")
        assert e.sidecar.doc is not None and e.sidecar.doc.bundle_pem.encode() == new_ca.trust_bundle_pem
        await until(lambda: e.sidecar.identity is not None and _issued_by(e.sidecar.identity, new_ca), what="renewal")

        # A peer with an SVID of the new CA is accepted (real handshake); one of the old CA too, while
        # the old root is kept; the facade (edge, re-issued from the new CA) still gets through.
        new_peer = issue(new_ca, WEB)
        answer = await request(e.port, client_context(new_peer, new_ca.trust_bundle_pem), "/x")
        assert answer.status == 200, answer
        assert (await request(e.port, client_context(old_peer, new_ca.trust_bundle_pem), "/x")).status == 200
        async with httpx.AsyncClient(base_url=e.runtime.url) as client:
            assert (await client.get("/through-the-edge")).status_code == 200

        # Dropping the old root (it leaked, say): pushed too; old SVIDs are refused on the wire and by the
        # control plane, the new ones keep working.
        version = e.sidecar.doc.version
        (tmp_path / "state" / "ca" / "previous.crt").unlink()
        await until(
            lambda: e.sidecar.doc is not None and e.sidecar.doc.version > version, what="bundle without old root"
        )
        assert e.sidecar.doc is not None and e.sidecar.doc.bundle_pem.count("BEGIN CERTIFICATE") == 1
        assert (await request(e.port, client_context(old_peer, old_ca.trust_bundle_pem), "/x")).status is None
        assert (await request(e.port, client_context(new_peer, new_ca.trust_bundle_pem), "/x")).status == 200
        params = {"service": "catalog"}
        auth = sign_request(old_sidecar_svid, "GET", "/mesh/config", params)
        assert (await admin.get("/mesh/config", params=params, headers={"authorization": auth})).status_code == 401
        async with httpx.AsyncClient(base_url=e.runtime.url) as client:
            assert (await client.get("/through-the-edge")).status_code == 200


# -- an mtls step's counts survive a facade restart ---------------------------------------------------

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


def mtls_config(monolith: str, sidecar_port: int) -> str:
    return textwrap.dedent(f"""\
        listen: 127.0.0.1:0
        admin: {{listen: 127.0.0.1:0, token: {ADMIN}}}
        state_dir: state
        services:
          monolith: {{endpoints: [{monolith}]}}
          catalog: {{endpoints: ["https://127.0.0.1:{sidecar_port}"], identity: "{CATALOG}"}}
        routes:
          - name: catalog
            match: {{path: {{prefix: /catalog}}}}
            backend: monolith
        migrations: migrations/
        mesh:
          trust_domain: {TD}
          mode: PERMISSIVE
        """)


def bind_port(port: int) -> socket.socket:
    """A listening socket on a port a previous facade used: the sidecar's control-plane URL stays valid."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def facade(tmp_path: Path, text: str, admin_sock: socket.socket) -> AsyncIterator[FacadeRuntime]:
    path = tmp_path / "facade.yaml"
    path.write_text(text)
    config = load_config(str(path))
    runtime = FacadeRuntime(config, config_path=str(path), watch_interval=None)
    attach_features(runtime)
    await runtime.start(listen_sock=bind_loopback(), admin_sock=admin_sock)
    try:
        yield runtime
    finally:
        await runtime.stop()


async def plaintext_gate(admin_url: str) -> Any:
    async with httpx.AsyncClient(base_url=admin_url, headers=AUTH, timeout=10) as admin:
        r = await admin.get("/migrations/shop", params={"journal": 0})
        assert r.status_code == 200, r.text
        return r.json()["gates"]["results"][0]["value"]


async def value_becomes(admin_url: str, expected: int) -> None:
    seen = None
    for _ in range(200):  # reports every 0.1 s; bounded
        seen = await plaintext_gate(admin_url)
        if seen == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"plaintext_requests gate value {seen}, expected {expected}")


async def test_a_facade_restart_in_the_middle_of_an_mtls_step_keeps_its_counts(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001-plan.yaml").write_text(textwrap.dedent(PLAN))
    sidecar_sock = bind_loopback()
    admin_sock = bind_loopback()
    admin_port = port_of(admin_sock)
    async with serve_app(EchoApp("monolith")) as monolith, serve_app(EchoApp("catalog")) as app:
        text = mtls_config(monolith, port_of(sidecar_sock))
        async with facade(tmp_path, text, admin_sock) as rt:
            mesh = rt.feature(MeshFeature)
            async with httpx.AsyncClient(base_url=rt.admin_url, headers=AUTH) as admin:
                assert (await admin.post("/migrations/shop/start", json={})).status_code == 200
                assert (await admin.post("/migrations/shop/next", json={})).status_code == 200
            # The sidecar outlives the facade below, as a separate process would.
            sidecar_cm = run_sidecar(mesh, rt, "catalog", app=app, inbound_sock=sidecar_sock, report_interval=0.1)
            sidecar = await sidecar_cm.__aenter__()
            try:
                await until(lambda: sidecar.doc is not None and sidecar.doc.mode == "STRICT", what="STRICT")
                for _ in range(2):
                    assert (await request(port_of(sidecar_sock), None, "/direct")).status is None
                await value_becomes(rt.admin_url, 2)
                old_epoch = mesh.epoch
            except BaseException:
                await sidecar_cm.__aexit__(None, None, None)
                raise
        try:
            # The facade is gone; the sidecar keeps its STRICT document. A new facade on the same state
            # and admin port: the step's count is read back from durable state before any new report.
            async with facade(tmp_path, text, bind_port(admin_port)) as rt2:
                mesh2 = rt2.feature(MeshFeature)
                assert mesh2.epoch != old_epoch
                assert await plaintext_gate(rt2.admin_url) == 2
                # The running sidecar reconnects, keeps reporting (old and new segments), and a new
                # plaintext attempt adds to the same window: 3, not 1.
                await until(lambda: sidecar.cp.epoch == mesh2.epoch, what="sidecar on the new control plane")
                assert (await request(port_of(sidecar_sock), None, "/direct")).status is None
                await value_becomes(rt2.admin_url, 3)
        finally:
            await sidecar_cm.__aexit__(None, None, None)


def test_reinit_keeps_the_replaced_root_in_the_bundle_unless_told_to_drop_it(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    first = CertificateAuthority.init(state, TD)
    assert first.roots == (first.certificate,)
    assert main(["mesh", "ca", "init", "--state-dir", state, "--trust-domain", TD, "--force"]) == 0
    second = CertificateAuthority.load(state)
    assert second.roots == (second.certificate, first.certificate)
    assert second.trust_bundle_pem.count(b"BEGIN CERTIFICATE") == 2
    assert (tmp_path / "state" / "ca" / "root.crt").read_bytes().count(b"BEGIN CERTIFICATE") == 1
    fingerprint = CertificateAuthority.fingerprint(state)
    argv = ["mesh", "ca", "init", "--state-dir", state, "--trust-domain", TD, "--force", "--drop-previous"]
    assert main(argv) == 0
    third = CertificateAuthority.load(state)
    assert third.roots == (third.certificate,) and not (tmp_path / "state" / "ca" / "previous.crt").exists()
    assert CertificateAuthority.fingerprint(state) != fingerprint
