"""The sidecar's inbound request path: authorization policy, then the facade's Proxy to the local app.

Per request, in order:

1. read the sidecar's state once (policies, normalization flags; a config update swaps it);
2. read the canonical path and host exactly as the Proxy will (``facade.resolve.read_target``: the
   first steps of the resolution step HTTP and WebSocket share, same flags, same Host rules): what
   policy checks is what the app receives; a path or Host with no canonical form is a 400;
3. evaluate the policies with the verified peer (``scope["extensions"]["mesh.peer"]``, set by
   ``mesh.listener`` for TLS connections only) as principal: DENY -> 403 JSON (an upgrade gets the
   same response, through the ``websocket.http.response`` extension);
4. forward through the Proxy; the peer's X-Forwarded-Client-Cert goes in through the
   ``facade.upstream_headers`` scope extension, after the Proxy's header hygiene has removed
   whatever a client sent under that name;
5. record source principal, destination, status class, decision and latency.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from facade.config import NormalizeSpec
from facade.exchange import refusal
from facade.resolve import Reject, read_target
from facade.websocket import refuse_websocket

from .listener import PEER_EXTENSION, Peer
from .metrics import SidecarMetrics
from .policy import AuthorizationPolicy, RequestAttributes, evaluate
from .spiffe import SpiffeId
from .xfcc import XFCC_HEADER, xfcc_value

__all__ = ["GateState", "PolicyGate"]

logger = logging.getLogger("mesh.gate")

Scope = dict[str, Any]

_ACCESS_DENIED = Reject(403, "RBAC: access denied")


class GateState:
    """What the gate reads per request; replaced whole, never mutated."""

    __slots__ = ("normalize", "policies")

    def __init__(self, policies: tuple[AuthorizationPolicy, ...], normalize: NormalizeSpec) -> None:
        self.policies = policies
        self.normalize = normalize


class PolicyGate:
    """ASGI app: policy check in front of ``upstream`` (the facade Proxy over the local app)."""

    def __init__(
        self,
        upstream: Any,
        *,
        own_id: Callable[[], SpiffeId],
        state: Callable[[], GateState],
        destination: str,
        metrics: SidecarMetrics,
    ) -> None:
        self._upstream = upstream
        self._own_id = own_id
        self._state = state
        self._destination = destination
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._upstream(scope, receive, send)
            return
        started = time.perf_counter()
        state = self._state()
        extensions = scope.get("extensions") or {}
        peer: Peer | None = extensions.get(PEER_EXTENSION)
        status = 0
        decision = "allow"
        try:
            target = read_target(state.normalize, scope)
            if isinstance(target, Reject):
                status = target.status
                await _deny(scope, send, target)
                return
            path, host = target
            headers = _header_map(scope["headers"])
            method = scope.get("method", "GET")
            result = evaluate(
                state.policies,
                RequestAttributes.of(
                    peer.spiffe_id if peer else None, path=path, method=method, host=host, headers=headers
                ),
            )
            if result.audit:
                logger.info(
                    "audit: %s %s from %s matched %s", method, path, peer and peer.spiffe_id, result.audit_policies
                )
            if not result.allowed:
                decision = "deny"
                status = 403
                # Which policy denied (and why) is the operator's to know, not the caller's (Envoy's
                # body is "RBAC: access denied" too).
                logger.info("deny: %s %s from %s: %s", method, path, peer and peer.spiffe_id, result.reason)
                await _deny(scope, send, _ACCESS_DENIED)
                return
            if peer is not None:
                xfcc = xfcc_value(by=self._own_id(), peer=peer.spiffe_id, peer_der=peer.der)
                scope = dict(scope)
                scope["extensions"] = {**extensions, "facade.upstream_headers": [(XFCC_HEADER, xfcc)]}

            async def send_and_watch(message: Any) -> None:
                nonlocal status
                if message["type"] in ("http.response.start", "websocket.http.response.start"):
                    status = message["status"]
                elif message["type"] == "websocket.accept":
                    status = 101
                await send(message)

            await self._upstream(scope, receive, send_and_watch)
        finally:
            self._metrics.record(
                direction="inbound",
                principal=str(peer.spiffe_id) if peer else None,
                destination=self._destination,
                status=status,
                decision=decision,
                duration_s=time.perf_counter() - started,
            )


def _header_map(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    # Istio joins repeated headers with "," for policy conditions.
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        out[key] = f"{out[key]},{text}" if key in out else text
    return out


async def _deny(scope: Scope, send: Any, reject: Reject) -> None:
    status, headers, body = refusal(reject)
    if scope["type"] == "websocket":
        await refuse_websocket(scope, send, status, headers, body)
        return
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
