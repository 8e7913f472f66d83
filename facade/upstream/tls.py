"""Client TLS contexts for https:// endpoints, built from a service's ``tls:`` block."""

from __future__ import annotations

import ssl
from typing import Any

from ..config import UpstreamTLS
from ..errors import FacadeError

__all__ = ["UpstreamTLSError", "client_ssl_context"]


class UpstreamTLSError(FacadeError):
    """A service's TLS files could not be loaded."""


class _FixedServerNameContext(ssl.SSLContext):
    """Sends a fixed SNI and verifies the certificate against it, whatever host the URL names.

    A client sends as SNI the host it dials; overriding ``wrap_bio`` (used by both asyncio's and
    uvloop's TLS transports) lets the pool dial 127.0.0.1 and still verify the name
    ``catalog.internal``, so no caller needs per-connection TLS arguments.
    """

    fixed_server_name: str = ""

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: Any = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        name = server_hostname if server_side else self.fixed_server_name
        return super().wrap_bio(incoming, outgoing, server_side, name, session)


def client_ssl_context(tls: UpstreamTLS, *, service: str = "") -> ssl.SSLContext:
    """TLS 1.2+ client context: trust ``ca_file`` (or the system store), present ``cert_file``/``key_file``
    when given (mutual TLS), send and verify ``server_name`` when given; ``verify: false`` skips checks."""
    ctx: ssl.SSLContext
    if tls.server_name:
        named = _FixedServerNameContext(ssl.PROTOCOL_TLS_CLIENT)
        named.fixed_server_name = tls.server_name
        ctx = named
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    where = f"service {service}: " if service else ""
    try:
        if not tls.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif tls.ca_file:
            ctx.load_verify_locations(cafile=tls.ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if tls.cert_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise UpstreamTLSError(f"{where}cannot load TLS files: {exc}") from exc
    return ctx
