from __future__ import annotations

import os
import re
import stat
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from starlette.applications import Starlette

from facade.mesh.ca import CaExists, CaNotFound, CertificateAuthority, CsrRejected, TokenRejected
from facade.mesh.ca_http import SIGN_PATH, ca_routes
from facade.mesh.identity import WorkloadIdentity
from facade.mesh.spiffe import SpiffeId
from tests.servers import serve_app

from .pki import TD, utcnow

CATALOG = SpiffeId.workload(TD, "shop", "catalog")


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(TD)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- the root -----------------------------------------------------------------------------


def test_init_writes_an_owner_only_ca_and_load_reads_it_back(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path, TD)
    directory = tmp_path / "ca"
    assert _mode(directory) == 0o700
    assert _mode(directory / "root.key") == 0o600
    assert _mode(directory / "token.key") == 0o600
    loaded = CertificateAuthority.load(tmp_path)
    assert loaded.trust_domain == TD
    assert loaded.trust_bundle_pem == ca.trust_bundle_pem
    # A token from the first instance is honoured by the reloaded one: same secret.
    assert loaded.verify_bootstrap_token(ca.issue_bootstrap_token(CATALOG)) == CATALOG


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = CertificateAuthority.init(tmp_path, TD)
    with pytest.raises(CaExists, match="--force"):
        CertificateAuthority.init(tmp_path, TD)
    assert CertificateAuthority.load(tmp_path).trust_bundle_pem == first.trust_bundle_pem
    second = CertificateAuthority.init(tmp_path, TD, force=True)
    assert second.trust_bundle_pem != first.trust_bundle_pem


def test_load_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(CaNotFound, match="facade mesh ca init"):
        CertificateAuthority.load(tmp_path)


def test_root_is_a_p256_ca_with_critical_constraints_and_ten_years(ca: CertificateAuthority) -> None:
    root = ca.certificate
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert root.issuer == root.subject
    basic = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    usage = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    lifetime = root.not_valid_after_utc - root.not_valid_before_utc
    assert timedelta(days=3649) < lifetime < timedelta(days=3651)


# -- signing --------------------------------------------------------------------------------


def test_signed_certificate_is_an_x509_svid_for_the_csr_key(ca: CertificateAuthority) -> None:
    key, csr = WorkloadIdentity.new_csr(CATALOG)
    cert = x509.load_pem_x509_certificate(ca.sign_csr(csr, spiffe_id=CATALOG))
    ext = cert.extensions
    san = ext.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [str(CATALOG)]
    assert len(list(san.value)) == 1
    basic = ext.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_cert_sign and not usage.value.crl_sign
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    root_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == root_ski
    assert ext.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert cert.subject == x509.Name([])
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(ca.certificate)


def test_default_ttl_is_24h_with_a_minute_of_backdating(ca: CertificateAuthority) -> None:
    _, csr = WorkloadIdentity.new_csr(CATALOG)
    now = utcnow().replace(microsecond=0)
    cert = x509.load_pem_x509_certificate(ca.sign_csr(csr, spiffe_id=CATALOG, now=now))
    assert cert.not_valid_before_utc == now - timedelta(minutes=1)
    assert cert.not_valid_after_utc == now + timedelta(hours=24)


def test_serials_are_random_and_distinct(ca: CertificateAuthority) -> None:
    _, csr = WorkloadIdentity.new_csr(CATALOG)
    serials = {x509.load_pem_x509_certificate(ca.sign_csr(csr, spiffe_id=CATALOG)).serial_number for _ in range(5)}
    assert len(serials) == 5
    assert all(s.bit_length() > 64 for s in serials)


def test_csr_asking_for_another_identity_is_rejected(ca: CertificateAuthority) -> None:
    _, csr = WorkloadIdentity.new_csr(SpiffeId.workload(TD, "shop", "admin"))
    with pytest.raises(CsrRejected, match=re.escape("authorised only for 'spiffe://shop.local/ns/shop/sa/catalog'")):
        ca.sign_csr(csr, spiffe_id=CATALOG)


def test_csr_asking_for_extra_names_is_rejected(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.UniformResourceIdentifier(str(CATALOG)), x509.DNSName("bank.example")]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(CsrRejected, match=re.escape("bank.example")):
        ca.sign_csr(csr, spiffe_id=CATALOG)


def test_csr_without_san_gets_the_authorised_id(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    cert_pem = ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM), spiffe_id=CATALOG)
    assert WorkloadIdentity.from_pem(key, cert_pem).spiffe_id == CATALOG


def test_csr_with_a_broken_signature_is_rejected(ca: CertificateAuthority) -> None:
    _, csr_pem = WorkloadIdentity.new_csr(CATALOG)
    csr_der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    csr_der[-5] ^= 0x01  # flip a bit inside the signature
    tampered = x509.load_der_x509_csr(bytes(csr_der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CsrRejected, match="signature does not verify"):
        ca.sign_csr(tampered, spiffe_id=CATALOG)


def test_garbage_and_foreign_trust_domain_are_rejected(ca: CertificateAuthority) -> None:
    with pytest.raises(CsrRejected, match="not a PEM certificate signing request"):
        ca.sign_csr(b"hello", spiffe_id=CATALOG)
    other = SpiffeId.workload("other.local", "shop", "catalog")
    _, csr = WorkloadIdentity.new_csr(other)
    with pytest.raises(CsrRejected, match="not in this CA's trust domain"):
        ca.sign_csr(csr, spiffe_id=other)


def test_the_private_key_never_reaches_the_ca(ca: CertificateAuthority) -> None:
    key, csr_pem = WorkloadIdentity.new_csr(CATALOG)
    secret = key.private_numbers().private_value.to_bytes(32, "big")
    assert b"PRIVATE KEY" not in csr_pem
    assert secret not in x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER)
    # What comes back is usable only together with the key the workload kept.
    identity = WorkloadIdentity.from_pem(key, ca.sign_csr(csr_pem, spiffe_id=CATALOG))
    assert identity.spiffe_id == CATALOG
    with pytest.raises(ValueError, match="not issued for this private key"):
        WorkloadIdentity.from_pem(ec.generate_private_key(ec.SECP256R1()), identity.cert_pem)


# -- bootstrap tokens -----------------------------------------------------------------------


def test_token_redeems_once_for_its_own_identity(ca: CertificateAuthority) -> None:
    token = ca.issue_bootstrap_token(CATALOG)
    key, csr = WorkloadIdentity.new_csr(CATALOG)
    cert_pem, bundle = ca.redeem(token, csr)
    assert WorkloadIdentity.from_pem(key, cert_pem).spiffe_id == CATALOG
    assert bundle == ca.trust_bundle_pem
    with pytest.raises(TokenRejected, match="already been used"):
        ca.redeem(token, csr)


def test_token_cannot_buy_another_identity(ca: CertificateAuthority) -> None:
    token = ca.issue_bootstrap_token(CATALOG)
    _, csr = WorkloadIdentity.new_csr(SpiffeId.workload(TD, "shop", "payments"))
    with pytest.raises(CsrRejected):
        ca.redeem(token, csr)
    # The failed attempt did not burn the token.
    _, good = WorkloadIdentity.new_csr(CATALOG)
    ca.redeem(token, good)


def test_forged_expired_and_foreign_tokens_are_rejected(ca: CertificateAuthority) -> None:
    token = ca.issue_bootstrap_token(CATALOG)
    version, payload, mac = token.split(".")
    forged_payload = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    with pytest.raises(TokenRejected, match="does not verify"):
        ca.verify_bootstrap_token(f"{version}.{forged_payload}.{mac}")
    with pytest.raises(TokenRejected, match="malformed"):
        ca.verify_bootstrap_token("not-a-token")
    expired = ca.issue_bootstrap_token(CATALOG, ttl=timedelta(seconds=-1))
    with pytest.raises(TokenRejected, match="expired"):
        ca.verify_bootstrap_token(expired)
    other = CertificateAuthority.create(TD)
    with pytest.raises(TokenRejected, match="does not verify"):
        ca.verify_bootstrap_token(other.issue_bootstrap_token(CATALOG))


# -- workload identity -----------------------------------------------------------------------


def test_rotation_is_due_around_half_the_lifetime(ca: CertificateAuthority) -> None:
    key, csr = WorkloadIdentity.new_csr(CATALOG)
    identity = WorkloadIdentity.from_pem(key, ca.sign_csr(csr, spiffe_id=CATALOG, backdate=timedelta(0)))
    lifetime = identity.not_after - identity.not_before
    at = identity.rotate_at()
    assert identity.not_before + lifetime * 0.45 <= at <= identity.not_before + lifetime * 0.55
    assert not identity.should_rotate(identity.not_before + lifetime * 0.44)
    assert identity.should_rotate(identity.not_before + lifetime * 0.56)


def test_rotation_jitter_spreads_a_fleet(ca: CertificateAuthority) -> None:
    times = set()
    for _ in range(8):
        key, csr = WorkloadIdentity.new_csr(CATALOG)
        identity = WorkloadIdentity.from_pem(
            key, ca.sign_csr(csr, spiffe_id=CATALOG, now=utcnow().replace(microsecond=0))
        )
        times.add(identity.rotate_at() - identity.not_before)
    assert len(times) > 1


def test_identity_files_are_owner_only_and_load_back(ca: CertificateAuthority, tmp_path: Path) -> None:
    key, csr = WorkloadIdentity.new_csr(CATALOG)
    identity = WorkloadIdentity.from_pem(key, ca.sign_csr(csr, spiffe_id=CATALOG))
    out = identity.write(tmp_path / "catalog", bundle_pem=ca.trust_bundle_pem)
    assert _mode(out) == 0o700
    assert {p.name: _mode(p) for p in out.iterdir()} == {"key.pem": 0o600, "cert.pem": 0o600, "bundle.pem": 0o600}
    assert WorkloadIdentity.load(out).leaf == identity.leaf


# -- the HTTP route --------------------------------------------------------------------------


async def test_sign_route_issues_for_a_token_and_refuses_reuse_and_garbage(ca: CertificateAuthority) -> None:
    app = Starlette(routes=ca_routes(ca))
    token = ca.issue_bootstrap_token(CATALOG)
    key, csr = WorkloadIdentity.new_csr(CATALOG)
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        ok = await client.post(SIGN_PATH, json={"token": token, "csr": csr.decode()})
        again = await client.post(SIGN_PATH, json={"token": token, "csr": csr.decode()})
        garbage = await client.post(SIGN_PATH, content=b"{not json")
        wrong_id = await client.post(
            SIGN_PATH,
            json={
                "token": ca.issue_bootstrap_token(CATALOG),
                "csr": WorkloadIdentity.new_csr(SpiffeId(TD, "/x"))[1].decode(),
            },
        )
        too_big = await client.post(SIGN_PATH, content=b"x" * 70_000)
        get = await client.get(SIGN_PATH)
    assert ok.status_code == 200
    body = ok.json()
    assert body["spiffe_id"] == str(CATALOG)
    assert body["bundle"].encode() == ca.trust_bundle_pem
    assert WorkloadIdentity.from_pem(key, body["certificate"].encode()).spiffe_id == CATALOG
    assert again.status_code == 401 and "already been used" in again.json()["error"]
    assert garbage.status_code == 400
    assert wrong_id.status_code == 422
    assert too_big.status_code == 413
    assert get.status_code == 405
