"""Every mesh endpoint on the admin listener wants a credential: a request signed by a valid SVID of
this CA (fresh, never replayed, about the signer's own service) or, for people, the admin token.

The real facade and a real sidecar run on loopback; the attacker's requests are real HTTP with real
certificates: none at all, a wrong token, another trust domain's SVID, another CA's, an expired
one, one of a service taken out of the config, a replay, a stale or tampered signature.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from facade.cli import main
from facade.cli.console import EXIT_INVALID
from facade.mesh.ca import CertificateAuthority
from facade.mesh.identity import WorkloadIdentity
from facade.mesh.sidecar import ControlPlaneError, Sidecar, SidecarOptions
from facade.mesh.spiffe import SpiffeId
from facade.mesh.svid_auth import MAX_SKEW_S, ReplayGuard, SignedRequestRejected, sign_request, verify_request

from .pki import TD, forge, issue, utcnow
from .stack import mesh_facade
from .test_controlplane import ADMIN, CATALOG, config_text, env, until

SECRETS = ("BEGIN CERTIFICATE", "policies", "peers", "bundle")


def signed_get(identity: WorkloadIdentity, params: dict[str, str], **kwargs: Any) -> dict[str, Any]:
    """httpx.get keyword arguments for GET /mesh/config signed by ``identity``."""
    return {
        "params": params,
        "headers": {"authorization": sign_request(identity, "GET", "/mesh/config", params, **kwargs)},
    }


def signed_post(identity: WorkloadIdentity, path: str, body: dict[str, Any]) -> dict[str, Any]:
    content = json.dumps(body).encode()
    return {"content": content, "headers": {"authorization": sign_request(identity, "POST", path, {}, content)}}


def assert_refused(response: httpx.Response, status: int = 401) -> None:
    assert response.status_code == status, response.text
    assert not any(s in response.text for s in SECRETS), response.text


async def test_config_without_or_with_wrong_credentials_says_nothing(tmp_path: Path) -> None:
    async with env(tmp_path) as e, httpx.AsyncClient(base_url=e.runtime.admin_url) as client:
        params = {"service": "catalog"}
        assert_refused(await client.get("/mesh/config", params=params))
        assert_refused(await client.get("/mesh/config", params={"service": "nope"}))  # not even "unknown"
        for header in ("Bearer wrong", "Bearer", "Basic " + ADMIN, f"bearer  {ADMIN}x", "SVID x.y.z.w", "SVID a"):
            assert_refused(await client.get("/mesh/config", params=params, headers={"authorization": header}))
        # People: the admin token reads any service's document.
        ok = await client.get("/mesh/config", params=params, headers={"authorization": f"Bearer {ADMIN}"})
        assert ok.status_code == 200 and ok.json()["identity"] == str(CATALOG)
        # The sidecar itself: its own SVID, a signed request.
        assert e.sidecar.identity is not None
        own = await client.get("/mesh/config", **signed_get(e.sidecar.identity, params))
        assert own.status_code == 200 and own.json()["service"] == "catalog"


async def test_config_refuses_svids_of_other_domains_cas_services_and_expired_ones(tmp_path: Path) -> None:
    async with env(tmp_path) as e, httpx.AsyncClient(base_url=e.runtime.admin_url) as client:
        assert e.feature.ca is not None
        params = {"service": "catalog"}
        other_domain = CertificateAuthority.create("other.local")
        stranger = issue(other_domain, SpiffeId.workload("other.local", "shop", "catalog"))
        assert_refused(await client.get("/mesh/config", **signed_get(stranger, params)))
        same_domain_other_ca = issue(CertificateAuthority.create(TD), CATALOG)
        assert_refused(await client.get("/mesh/config", **signed_get(same_domain_other_ca, params)))
        expired = forge(e.feature.ca, [str(CATALOG)], not_before=utcnow() - timedelta(hours=2),
                        not_after=utcnow() - timedelta(hours=1))  # fmt: skip
        r = await client.get("/mesh/config", **signed_get(expired, params))
        assert_refused(r)
        assert "expired" in r.json()["error"]
        # A valid SVID of this CA, but of another workload: not this service's document.
        web = issue(e.feature.ca, SpiffeId.workload(TD, "shop", "web"))
        assert_refused(await client.get("/mesh/config", **signed_get(web, params)), 403)
        assert_refused(await client.get("/mesh/config", **signed_get(web, {"service": "nope"})), 404)


async def test_signed_requests_cannot_be_replayed_tampered_with_or_kept(tmp_path: Path) -> None:
    async with env(tmp_path) as e, httpx.AsyncClient(base_url=e.runtime.admin_url) as client:
        identity = e.sidecar.identity
        assert identity is not None
        params = {"service": "catalog", "version": "0"}
        request = signed_get(identity, params)
        assert (await client.get("/mesh/config", **request)).status_code == 200
        replay = await client.get("/mesh/config", **request)
        assert_refused(replay)
        assert "replayed" in replay.json()["error"]
        # Signed for other parameters than those sent, for another path, or too long ago / ahead.
        tampered = signed_get(identity, {"service": "catalog", "version": "7"})
        tampered["params"] = params
        assert_refused(await client.get("/mesh/config", **tampered))
        wrong_path = {"authorization": sign_request(identity, "GET", "/mesh/x", params)}
        assert_refused(await client.get("/mesh/config", params=params, headers=wrong_path))
        for skew in (-(MAX_SKEW_S + 5), MAX_SKEW_S + 5):
            r = await client.get("/mesh/config", **signed_get(identity, params, now=time.time() + skew))
            assert_refused(r)
            assert "stale" in r.json()["error"]
        # The same for a report: a replayed or re-bodied one is refused.
        body = {"report": json.dumps({"service": "catalog", "instance": "x", "segments": []})}
        report = signed_post(identity, "/mesh/report", body)
        assert (await client.post("/mesh/report", **report)).status_code == 204
        assert_refused(await client.post("/mesh/report", **report))
        other_body = dict(report, content=json.dumps({"report": "{}"}).encode())
        assert_refused(await client.post("/mesh/report", **other_body))


async def test_every_mesh_endpoint_refuses_a_request_without_credentials(tmp_path: Path) -> None:
    async with env(tmp_path) as e, httpx.AsyncClient(base_url=e.runtime.admin_url) as client:
        _, csr = WorkloadIdentity.new_csr(CATALOG)
        report = {"report": json.dumps({"service": "catalog", "instance": "x", "segments": []})}
        for path, body in (
            ("/mesh/ca/renew", {"csr": csr.decode()}),
            ("/mesh/report", report),
            ("/mesh/tokens", {"service": "catalog"}),
        ):
            assert_refused(await client.post(path, json=body))
            assert_refused(await client.post(path, json=body, headers={"authorization": "Bearer wrong"}))
        assert_refused(await client.post("/mesh/ca/sign", json={"token": "v1.x.y", "csr": csr.decode()}))
        # The admin token is for people, not a workload credential: it does not renew or report.
        auth = {"authorization": f"Bearer {ADMIN}"}
        assert_refused(await client.post("/mesh/ca/renew", json={"csr": csr.decode()}, headers=auth))
        assert_refused(await client.post("/mesh/report", json=report, headers=auth))


async def test_a_service_taken_out_of_the_config_can_neither_read_nor_renew(tmp_path: Path) -> None:
    async with env(tmp_path) as e, httpx.AsyncClient(base_url=e.runtime.admin_url) as client:
        identity = e.sidecar.identity
        assert identity is not None
        renamed = config_text(tmp_path, e.port).replace("sa/catalog", "sa/catalog2")
        assert await e.rewrite(renamed)
        await until(lambda: e.feature.documents["catalog"].identity != CATALOG)
        assert_refused(await client.get("/mesh/config", **signed_get(identity, {"service": "catalog"})), 403)
        _, csr = WorkloadIdentity.new_csr(CATALOG)
        r = await client.post("/mesh/ca/renew", **signed_post(identity, "/mesh/ca/renew", {"csr": csr.decode()}))
        assert_refused(r, 403)


def test_replay_guard_forgets_only_what_can_no_longer_be_replayed_and_refuses_when_full() -> None:
    guard = ReplayGuard(window_s=30.0, capacity=2, since=0.0)
    guard.admit("a" * 22, ts=100.0, now=100.0)
    with pytest.raises(SignedRequestRejected, match="replayed"):
        guard.admit("a" * 22, ts=100.0, now=120.0)
    guard.admit("b" * 22, ts=100.0, now=100.0)
    with pytest.raises(SignedRequestRejected) as full:
        guard.admit("c" * 22, ts=110.0, now=110.0)  # both still replayable: refuse rather than forget
    assert full.value.status == 503
    guard.admit("c" * 22, ts=131.0, now=131.0)  # a and b expired at 130
    assert len(guard) == 1
    # Signed before the guard existed (before a control-plane restart): its nonce is unknown here.
    with pytest.raises(SignedRequestRejected, match="restart"):
        ReplayGuard(since=200.0).admit("d" * 22, ts=199.0, now=200.0)


def test_verify_request_is_bound_to_method_path_query_and_body() -> None:
    ca = CertificateAuthority.create(TD)
    identity = issue(ca, CATALOG)
    header = sign_request(identity, "POST", "/mesh/report", {"a": "1"}, b"body")
    kwargs: dict[str, Any] = {"roots": ca.roots, "trust_domain": TD}
    assert verify_request(
        header, "POST", "/mesh/report", [("a", "1")], b"body", guard=ReplayGuard(since=0.0), **kwargs
    )[0] == (CATALOG)
    for method, path, query, body in (
        ("GET", "/mesh/report", [("a", "1")], b"body"),
        ("POST", "/mesh/config", [("a", "1")], b"body"),
        ("POST", "/mesh/report", [("a", "2")], b"body"),
        ("POST", "/mesh/report", [("a", "1"), ("a", "1")], b"body"),
        ("POST", "/mesh/report", [("a", "1")], b"bodY"),
    ):
        with pytest.raises(SignedRequestRejected, match="signature"):
            verify_request(header, method, path, query, body, guard=ReplayGuard(since=0.0), **kwargs)


async def test_a_revoked_svid_is_refused_everywhere_on_the_control_plane(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with env(tmp_path) as e, httpx.AsyncClient(base_url=e.runtime.admin_url) as client:
        assert e.feature.ca is not None
        state = str(tmp_path / "state")
        by_file = issue(e.feature.ca, CATALOG)
        by_serial = issue(e.feature.ca, CATALOG)
        keeps = issue(e.feature.ca, CATALOG)
        params = {"service": "catalog"}
        for identity in (by_file, by_serial, keeps):
            assert (await client.get("/mesh/config", **signed_get(identity, params))).status_code == 200
        pem = tmp_path / "cert.pem"
        pem.write_bytes(by_file.cert_pem)
        # Revoked from another process (the CLI), while the facade runs: refused at once.
        assert main(["mesh", "ca", "revoke", "--state-dir", state, "--cert", str(pem)]) == 0
        serial = format(by_serial.leaf.serial_number, "x")
        assert main(["mesh", "ca", "revoke", "--state-dir", state, "--serial", serial.upper()]) == 0
        assert "revoked" in capsys.readouterr().out
        _, csr = WorkloadIdentity.new_csr(CATALOG)
        report = {"report": json.dumps({"service": "catalog", "instance": "x", "segments": []})}
        for identity in (by_file, by_serial):
            r = await client.get("/mesh/config", **signed_get(identity, params))
            assert_refused(r)
            assert "revoked" in r.json()["error"]
            assert_refused(
                await client.post("/mesh/ca/renew", **signed_post(identity, "/mesh/ca/renew", {"csr": csr.decode()}))
            )
            assert_refused(await client.post("/mesh/report", **signed_post(identity, "/mesh/report", report)))
        assert (await client.get("/mesh/config", **signed_get(keeps, params))).status_code == 200
        # A certificate of another CA cannot be revoked here; a bad serial is a usage error.
        other = tmp_path / "other.pem"
        other.write_bytes(issue(CertificateAuthority.create(TD), CATALOG).cert_pem)
        assert main(["mesh", "ca", "revoke", "--state-dir", state, "--cert", str(other)]) == EXIT_INVALID
        assert main(["mesh", "ca", "revoke", "--state-dir", state, "--serial", "xyz"]) == EXIT_INVALID


async def test_a_sidecar_with_another_workloads_token_gets_its_svid_but_not_the_document(tmp_path: Path) -> None:
    async with env(tmp_path) as e:
        assert e.feature.ca is not None
        web = SpiffeId.workload(TD, "shop", "web")
        token = e.feature.ca.issue_bootstrap_token(web)
        sidecar = Sidecar(
            SidecarOptions(
                service="catalog",
                control_plane=e.runtime.admin_url,
                bootstrap_token=token,
                bootstrap_timeout=2.0,
                retry_interval=0.1,
            )
        )
        try:
            with pytest.raises(ControlPlaneError) as refused:
                await sidecar.start()
        finally:
            await sidecar.stop()
        assert refused.value.status == 403
        assert f"bootstrap token is for {web}" in str(refused.value)
        assert sidecar.doc is None  # nothing of catalog's document reached it


async def test_a_signed_request_cannot_be_replayed_across_a_control_plane_restart(tmp_path: Path) -> None:
    text = config_text(tmp_path, 1)
    async with mesh_facade(tmp_path, text) as (rt, feature), httpx.AsyncClient(base_url=rt.admin_url) as client:
        assert feature.ca is not None
        identity = issue(feature.ca, CATALOG)
        captured = signed_get(identity, {"service": "catalog"})
        assert (await client.get("/mesh/config", **captured)).status_code == 200
    async with mesh_facade(tmp_path, text) as (rt, _), httpx.AsyncClient(base_url=rt.admin_url) as client:
        replay = await client.get("/mesh/config", **captured)  # well within the 30 s window
        assert_refused(replay)
        assert "restart" in replay.json()["error"]
        assert (await client.get("/mesh/config", **signed_get(identity, {"service": "catalog"}))).status_code == 200
        # And the bootstrap route wants its token: a body without one is a 401, not a shape error.
        assert (await client.post("/mesh/ca/sign", json={})).status_code == 401
