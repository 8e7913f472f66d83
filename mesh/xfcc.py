"""``X-Forwarded-Client-Cert`` in Envoy's format, built from a verified peer (never from the client).

    x-forwarded-client-cert: By=spiffe://shop.local/ns/shop/sa/catalog;Hash=<sha256 hex>;URI=spiffe://shop.local/ns/shop/sa/web

``By`` is the sidecar's own identity, ``Hash`` the SHA-256 of the peer's DER certificate and
``URI`` the peer's SPIFFE ID. Envoy separates elements (one per proxy hop) with ``,`` and pairs
with ``;``, quoting values that contain ``,``, ``;``, ``=`` or ``"``. The sidecar removes any
client-supplied value first (``facade.headers.IDENTITY_HEADERS``) and sets exactly one element.
"""

from __future__ import annotations

import hashlib

from .spiffe import SpiffeId

__all__ = ["XFCC_HEADER", "parse_xfcc", "xfcc_value"]

XFCC_HEADER = "x-forwarded-client-cert"
_SPECIAL = frozenset(',;="')


def _quote(value: str) -> str:
    if any(c in _SPECIAL for c in value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def xfcc_value(*, by: SpiffeId, peer: SpiffeId, peer_der: bytes) -> str:
    """One XFCC element for a peer whose certificate was verified by this sidecar."""
    digest = hashlib.sha256(peer_der).hexdigest()
    return f"By={_quote(str(by))};Hash={digest};URI={_quote(str(peer))}"


def parse_xfcc(value: str) -> list[dict[str, str]]:
    """Split an XFCC header into elements of key -> value (keys as written). For apps and tests."""
    elements: list[dict[str, str]] = []
    pairs: dict[str, str] = {}
    key, buf, quoted, escaped, in_value = "", [], False, False, False
    for ch in value + ",":
        if escaped:
            buf.append(ch)
            escaped = False
        elif quoted:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
            else:
                buf.append(ch)
        elif ch == '"' and in_value:
            quoted = True
        elif ch == "=" and not in_value:
            key, buf, in_value = "".join(buf).strip(), [], True
        elif ch in ";,":
            if in_value:
                pairs[key] = "".join(buf)
            elif "".join(buf).strip():
                raise ValueError(f"XFCC pair without '=': {''.join(buf)!r}")
            key, buf, in_value = "", [], False
            if ch == "," and pairs:
                elements.append(pairs)
                pairs = {}
        else:
            buf.append(ch)
    if quoted:
        raise ValueError("XFCC value has an unterminated quote")
    return elements
