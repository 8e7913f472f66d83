"""A trust domain ID (``spiffe://shop.local``, no path) is never a workload identity (X509-SVID 3.1, 5.2).

Every place that accepts a workload's ID refuses it, and every spelling the SPIFFE ID spec rules
out is refused there too: the CA (CSR, token), the CLI, the config, policies, documents, and on
the wire the real sidecar (peer certificate) and the real control plane (renew, report).
"""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from facade.cli import main
from facade.cli.console import EXIT_INVALID
from facade.config import parse_config
from facade.mesh.ca import CaError, CertificateAuthority, CsrRejected, TokenRejected
from facade.mesh.document import DocumentError, SidecarDocument
from facade.mesh.identity import IdentityError, WorkloadIdentity
from facade.mesh.policy import PolicyError, Rule, Source
from facade.mesh.spiffe import InvalidSpiffeId, SpiffeId
from facade.mesh.svid_auth import sign_request
from facade.mesh.tls import PeerRejected, verify_peer
from facade.yamlfile import YamlDocument

from .pki import TD, der, forge, issue
from .test_sidecar_inbound import request, stack, tls

ROOT = f"spiffe://{TD}"
CATALOG = SpiffeId.workload(TD, "shop", "catalog")

# Spellings a workload ID can never have: the root itself and every rule of the SPIFFE ID spec.
NOT_A_WORKLOAD = [
    ROOT,
    ROOT + "/",
    ROOT + "//",
    ROOT + "/ns//sa/x",
    ROOT + "/ns/./x",
    ROOT + "/ns/../x",
    ROOT + "/.",
    "SPIFFE://" + TD + "/ns/x",
    "spiffe://SHOP.local/ns/x",
    ROOT + "/ns/%78",
    ROOT + "?x=1",
    ROOT + "/ns/x?y",
    ROOT + "#frag",
    ROOT + "/ns/x#f",
    ROOT + ":443/ns/x",
    "spiffe://user@" + TD + "/ns/x",
    "spiffe:///ns/x",
]


@pytest.mark.parametrize("text", NOT_A_WORKLOAD)
def test_parse_workload_refuses_the_root_and_every_non_canonical_spelling(text: str) -> None:
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse_workload(text)


def test_the_root_id_is_still_a_spiffe_id_but_not_a_workloads() -> None:
    root = SpiffeId.parse(ROOT)
    assert root.is_trust_domain_id and not CATALOG.is_trust_domain_id
    with pytest.raises(InvalidSpiffeId, match="trust domain ID"):
        root.require_workload()
    assert SpiffeId.parse_workload(str(CATALOG)) == CATALOG


# -- the CA ------------------------------------------------------------------------------------------


def _csr(key: ec.EllipticCurvePrivateKey, uris: list[str]) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uris:
        names = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_the_ca_never_signs_the_root_id_nor_issues_a_token_for_it() -> None:
    ca = CertificateAuthority.create(TD)
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CsrRejected, match="trust domain ID"):
        ca.sign_csr(_csr(key, []), spiffe_id=SpiffeId(TD))
    with pytest.raises(CaError, match="trust domain ID"):
        ca.issue_bootstrap_token(SpiffeId(TD))
    with pytest.raises(InvalidSpiffeId):
        WorkloadIdentity.new_csr(SpiffeId(TD))
    # Authorised for a workload, the CSR may not ask for the root, a second URI, or another spelling.
    for uris in (
        [ROOT],
        [str(CATALOG), ROOT],
        [ROOT + "/ns/shop/sa/catalog/"],
        ["spiffe://SHOP.local/ns/shop/sa/catalog"],
        ["SPIFFE://shop.local/ns/shop/sa/catalog"],
        [ROOT + "/ns/shop/sa/%63atalog"],
        [ROOT + "/ns/shop/sa/catalog?x=1"],
        [ROOT + "/ns/shop/sa/./catalog"],
    ):
        with pytest.raises(CsrRejected):
            ca.sign_csr(_csr(key, uris), spiffe_id=CATALOG)


def test_a_token_naming_the_root_is_refused_even_with_a_valid_mac() -> None:
    ca = CertificateAuthority.create(TD)
    # Mint one with the CA's own key, as a bug or a stolen token.key would: the CA still refuses it.
    payload = json.dumps({"sub": ROOT, "exp": 2**40, "nonce": "n"}, separators=(",", ":"), sort_keys=True).encode()
    body = "v1." + base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    token = body + "." + base64.urlsafe_b64encode(ca._mac(body)).rstrip(b"=").decode()
    with pytest.raises(TokenRejected, match="trust domain ID"):
        ca.redeem(token, _csr(ec.generate_private_key(ec.SECP256R1()), []))


def test_a_certificate_with_the_root_id_is_not_an_identity_nor_a_peer() -> None:
    ca = CertificateAuthority.create(TD)
    for uris in ([ROOT], [ROOT + "/"], [str(CATALOG), ROOT], ["spiffe://SHOP.local/ns/x"]):
        forged = forge(ca, uris)
        with pytest.raises(PeerRejected):
            verify_peer(der(forged), trust_domain=TD)
        with pytest.raises(IdentityError):
            WorkloadIdentity.from_pem(forged.key, forged.cert_pem)
    assert verify_peer(der(issue(ca, CATALOG)), trust_domain=TD) == CATALOG


def test_cli_issue_refuses_the_root_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state")
    assert main(["mesh", "ca", "init", "--state-dir", state, "--trust-domain", TD]) == 0
    for bad in (ROOT, ROOT + "/", ROOT + "/ns/./x"):
        capsys.readouterr()
        code = main(["mesh", "ca", "issue", "--state-dir", state, "--id", bad, "--out", str(tmp_path / "out")])
        assert code == EXIT_INVALID
        assert "--id" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- config, policies, documents -----------------------------------------------------------------------


BASE = """\
services:
  catalog: {endpoints: ["https://127.0.0.1:15101"]IDENTITY}
routes:
  - {name: all, match: {path: {prefix: /}}, backend: catalog}
mesh:
  trust_domain: shop.local
"""


def _errors(mesh: str, identity: str = "") -> list[str]:
    text = BASE.replace("IDENTITY", f", identity: {identity!r}" if identity else "")
    text += textwrap.indent(textwrap.dedent(mesh), "  ")
    _, problems = parse_config(YamlDocument.load(text, "/cfg/facade.yaml"), env={})
    return [str(p) for p in problems if p.severity == "error"]


@pytest.mark.parametrize("bad", [ROOT, ROOT + "/", ROOT + "//x", ROOT + "/a/../b"])
def test_config_refuses_the_root_as_any_configured_identity(bad: str) -> None:
    for mesh, field in (
        (f"services: {{catalog: {{identity: {bad!r}}}}}\n", "mesh.services.catalog.identity"),
        (f"edge_identity: {bad!r}\n", "mesh.edge_identity"),
    ):
        errors = _errors(mesh)
        assert any(field in e and "/cfg/facade.yaml:" in e for e in errors), (bad, errors)
    errors = _errors("", identity=bad)
    assert any("services.catalog.identity" in e for e in errors), (bad, errors)


@pytest.mark.parametrize("principal", [ROOT, TD, ROOT + "/", "SPIFFE://shop.local/ns/x"])
def test_policies_refuse_the_root_as_a_principal_anywhere(principal: str) -> None:
    with pytest.raises(PolicyError):
        Source(principals=(principal,))
    with pytest.raises(PolicyError):
        Source(not_principals=(principal,))
    errors = _errors(f"""
        policies:
          - name: p
            rules: [{{when: [{{key: source.principal, values: [{principal!r}]}}]}}]
    """)
    assert any("mesh.policies[0]" in e for e in errors), errors
    # The spelling for "every workload of the trust domain" is the prefix, and it is accepted.
    assert Rule(from_=(Source(principals=(ROOT + "/*",)),)).from_[0].principals == (ROOT + "/*",)


def test_a_document_naming_the_root_is_refused_by_the_sidecar() -> None:
    ca = CertificateAuthority.create(TD)
    good = {
        "version": 1,
        "service": "catalog",
        "trust_domain": TD,
        "mode": "STRICT",
        "identity": str(CATALOG),
        "bundle": ca.trust_bundle_pem.decode(),
        "policies": [],
        "normalize": {"merge_slashes": True, "reject_encoded_slash": True, "semicolons": "reject"},
        "peers": {},
    }
    assert SidecarDocument.from_json(good).identity == CATALOG
    with pytest.raises(DocumentError):
        SidecarDocument.from_json(dict(good, identity=ROOT))
    with pytest.raises(DocumentError):
        SidecarDocument.from_json(dict(good, peers={"web": {"identity": ROOT, "endpoints": []}}))


# -- on the wire: the real sidecar and the real control plane ----------------------------------------


async def test_the_sidecar_refuses_a_peer_presenting_the_root_id_even_under_principals_star(tmp_path: Path) -> None:
    async with stack(tmp_path, "STRICT") as s:
        # /private/* is denied to requests without a principal; any verified workload passes.
        ok = await request(s.port, tls(s.ca, issue(s.ca, CATALOG)), "/private/x")
        assert ok.status == 200
        for uris in ([ROOT], [ROOT + "/"], [ROOT, str(CATALOG)], ["spiffe://SHOP.local/ns/shop/sa/web"]):
            forged = forge(s.ca, uris)  # signed by the real root: only the SPIFFE rules can refuse it
            answer = await request(s.port, tls(s.ca, forged), "/private/x")
            assert answer.status is None, (uris, answer)
        view = s.sidecar.config_view()["connections"]
        assert view["peer_rejected"] >= 4, view


async def test_the_control_plane_refuses_every_signed_call_from_a_root_id_certificate(tmp_path: Path) -> None:
    async with stack(tmp_path, "STRICT") as s, httpx.AsyncClient(base_url=s.feature.runtime.admin_url) as client:
        for uris in ([ROOT], [ROOT + "/"], [ROOT, str(CATALOG)]):
            forged = forge(s.ca, uris)  # signed by the real root, and the request really signed by its key
            _, csr = WorkloadIdentity.new_csr(CATALOG)
            for path, body in (
                ("/mesh/ca/renew", {"csr": csr.decode()}),
                ("/mesh/report", {"report": json.dumps({"service": "catalog", "instance": "x", "segments": []})}),
            ):
                content = json.dumps(body).encode()
                auth = sign_request(forged, "POST", path, {}, content)
                answer = await client.post(path, content=content, headers={"authorization": auth})
                assert answer.status_code == 401, (uris, path, answer.text)
            params = {"service": "catalog"}
            auth = sign_request(forged, "GET", "/mesh/config", params)
            answer = await client.get("/mesh/config", params=params, headers={"authorization": auth})
            assert answer.status_code == 401 and "policies" not in answer.text, (uris, answer.text)
        forged = forge(s.ca, [ROOT])
        params = {"service": "catalog"}
        auth = sign_request(forged, "GET", "/mesh/config", params)
        answer = await client.get("/mesh/config", params=params, headers={"authorization": auth})
        assert "trust domain ID" in answer.json()["error"]
