"""The pool's session against real servers: bytes of the path, cookies, TLS origination with SNI."""

from __future__ import annotations

import dataclasses
import datetime
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from facade.config import UpstreamTLS
from facade.upstream import Endpoint, ServicePool, Upstreams, UpstreamTLSError, client_ssl_context
from tests.servers import serve_app

from .test_upstream_specs import group, service


class RecordingBackend:
    def __init__(self) -> None:
        self.targets: list[bytes] = []
        self.cookies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        qs = scope["query_string"]
        self.targets.append(scope["raw_path"] + (b"?" + qs if qs else b""))
        self.cookies.extend(v for k, v in scope["headers"] if k == b"cookie")
        headers = [(b"content-length", b"2"), (b"set-cookie", b"sid=upstream; Path=/")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


def test_url_for_keeps_encoded_bytes() -> None:
    ep = Endpoint("http://127.0.0.1:8001", "a")
    assert str(ep.url_for("/a%2Fb")) == "http://127.0.0.1:8001/a%2Fb"
    assert str(ep.url_for("/x/%2e%2e/y?q=%41&r")) == "http://127.0.0.1:8001/x/%2e%2e/y?q=%41&r"
    assert str(Endpoint("http://[::1]:9/base/", "a").url_for("/p")) == "http://[::1]:9/base/p"


def test_endpoint_rejects_what_is_not_an_http_url() -> None:
    with pytest.raises(ValueError, match="expected http://host:port"):
        Endpoint("tcp://127.0.0.1:1", "a")


async def test_bytes_sent_upstream_are_the_bytes_given_and_cookies_are_not_kept() -> None:
    backend = RecordingBackend()
    async with serve_app(backend) as url:
        pool = ServicePool(service(group("a", url)))
        try:
            ep = pool.pick()
            for target in ["/a%2Fb", "/x/%2e%2e/y", "/public/../catalog?q=%252e"]:
                async with pool.session.get(ep.url_for(target)) as resp:
                    assert resp.status == 200
                    await resp.read()
            assert backend.targets == [b"/a%2Fb", b"/x/%2e%2e/y", b"/public/../catalog?q=%252e"]
            assert backend.cookies == []  # the upstream's Set-Cookie was not stored and replayed
            assert pool.connector.limit == 1024
            assert pool.session.auto_decompress is False
        finally:
            await pool.close()
        assert pool.session.closed


# -- TLS ---------------------------------------------------------------------------------------


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    dns: str | None = None,
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signer = issuer if issuer else (name, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if dns:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d: Path = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test ca", ca_key, None, ca=True)
    out: dict[str, str] = {}

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
        (d / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[stem] = str(d / f"{stem}.crt")
        if key is not None:
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            (d / f"{stem}.key").write_bytes(pem)
            out[f"{stem}_key"] = str(d / f"{stem}.key")

    write("ca", ca, None)
    server_key = ec.generate_private_key(ec.SECP256R1())
    # The server certificate names catalog.internal only, not the 127.0.0.1 the pool dials.
    write("server", _cert("catalog", server_key, (ca.subject, ca_key), dns="catalog.internal"), server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    write("client", _cert("facade", client_key, (ca.subject, ca_key), client=True), client_key)
    return out


async def test_tls_with_server_name_and_client_certificate(pki: dict[str, str]) -> None:
    backend = RecordingBackend()
    async with serve_app(
        backend,
        ssl_certfile=pki["server"],
        ssl_keyfile=pki["server_key"],
        ssl_ca_certs=pki["ca"],
        ssl_cert_reqs=ssl.CERT_REQUIRED,
    ) as url:
        tls = UpstreamTLS(
            ca_file=pki["ca"], cert_file=pki["client"], key_file=pki["client_key"], server_name="catalog.internal"
        )
        spec = service(group("a", url))
        ups = Upstreams([dataclasses.replace(spec, tls=tls)])
        pool = ups.get("svc")
        assert pool is not None
        try:
            async with pool.session.get(pool.pick().url_for("/tls")) as resp:
                assert resp.status == 200
                await resp.read()
            assert backend.targets == [b"/tls"]
        finally:
            await ups.close()


async def test_tls_without_server_name_fails_verification_against_an_ip(pki: dict[str, str]) -> None:
    async with serve_app(RecordingBackend(), ssl_certfile=pki["server"], ssl_keyfile=pki["server_key"]) as url:
        pool = ServicePool(service(group("a", url)), ssl_context=client_ssl_context(UpstreamTLS(ca_file=pki["ca"])))
        try:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with pool.session.get(pool.pick().url_for("/")):
                    pass
        finally:
            await pool.close()


def test_unreadable_tls_files_raise_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(UpstreamTLSError, match="service catalog: cannot load TLS files"):
        client_ssl_context(UpstreamTLS(ca_file=str(tmp_path / "missing.pem")), service="catalog")
