"""One request resolution step, shared by HTTP, WebSocket and the sidecar's policy gate (pure).

    decision = resolve_request(snapshot, scope, rand)

From the Snapshot a request began on and its head (the ASGI scope of an ``http`` or ``websocket``
request: ``method``, ``raw_path``, ``query_string``, ``headers``, ``http_version``, ``scheme``) to
one of three values, in this order (docs/architecture.md, "The data flow of one request"):

1. the canonical path (``normalize.normalize_path`` with the config's flags) -> ``Reject`` 400;
2. the Host rules: exactly one Host (RFC 9112 3.2: with two, which one would we route on?), none
   only on HTTP/1.0 (it routes as "", so only host-less routes match: nginx's default server and
   Envoy do the same, never the listener's own address), the canonical host -> ``Reject`` 400;
3. the route, first match wins (``RouteTable.lookup``) -> ``Reject`` 404;
   a CORS preflight from an origin the route's ``cors`` allows -> ``Respond`` 200 (never forwarded);
4. a route that answers itself (direct response, redirect) -> ``Respond`` (status, headers, body);
5. the backend: the migration split in force for the route (weight / sticky cohort / header
   canary, maybe a shadow copy, maybe a sticky cookie to set) or the route's weights, and its
   pool -> ``Reject`` 503 when the backend has none (a validated config never does that);
6. a declared body over ``limits.max_request_body`` -> ``Reject`` 413;
7. otherwise ``Forward``: everything the caller needs to send the request on, with ``extras`` (a
   fault's delay and abort status drawn now, CORS response headers) when the route or the migration
   step has a ``fault`` or ``cors`` (``facade/traffic_policy.py``), else None.

The callers do the I/O and render the value: ``facade.proxy`` (HTTP), ``facade.websocket``
(upgrades) and ``mesh.gate`` (steps 1-2 through ``read_target``, so the path and host the policy
checks are the ones the router matches). The proxy owns the randomness and passes ``rand``.

``Forward`` is a NamedTuple, not a frozen dataclass: it is built once per request on the hot
path, where a frozen dataclass costs several times more (headers.RequestIds says the same); it
replaces the ``RouteHit`` the proxy built before, so a request allocates no more than it did.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .config import NormalizeSpec, Route, RouteMatch
from .headers import apply_header_ops_bytes
from .normalize import HostRejected, PathRejected, normalize_host, normalize_path
from .split import Split
from .traffic_policy import Extras, draw_extras, preflight_headers
from .upstream.balancer import request_hash

if TYPE_CHECKING:
    from .runtime import Snapshot
    from .upstream import ServicePool

__all__ = ["Decision", "Forward", "Reject", "Respond", "Target", "read_target", "resolve_request", "swap_prefix"]

Scope = MutableMapping[str, Any]


class Forward(NamedTuple):
    """Send the request upstream."""

    path: str  # the canonical path: what the router matched (and a policy checked)
    host: str  # the canonical host routed on ("" for HTTP/1.0 without Host)
    host_header: str  # the Host as sent ("" when absent): forwarded as is
    route: Route
    target: str  # what goes upstream: the path after the route's rewrite, plus "?" and the raw query
    backend: str  # the service
    pool: ServicePool
    step: str  # the migration step's label, "stable" without a split
    split: Split | None
    set_cookie: bytes | None  # a Set-Cookie value for a newcomer to a sticky cookie split
    shadow: bool  # mirror a copy to the split's candidate
    has_body: bool  # the head announces a body (Content-Length other than 0, or Transfer-Encoding)
    hash_key: int | None = None  # consistent hashing: the request's key (None: no policy, or no key)
    hash_cookie: bytes | None = None  # a Set-Cookie for the consistent-hash cookie the request lacked
    extras: Extras | None = None  # a fault to inject, CORS headers to add (facade/traffic_policy.py)


@dataclass(frozen=True, slots=True)
class Respond:
    """The route answers the request itself (direct response or redirect)."""

    route: Route
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse the request: ``status`` and a generic ``reason`` for the client, ``detail`` for the log only."""

    status: int
    reason: str
    detail: str = field(default="", compare=False)  # for the log: two refusals alike to the client are equal
    limit: int | None = None  # 413: the body limit, told to the client
    headers: tuple[tuple[bytes, bytes], ...] = field(default=(), compare=False)  # the route's CORS headers


Decision = Forward | Respond | Reject


class Target(NamedTuple):
    """What the sidecar's policy gate checks: the canonical path and host (steps 1-2)."""

    path: str
    host: str


def resolve_request(snap: Snapshot, head: Scope, rand: Callable[[], float]) -> Decision:
    """The decision for one request head on ``snap`` (see the module docstring for the order)."""
    headers: list[tuple[bytes, bytes]] = head["headers"]
    config = snap.config
    # One pass over the request headers for the few the decision needs.
    host_header: bytes | None = None
    content_length: bytes | None = None
    chunked = False
    hosts = 0
    for name, value in headers:
        if name == b"host":
            hosts += 1
            host_header = value
        elif name == b"content-length":
            content_length = value
        elif name == b"transfer-encoding":
            chunked = True
    norm = config.normalize
    try:
        path = normalize_path(
            head.get("raw_path") or head["path"].encode(),
            merge_slashes=norm.merge_slashes,
            reject_encoded_slash=norm.reject_encoded_slash,
            semicolons=norm.semicolons,
        )
        if hosts == 1:
            assert host_header is not None
            host = normalize_host(host_header)
        else:
            host = _hostless(hosts, head)
            host_header = b""
    except (PathRejected, HostRejected) as exc:
        return Reject(400, f"bad request: {exc.reason}")

    method: str = head.get("method", "GET")  # a WebSocket scope has none: an upgrade is a GET
    query: bytes = head.get("query_string", b"")
    entry = snap.table.lookup(host=host, path=path, method=method, headers=headers, query_string=query)
    if entry is None:
        return Reject(404, "no route matches", detail=f"no route matches host {host!r} path {path!r}")
    route = entry.route
    policy = entry.policy  # compiled with the table: None for a route without fault or CORS
    if policy is not None and policy.cors is not None and method == "OPTIONS":
        answer = preflight_headers(policy.cors, headers)
        if answer is not None:  # a preflight from an allowed origin: answered here (Envoy's cors filter)
            return Respond(route, 200, answer, b"")
    if route.direct_response is not None:
        return _direct(route)
    if route.redirect is not None:
        scheme = head.get("scheme", "http")
        return _redirect(route, entry.match, scheme, host_header.decode("latin-1"), path, query)

    # The backend: a migration split for this route, else the route's weights.
    split = snap.splits.get(route.name)
    if split is not None:
        choice = snap.decide(split, headers, rand)
        backend = choice.backend
        step = split.step_label
        set_cookie = choice.set_cookie
        shadow = choice.shadow
        # A step's fault rehearses "the new service misbehaves": the candidate's share only.
        fault = split.fault if backend == split.candidate else None
    else:
        backend = snap.pick_backend(route, rand())
        step = "stable"
        set_cookie = None
        shadow = False
        fault = None
    pool = snap.upstreams.get(backend)
    if pool is None:
        return Reject(503, "no healthy upstream", detail=f"route {route.name} names backend {backend}, which has no pool")

    # Refuse early what is declared too large (a body that turns out too large is the proxy's to stop).
    max_body = config.limits.max_request_body
    if max_body is not None and content_length is not None and content_length.isdigit() and int(content_length) > max_body:
        cors = policy.cors if policy is not None else None
        allowed = draw_extras(None, cors, headers, rand) if cors is not None else None
        # A local reply a browser must be able to read, like the 429 and the 5xx (Envoy's cors filter).
        return Reject(413, "request body too large", limit=max_body, headers=allowed.cors if allowed else ())
    upstream_path = entry.upstream_path(path)
    hash_key = hash_cookie = None
    if pool.spec.hash_policy is not None:  # decided by the service's config: other pools pay this one test
        client = head.get("client")
        peer = client[0] if client else None
        if pool.spec.hash_policy.source_ip and peer:
            peer = _client_address(snap, headers, peer)
        hash_key, hash_cookie = request_hash(pool.spec.hash_policy, headers, peer)
    extras = None
    if policy is not None or fault is not None:
        if fault is None and policy is not None:
            fault = policy.fault
        extras = draw_extras(fault, policy.cors if policy is not None else None, headers, rand)
    return Forward(
        path,
        host,
        host_header.decode("latin-1"),
        route,
        upstream_path + "?" + query.decode("latin-1") if query else upstream_path,
        backend,
        pool,
        step,
        split,
        set_cookie,
        shadow,
        chunked or (content_length is not None and content_length != b"0"),
        hash_key,
        hash_cookie,
        extras,
    )


def _client_address(snap: Snapshot, headers: list[tuple[bytes, bytes]], peer: str) -> str:
    """The client behind trusted proxies: X-Forwarded-For read right to left, past every trusted address.

    A peer outside ``trusted_proxies`` is the client itself (its X-Forwarded-For is not believed), as for
    the X-Forwarded-* the facade sends on; nginx's ``real_ip_recursive`` and Envoy's trusted CIDRs agree.
    """
    if not snap.is_trusted(peer):
        return peer
    chain = [a.strip() for name, v in headers if name == b"x-forwarded-for" for a in v.decode("latin-1").split(",")]
    for address in reversed(chain):
        if address and not snap.is_trusted(address):
            return address
    return chain[0] if chain and chain[0] else peer


def read_target(norm: NormalizeSpec, head: Scope) -> Target | Reject:
    """Steps 1-2 alone (canonical path, Host rules), for a filter in front of the proxy (mesh.gate)."""
    hosts = 0
    host_header = b""
    for name, value in head["headers"]:
        if name == b"host":
            hosts += 1
            host_header = value
    try:
        path = normalize_path(
            head.get("raw_path") or head["path"].encode(),
            merge_slashes=norm.merge_slashes,
            reject_encoded_slash=norm.reject_encoded_slash,
            semicolons=norm.semicolons,
        )
        host = normalize_host(host_header) if hosts == 1 else _hostless(hosts, head)
    except (PathRejected, HostRejected) as exc:
        return Reject(400, f"bad request: {exc.reason}")
    return Target(path, host)


def _hostless(hosts: int, head: Scope) -> str:
    """The host of a request without exactly one Host header: "" on HTTP/1.0, else refused."""
    if hosts > 1:
        raise HostRejected("more than one Host header")  # RFC 9112 3.2: which one would we route on?
    if head.get("http_version") != "1.0":
        raise HostRejected("HTTP/1.1 request without a Host header")  # RFC 9112 3.2
    return ""


# -- routes that answer themselves -------------------------------------------------------------


def _direct(route: Route) -> Respond:
    dr = route.direct_response
    assert dr is not None
    body = dr.body.encode()
    headers = [(b"content-type", dr.content_type.encode("latin-1")), (b"content-length", str(len(body)).encode())]
    if not route.response_headers.empty:
        headers = apply_header_ops_bytes(headers, route.response_headers)
    return Respond(route, dr.status, tuple(headers), body)


def _redirect(route: Route, match: RouteMatch, scheme: str, host_header: str, path: str, query: bytes) -> Respond:
    rd = route.redirect
    assert rd is not None
    scheme = rd.scheme or scheme
    if rd.host is not None:
        authority = rd.host + (f":{rd.port}" if rd.port else "")
    else:
        authority = host_header
        if rd.port:
            authority = authority.rsplit(":", 1)[0] if not authority.endswith("]") else authority
            authority += f":{rd.port}"
    if rd.path is not None:
        new_path = rd.path
    elif rd.prefix is not None and match.path_kind == "prefix":
        new_path = swap_prefix(path, match.path, rd.prefix)
    else:
        new_path = path
    location = f"{scheme}://{authority}{new_path}" + (f"?{query.decode('latin-1')}" if query else "")
    return Respond(route, rd.code, ((b"location", location.encode("latin-1")), (b"content-length", b"0")), b"")


def swap_prefix(path: str, prefix: str, replacement: str) -> str:
    """Istio's prefix rewrite: ``/catalog/x`` with prefix ``/catalog`` -> ``/v2`` gives ``/v2/x``."""
    rest = path[len(prefix.rstrip("/")) :] if prefix != "/" else path
    if replacement.endswith("/") and rest.startswith("/"):
        rest = rest[1:]
    out = replacement + rest
    return out or "/"
