"""mTLS origination with a SPIFFE check on the server, for any ``ssl=`` consumer (the pools, asyncio).

    ctx = mesh_client_context(rotating, expected=SpiffeId.parse("spiffe://shop.local/ns/shop/sa/catalog"),
                              trust_domain="shop.local")
    Upstreams(specs, ssl_context_factory=lambda spec: ctx)     # or loop.create_connection(..., ssl=ctx)

OpenSSL checks the chain against the mesh bundle during the handshake; the SPIFFE rules
(``verify_peer``: one URI SAN, our trust domain, not a CA, exactly the expected ID) run right
after it, inside the TLS object's ``do_handshake``. A wrong peer therefore fails the handshake
itself (``ssl.SSLCertVerificationError``), before a single request byte is written, and the
proxy maps it like any other connect failure (502). Both asyncio's and uvloop's TLS transports
create the object with ``context.wrap_bio`` and drive it with ``do_handshake``, which is what
this hooks.

Each new connection takes the identity from ``rotating.current``: after a certificate rotation
new connections present the new SVID, pooled ones finish on the old.
"""

from __future__ import annotations

import ssl
from typing import Any

from .spiffe import SpiffeId
from .tls import PeerRejected, RotatingContext, verify_peer

__all__ = ["MeshClientContext", "VerifyingSSLObject", "mesh_client_context"]


class VerifyingSSLObject(ssl.SSLObject):
    """An SSLObject that applies ``verify_peer`` as the last step of its handshake."""

    mesh_expected: SpiffeId | None = None
    mesh_trust_domain: str = ""
    mesh_peer: SpiffeId | None = None

    def do_handshake(self) -> None:
        super().do_handshake()  # raises SSLWantReadError until the handshake is complete
        try:
            self.mesh_peer = verify_peer(
                self.getpeercert(binary_form=True), trust_domain=self.mesh_trust_domain, expected=self.mesh_expected
            )
        except PeerRejected as exc:
            raise ssl.SSLCertVerificationError(1, f"mesh peer rejected: {exc.reason}") from None


class MeshClientContext(ssl.SSLContext):
    """A client context that hands every connection to ``rotating.current`` and checks the peer's SPIFFE ID.

    Only ``wrap_bio`` is used by the event loop's TLS transports; this context's own settings
    are never used for a handshake.
    """

    rotating: RotatingContext
    expected: SpiffeId | None
    trust_domain: str

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: Any = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        assert not server_side, "MeshClientContext is for outbound connections"
        obj: VerifyingSSLObject = VerifyingSSLObject._create(  # type: ignore[attr-defined]
            incoming,
            outgoing,
            server_side=False,
            server_hostname=None,  # peers are named by SPIFFE ID; no SNI, no hostname check
            session=session,
            context=self.rotating.current,
        )
        obj.mesh_expected = self.expected
        obj.mesh_trust_domain = self.trust_domain
        return obj

    def __repr__(self) -> str:
        return f"<MeshClientContext expected={self.expected} {self.rotating!r}>"


def mesh_client_context(
    rotating: RotatingContext, *, expected: SpiffeId | None, trust_domain: str
) -> MeshClientContext:
    """A context for ``ssl=`` that originates mTLS with ``rotating``'s identity and demands ``expected``."""
    ctx = MeshClientContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.rotating = rotating
    ctx.expected = expected
    ctx.trust_domain = trust_domain
    return ctx
