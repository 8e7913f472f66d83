"""Decisions about a request head before any routing: header names, header count, the request target.

Pure functions over the parser's values (no sockets); ``facade.listener`` calls them once per request
head, so the edge (facade), the sidecar's inbound and outbound listeners and WebSocket upgrades all
decide alike. docs/security.md explains each rule.

* ``screen_headers(headers, max_count=, underscores=)``: the header list to keep, or ``HeadRejected``
  (431: more than ``max_count`` header fields; 400: a name with "_" under ``underscores="reject"``).
  A name with "_" is dropped by default (nginx's ``underscores_in_headers off``, Envoy's
  ``headers_with_underscores_action: DROP_HEADER``): CGI/WSGI servers map "_" and "-" to the same
  variable, so ``X_Forwarded_Client_Cert`` would arrive as the facade's own X-Forwarded-Client-Cert.
  Even under ``allow``, a name that *becomes* an identity, forwarding, framing or hop-by-hop header
  when "_" is read as "-" is dropped: no setting lets a client forge an identity.
* ``split_absolute_form(target)``: ``(authority, origin-form target)`` for an absolute-form target
  (``http://admin.local/x``), None for anything else; ``HeadRejected`` (400) for userinfo, a scheme
  other than http/https, or an empty authority. RFC 9112 3.2.2: the target's authority replaces Host,
  so the listener rewrites Host to it (``with_host``) and the request is routed, authorized and
  forwarded by that authority, like nginx and Envoy do.

The common case (origin-form target, under the count, no "_" in any name) costs one length test and
one substring test per header name, over the list the parser already built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .headers import FORWARDING_HEADERS, HOP_BY_HOP, IDENTITY_HEADERS, IDENTITY_PREFIX

__all__ = [
    "DEFAULT_MAX_HEADERS_COUNT",
    "DEFAULT_UNDERSCORES",
    "HeadRejected",
    "HeaderScreen",
    "Underscores",
    "screen_headers",
    "split_absolute_form",
    "with_host",
]

Underscores = Literal["drop", "reject", "allow"]
DEFAULT_UNDERSCORES: Underscores = "drop"
DEFAULT_MAX_HEADERS_COUNT = 100  # Envoy's max_headers_count default

# Names a client may never reach by writing "_" for "-", whatever the setting: identities, the
# client's address chain, framing and routing.
_NEVER_ALIASED: frozenset[bytes] = (
    IDENTITY_HEADERS
    | FORWARDING_HEADERS
    | HOP_BY_HOP
    | frozenset({b"host", b"content-length", b"x-request-id", b"traceparent", b"tracestate", b"expect"})
)


class HeadRejected(ValueError):
    """The request head is refused; ``status`` (400 / 431) and a short user-facing ``reason``."""

    def __init__(self, status: int, reason: str, *, counter: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.counter = counter  # the /metrics label it is counted under


@dataclass(frozen=True, slots=True)
class HeaderScreen:
    """What to do with a head's headers: ``headers`` to keep (None: keep them all), ``dropped`` count."""

    headers: list[tuple[bytes, bytes]] | None
    dropped: int


_KEEP_ALL = HeaderScreen(None, 0)
_UNDERSCORE = 0x5F


def screen_headers(headers: list[tuple[bytes, bytes]], *, max_count: int, underscores: Underscores) -> HeaderScreen:
    """Apply the header count limit and the underscore rule to lower-case ASGI ``headers``.

    Raises ``HeadRejected`` (431) for more than ``max_count`` fields (each repeated name counts), or
    (400) for a name containing "_" under ``underscores="reject"``.
    """
    if len(headers) > max_count:
        raise HeadRejected(431, f"more than {max_count} request header fields", counter="too_many_headers")
    for name, _ in headers:
        if _UNDERSCORE in name:  # an int needle: ``b"_" in name`` costs ~5x more (CPython tries int first)
            break
    else:
        return _KEEP_ALL
    if underscores == "reject":
        raise HeadRejected(400, "underscore in header name", counter="underscore_header")
    keep = [(n, v) for n, v in headers if _UNDERSCORE not in n or (underscores == "allow" and not _aliases_reserved(n))]
    return HeaderScreen(keep, len(headers) - len(keep))


def _aliases_reserved(name: bytes) -> bool:
    alias = name.replace(b"_", b"-")
    return alias in _NEVER_ALIASED or alias.startswith(IDENTITY_PREFIX)


_SCHEMES = frozenset({b"http", b"https"})


def split_absolute_form(target: bytes) -> tuple[bytes, bytes] | None:
    """``(authority, origin-form)`` of an absolute-form request target; None when it is not one.

    ``http://Admin.Local:8080/x?q`` -> ``(b"Admin.Local:8080", b"/x?q")``; no path gives ``/``. The
    authority is returned as sent: ``normalize.normalize_host`` judges it like any Host. Userinfo is
    refused (RFC 9110 4.2.4: "treat its presence as an error"; ``http://svc@admin/`` reads as two hosts).
    """
    if target[:1] == b"/" or target == b"*":
        return None
    scheme, sep, rest = target.partition(b"://")
    if not sep:
        return None  # not absolute-form: normalize_path refuses it with its own reason
    if scheme.lower() not in _SCHEMES:
        raise HeadRejected(400, "unsupported scheme in request target", counter="absolute_form")
    end = len(rest)
    for delimiter in (b"/", b"?"):
        at = rest.find(delimiter)
        if 0 <= at < end:
            end = at
    authority, remainder = rest[:end], rest[end:]
    if b"@" in authority:
        raise HeadRejected(400, "userinfo in request target", counter="absolute_form")
    if not authority:
        raise HeadRejected(400, "empty authority in request target", counter="absolute_form")
    if not remainder.startswith(b"/"):
        remainder = b"/" + remainder
    return authority, remainder


def with_host(headers: list[tuple[bytes, bytes]], authority: bytes) -> list[tuple[bytes, bytes]]:
    """``headers`` with every Host replaced by one Host carrying ``authority`` (RFC 9112 3.2.2), first."""
    return [(b"host", authority), *((n, v) for n, v in headers if n != b"host")]
