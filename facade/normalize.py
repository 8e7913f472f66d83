"""The canonical form of a request path and host, shared by the router and the mesh policy engine.

The invariant this module exists for (docs/architecture.md, "Invariants"): the path the router matched, the path the policy
checked and the path sent upstream are the same bytes. So there is exactly one canonical form, it is
*encoded* (pure ASCII, safe to put on the wire byte for byte), and anything that has no unambiguous
canonical form is rejected instead of guessed at (400 at the edge):

* ``normalize_path(raw_path)`` takes ASGI ``scope["raw_path"]`` and returns the canonical path, or raises
  ``PathRejected``;
* ``canonical_route_path(path)`` gives a path written in config the same form, at compile time;
* ``normalize_host(raw)`` gives the host to route on (lower-case, no port, no trailing dot), or raises
  ``HostRejected``.

Semantics follow Envoy's ``normalize_path`` + ``merge_slashes`` + ``path_with_escaped_slashes_action:
REJECT_REQUEST`` and Spring Security's ``StrictHttpFirewall``. docs/security.md explains each rule.

These run once per request on the proxy hot path: the common case (a plain ASCII path with no escapes,
no dot-segments, no repeated slashes) is answered with one ``bytes.translate`` and two substring tests.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Literal
from urllib.parse import unquote_to_bytes

__all__ = [
    "MAX_HOST_BYTES",
    "MAX_PATH_BYTES",
    "HostRejected",
    "PathRejected",
    "canonical_route_path",
    "normalize_host",
    "normalize_path",
]

MAX_PATH_BYTES = 8 * 1024  # Spring/Tomcat/nginx all bound the request target around here
MAX_HOST_BYTES = 255  # RFC 1035 name length

Semicolons = Literal["reject", "keep"]


class PathRejected(ValueError):
    """The path has no canonical form; ``reason`` is short and user-facing ("encoded slash in path")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HostRejected(ValueError):
    """The Host has no canonical form; ``reason`` is short and user-facing."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- byte classes (RFC 3986) ----------------------------------------------------------------

_ALPHA_DIGIT = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_UNRESERVED = _ALPHA_DIGIT + b"-._~"
# pchar = unreserved / pct-encoded / sub-delims / ":" / "@"; a path adds "/". ";" is a sub-delim but is
# policed separately (path parameters), "%" starts an escape.
_PATH_PLAIN = _UNRESERVED + b"!$&'()*+,=:@/"
_HEX = b"0123456789ABCDEFabcdef"
_ALL_BYTES = bytes(range(256))

# Raw bytes that reject the whole path, with the reason. Everything else outside the path alphabet
# (non-ASCII, space, '"', '<', '>', '`', '{', '}', '|', '^', '[', ']') is percent-encoded instead.
_REJECT_RAW: dict[int, str] = {c: "control character in path" for c in range(0x20)}
_REJECT_RAW[0x7F] = "control character in path"
_REJECT_RAW[0x00] = "NUL in path"
_REJECT_RAW[ord("\\")] = "backslash in path"
_REJECT_RAW[ord("#")] = "fragment in path"
_REJECT_RAW[ord("?")] = "query string in path"  # raw_path never holds one: the caller passed a target

# Escapes that reject the whole path (decoded value -> reason). Encoded control characters are refused
# like raw ones: an upstream that decodes them would see a different path (or a log line split in two).
_REJECT_ESCAPED: dict[int, str] = {c: "encoded control character in path" for c in range(0x20)}
_REJECT_ESCAPED[0x7F] = "encoded control character in path"
_REJECT_ESCAPED[0x00] = "encoded NUL in path"
_REJECT_ESCAPED[0x5C] = "encoded backslash in path"

# How each raw byte appears in the canonical form (None: reject, see _REJECT_RAW).
_RAW_OUT: list[str | None] = []
for _b in range(256):
    if _b in _REJECT_RAW:
        _RAW_OUT.append(None)
    elif _b in _PATH_PLAIN or _b == ord(";"):
        _RAW_OUT.append(chr(_b))
    else:
        _RAW_OUT.append(f"%{_b:02X}")

# How each escape appears in the canonical form: unreserved decoded, everything else upper-case hex.
_ESCAPED_OUT: list[str] = [chr(_b) if _b in _UNRESERVED else f"%{_b:02X}" for _b in range(256)]
_HEX_VALUE: dict[bytes, int] = {}
for _hi in _HEX:
    for _lo in _HEX:
        _HEX_VALUE[bytes((_hi, _lo))] = int(bytes((_hi, _lo)), 16)

# translate(None, delete) leaves exactly the bytes that need the slow path.
_FAST_DELETE_REJECT = _PATH_PLAIN  # semicolons="reject": ';' and '%' take the slow path
_FAST_DELETE_KEEP = _PATH_PLAIN + b";"


def normalize_path(
    raw_path: bytes,
    *,
    merge_slashes: bool = True,
    reject_encoded_slash: bool = True,
    semicolons: Semicolons = "reject",
) -> str:
    """The canonical ENCODED form of an ASGI ``raw_path``; raises ``PathRejected`` when there is none.

    Absolute-form targets (``http://host/path``) yield their path; ``*`` (``OPTIONS *``) yields ``*``.
    Escapes of unreserved characters are decoded exactly once, other escapes get upper-case hex, bytes
    not allowed in a path are percent-encoded, then dot-segments are removed (RFC 3986 5.2.4, never
    above the root) and, when ``merge_slashes``, repeated slashes merged. Case and a trailing slash are
    preserved. Rejected: a path not starting with "/", "#", NUL, backslash (raw or encoded), control
    characters (raw or encoded), invalid escapes, ``%2F`` when ``reject_encoded_slash``, ";" when
    ``semicolons == "reject"`` (and, when "keep", a dot-segment carrying parameters such as ``..;x``),
    and anything longer than ``MAX_PATH_BYTES``.
    """
    if len(raw_path) > MAX_PATH_BYTES:
        raise PathRejected("path too long")
    if raw_path[:1] != b"/":
        if raw_path == b"*":
            return "*"
        raw_path = _strip_absolute_form(raw_path)
    keep_semicolons = semicolons == "keep"
    if not raw_path.translate(None, _FAST_DELETE_KEEP if keep_semicolons else _FAST_DELETE_REJECT):
        # Common case: nothing to decode or encode.
        if b"/." not in raw_path and b"//" not in raw_path:
            return raw_path.decode("ascii")
        text = raw_path.decode("ascii")
    else:
        text = _recode(raw_path, keep_semicolons, reject_encoded_slash)
    return _finish(text, merge_slashes, keep_semicolons)


def canonical_route_path(path: str, *, merge_slashes: bool = True) -> str:
    """The canonical form of a path written in config (a route match, a rewrite, a policy path).

    ``/caté`` and ``/cat%C3%A9`` both become what ``normalize_path`` makes of a request for them.
    Config is more permissive than requests: ";" and ``%2F`` are kept (a route may name them; requests
    with them are rejected or not by the listener's own settings). A path that does not start with "/"
    (including "") is returned unchanged so the caller can report it in its own terms. Raises
    ``PathRejected`` for what can never be a request path (control characters, "#", "?", backslash,
    an invalid escape).
    """
    if not path.startswith("/"):
        return path
    raw = path.encode("utf-8")
    if len(raw) > MAX_PATH_BYTES:
        raise PathRejected("path too long")
    return _finish(_recode(raw, True, False), merge_slashes, True)


def _strip_absolute_form(target: bytes) -> bytes:
    """``http://host:port/p`` -> ``/p`` (``/`` when it has no path); anything else is not a path."""
    scheme, sep, rest = target.partition(b"://")
    if sep and scheme.lower() in (b"http", b"https", b"ws", b"wss"):
        slash = rest.find(b"/")
        return b"/" if slash < 0 else rest[slash:]
    if not target:
        raise PathRejected("empty path")
    raise PathRejected("path must start with '/'")


def _recode(raw: bytes, keep_semicolons: bool, reject_encoded_slash: bool) -> str:
    """Decode unreserved escapes once, upper-case the others, encode what a path may not hold raw."""
    parts = raw.split(b"%")
    out: list[str] = []
    _raw_chunk(parts[0], keep_semicolons, out)
    high = False  # an escape of a byte >= 0x80: the decoded path must be checked as UTF-8
    for part in parts[1:]:
        value = _HEX_VALUE.get(part[:2])
        if value is None:
            raise PathRejected("invalid percent-encoding in path")
        if value == 0x2F and reject_encoded_slash:
            raise PathRejected("encoded slash in path")
        if value == 0x3B and not keep_semicolons:
            # A backend that decodes before it strips path parameters sees a raw ';' (issue 10, item 3).
            raise PathRejected("encoded semicolon in path")
        reason = _REJECT_ESCAPED.get(value)
        if reason is not None:
            raise PathRejected(reason)
        high = high or value >= 0x80
        out.append(_ESCAPED_OUT[value])
        _raw_chunk(part[2:], keep_semicolons, out)
    if high or not raw.isascii():
        _check_utf8(raw)
    return "".join(out)


def _check_utf8(raw: bytes) -> None:
    """Reject a path whose bytes, percent-decoded once, are not valid UTF-8 (Envoy does the same).

    Overlong forms (``%C0%AE`` is a "." to a lax decoder), UTF-16 surrogates (``%ED%A0%80``),
    truncated sequences and stray continuation bytes each mean something different to each backend's
    decoder; Python's strict decoder refuses all of them (RFC 3629).
    """
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise PathRejected("path is not valid UTF-8 after percent-decoding") from None


def _raw_chunk(chunk: bytes, keep_semicolons: bool, out: list[str]) -> None:
    if not chunk.translate(None, _FAST_DELETE_KEEP if keep_semicolons else _FAST_DELETE_REJECT):
        out.append(chunk.decode("ascii"))
        return
    for b in chunk:
        mapped = _RAW_OUT[b]
        if mapped is None:
            raise PathRejected(_REJECT_RAW[b])
        if b == 0x3B and not keep_semicolons:
            raise PathRejected("semicolon in path")
        out.append(mapped)


def _finish(text: str, merge_slashes: bool, keep_semicolons: bool) -> str:
    """Remove dot-segments (RFC 3986 5.2.4), then merge slashes; ``text`` starts with "/"."""
    if "/." not in text and ("//" not in text or not merge_slashes):
        return _bounded(text)
    segments = text.split("/")
    last = len(segments) - 1
    out: list[str] = []
    for i in range(1, last + 1):
        seg = segments[i]
        if seg == ".":
            if i == last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if i == last:
                out.append("")
        else:
            if keep_semicolons and seg[:1] == "." and _segment_name(seg) in (".", ".."):
                # Tomcat/Jetty strip ";params" before resolving dot-segments: "/a/..;x/b" is "/b" there.
                raise PathRejected("dot-segment with parameters in path")
            out.append(seg)
    if merge_slashes:
        # Every segment but the last must be non-empty; the last empty one is the trailing slash.
        tail = out[-1:] if out else [""]
        out = [s for s in out[:-1] if s] + tail
    return _bounded("/" + "/".join(out))


def _segment_name(seg: str) -> str:
    """A segment without its ``;params``; ``%3B`` counts as ``;`` (a decoding backend sees one)."""
    return seg.partition(";")[0].partition("%3B")[0]


def _bounded(path: str) -> str:
    if len(path) > MAX_PATH_BYTES:  # escapes can triple the length of raw UTF-8
        raise PathRejected("path too long")
    return path


# -- host ----------------------------------------------------------------------------------

_HOST_DELETE = _ALPHA_DIGIT + b"-._"


def normalize_host(raw: bytes | str) -> str:
    """The host to route on: lower-case, port and one trailing dot stripped, IPv6 kept as ``[::1]``.

    An empty Host (HTTP/1.0) gives "". Raises ``HostRejected`` for characters outside letters, digits,
    "-", ".", "_" (":" only inside brackets), an empty label ("a..b"), a bad port, a bad IPv6 literal,
    or over 255 bytes.
    """
    if isinstance(raw, str):
        try:
            data = raw.encode("ascii")
        except UnicodeEncodeError:
            raise HostRejected("non-ASCII character in host") from None
    else:
        data = raw
    if len(data) > MAX_HOST_BYTES + 8:  # room for "[]" and ":65535"
        raise HostRejected("host too long")
    if data[:1] == b"[":
        return _ipv6_host(data)
    host, sep, port = data.partition(b":")
    if sep and not _valid_port(port):
        raise HostRejected("invalid port in host" if b":" not in port else "invalid character in host")
    if host[-1:] == b".":
        host = host[:-1]
    if host.translate(None, _HOST_DELETE):
        raise HostRejected("invalid character in host")
    if host and (host[:1] == b"." or host[-1:] == b"." or b".." in host):
        raise HostRejected("empty label in host")
    if len(host) > MAX_HOST_BYTES:
        raise HostRejected("host too long")
    return host.lower().decode("ascii")


def _valid_port(port: bytes) -> bool:
    # An empty port ("host:") is allowed by RFC 3986; bytes.isdigit is ASCII-only.
    return not port or (len(port) <= 5 and port.isdigit() and int(port) <= 65535)


@functools.lru_cache(maxsize=256)  # ipaddress is slow, and a client sends the same literal every time
def _ipv6_host(data: bytes) -> str:
    end = data.find(b"]")
    if end < 0:
        raise HostRejected("unterminated IPv6 literal in host")
    rest = data[end + 1 :]
    if rest and (rest[:1] != b":" or not _valid_port(rest[1:])):
        raise HostRejected("invalid port in host")
    literal = data[1:end]
    if literal.translate(None, b"0123456789abcdefABCDEF:."):  # zone ids ("%25eth0") are refused too
        raise HostRejected("invalid IPv6 literal in host")
    try:
        address = ipaddress.IPv6Address(literal.decode("ascii"))
    except ValueError:
        raise HostRejected("invalid IPv6 literal in host") from None
    return f"[{address.compressed}]"
