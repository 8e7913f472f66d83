"""Header hygiene between the client, the facade and the upstream (pure; on the proxy hot path).

Towards the upstream (``build_upstream_headers``), in this order:

1. hop-by-hop headers and every header the client named in ``Connection`` are removed (RFC 9110 7.6.1),
   except Host and Content-Length, which frame the request and are never the client's to drop;
2. identity headers (``X-Forwarded-Client-Cert``, ``x-facade-*``) are removed: a client never sets an
   identity, the facade or the sidecar does;
3. the facade's own headers are set *after* that removal, so naming them in ``Connection`` strips only
   the client's copy: X-Forwarded-For / -Proto / -Host and ``Forwarded`` (RFC 7239) are extended from a
   trusted peer and replaced from anyone else; X-Request-Id is kept when well-formed, else generated; a
   W3C ``traceparent`` keeps its trace id and flags and gets a new parent id for this hop.

Towards the client (``filter_response_headers``): hop-by-hop and Connection-named headers are removed;
the upstream's ``server`` and ``date`` pass through once (the facade's listener adds none).

Route-level header operations from config are applied by ``apply_header_ops`` (str pairs, requests)
and ``apply_header_ops_bytes`` (ASGI bytes pairs, responses).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from .config import HeaderOps

__all__ = [
    "FORWARDING_HEADERS",
    "HOP_BY_HOP",
    "IDENTITY_HEADERS",
    "IDENTITY_PREFIX",
    "ForwardContext",
    "RequestIds",
    "apply_header_ops",
    "apply_header_ops_bytes",
    "build_upstream_headers",
    "filter_response_headers",
    "is_identity_header",
    "new_request_id",
    "parse_traceparent",
]

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

IDENTITY_PREFIX = b"x-facade-"  # internal markers between facade, sidecars and services
IDENTITY_HEADERS: frozenset[bytes] = frozenset({b"x-forwarded-client-cert"})
"""Headers a client may never set at the edge (plus every name starting with ``IDENTITY_PREFIX``)."""

FORWARDING_HEADERS: frozenset[bytes] = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-real-ip",
        b"forwarded",
    }
)
"""Who-is-the-client headers: kept (and extended) from a trusted peer only, rebuilt for anyone else."""

# Never removed because the client named them in Connection: they frame or address the request.
_PROTECTED = frozenset({b"host", b"content-length"})
_PROTECTED_STR = frozenset(n.decode() for n in _PROTECTED)

_REQUEST_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
_MAX_REQUEST_ID = 128
_LOWER_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16
# A UUID4's 17th hex digit carries the RFC 4122 variant: its top two bits are "10".
_UUID_VARIANT = {f"{i:x}": "89ab"[i & 3] for i in range(16)}

# Forwarded (RFC 7239) values are tokens or quoted-strings; tchar per RFC 9110 5.6.2.
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

# What build_upstream_headers does with a header name it sees (anything absent is passed through).
# (ids and trace context last: ``kind >= _REQUEST_ID`` is read from any peer)
_DROP, _CONNECTION, _XFF, _XFP, _XFH, _FORWARDED, _OTHER_FWD, _REQUEST_ID, _TRACEPARENT, _TRACESTATE = range(10)
_KIND: dict[bytes, int] = {name: _DROP for name in HOP_BY_HOP | IDENTITY_HEADERS}
_KIND.update(
    {
        b"connection": _CONNECTION,
        b"host": _DROP,  # re-added from ctx.host_header, once
        # The facade's listener answers "Expect: 100-continue" itself (uvicorn sends 100 when the
        # body is first read); forwarding it would make the upstream expect a second handshake.
        b"expect": _DROP,
        b"x-forwarded-for": _XFF,
        b"x-forwarded-proto": _XFP,
        b"x-forwarded-host": _XFH,
        b"forwarded": _FORWARDED,
        b"x-forwarded-port": _OTHER_FWD,
        b"x-forwarded-prefix": _OTHER_FWD,
        b"x-real-ip": _OTHER_FWD,
        b"x-request-id": _REQUEST_ID,
        b"traceparent": _TRACEPARENT,
        b"tracestate": _TRACESTATE,
    }
)


@dataclass(frozen=True, slots=True)
class ForwardContext:
    """What the listener knows about the connection a request arrived on."""

    client_ip: str  # the TCP peer ("" for a unix socket)
    client_port: int
    scheme: str  # "http" / "https" as the client spoke it to the facade
    host_header: str  # the original Host, as sent ("" when absent)
    trusted_peer: bool  # the peer is in trusted_proxies: its X-Forwarded-* are kept and extended
    listener_by: str | None = None  # Forwarded "by=" (the listener's address or name), when wanted


class RequestIds(NamedTuple):
    """The correlation ids sent upstream; also used in error bodies and access logs.

    A NamedTuple rather than a frozen dataclass: it is built once per request, and that is 3x cheaper.
    """

    request_id: str
    traceparent: str
    trace_id: str


def new_request_id() -> str:
    """A fresh X-Request-Id: the 32 hex digits of a random UUID4 (like ``uuid.uuid4().hex``, cheaper)."""
    return _as_uuid4(os.urandom(16).hex())


def parse_traceparent(value: str | bytes) -> tuple[str, str, str] | None:
    """``(trace_id, parent_id, flags)`` of a valid W3C traceparent, else None.

    Version ``00`` must be exactly 55 characters; a higher version (never ``ff``) may carry more fields
    after a "-" (W3C Trace Context, forward compatibility). Hex must be lower-case; trace id and parent
    id must not be all zeros.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    n = len(value)
    if n < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version = value[:2]
    if version == "00":
        if n != 55:
            return None
    elif version == "ff" or (n > 55 and value[55] != "-"):
        return None
    trace_id, parent_id, flags = value[3:35], value[36:52], value[53:55]
    if not _LOWER_HEX.issuperset(version + trace_id + parent_id + flags):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    return trace_id, parent_id, flags


def is_identity_header(name: bytes) -> bool:
    """True for a header a client may never set (``IDENTITY_HEADERS`` or the ``x-facade-`` prefix)."""
    return name in IDENTITY_HEADERS or name.startswith(IDENTITY_PREFIX)


def build_upstream_headers(
    headers: Iterable[tuple[bytes, bytes]],
    ctx: ForwardContext,
    *,
    request_id: str | None = None,
) -> tuple[list[tuple[str, str]], RequestIds]:
    """The headers to send upstream for a client request with ASGI ``headers`` (lower-case names).

    Order is kept for everything passed through (repeated names stay repeated, in order); Host comes
    first and only once (the one the request was routed on, ``ctx.host_header``); the facade's own
    headers are appended. ``request_id`` is used when the client sent no well-formed X-Request-Id
    (a new one is generated when it is None). See the module docstring for every rule.
    """
    out: list[tuple[str, str]] = [("host", ctx.host_header)] if ctx.host_header else []
    special: list[tuple[int, bytes, bytes]] = []  # usually a few entries: connection, ids, forwarding
    nominated: set[str] | None = None
    for name, value in headers:
        kind = _KIND.get(name)
        if kind is None:
            if not name.startswith(IDENTITY_PREFIX):
                out.append((name.decode("latin-1"), value.decode("latin-1")))
        elif kind == _CONNECTION:
            names = _nominated(value)
            if names:
                nominated = set(names) if nominated is None else nominated | names
        elif kind != _DROP:
            special.append((kind, name, value))

    if nominated:
        # The client's copies of nominated headers go; the facade's own are set below regardless.
        out = [(n, v) for n, v in out if n not in nominated]
        special = [entry for entry in special if entry[1].decode("latin-1") not in nominated]

    trusted = ctx.trusted_peer
    seen: dict[int, list[bytes]] = {}
    for kind, name, value in special:
        if kind >= _REQUEST_ID:  # ids and trace context: read from anyone, validated below
            seen.setdefault(kind, []).append(value)
        elif not trusted:
            continue  # an untrusted peer's forwarding headers are rebuilt, never read
        elif kind == _OTHER_FWD:  # X-Real-IP and friends: a trusted peer's word, passed on
            out.append((name.decode("latin-1"), value.decode("latin-1")))
        else:
            seen.setdefault(kind, []).append(value)
    xff, xfp, xfh, fwd = seen.get(_XFF), seen.get(_XFP), seen.get(_XFH), seen.get(_FORWARDED)
    request_ids, traceparents = seen.get(_REQUEST_ID), seen.get(_TRACEPARENT)

    # Who the client is: trusted peers extend the chain, anyone else starts it.
    chain = _join(xff) if xff else ""
    if ctx.client_ip:
        chain = f"{chain}, {ctx.client_ip}" if chain else ctx.client_ip
    if chain:
        out.append(("x-forwarded-for", chain))
    out.append(("x-forwarded-proto", _join(xfp) if xfp else ctx.scheme))
    host = _join(xfh) if xfh else ctx.host_header
    if host:
        out.append(("x-forwarded-host", host))
    element = _forwarded_element(ctx)
    out.append(("forwarded", f"{_join(fwd)}, {element}" if fwd else element))

    # W3C: more than one traceparent is as good as none.
    parsed = parse_traceparent(traceparents[0]) if traceparents and len(traceparents) == 1 else None
    rid = _valid_request_id(request_ids[0]) if request_ids else None  # the first; repeats are dropped
    if rid is None and request_id is not None:
        rid = request_id

    # One getrandom() call for every id this hop makes: a new parent id, and maybe a trace and a request id.
    rnd = os.urandom(8 + (16 if parsed is None else 0) + (16 if rid is None else 0)).hex()
    parent_id = _nonzero(rnd[:16])
    if rid is None:
        rid = _as_uuid4(rnd[-32:])
    out.append(("x-request-id", rid))
    if parsed is not None:
        trace_id, flags = parsed[0], parsed[2]
        traceparent = f"00-{trace_id}-{parent_id}-{flags}"
        out.append(("traceparent", traceparent))
        out.extend(("tracestate", v.decode("latin-1")) for v in seen.get(_TRACESTATE, ()))
    else:
        trace_id = _nonzero(rnd[16:48])
        traceparent = f"00-{trace_id}-{parent_id}-00"
        out.append(("traceparent", traceparent))
    return out, RequestIds(rid, traceparent, trace_id)


def filter_response_headers(headers: Iterable[tuple[str | bytes, str | bytes]]) -> list[tuple[bytes, bytes]]:
    """An upstream response's headers as ASGI pairs (lower-case names) fit for the client.

    Hop-by-hop headers and those named in the response's Connection are removed; ``server`` and
    ``date`` are kept once (the first the upstream sent). Order and repeated names are kept.
    """
    pairs: list[tuple[bytes, bytes]] = []
    nominated: set[bytes] | None = None
    seen_server = seen_date = False
    for name, value in headers:
        n = (name.encode("latin-1") if isinstance(name, str) else name).lower()
        v = value.encode("latin-1") if isinstance(value, str) else value
        if n in HOP_BY_HOP:
            if n == b"connection":
                if nominated is None:
                    nominated = set()
                nominated.update(_connection_names(v))
            continue
        if n == b"server":
            if seen_server:
                continue
            seen_server = True
        elif n == b"date":
            if seen_date:
                continue
            seen_date = True
        pairs.append((n, v))
    if nominated:
        nominated -= _PROTECTED
        pairs = [(n, v) for n, v in pairs if n not in nominated]
    return pairs


def apply_header_ops(headers: list[tuple[str, str]], ops: HeaderOps) -> list[tuple[str, str]]:
    """Config header operations on str pairs: ``remove``, then ``set`` (replace all values), then ``add``.

    Names compare case-insensitively; ``set`` values go to the end, like ``add``. Returns a new list.
    """
    drop = {n.lower() for n in ops.remove}
    drop.update(n.lower() for n, _ in ops.set)
    out = [(n, v) for n, v in headers if n.lower() not in drop] if drop else list(headers)
    out.extend((n.lower(), v) for n, v in ops.set)
    out.extend((n.lower(), v) for n, v in ops.add)
    return out


def apply_header_ops_bytes(headers: list[tuple[bytes, bytes]], ops: HeaderOps) -> list[tuple[bytes, bytes]]:
    """``apply_header_ops`` for ASGI bytes pairs (lower-case names), e.g. a response's headers."""
    drop = {n.lower().encode("latin-1") for n in ops.remove}
    drop.update(n.lower().encode("latin-1") for n, _ in ops.set)
    out = [(n, v) for n, v in headers if n.lower() not in drop] if drop else list(headers)
    out.extend((n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in ops.set)
    out.extend((n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in ops.add)
    return out


# -- the rules' building blocks ----------------------------------------------------------------


def _connection_names(value: bytes) -> list[bytes]:
    return [token for part in value.split(b",") if (token := part.strip().lower())]


@functools.lru_cache(maxsize=256)
def _nominated(value: bytes) -> frozenset[str]:
    """The request headers a Connection value removes beyond the hop-by-hop ones ("keep-alive": none).

    Cached: nearly every request sends one of a handful of values; the bound keeps a hostile client
    that varies it from growing anything.
    """
    names = frozenset(n.decode("latin-1") for n in _connection_names(value) if n not in HOP_BY_HOP)
    return names - _PROTECTED_STR


def _join(values: list[bytes]) -> str:
    # Repeated fields are one comma-separated list (RFC 9110 5.3).
    return ", ".join(v.decode("latin-1").strip() for v in values if v.strip())


def _valid_request_id(value: bytes | None) -> str | None:
    if value is None or not 0 < len(value) <= _MAX_REQUEST_ID:
        return None
    text = value.decode("latin-1")
    return text if _REQUEST_ID_CHARS.issuperset(text) else None


def _as_uuid4(random_hex: str) -> str:
    """32 random hex digits with the version (4) and variant (RFC 4122) digits set, as uuid.uuid4() does."""
    return f"{random_hex[:12]}4{random_hex[13:16]}{_UUID_VARIANT[random_hex[16]]}{random_hex[17:32]}"


def _nonzero(random_hex: str) -> str:
    # An all-zero trace or parent id is invalid (W3C); the odds are 2**-64 at worst, but rule it out.
    return random_hex if random_hex.strip("0") else random_hex[:-1] + "1"


def _forwarded_element(ctx: ForwardContext) -> str:
    ip = ctx.client_ip.strip("[]")
    if not ip:
        node = "unknown"
    elif ":" in ip:
        node = f'"[{ip}]"'  # IPv6 must be bracketed, and brackets need quotes (RFC 7239 6)
    else:
        node = ip
    parts = [f"for={node}"]
    if ctx.listener_by:
        parts.append(f"by={_forwarded_value(ctx.listener_by)}")
    if ctx.host_header:
        parts.append(f"host={_forwarded_value(ctx.host_header)}")
    parts.append(f"proto={_forwarded_value(ctx.scheme)}")
    return ";".join(parts)


def _forwarded_value(value: str) -> str:
    if value and _TCHAR.issuperset(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
