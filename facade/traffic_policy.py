"""A route's fault injection and CORS policy, compiled once and decided per request (pure).

``compile_policy(route)`` runs when the route table is compiled; it returns None for a route with
neither policy, so the resolution step (``facade/resolve.py``) pays one ``is None`` test for such
routes and nothing else. For the others it decides, from the request head and the request's
random draws:

- a CORS preflight (OPTIONS with Origin and Access-Control-Request-Method) from an allowed origin
  -> the headers of the facade's own answer (Envoy's cors filter: the request never goes upstream);
  a preflight from another origin goes on upstream like any request, and gets no CORS headers
  (only ``Vary: Origin``, which every response of a CORS route carries);
- otherwise ``Extras``: a delay, an abort status (Istio HTTPFaultInjection: delay first, then
  abort, each drawn independently) and the CORS headers for the response, which the proxy applies.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .config import CorsPolicy, FaultPolicy, Route, StringMatch

__all__ = ["CorsRule", "Extras", "RoutePolicy", "compile_policy", "draw_extras", "preflight_headers", "with_cors"]

Headers = Sequence[tuple[bytes, bytes]]


class Extras(NamedTuple):
    """What the proxy does around forwarding one request: 0 / 0 / () mean nothing."""

    delay: float  # seconds to wait before forwarding
    abort: int  # a status to answer instead of forwarding
    cors: tuple[tuple[bytes, bytes], ...]  # headers to add to the response


@dataclass(frozen=True, slots=True)
class CorsRule:
    """A ``CorsPolicy`` with its origin matchers compiled and its fixed headers encoded."""

    tests: tuple[Callable[[str], bool], ...]
    preflight: tuple[tuple[bytes, bytes], ...]  # methods, headers, max age
    actual: tuple[tuple[bytes, bytes], ...]  # expose headers
    credentials: bool

    @classmethod
    def compile(cls, policy: CorsPolicy) -> CorsRule:
        tests = tuple(_origin_test(m) for m in policy.allow_origins)
        pre: list[tuple[bytes, bytes]] = []
        if policy.allow_methods:
            pre.append((b"access-control-allow-methods", ",".join(policy.allow_methods).encode("latin-1")))
        if policy.allow_headers:
            pre.append((b"access-control-allow-headers", ",".join(policy.allow_headers).encode("latin-1")))
        if policy.max_age is not None:
            pre.append((b"access-control-max-age", str(policy.max_age).encode()))
        actual: tuple[tuple[bytes, bytes], ...] = ()
        if policy.expose_headers:
            actual = ((b"access-control-expose-headers", ",".join(policy.expose_headers).encode("latin-1")),)
        return cls(tests, tuple(pre), actual, policy.allow_credentials)

    def allows(self, origin: bytes) -> bool:
        text = origin.decode("latin-1")
        return any(test(text) for test in self.tests)

    def origin_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        # The origin is echoed (never "*"), so credentials work and caches must key on it: Vary.
        out = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        if self.credentials:
            out.append((b"access-control-allow-credentials", b"true"))
        return out


def _origin_test(m: StringMatch) -> Callable[[str], bool]:
    """Origins compare case-sensitively, like Istio's StringMatch; an exact ``*`` allows any origin."""
    want = m.value
    if m.kind == "regex":
        fullmatch = re.compile(want).fullmatch
        return lambda v: fullmatch(v) is not None
    if m.kind == "prefix":
        return lambda v: v.startswith(want)
    if want == "*":
        return lambda v: True
    return lambda v: v == want


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    fault: FaultPolicy | None
    cors: CorsRule | None


def compile_policy(route: Route) -> RoutePolicy | None:
    """The route's policies, or None when it has none (the hot path then does no extra work)."""
    if route.fault is None and route.cors is None:
        return None
    return RoutePolicy(route.fault, CorsRule.compile(route.cors) if route.cors is not None else None)


_VARY_ORIGIN = ((b"vary", b"Origin"),)


def _origin(headers: Headers) -> tuple[bytes | None, bool]:
    """The Origin header and whether Access-Control-Request-Method is present.

    A browser sends one Origin; a request with two is not a browser's, and which one a cache or the
    upstream would look at is anyone's guess, so it counts as no origin (nothing is echoed).
    """
    origin: bytes | None = None
    seen = 0
    requested = False
    for name, value in headers:
        if name == b"origin":
            origin = value
            seen += 1
        elif name == b"access-control-request-method":
            requested = True
    return (origin if seen == 1 else None), requested


def preflight_headers(cors: CorsRule, headers: Headers) -> tuple[tuple[bytes, bytes], ...] | None:
    """For an OPTIONS request: the headers of the facade's answer to a preflight from an allowed origin, else None."""
    origin, requested = _origin(headers)
    if origin is None or not requested or not cors.allows(origin):
        return None
    return (*cors.origin_headers(origin), *cors.preflight, (b"content-length", b"0"))


def draw_extras(
    fault: FaultPolicy | None, cors: CorsRule | None, headers: Headers, rand: Callable[[], float]
) -> Extras | None:
    """Fault and CORS response headers for one forwarded request; None when neither applies."""
    delay = 0.0
    abort = 0
    if fault is not None:
        # percent 100 always holds (rand() < 1), percent 0 never does.
        if fault.delay is not None and rand() * 100.0 < fault.delay.percent:
            delay = fault.delay.fixed
        if fault.abort is not None and rand() * 100.0 < fault.abort.percent:
            abort = fault.abort.status
    cors_headers: tuple[tuple[bytes, bytes], ...] = ()
    if cors is not None:
        origin, _ = _origin(headers)
        if origin is not None and cors.allows(origin):
            cors_headers = (*cors.origin_headers(origin), *cors.actual)
        else:
            # The answer depends on Origin whether or not this one is allowed (or sent): without Vary a
            # shared cache keeps the header-less answer and serves it to an allowed site, which the
            # browser then blocks (envoyproxy/envoy#35873; jetty, rs/cors and fastify-cors always vary).
            cors_headers = _VARY_ORIGIN
    if not delay and not abort and not cors_headers:
        return None
    return Extras(delay, abort, cors_headers)


def with_cors(headers: list[tuple[bytes, bytes]], cors: tuple[tuple[bytes, bytes], ...]) -> list[tuple[bytes, bytes]]:
    """The response headers with the route's CORS headers: they replace the upstream's own (Envoy's
    cors filter sets them), except Vary, which is added to."""
    names = {name for name, _ in cors if name != b"vary"}
    varies = any(name == b"vary" and (b"origin" in value.lower() or b"*" in value) for name, value in headers)
    return [*(h for h in headers if h[0] not in names), *(h for h in cors if not (varies and h[0] == b"vary"))]
