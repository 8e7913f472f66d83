"""Requests signed with an X.509-SVID's key: how a sidecar authenticates to the control plane.

    header = sign_request(identity, "GET", "/mesh/config", {"service": "catalog"}, b"")   # sidecar
    request.headers["authorization"] = header
    holder = verify_request(header, "GET", "/mesh/config", params, body,                   # control plane
                            roots=ca.roots, trust_domain=..., guard=replay_guard)

The header is ``Authorization: SVID <cert>.<ts>.<nonce>.<sig>`` (base64url, no padding):

- ``cert``: the SVID leaf, DER;
- ``ts``: the signing time in milliseconds since the epoch; the request is accepted within
  ``MAX_SKEW_S`` of the control plane's clock;
- ``nonce``: 16 random bytes; a nonce seen within the window is a replay and is refused, and so
  is a request signed before the control plane (re)started, whose nonces it cannot know;
- ``sig``: ECDSA-SHA256 with the SVID's key over ``canonical_request`` -- a version tag, the
  method, the path, the query parameters sorted, the SHA-256 of the body, ``ts`` and ``nonce``
  -- so a signature is good for exactly one request.

The certificate must chain to one of ``roots`` (the CA's current root and, after a re-init, the
root it replaced), be valid now, and pass ``verify_peer`` (one URI SAN, a workload SPIFFE ID in
the trust domain, not a CA). This is the same proof of possession a TLS client certificate
gives, without putting TLS on the admin listener.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from .identity import WorkloadIdentity
from .spiffe import SpiffeId
from .tls import PeerRejected, verify_peer

__all__ = [
    "MAX_REMEMBERED_NONCES",
    "MAX_SKEW_S",
    "SCHEME",
    "ReplayGuard",
    "SignedRequestRejected",
    "canonical_request",
    "sign_request",
    "verify_request",
    "verify_svid",
]

SCHEME = "SVID"
MAX_SKEW_S = 30.0  # a signed request older or newer than this is refused
MAX_REMEMBERED_NONCES = 100_000  # nonces held for the replay window; beyond that, refuse rather than forget
_VERSION = b"facade-mesh-request-v1"


class SignedRequestRejected(Exception):
    """The request is not signed by a valid SVID of this CA; ``status`` is 401 (or 503 when overloaded)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical_request(
    method: str, path: str, params: Sequence[tuple[str, str]] | Mapping[str, str], body: bytes, ts: int, nonce: str
) -> bytes:
    """The exact bytes signed: one request, one signature (pure)."""
    pairs = sorted(params.items() if isinstance(params, Mapping) else params)
    query = "&".join(f"{_b64(k.encode())}={_b64(v.encode())}" for k, v in pairs)
    return b"\n".join(
        [
            _VERSION,
            method.upper().encode("ascii"),
            path.encode("utf-8"),
            query.encode("ascii"),
            hashlib.sha256(body).hexdigest().encode("ascii"),
            str(ts).encode("ascii"),
            nonce.encode("ascii"),
        ]
    )


def sign_request(
    identity: WorkloadIdentity,
    method: str,
    path: str,
    params: Sequence[tuple[str, str]] | Mapping[str, str],
    body: bytes = b"",
    *,
    now: float | None = None,
) -> str:
    """The ``Authorization`` header value for this request, signed with ``identity``'s key."""
    ts = int((time.time() if now is None else now) * 1000)
    nonce = _b64(secrets.token_bytes(16))
    signature = identity.key.sign(canonical_request(method, path, params, body, ts, nonce), ec.ECDSA(hashes.SHA256()))
    cert = identity.leaf.public_bytes(Encoding.DER)
    return f"{SCHEME} {_b64(cert)}.{ts}.{nonce}.{_b64(signature)}"


class ReplayGuard:
    """Nonces of accepted signed requests, remembered while their timestamp is inside the window."""

    def __init__(
        self, *, window_s: float = MAX_SKEW_S, capacity: int = MAX_REMEMBERED_NONCES, since: float | None = None
    ) -> None:
        self.window_s = window_s
        self.capacity = capacity
        # Nonces live in memory: a request signed before this guard existed (before a control-plane
        # restart) might have been accepted by the previous process, so it is refused, not trusted.
        self.since = time.time() if since is None else since
        self._seen: dict[str, float] = {}  # nonce -> when it may be forgotten
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, nonce: str, ts: float, now: float) -> None:
        """Record ``nonce``; raise SignedRequestRejected when it was seen (a replay) or the guard is full."""
        if ts < self.since:
            raise SignedRequestRejected(
                "signed before the control plane started (a replay across a restart?); sign anew"
            )
        with self._lock:
            if len(self._seen) >= self.capacity:
                for old in [n for n, until in self._seen.items() if until <= now]:
                    del self._seen[old]
            if nonce in self._seen:
                raise SignedRequestRejected("signed request replayed (its nonce was already used)")
            if len(self._seen) >= self.capacity:
                # Forgetting a live nonce would let its request be replayed: refuse instead.
                raise SignedRequestRejected("too many signed requests in the replay window; retry", status=503)
            # A nonce can only be replayed while its timestamp is fresh: remember it that long.
            self._seen[nonce] = ts + self.window_s


def verify_svid(
    cert: x509.Certificate, *, roots: Sequence[x509.Certificate], trust_domain: str, now: datetime
) -> SpiffeId:
    """The workload ID of ``cert`` when a root in ``roots`` signed it and it is a valid SVID now."""
    for root in roots:
        if cert.issuer != root.subject:
            continue
        root_key = root.public_key()
        if not isinstance(root_key, ec.EllipticCurvePublicKey) or cert.signature_hash_algorithm is None:
            continue
        try:
            root_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        except InvalidSignature:
            continue
        break
    else:
        raise SignedRequestRejected("certificate was not issued by this CA")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SignedRequestRejected("certificate is expired or not yet valid")
    try:
        return verify_peer(cert.public_bytes(Encoding.DER), trust_domain=trust_domain)
    except PeerRejected as exc:
        raise SignedRequestRejected(exc.reason) from None


def verify_request(
    header: str | None,
    method: str,
    path: str,
    params: Sequence[tuple[str, str]] | Mapping[str, str],
    body: bytes,
    *,
    roots: Sequence[x509.Certificate],
    trust_domain: str,
    guard: ReplayGuard,
    now: float | None = None,
) -> tuple[SpiffeId, x509.Certificate]:
    """The signer's SPIFFE ID and certificate; raises SignedRequestRejected saying what is wrong."""
    if not header:
        raise SignedRequestRejected(f"missing Authorization: {SCHEME} <signed request> (or a bearer token)")
    scheme, _, value = header.strip().partition(" ")
    if scheme != SCHEME:
        raise SignedRequestRejected(f"Authorization scheme must be {SCHEME}, got {scheme!r}")
    parts = value.strip().split(".")
    if len(parts) != 4:
        raise SignedRequestRejected("malformed signed request: want <cert>.<ts>.<nonce>.<sig>")
    cert_b64, ts_text, nonce, sig_b64 = parts
    try:
        cert = x509.load_der_x509_certificate(_unb64(cert_b64))
        signature = _unb64(sig_b64)
        ts = int(ts_text)
    except (ValueError, TypeError) as exc:
        raise SignedRequestRejected(f"malformed signed request: {exc}") from None
    if not 16 <= len(nonce) <= 64:
        raise SignedRequestRejected("malformed signed request: bad nonce")
    clock = time.time() if now is None else now
    if abs(clock - ts / 1000) > MAX_SKEW_S:
        raise SignedRequestRejected(f"signed request is stale or from the future (more than {MAX_SKEW_S:g}s off)")
    spiffe_id = verify_svid(cert, roots=roots, trust_domain=trust_domain, now=datetime.fromtimestamp(clock, UTC))
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignedRequestRejected("certificate key is not ECDSA")
    try:
        key.verify(signature, canonical_request(method, path, params, body, ts, nonce), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignedRequestRejected("signature does not verify with the certificate's key") from None
    # Only a request whose signature verifies may use up a nonce (else anyone could burn them).
    guard.admit(nonce, ts / 1000, clock)
    return spiffe_id, cert
