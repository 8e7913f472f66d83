"""The pool's client against real servers: bytes of the path, cookies, TLS origination with SNI, health
checks over TLS / mTLS through the pool's context."""

from __future__ import annotations

import dataclasses
import datetime
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from facade.config import HealthCheck, UpstreamTLS
from facade.upstream import Endpoint, ServicePool, Upstreams, UpstreamTLSError, client_ssl_context
from facade.upstream.h1 import ConnectFailed, UpstreamResponse
from tests.servers import serve_app

from .test_upstream_specs import eventually, group, service


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


async def _get(pool: ServicePool, target: str) -> UpstreamResponse:
    ep = pool.pick()
    resp = await pool.h1.request(ep.address, "GET", ep.target_for(target), [], idempotent=True)
    while not resp.at_eof():
        await resp.readany()
    resp.release()
    return resp


def test_target_and_address_keep_encoded_bytes() -> None:
    ep = Endpoint("http://127.0.0.1:8001", "a")
    assert ep.target_for("/a%2Fb") == "/a%2Fb" and ep.address == ("127.0.0.1", 8001, False)
    assert ep.target_for("/x/%2e%2e/y?q=%41&r") == "/x/%2e%2e/y?q=%41&r"
    base = Endpoint("https://[::1]:9/base/", "a")
    assert base.target_for("/p") == "/base/p" and base.address == ("::1", 9, True)
    assert Endpoint("https://Catalog.Internal", "a").address == ("catalog.internal", 443, True)


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:1", "http://", "http://127.0.0.1:port", "127.0.0.1:80"])
def test_endpoint_rejects_what_is_not_an_http_url(url: str) -> None:
    with pytest.raises(ValueError, match="expected http://host:port"):
        Endpoint(url, "a")


async def test_bytes_sent_upstream_are_the_bytes_given_and_cookies_are_not_kept() -> None:
    backend = RecordingBackend()
    async with serve_app(backend) as url:
        pool = ServicePool(service(group("a", url)))
        try:
            for target in ["/a%2Fb", "/x/%2e%2e/y", "/public/../catalog?q=%252e"]:
                assert (await _get(pool, target)).status == 200
            assert backend.targets == [b"/a%2Fb", b"/x/%2e%2e/y", b"/public/../catalog?q=%252e"]
            assert backend.cookies == []  # the upstream's Set-Cookie was not stored and replayed
            assert pool.h1.limit == 1024
        finally:
            await pool.close()
        assert pool.h1.closed


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
            assert (await _get(pool, "/tls")).status == 200
            assert backend.targets == [b"/tls"]
        finally:
            await ups.close()


async def test_tls_without_server_name_fails_verification_against_an_ip(pki: dict[str, str]) -> None:
    async with serve_app(RecordingBackend(), ssl_certfile=pki["server"], ssl_keyfile=pki["server_key"]) as url:
        pool = ServicePool(service(group("a", url)), ssl_context=client_ssl_context(UpstreamTLS(ca_file=pki["ca"])))
        try:
            with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await _get(pool, "/")
        finally:
            await pool.close()


HC = HealthCheck(path="/healthz", interval=0.05, timeout=1.0, unhealthy_threshold=1)


async def test_health_checks_over_mtls_verify_the_server_name_and_present_the_client_certificate(
    pki: dict[str, str],
) -> None:
    backend = RecordingBackend()
    async with serve_app(
        backend, ssl_certfile=pki["server"], ssl_keyfile=pki["server_key"], ssl_ca_certs=pki["ca"],
        ssl_cert_reqs=ssl.CERT_REQUIRED,
    ) as url:
        tls = UpstreamTLS(
            ca_file=pki["ca"], cert_file=pki["client"], key_file=pki["client_key"], server_name="catalog.internal"
        )
        ups = Upstreams([dataclasses.replace(service(group("a", url), health=HC), tls=tls)])
        pool = ups.get("svc")
        assert pool is not None
        try:
            await ups.start()
            ep = pool.endpoints[0]
            assert await eventually(lambda: ep.health.checks >= 2)
            assert ep.healthy and ep.health.last_detail == "200"
            assert backend.targets[:2] == [b"/healthz", b"/healthz"]
            assert pool.h1.stats["connects"] == 1  # the checks reuse one connection of the pool
        finally:
            await ups.close()


async def test_health_checks_fail_when_tls_verification_fails(pki: dict[str, str]) -> None:
    async with serve_app(RecordingBackend(), ssl_certfile=pki["server"], ssl_keyfile=pki["server_key"]) as url:
        untrusted = UpstreamTLS(server_name="catalog.internal")  # the system store does not know the test CA
        no_name = UpstreamTLS(ca_file=pki["ca"])  # the certificate does not name 127.0.0.1
        for tls in (untrusted, no_name):
            pool = ServicePool(service(group("a", url), health=HC), ssl_context=client_ssl_context(tls))
            try:
                await pool.start()
                ep = pool.endpoints[0]
                assert await eventually(lambda: not ep.healthy)  # noqa: B023 - awaited within the iteration
                assert "CERTIFICATE_VERIFY_FAILED" in ep.health.last_detail
            finally:
                await pool.close()


def test_unreadable_tls_files_raise_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(UpstreamTLSError, match="service catalog: cannot load TLS files"):
        client_ssl_context(UpstreamTLS(ca_file=str(tmp_path / "missing.pem")), service="catalog")
