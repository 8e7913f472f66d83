"""Certificates for mesh tests: real ones from the CA, and deliberately broken ones the CA would refuse.

``forge`` signs whatever it is told with the CA's root key, so a test can present a certificate
that is cryptographically valid under the bundle but breaks one SVID rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from facade.mesh.ca import CertificateAuthority
from facade.mesh.identity import WorkloadIdentity
from facade.mesh.spiffe import SpiffeId
from facade.mesh.tls import PeerRejected, verify_peer

TD = "shop.local"


def utcnow() -> datetime:
    return datetime.now(UTC)


def issue(
    ca: CertificateAuthority,
    spiffe_id: SpiffeId | str,
    *,
    ttl: timedelta = timedelta(hours=1),
    now: datetime | None = None,
) -> WorkloadIdentity:
    """A real SVID, the way a sidecar gets one: key made here, CSR signed by the CA."""
    sid = SpiffeId.parse(spiffe_id) if isinstance(spiffe_id, str) else spiffe_id
    key, csr = WorkloadIdentity.new_csr(sid)
    return WorkloadIdentity.from_pem(key, ca.sign_csr(csr, spiffe_id=sid, ttl=ttl, now=now))


def forge(
    ca: CertificateAuthority,
    uris: Sequence[str],
    *,
    is_ca: bool = False,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> WorkloadIdentity:
    """A certificate signed by ``ca``'s root with arbitrary URI SANs / CA flag (bypassing the CA's checks)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = utcnow()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=1))
        .not_valid_after(not_after or now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=True)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, True, is_ca, is_ca, False, False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    )
    cert = builder.sign(ca._key, hashes.SHA256())  # the root key: tests only
    try:
        sid = SpiffeId.parse(uris[0])
    except (IndexError, ValueError):  # a deliberately broken SAN: the identity's label does not matter
        sid = SpiffeId(TD)
    return WorkloadIdentity(spiffe_id=sid, key=key, chain=(cert,))


def bare_client_context(bundle_pem: bytes) -> ssl.SSLContext:
    """A TLS client that trusts the bundle but presents no certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=bundle_pem.decode())
    return ctx


def der(identity: WorkloadIdentity) -> bytes:
    return identity.leaf.public_bytes(serialization.Encoding.DER)


@dataclass
class Outcome:
    """What one connection attempt came to. ``server`` is the server's verdict: ``"accepted <id>"``,
    ``"rejected <reason>"``, or None when the handshake itself failed on the server."""

    server: str | None
    client_error: str | None
    server_peer_der: bytes | None = None

    @property
    def accepted(self) -> bool:
        return self.server is not None and self.server.startswith("accepted ")


@contextlib.asynccontextmanager
async def mesh_server(ctx: ssl.SSLContext, *, trust_domain: str = TD) -> AsyncIterator[tuple[int, list[str]]]:
    """A TLS server on 127.0.0.1 that verifies each peer with ``verify_peer`` and reports the verdict.

    Yields (port, verdicts); each accepted handshake appends a verdict and writes it back as one line.
    """
    verdicts: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        try:
            peer = verify_peer(ssl_object.getpeercert(binary_form=True), trust_domain=trust_domain)
            verdict = f"accepted {peer}"
        except PeerRejected as exc:
            verdict = f"rejected {exc.reason}"
        verdicts.append(verdict)
        try:
            writer.write(verdict.encode() + b"\n")
            await writer.drain()
            # Stay up for an echo exchange so rotation tests can use a long-lived connection.
            while line := await asyncio.wait_for(reader.readline(), timeout=5):
                writer.write(line)
                await writer.drain()
        except (TimeoutError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx, ssl_handshake_timeout=5)
    try:
        yield server.sockets[0].getsockname()[1], verdicts
    finally:
        server.close()
        await server.wait_closed()


async def attempt(port: int, verdicts: list[str], client_ctx: ssl.SSLContext | None) -> Outcome:
    """Connect (TLS with ``client_ctx``, or plaintext when None), read the server's verdict line."""
    before = len(verdicts)
    client_error: str | None = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname=None if client_ctx is None else ""
            ),
            timeout=5,
        )
        try:
            if client_ctx is None:
                writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            if not line:
                client_error = "connection closed"
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as exc:
        client_error = f"{type(exc).__name__}: {exc}"
    # A handshake the server refused never reaches the handler; give a verdict a moment to land.
    for _ in range(20):
        if len(verdicts) > before:
            break
        await asyncio.sleep(0.01)
    server = verdicts[before] if len(verdicts) > before else None
    return Outcome(server=server, client_error=client_error)
