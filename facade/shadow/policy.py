"""What may be mirrored and how a copy looks: pure decisions, no I/O.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..diff import (
    ResponseSample,
)
from ..yamlfile import parse_duration

if TYPE_CHECKING:
    from ..split import Split




SHADOW_HEADER = "x-facade-shadow"
# RFC 9110 safe methods. Anything else (POST, PUT, PATCH, DELETE, invented methods) may change state
# on the candidate, so it is mirrored only when the split says ``shadow_unsafe``.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Noise learning costs a second request to the old backend: by default only for GET (Diffy's use).
NOISE_METHODS = frozenset({"GET"})
DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_CONCURRENCY = 16
DEFAULT_QUEUE_SIZE = 256
DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_QUEUED_BYTES = 64 * 1024 * 1024
DEFAULT_RING_SIZE = 200
# RFC 9110 9.2.2, as the proxy's: a copy that met a dead keep-alive connection may go again only then.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# The copy's body is sent from bytes with its own Content-Length; the client's framing goes.
_REFRAMED = frozenset({"content-length", "transfer-encoding", SHADOW_HEADER})


# -- pure decisions ----------------------------------------------------------------------------------


def mirrorable(method: str, split: Split) -> bool:
    """Whether a request with ``method`` may be mirrored under ``split`` (safe methods, or the split allows all)."""
    return method in SAFE_METHODS or split.shadow_unsafe


def shadow_host(host: str) -> str:
    """Envoy's shadow authority: ``-shadow`` after the host name, before any port.

    ``shop.local`` -> ``shop.local-shadow``; ``shop.local:8080`` -> ``shop.local-shadow:8080``;
    ``[::1]:8080`` -> ``[::1]-shadow:8080``.
    """
    if host.startswith("["):
        end = host.find("]")
        if end > 0:
            return f"{host[: end + 1]}-shadow{host[end + 1 :]}"
    name, sep, port = host.rpartition(":")
    if sep and name and ":" not in name:
        return f"{name}-shadow:{port}"
    return f"{host}-shadow"


def mirrored_headers(headers: Iterable[tuple[str, str]], *, host_suffix: bool) -> list[tuple[str, str]]:
    """The headers of a mirrored copy: the primary's (already sanitized by the proxy), Host suffixed with
    ``-shadow`` when ``host_suffix``, the client's framing dropped, and the marker ``x-facade-shadow: 1``
    exactly once (a client cannot send its own)."""
    out: list[tuple[str, str]] = []
    for name, value in headers:
        lower = name.lower()
        if lower in _REFRAMED:
            continue
        if lower == "host" and host_suffix and value:
            value = shadow_host(value)
        out.append((name, value))
    out.append((SHADOW_HEADER, "1"))
    return out


def identical(primary: ResponseSample, candidate: ResponseSample, compare_headers: Iterable[str]) -> bool:
    """Whether two (decoded) responses cannot differ under any rule: same status, same bytes, same compared
    headers. Ignore rules and noise paths only ever suppress differences, so this needs neither."""
    if primary.status != candidate.status or primary.body != candidate.body:
        return False
    return all(primary.header(name) == candidate.header(name) for name in compare_headers)


def parse_window(text: str) -> float:
    """``"5m"`` / ``"90s"`` / ``"300"`` (plain seconds) -> seconds. Raises ValueError."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = parse_duration(text)
    if not seconds > 0:
        raise ValueError(f"window must be positive, got {text!r}")
    return seconds


def decoded(sample: ResponseSample, limit: int) -> ResponseSample:
    """``sample`` with a gzip / deflate body decoded (at most ``limit`` bytes), so that two backends that
    compress differently still compare by content. Anything else is returned as it is."""
    encoding = (sample.header("content-encoding") or "").strip().lower()
    if encoding not in ("gzip", "x-gzip", "deflate") or not sample.body:
        return sample
    attempts = (31,) if encoding != "deflate" else (15, -15)  # deflate: zlib-wrapped, or raw as some servers send
    for wbits in attempts:
        inflater = zlib.decompressobj(wbits)
        try:
            body = inflater.decompress(sample.body, limit)
        except zlib.error:
            continue
        truncated = sample.truncated or bool(inflater.unconsumed_tail) or not inflater.eof
        headers = [(k, v) for k, v in sample.headers if k not in ("content-encoding", "content-length")]
        return ResponseSample(sample.status, headers, body, truncated)
    return sample


