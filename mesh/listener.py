"""The sidecar's inbound accept path: mTLS per PeerAuthentication mode, the verified peer on every request.

Per accepted connection, in order:

1. Decide TLS or plaintext by the mode in force *now* (a mode change applies to new connections):
   DISABLE -> plaintext; PERMISSIVE and STRICT -> peek at the first bytes without consuming
   them (``recv(MSG_PEEK)``): a TLS record (``looks_like_tls``) gets TLS; anything else is
   plaintext under PERMISSIVE and refused under STRICT (closed, counted as ``plaintext_refused``:
   the ``mtls: strict`` migration step's gate counts these attempts).
2. Hand the socket to the event loop with the current server context (``connect_accepted_socket``);
   OpenSSL checks the client's chain against the bundle (STRICT and the TLS branch of PERMISSIVE
   require a client certificate).
3. When the handshake is done, ``verify_peer`` applies the SPIFFE rules to the leaf; a rejected
   peer is disconnected before a request is read. An accepted peer's SPIFFE ID rides on every
   request of the connection as ``scope["extensions"]["mesh.peer"]`` (a ``Peer``); plaintext
   requests carry none.

HTTP is uvicorn's httptools protocol with the facade's head limits (``facade.listener``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.server import ServerState

from facade.listener import HeadLimits, guarded_protocol
from facade.server import prepared, server_config

from .spiffe import SpiffeId
from .tls import MtlsMode, PeerRejected, looks_like_tls, verify_peer

__all__ = ["PEER_EXTENSION", "InboundListener", "Peer"]

logger = logging.getLogger("mesh.inbound")

PEER_EXTENSION = "mesh.peer"
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Peer:
    """A verified TLS peer: its SPIFFE ID and DER leaf certificate (for XFCC's Hash)."""

    spiffe_id: SpiffeId
    der: bytes


@dataclass(slots=True)
class InboundCounters:
    """Connections by outcome, and requests by transport; ``on_connection(kind)`` hears each connection too.

    ``plaintext_refused``: plaintext connections closed because the mode was STRICT.
    ``plaintext_requests`` / ``tls_requests``: HTTP requests read on plaintext / mTLS connections
    (a plaintext keep-alive connection accepted before a switch to STRICT still counts here).
    """

    tls: int = 0
    plaintext: int = 0
    handshake_failed: int = 0
    peer_rejected: int = 0
    plaintext_refused: int = 0
    plaintext_requests: int = 0
    tls_requests: int = 0
    on_connection: Callable[[str], None] | None = None

    def count(self, kind: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if self.on_connection is not None:
            self.on_connection(kind)

    def view(self) -> dict[str, int]:
        return {
            "tls": self.tls,
            "plaintext": self.plaintext,
            "handshake_failed": self.handshake_failed,
            "peer_rejected": self.peer_rejected,
            "plaintext_refused": self.plaintext_refused,
            "plaintext_requests": self.plaintext_requests,
            "tls_requests": self.tls_requests,
        }


def _mesh_protocol(limits: HeadLimits, trust_domain: Callable[[], str], counters: InboundCounters) -> type[Any]:
    base = guarded_protocol(limits)

    class MeshHttpProtocol(base):  # type: ignore[misc, valid-type]
        _mesh_peer: Peer | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None:
                counters.count("plaintext")
                return
            der = ssl_object.getpeercert(binary_form=True)
            try:
                self._mesh_peer = Peer(verify_peer(der, trust_domain=trust_domain()), der)
            except PeerRejected as exc:
                counters.count("peer_rejected")
                client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
                logger.warning("inbound: rejected peer from %s: %s", client, exc.reason)
                transport.abort()
                return
            counters.count("tls")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._mesh_peer is not None:
                counters.tls_requests += 1
                self.scope["extensions"] = {PEER_EXTENSION: self._mesh_peer}
            else:
                counters.plaintext_requests += 1

        def handle_websocket_upgrade(self) -> None:
            # uvicorn hands an upgrade to a WebSocket protocol that builds a scope of its own: without
            # this the peer would be lost there (no principal for the policy, no XFCC for the app).
            ws_class: type[Any] | None = self.ws_protocol_class  # type: ignore[has-type]
            peer = self._mesh_peer
            if peer is not None and ws_class is not None:
                with_peer = _peer_websocket(ws_class)
                self.ws_protocol_class = lambda **kwargs: with_peer(mesh_peer=peer, **kwargs)
            super().handle_websocket_upgrade()

    return MeshHttpProtocol


_PEER_WEBSOCKET: dict[type[Any], type[Any]] = {}  # one subclass per uvicorn WebSocket protocol class


def _peer_websocket(base: type[Any]) -> type[Any]:
    """uvicorn's WebSocket protocol ``base``, adding the verified peer to the scope like HTTP requests get it."""
    known = _PEER_WEBSOCKET.get(base)
    if known is not None:
        return known

    class PeerWebSocketProtocol(base):  # type: ignore[misc]
        def __init__(self, *args: Any, mesh_peer: Peer, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._mesh_peer = mesh_peer

        async def run_asgi(self) -> None:
            self.scope["extensions"] = {**(self.scope.get("extensions") or {}), PEER_EXTENSION: self._mesh_peer}
            await super().run_asgi()

    _PEER_WEBSOCKET[base] = PeerWebSocketProtocol
    return PeerWebSocketProtocol


class InboundListener:
    """Serves ``app`` on ``sock`` with mTLS per ``mode()``; ``server_context()`` gives the current context."""

    def __init__(
        self,
        app: Any,
        *,
        sock: socket.socket,
        mode: Callable[[], MtlsMode],
        server_context: Callable[[], ssl.SSLContext],
        trust_domain: Callable[[], str],
        limits: HeadLimits | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        on_connection: Callable[[str], None] | None = None,
    ) -> None:
        self._sock = sock
        self._mode = mode
        self._server_context = server_context
        self._handshake_timeout = handshake_timeout
        self.counters = InboundCounters(on_connection=on_connection)
        self._limits = limits or HeadLimits(max_head_bytes=60 * 1024, header_timeout=10.0)
        # The sidecar's listener settings (facade.server), with connections accepted here: the
        # protocol starts only once the first bytes said TLS or plaintext.
        protocol = _mesh_protocol(self._limits, trust_domain, self.counters)
        self._server = prepared(server_config(app, protocol=protocol, passthrough=True))
        self._server.servers = []
        self._state: ServerState = self._server.server_state
        self._accepting: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<InboundListener {self.url} mode={self._mode()}>"

    @property
    def url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _protocol(self) -> asyncio.Protocol:
        cls = self._server.config.http_protocol_class
        return cls(config=self._server.config, server_state=self._state, app_state={})  # type: ignore[call-arg]

    async def start(self) -> None:
        self._accepting = asyncio.create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:  # e.g. EMFILE: back off instead of spinning
                logger.warning("inbound: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            task = asyncio.create_task(self._serve(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            mode = self._mode()
            use_tls = mode == "STRICT"
            if mode in ("PERMISSIVE", "STRICT"):
                first = await _peek(conn, self._handshake_timeout)
                if not first:
                    conn.close()
                    return
                # One byte 0x16 is already no HTTP method; two bytes decide like Envoy's tls_inspector.
                use_tls = looks_like_tls(first) or first == b"\x16"
                if not use_tls and mode == "STRICT":
                    # Refused before any byte is read: counted apart from failed handshakes, because
                    # "someone still talks plaintext to this service" is what an mtls step waits on.
                    self.counters.count("plaintext_refused")
                    conn.close()
                    return
            ctx = self._server_context() if use_tls else None
            await loop.connect_accepted_socket(
                self._protocol, conn, ssl=ctx, ssl_handshake_timeout=self._handshake_timeout if ctx else None
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.counters.count("handshake_failed")
            logger.info("inbound: connection closed before HTTP: %r", exc)
            conn.close()

    async def stop(self) -> None:
        """Stop accepting; let requests in flight finish (bounded); close."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        self._sock.close()
        for task in list(self._pending):
            task.cancel()
        self._server.should_exit = True
        await self._server.shutdown()


async def _peek(conn: socket.socket, timeout: float) -> bytes:
    """The first bytes of ``conn`` (up to 3), left unread in the socket; b"" on EOF or timeout."""
    loop = asyncio.get_running_loop()
    readable = loop.create_future()
    fd = conn.fileno()

    def on_readable() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        async with asyncio.timeout(timeout):
            await readable
    except TimeoutError:
        return b""
    finally:
        loop.remove_reader(fd)
    try:
        return conn.recv(3, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return b""
