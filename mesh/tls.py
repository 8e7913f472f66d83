"""TLS contexts for mesh mTLS, SPIFFE peer verification, and hot rotation.

Verification happens in two steps, like Envoy's SPIFFE validator:

1. OpenSSL, during the handshake, checks the peer's chain against the trust bundle only (no
   system CAs), its validity period and signatures; a peer without a certificate fails here
   when one is required.
2. ``verify_peer`` then checks the SPIFFE rules on the leaf OpenSSL accepted
   (``ssl_object.getpeercert(binary_form=True)``): exactly one URI SAN, a valid SPIFFE ID in
   our trust domain with a path (a trust domain ID is never a workload's), not a CA, optionally the exact ID expected for that service.

Hostname checking is off: a mesh peer is named by its SPIFFE ID, not by a DNS name.

Modes follow Istio's PeerAuthentication: STRICT requires mTLS; PERMISSIVE accepts mTLS or
plaintext on one port (the sidecar looks at the first byte), and its TLS branch still requires a
client certificate, so a TLS peer always has a principal; DISABLE is plaintext (no context).
"""

from __future__ import annotations

import os
import secrets
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Literal

from cryptography import x509

from .identity import WorkloadIdentity, uri_sans
from .spiffe import InvalidSpiffeId, SpiffeId

__all__ = [
    "MTLS_MODES",
    "MtlsMode",
    "PeerRejected",
    "RotatingContext",
    "client_context",
    "looks_like_tls",
    "server_context",
    "verify_peer",
]

MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
MTLS_MODES: tuple[MtlsMode, ...] = ("STRICT", "PERMISSIVE", "DISABLE")

# TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites are all fine as OpenSSL ships them.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def looks_like_tls(first_bytes: bytes) -> bool:
    """Whether a connection's first bytes are a TLS handshake record (0x16 0x03 ...), as Envoy's
    tls_inspector decides; PERMISSIVE listeners use it to choose the TLS or the plaintext branch.
    Plain HTTP starts with a method token, which is never 0x16."""
    return len(first_bytes) >= 2 and first_bytes[0] == 0x16 and first_bytes[1] == 0x03


class PeerRejected(Exception):
    """The peer completed the handshake but is not an acceptable mesh identity; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _base_context(purpose: ssl.Purpose, identity: WorkloadIdentity, bundle_pem: bytes) -> ssl.SSLContext:
    protocol = ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # Only the mesh's own roots: never the system store, or any public CA could mint a peer.
    ctx.load_verify_locations(cadata=bundle_pem.decode("ascii"))
    _load_identity(ctx, identity)
    return ctx


def _load_identity(ctx: ssl.SSLContext, identity: WorkloadIdentity) -> None:
    # The ssl module only loads keys from files. The key goes to a private (0700) temporary
    # directory, encrypted with a one-off password, and is removed as soon as OpenSSL has it.
    password = secrets.token_bytes(32).hex().encode()
    with tempfile.TemporaryDirectory(prefix="facade-mesh-") as tmp:
        key_path = Path(tmp) / "key.pem"
        cert_path = Path(tmp) / "cert.pem"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, identity.key_pem(password))
        finally:
            os.close(fd)
        cert_path.write_bytes(identity.cert_pem)
        ctx.load_cert_chain(cert_path, key_path, password=password)


def server_context(
    identity: WorkloadIdentity, bundle_pem: bytes, *, mode: MtlsMode = "STRICT", trust_domain: str
) -> ssl.SSLContext | None:
    """The inbound context for ``mode``: CERT_REQUIRED against ``bundle_pem``; None for DISABLE.

    ``trust_domain`` is the domain peers must belong to (checked by ``verify_peer`` after the
    handshake); the server's own identity must belong to it too.
    """
    if mode not in MTLS_MODES:
        raise ValueError(f"mTLS mode must be one of {', '.join(MTLS_MODES)}, got {mode!r}")
    if identity.spiffe_id.trust_domain != trust_domain:
        raise ValueError(f"this workload's identity {identity.spiffe_id} is not in trust domain {trust_domain!r}")
    if mode == "DISABLE":
        return None
    ctx = _base_context(ssl.Purpose.CLIENT_AUTH, identity, bundle_pem)
    # STRICT and the TLS branch of PERMISSIVE both demand a client certificate.
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(identity: WorkloadIdentity, bundle_pem: bytes) -> ssl.SSLContext:
    """The outbound mTLS context: presents ``identity``, verifies the server against ``bundle_pem``.

    check_hostname is off; call ``verify_peer(..., expected=<the service's SPIFFE ID>)`` after connecting.
    """
    ctx = _base_context(ssl.Purpose.SERVER_AUTH, identity, bundle_pem)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def verify_peer(der_cert: bytes | None, *, trust_domain: str, expected: SpiffeId | None = None) -> SpiffeId:
    """The peer's SPIFFE ID, after checking the X.509-SVID rules; raises PeerRejected."""
    if not der_cert:
        raise PeerRejected("peer presented no certificate")
    try:
        cert = x509.load_der_x509_certificate(der_cert)
    except ValueError as exc:
        raise PeerRejected(f"peer certificate is unreadable: {exc}") from None
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is not None and basic.ca:
        raise PeerRejected("peer certificate is a CA certificate, not a leaf SVID")
    try:
        usage: x509.KeyUsage | None = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and (usage.key_cert_sign or usage.crl_sign):
        raise PeerRejected("peer certificate may sign certificates (keyCertSign/cRLSign), not a leaf SVID")
    uris = uri_sans(cert)
    if len(uris) != 1:
        raise PeerRejected(f"peer certificate must have exactly one URI SAN, it has {len(uris)}")
    try:
        peer = SpiffeId.parse_workload(uris[0])
    except InvalidSpiffeId as exc:
        raise PeerRejected(f"peer URI SAN {uris[0]!r} is not a SPIFFE ID of a workload: {exc}") from None
    if peer.trust_domain != trust_domain:
        raise PeerRejected(f"peer {peer} is not in trust domain {trust_domain!r}")
    if expected is not None and peer != expected:
        raise PeerRejected(f"peer is {peer}, expected {expected}")
    return peer


class RotatingContext:
    """A hot-swappable TLS context: new handshakes use the newest, existing connections finish.

    Clients read ``current`` for each new connection. Servers pass ``listener_context()`` to the
    listening socket once; its SNI callback (OpenSSL calls it on every ClientHello, with or
    without SNI) moves each new connection onto ``current`` before the certificate is chosen.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self._current = context
        self._lock = threading.Lock()
        self.generation = 0

    def __repr__(self) -> str:
        return f"RotatingContext(generation={self.generation})"

    @property
    def current(self) -> ssl.SSLContext:
        return self._current

    def swap(self, context: ssl.SSLContext) -> None:
        """Make ``context`` the one new handshakes use. Built completely before the swap, so a
        handshake never sees a half-loaded context; the old one lives on in its connections."""
        with self._lock:
            self._current = context
            self.generation += 1

    def listener_context(self) -> ssl.SSLContext:
        """The context to give a listening socket; it forwards each handshake to ``current``."""
        listener = self._current
        holder = self

        def pick_current(ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
            newest = holder.current
            if ssl_object.context is not newest:
                ssl_object.context = newest

        # The listening context is a copy with the callback, so swapping does not change it.
        wrapper = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        wrapper.minimum_version = listener.minimum_version
        wrapper.options = listener.options
        wrapper.verify_mode = listener.verify_mode
        wrapper.set_ciphers(_TLS12_CIPHERS)
        for der in listener.get_ca_certs(binary_form=True):
            wrapper.load_verify_locations(cadata=der)
        wrapper.sni_callback = pick_current
        return wrapper
