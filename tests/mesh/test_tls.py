"""Real mTLS handshakes over loopback: every rejection case, and the valid certificate accepted."""

from __future__ import annotations

import asyncio
import re
import ssl
import warnings
from datetime import timedelta

import pytest

from facade.mesh.ca import CertificateAuthority
from facade.mesh.spiffe import SpiffeId
from facade.mesh.tls import PeerRejected, RotatingContext, client_context, looks_like_tls, server_context, verify_peer

from .pki import TD, attempt, bare_client_context, der, forge, issue, mesh_server, utcnow

CATALOG = SpiffeId.workload(TD, "shop", "catalog")
WEB = SpiffeId.workload(TD, "shop", "web")


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    # Valid since 30 days ago, so certificates issued "in the past" are still inside the root's validity.
    return CertificateAuthority.create(TD, now=utcnow() - timedelta(days=30))


@pytest.fixture(scope="module")
def strict(ca: CertificateAuthority) -> ssl.SSLContext:
    ctx = server_context(issue(ca, CATALOG), ca.trust_bundle_pem, mode="STRICT", trust_domain=TD)
    assert ctx is not None
    return ctx


async def test_valid_svid_is_accepted_and_becomes_the_principal(
    ca: CertificateAuthority, strict: ssl.SSLContext
) -> None:
    async with mesh_server(strict) as (port, verdicts):
        outcome = await attempt(port, verdicts, client_context(issue(ca, WEB), ca.trust_bundle_pem))
    assert outcome.server == f"accepted {WEB}"
    assert outcome.client_error is None


async def test_certificate_from_another_ca_fails_the_handshake(
    ca: CertificateAuthority, strict: ssl.SSLContext
) -> None:
    other = CertificateAuthority.create(TD)  # same trust domain name, different root key
    async with mesh_server(strict) as (port, verdicts):
        outcome = await attempt(port, verdicts, client_context(issue(other, WEB), ca.trust_bundle_pem))
    assert outcome.server is None
    assert outcome.client_error is not None


async def test_expired_certificate_fails_the_handshake(ca: CertificateAuthority, strict: ssl.SSLContext) -> None:
    expired = issue(ca, WEB, ttl=timedelta(hours=1), now=utcnow() - timedelta(days=2))
    assert expired.not_after < utcnow()
    async with mesh_server(strict) as (port, verdicts):
        outcome = await attempt(port, verdicts, client_context(expired, ca.trust_bundle_pem))
    assert outcome.server is None


async def test_not_yet_valid_certificate_fails_the_handshake(ca: CertificateAuthority, strict: ssl.SSLContext) -> None:
    future = issue(ca, WEB, now=utcnow() + timedelta(days=2))
    assert future.not_before > utcnow()
    async with mesh_server(strict) as (port, verdicts):
        outcome = await attempt(port, verdicts, client_context(future, ca.trust_bundle_pem))
    assert outcome.server is None


async def test_wrong_trust_domain_is_rejected_after_the_handshake(
    ca: CertificateAuthority, strict: ssl.SSLContext
) -> None:
    foreign = forge(ca, ["spiffe://evil.local/ns/shop/sa/web"])
    async with mesh_server(strict) as (port, verdicts):
        outcome = await attempt(port, verdicts, client_context(foreign, ca.trust_bundle_pem))
    assert outcome.server is not None and outcome.server.startswith("rejected ")
    assert "not in trust domain 'shop.local'" in outcome.server


async def test_two_uri_sans_are_rejected(ca: CertificateAuthority, strict: ssl.SSLContext) -> None:
    twin = forge(ca, [str(WEB), str(CATALOG)])
    async with mesh_server(strict) as (port, verdicts):
        outcome = await attempt(port, verdicts, client_context(twin, ca.trust_bundle_pem))
    assert not outcome.accepted
    assert outcome.server == "rejected peer certificate must have exactly one URI SAN, it has 2"


async def test_a_ca_certificate_used_as_a_leaf_is_rejected(ca: CertificateAuthority, strict: ssl.SSLContext) -> None:
    sub_ca = forge(ca, [str(WEB)], is_ca=True)
    async with mesh_server(strict) as (port, verdicts):
        outcome = await attempt(port, verdicts, client_context(sub_ca, ca.trust_bundle_pem))
    assert not outcome.accepted
    # OpenSSL may accept the chain; then verify_peer must refuse the CA flag.
    assert outcome.server is None or "CA certificate" in outcome.server


async def test_no_client_certificate_under_strict_fails_the_handshake(
    ca: CertificateAuthority, strict: ssl.SSLContext
) -> None:
    async with mesh_server(strict) as (port, verdicts):
        outcome = await attempt(port, verdicts, bare_client_context(ca.trust_bundle_pem))
    assert outcome.server is None
    assert outcome.client_error is not None


async def test_permissive_tls_branch_still_requires_a_client_certificate(ca: CertificateAuthority) -> None:
    ctx = server_context(issue(ca, CATALOG), ca.trust_bundle_pem, mode="PERMISSIVE", trust_domain=TD)
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED
    async with mesh_server(ctx) as (port, verdicts):
        refused = await attempt(port, verdicts, bare_client_context(ca.trust_bundle_pem))
        accepted = await attempt(port, verdicts, client_context(issue(ca, WEB), ca.trust_bundle_pem))
    assert refused.server is None
    assert accepted.server == f"accepted {WEB}"


def test_disable_mode_has_no_tls_context(ca: CertificateAuthority) -> None:
    assert server_context(issue(ca, CATALOG), ca.trust_bundle_pem, mode="DISABLE", trust_domain=TD) is None
    with pytest.raises(ValueError, match="mTLS mode"):
        server_context(issue(ca, CATALOG), ca.trust_bundle_pem, mode="LAX", trust_domain=TD)  # type: ignore[arg-type]


async def test_plaintext_to_a_strict_port_is_refused(strict: ssl.SSLContext) -> None:
    async with mesh_server(strict) as (port, verdicts):
        outcome = await attempt(port, verdicts, None)
    assert outcome.server is None


def _capped_client(ca: CertificateAuthority, version: ssl.TLSVersion) -> ssl.SSLContext:
    # A valid SVID, so the only thing that differs is the protocol version.
    ctx = client_context(issue(ca, WEB), ca.trust_bundle_pem)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl.TLSVersion.TLSv1_1 is deprecated, on purpose here
        ctx.minimum_version = version
        ctx.maximum_version = version
        if version < ssl.TLSVersion.TLSv1_2:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses TLS 1.1 at the default security level
    return ctx


async def test_tls_1_1_client_is_refused_and_the_same_client_on_tls_1_2_accepted(
    ca: CertificateAuthority, strict: ssl.SSLContext
) -> None:
    try:
        old = _capped_client(ca, ssl.TLSVersion.TLSv1_1)
    except (ssl.SSLError, ValueError) as exc:
        pytest.skip(f"this OpenSSL cannot build a TLS 1.1 client at all: {exc}")
    async with mesh_server(strict) as (port, verdicts):
        refused = await attempt(port, verdicts, old)
        accepted = await attempt(port, verdicts, _capped_client(ca, ssl.TLSVersion.TLSv1_2))
    assert refused.server is None
    assert refused.client_error is not None
    assert accepted.server == f"accepted {WEB}"
    assert strict.minimum_version == ssl.TLSVersion.TLSv1_2


async def test_client_checks_the_server_identity_with_verify_peer(
    ca: CertificateAuthority, strict: ssl.SSLContext
) -> None:
    client = client_context(issue(ca, WEB), ca.trust_bundle_pem)
    async with mesh_server(strict) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="")
        server_der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        await reader.readline()
        writer.close()
        await writer.wait_closed()
    assert verify_peer(server_der, trust_domain=TD, expected=CATALOG) == CATALOG
    with pytest.raises(PeerRejected, match=re.escape("expected spiffe://shop.local/ns/shop/sa/orders")):
        verify_peer(server_der, trust_domain=TD, expected=SpiffeId.workload(TD, "shop", "orders"))


def test_client_context_uses_only_the_bundle_and_no_hostname_check(ca: CertificateAuthority) -> None:
    ctx = client_context(issue(ca, WEB), ca.trust_bundle_pem)
    assert ctx.check_hostname is False
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in ctx.get_ca_certs()] == [
        ((("organizationName", TD),), (("commonName", f"facade mesh root CA ({TD})"),))
    ]


def test_verify_peer_rejects_missing_and_unreadable_certificates() -> None:
    with pytest.raises(PeerRejected, match="no certificate"):
        verify_peer(None, trust_domain=TD)
    with pytest.raises(PeerRejected, match="unreadable"):
        verify_peer(b"not der", trust_domain=TD)


def test_verify_peer_rejects_a_non_spiffe_uri(ca: CertificateAuthority) -> None:
    with pytest.raises(PeerRejected, match="not a SPIFFE ID"):
        verify_peer(der(forge(ca, ["https://shop.local/web"])), trust_domain=TD)


def test_server_identity_must_be_in_the_trust_domain(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="not in trust domain"):
        server_context(issue(ca, CATALOG), ca.trust_bundle_pem, mode="STRICT", trust_domain="other.local")


async def test_rotation_new_handshakes_get_the_new_certificate_existing_connections_finish(
    ca: CertificateAuthority,
) -> None:
    first = issue(ca, CATALOG)
    rotating = RotatingContext(server_context(first, ca.trust_bundle_pem, trust_domain=TD))  # type: ignore[arg-type]
    client = client_context(issue(ca, WEB), ca.trust_bundle_pem)
    async with mesh_server(rotating.listener_context()) as (port, _):
        old_reader, old_writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="")
        assert (await old_reader.readline()).startswith(b"accepted ")
        old_serial = old_writer.get_extra_info("ssl_object").getpeercert(binary_form=True)

        second = issue(ca, CATALOG)
        rotating.swap(server_context(second, ca.trust_bundle_pem, trust_domain=TD))  # type: ignore[arg-type]

        new_reader, new_writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="")
        assert (await new_reader.readline()).startswith(b"accepted ")
        new_der = new_writer.get_extra_info("ssl_object").getpeercert(binary_form=True)

        # The connection opened before the swap still works, on the old certificate.
        old_writer.write(b"still here\n")
        assert await asyncio.wait_for(old_reader.readline(), 5) == b"still here\n"
        for w in (old_writer, new_writer):
            w.close()
            await w.wait_closed()
    assert old_serial == der(first)
    assert new_der == der(second)
    assert rotating.generation == 1


async def test_rotating_both_sides_under_concurrent_handshakes_fails_nothing(ca: CertificateAuthority) -> None:
    # Bounded: 4 clients x 15 connections, 5 rotations of the server and client certificates.
    server_rotating = RotatingContext(
        server_context(issue(ca, CATALOG), ca.trust_bundle_pem, trust_domain=TD)  # type: ignore[arg-type]
    )
    client_rotating = RotatingContext(client_context(issue(ca, WEB), ca.trust_bundle_pem))
    failures: list[str] = []
    seen_server_certs: set[bytes] = set()

    async def client_loop(port: int) -> None:
        for _ in range(15):
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, ssl=client_rotating.current, server_hostname=""), 5
                )
                line = await asyncio.wait_for(reader.readline(), 5)
                seen_server_certs.add(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
                writer.close()
                await writer.wait_closed()
                if not line.startswith(b"accepted "):
                    failures.append(line.decode())
            except (TimeoutError, OSError) as exc:
                failures.append(repr(exc))
            await asyncio.sleep(0)

    async def rotator() -> None:
        for _ in range(5):
            await asyncio.sleep(0.02)
            server_rotating.swap(server_context(issue(ca, CATALOG), ca.trust_bundle_pem, trust_domain=TD))  # type: ignore[arg-type]
            client_rotating.swap(client_context(issue(ca, WEB), ca.trust_bundle_pem))

    async with mesh_server(server_rotating.listener_context()) as (port, verdicts):
        await asyncio.wait_for(asyncio.gather(rotator(), *(client_loop(port) for _ in range(4))), 30)
    assert failures == []
    assert len(verdicts) == 60
    assert server_rotating.generation == 5
    assert len(seen_server_certs) > 1  # the rotations really happened mid-load


def test_looks_like_tls_tells_a_client_hello_from_plaintext(ca: CertificateAuthority) -> None:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(issue(ca, WEB), ca.trust_bundle_pem).wrap_bio(incoming, outgoing, server_side=False)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    assert looks_like_tls(outgoing.read()[:5])  # a real ClientHello
    assert not looks_like_tls(b"GET / HTTP/1.1\r\n")
    assert not looks_like_tls(b"\x16")
    assert not looks_like_tls(b"")


async def test_health_checks_originate_mtls_through_the_pools_spiffe_checking_context(
    ca: CertificateAuthority, strict: ssl.SSLContext
) -> None:
    """The pool's one client carries health checks with the mesh's context: the SPIFFE check on the server
    passes for the expected identity and fails the check (never a request byte) for any other."""
    from facade.config import EndpointGroup, HealthCheck, ServiceSpec
    from facade.mesh.origination import mesh_client_context
    from facade.upstream import Upstreams

    checks: list[bytes] = []

    async def http_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(1000):
                head = await reader.readuntil(b"\r\n\r\n")
                checks.append(head.split(b" ", 2)[1])
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(http_ok, "127.0.0.1", 0, ssl=strict)
    port = server.sockets[0].getsockname()[1]
    hc = HealthCheck(path="/healthz", interval=0.05, timeout=1.0, unhealthy_threshold=1)
    rotating = RotatingContext(client_context(issue(ca, WEB), ca.trust_bundle_pem))
    try:
        for expected, healthy in ((CATALOG, True), (SpiffeId.workload(TD, "shop", "orders"), False)):
            spec = ServiceSpec(name="catalog", groups=(EndpointGroup(name="a", endpoints=(f"https://127.0.0.1:{port}",)),),
                               health_check=hc)
            ctx = mesh_client_context(rotating, expected=expected, trust_domain=TD)
            ups = Upstreams([spec], ssl_context_factory=lambda _spec, ctx=ctx: ctx)  # type: ignore[misc]
            pool = ups.get("catalog")
            assert pool is not None
            before = len(checks)
            try:
                await ups.start()
                ep = pool.endpoints[0]
                for _ in range(500):
                    if ep.health.checks >= 2:
                        break
                    await asyncio.sleep(0.01)
                assert ep.health.checks >= 2 and ep.healthy is healthy, ep.health
                if healthy:
                    assert ep.health.last_detail == "200" and checks[before:before + 2] == [b"/healthz"] * 2
                else:
                    assert "ConnectFailed" in ep.health.last_detail and "orders" in ep.health.last_detail
                    assert len(checks) == before  # refused in the handshake: no request reached the server
            finally:
                await ups.close()
    finally:
        server.close()
        await server.wait_closed()
