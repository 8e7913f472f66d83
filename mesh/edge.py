"""The facade as a mesh workload: its own SVID (issued in-process by the CA), rotated, and mTLS to sidecars.

    edge = EdgeIdentity(ca, SpiffeId.parse("spiffe://shop.local/ns/edge/sa/facade"), ttl=86400)
    Upstreams(specs, ssl_context_factory=edge.ssl_context_factory)

For a service with ``identity:`` and https:// endpoints the factory returns a context that
presents the edge SVID and fails the handshake unless the server's SPIFFE ID is exactly that
identity (``mesh.origination``); every other service gets what ``facade.upstream`` would have
built from its ``tls:`` block. The key never leaves this process: the CA signs a CSR in memory.
"""

from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime, timedelta

from facade.config import ServiceSpec
from facade.upstream import client_ssl_context

from .ca import CertificateAuthority
from .identity import WorkloadIdentity
from .origination import mesh_client_context
from .rotation import rotation_time
from .spiffe import SpiffeId
from .tls import RotatingContext, client_context

__all__ = ["EdgeIdentity"]

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
        https = any(e.startswith("https://") for g in spec.groups for e in g.endpoints)
        if spec.identity and https:
            return mesh_client_context(
                self.rotating, expected=SpiffeId.parse(spec.identity), trust_domain=self.ca.trust_domain
            )
        if spec.tls is not None:
            return client_ssl_context(spec.tls, service=spec.name)
        return None
