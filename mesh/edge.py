"""The facade as a mesh workload: its own SVID (issued in-process by the CA), rotated, and mTLS to sidecars.

    edge = EdgeIdentity(ca, SpiffeId.parse("spiffe://shop.local/ns/edge/sa/facade"), ttl=86400)
    Upstreams(specs, ssl_context_factory=edge.ssl_context_factory)

For a service with ``identity:`` and https:// endpoints the factory returns a context that
presents the edge SVID and fails the handshake unless the server's SPIFFE ID is exactly that
identity (``mesh.origination``); every other service gets what ``facade.upstream`` would have
built from its ``tls:`` block. The key is never written to disk: the CA signs a CSR in memory.

With ``facade serve --workers N`` the supervisor keeps the CA and this identity (and rotates it);
``edge_credentials`` is what it sends each worker over the worker's private channel, and a worker's
``EdgeClient`` builds the same contexts from it (docs/workers.md, "Workers and the mesh").
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from facade.config import ServiceSpec
from facade.upstream import client_ssl_context

from .ca import CertificateAuthority
from .identity import IdentityError, WorkloadIdentity
from .origination import mesh_client_context
from .rotation import rotation_time
from .spiffe import SpiffeId
from .tls import RotatingContext, client_context

__all__ = ["EdgeClient", "EdgeIdentity", "edge_credentials"]

logger = logging.getLogger("mesh.edge")


class EdgeIdentity:
    """The facade's SVID and its rotating client context."""

    def __init__(
        self, ca: CertificateAuthority, spiffe_id: SpiffeId, *, ttl: float, rotating: RotatingContext | None = None
    ) -> None:
        """``rotating``: keep using this holder (a previous edge identity's), so pools built on it follow."""
        self.ca = ca
        self.spiffe_id = spiffe_id
        self.ttl = ttl
        self.identity = self._issue()
        self.issued_at = datetime.now(UTC)
        context = client_context(self.identity, ca.trust_bundle_pem)
        if rotating is None:
            rotating = RotatingContext(context)
        else:
            rotating.swap(context)
        self.rotating = rotating
        self.rotations = 0

    def __repr__(self) -> str:
        return f"EdgeIdentity({self.spiffe_id}, expires={self.identity.not_after.isoformat()}, {self.rotating!r})"

    def _issue(self) -> WorkloadIdentity:
        key, csr = WorkloadIdentity.new_csr(self.spiffe_id)
        cert = self.ca.sign_csr(csr, spiffe_id=self.spiffe_id, ttl=timedelta(seconds=self.ttl))
        return WorkloadIdentity.from_pem(key, cert)

    def rotate_at(self) -> datetime:
        return rotation_time(self.identity, self.issued_at)

    def rotate(self) -> None:
        """Issue a new SVID, build its context completely, then swap: new connections use it."""
        identity = self._issue()
        self.rotating.swap(client_context(identity, self.ca.trust_bundle_pem))
        self.identity = identity
        self.issued_at = datetime.now(UTC)
        self.rotations += 1
        logger.info("edge identity %s rotated; expires %s", self.spiffe_id, identity.not_after.isoformat())

    def ssl_context_factory(self, spec: ServiceSpec) -> ssl.SSLContext | None:
        """For ``Upstreams(..., ssl_context_factory=...)``: mesh mTLS where the service names an identity."""
        return _context_for(spec, self.rotating, self.ca.trust_domain)


def _context_for(spec: ServiceSpec, rotating: RotatingContext | None, trust_domain: str) -> ssl.SSLContext | None:
    https = any(e.startswith("https://") for g in spec.groups for e in g.endpoints)
    if spec.identity and https and rotating is not None:
        return mesh_client_context(rotating, expected=SpiffeId.parse(spec.identity), trust_domain=trust_domain)
    if spec.tls is not None:
        return client_ssl_context(spec.tls, service=spec.name)
    return None


def edge_credentials(edge: EdgeIdentity) -> dict[str, Any]:
    """The edge SVID (key, chain) and the trust bundle as plain data, for a worker's ``EdgeClient``."""
    return {
        "spiffe_id": str(edge.spiffe_id),
        "key_pem": edge.identity.key_pem(),
        "cert_pem": edge.identity.cert_pem,
        "bundle_pem": edge.ca.trust_bundle_pem,
        "trust_domain": edge.ca.trust_domain,
    }


class EdgeClient:
    """A worker's copy of the supervisor's edge identity: the same mTLS contexts, no CA, no rotation of its own.

    ``update`` takes each new ``edge_credentials`` the supervisor sends (a rotation, a new CA): new
    connections present the new SVID and trust the new bundle, pooled ones finish on the old, as with
    ``EdgeIdentity.rotate``. Before the first credentials (or without a mesh) services get their ``tls:``.
    """

    def __init__(self) -> None:
        self.rotating: RotatingContext | None = None
        self.trust_domain = ""
        self.identity: WorkloadIdentity | None = None
        self.updates = 0

    def __repr__(self) -> str:
        expires = self.identity.not_after.isoformat() if self.identity is not None else None
        return f"EdgeClient({self.identity.spiffe_id if self.identity else None}, expires={expires})"

    def update(self, credentials: Mapping[str, Any]) -> None:
        key = serialization.load_pem_private_key(credentials["key_pem"], password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError("the edge key is not an ECDSA key")
        identity = WorkloadIdentity.from_pem(key, credentials["cert_pem"])
        context = client_context(identity, credentials["bundle_pem"])
        if self.rotating is None:
            self.rotating = RotatingContext(context)
        else:
            self.rotating.swap(context)
        # The trust domain changes only with a new CA; contexts built before keep checking the old one
        # until their pool is rebuilt (a reload that changes the trust domain changes the services too).
        self.trust_domain = credentials["trust_domain"]
        self.identity = identity
        self.updates += 1

    def ssl_context_factory(self, spec: ServiceSpec) -> ssl.SSLContext | None:
        """For a worker's ``Upstreams``: what ``EdgeIdentity.ssl_context_factory`` gives in the supervisor."""
        return _context_for(spec, self.rotating, self.trust_domain)
