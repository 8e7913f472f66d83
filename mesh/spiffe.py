"""SPIFFE IDs, parsed and validated by the rules of the SPIFFE ID specification.

    spiffe://shop.local/ns/shop/sa/catalog
    \\____/   \\________/\\___________________/
    scheme   trust domain        path

- scheme ``spiffe``, lower-case only;
- trust domain: ``[a-z0-9.\\-_]``, non-empty, no port and no userinfo;
- path: zero or more ``/segment``; a segment is non-empty, not ``.`` or ``..``, made of
  ``[A-Za-z0-9.\\-_]`` (so no percent-encoding); no trailing slash;
- no query, no fragment; the whole ID is at most 2048 bytes (trust domain at most 255).

Parsing is strict on purpose: a SPIFFE ID is an identity, and two spellings of one identity
would let a policy written for one miss the other.

A trust domain ID (``spiffe://shop.local``, no path) is a valid SPIFFE ID, but never a
workload's: X509-SVID 3.1 and 5.2 forbid it in a leaf certificate. Every place that takes a
workload identity (a CSR, a peer or own certificate, a bootstrap token, a policy principal, a
configured identity, ``facade mesh ca issue``) goes through ``parse_workload`` /
``require_workload``, which refuse it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_ID_LENGTH", "MAX_TRUST_DOMAIN_LENGTH", "InvalidSpiffeId", "SpiffeId"]

MAX_ID_LENGTH = 2048
MAX_TRUST_DOMAIN_LENGTH = 255
_SCHEME = "spiffe://"
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")


class InvalidSpiffeId(ValueError):
    """The text is not a valid SPIFFE ID; the message says which rule it breaks."""


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A validated SPIFFE ID. ``path`` is ``""`` for a trust domain ID, else starts with ``/``."""

    trust_domain: str
    path: str = ""

    def __post_init__(self) -> None:
        _check_trust_domain(self.trust_domain)
        _check_path(self.path)
        if len(str(self).encode()) > MAX_ID_LENGTH:
            raise InvalidSpiffeId(f"SPIFFE ID is longer than {MAX_ID_LENGTH} bytes")

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain}{self.path}"

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse ``spiffe://<trust-domain>[/<path>]``; raise InvalidSpiffeId naming the broken rule."""
        if not isinstance(text, str):
            raise InvalidSpiffeId(f"SPIFFE ID must be a string, got {type(text).__name__}")
        if not text:
            raise InvalidSpiffeId("SPIFFE ID is empty")
        if len(text.encode()) > MAX_ID_LENGTH:
            raise InvalidSpiffeId(f"SPIFFE ID is longer than {MAX_ID_LENGTH} bytes")
        if not text.startswith(_SCHEME):
            if text[: len(_SCHEME)].lower() == _SCHEME:
                raise InvalidSpiffeId(f"scheme must be lower-case 'spiffe', got {text.split(':', 1)[0]!r}")
            raise InvalidSpiffeId(f"SPIFFE ID must start with {_SCHEME!r}: {text!r}")
        rest = text[len(_SCHEME) :]
        if "?" in rest:
            raise InvalidSpiffeId("SPIFFE ID must not have a query")
        if "#" in rest:
            raise InvalidSpiffeId("SPIFFE ID must not have a fragment")
        trust_domain, slash, path = rest.partition("/")
        return cls(trust_domain, slash + path)

    @classmethod
    def parse_workload(cls, text: str) -> SpiffeId:
        """``parse``, then refuse a trust domain ID: the ID of a workload (an X509-SVID leaf) has a path."""
        return cls.parse(text).require_workload()

    @property
    def is_trust_domain_id(self) -> bool:
        """Whether this is the trust domain's own ID (no path), which no workload may carry."""
        return not self.path

    def require_workload(self) -> SpiffeId:
        """``self`` when it can name a workload; InvalidSpiffeId for a trust domain ID."""
        if not self.path:
            raise InvalidSpiffeId(
                f"{self} is a trust domain ID (no path), not a workload identity: an X509-SVID leaf "
                "needs a path, e.g. /ns/<namespace>/sa/<name> (X509-SVID 3.1, 5.2)"
            )
        return self

    @classmethod
    def workload(cls, trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
        """The Istio-style workload ID ``spiffe://<td>/ns/<namespace>/sa/<service_account>``."""
        return cls(trust_domain, f"/ns/{namespace}/sa/{service_account}")

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.split("/")[1:]) if self.path else ()

    @property
    def namespace(self) -> str | None:
        """The ``<ns>`` of a ``/ns/<ns>/...`` path (Istio's ``source.namespace``), else None."""
        segments = self.segments
        if len(segments) >= 2 and segments[0] == "ns":
            return segments[1]
        return None

    @property
    def service_account(self) -> str | None:
        """The ``<sa>`` of a ``/ns/<ns>/sa/<sa>`` path, else None."""
        segments = self.segments
        if len(segments) >= 4 and segments[0] == "ns" and segments[2] == "sa":
            return segments[3]
        return None

    def member_of(self, trust_domain: str) -> bool:
        return self.trust_domain == trust_domain


def _check_trust_domain(trust_domain: str) -> None:
    if not trust_domain:
        raise InvalidSpiffeId("trust domain is empty")
    if "@" in trust_domain:
        raise InvalidSpiffeId("trust domain must not contain userinfo ('@')")
    if ":" in trust_domain:
        raise InvalidSpiffeId("trust domain must not contain a port (':')")
    if "%" in trust_domain:
        raise InvalidSpiffeId("trust domain must not be percent-encoded")
    if len(trust_domain) > MAX_TRUST_DOMAIN_LENGTH:
        raise InvalidSpiffeId(f"trust domain is longer than {MAX_TRUST_DOMAIN_LENGTH} characters")
    if not _TRUST_DOMAIN_RE.fullmatch(trust_domain):
        bad = next(c for c in trust_domain if not _TRUST_DOMAIN_RE.fullmatch(c))
        hint = " (trust domains are lower-case)" if bad.isupper() else ""
        raise InvalidSpiffeId(f"trust domain {trust_domain!r} has a character outside [a-z0-9.-_]: {bad!r}{hint}")


def _check_path(path: str) -> None:
    if not path:
        return
    if not path.startswith("/"):
        raise InvalidSpiffeId(f"path must start with '/', got {path!r}")
    for segment in path.split("/")[1:]:
        if segment == "":
            raise InvalidSpiffeId("path has an empty segment (a '//' or a trailing '/')")
        if segment in (".", ".."):
            raise InvalidSpiffeId(f"path must not contain a {segment!r} segment")
        if "%" in segment:
            raise InvalidSpiffeId("path must not be percent-encoded")
        if not _SEGMENT_RE.fullmatch(segment):
            bad = next(c for c in segment if not _SEGMENT_RE.fullmatch(c))
            raise InvalidSpiffeId(f"path segment {segment!r} has a character outside [A-Za-z0-9.-_]: {bad!r}")
