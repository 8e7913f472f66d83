"""Which backend serves one request of a route that is being migrated (pure, hot path).

A migration step becomes a ``Split``: how much of a route goes from the ``primary`` (the
monolith) to the ``candidate`` (the carved-out service), and how a request is assigned:

- **canary**: only requests carrying a header / cookie value go to the candidate; weight ignored.
- **sticky**: a stable hash of the user's key (cookie or header) picks one of ``BUCKETS``
  buckets; buckets below ``weight_bps`` go to the candidate.  Because the bucket of a key never
  changes, a user who moved stays moved as the weight grows (5 % -> 25 % -> 50 %): the cohort
  on the candidate only ever grows.  A request without a key gets a fresh one (and, for a
  cookie, a ``Set-Cookie`` so its next requests stick to the same side).
- **plain weight**: an independent draw per request.
- **persistent canary**: a weight step may keep the plan's canary (``canary`` with a weight):
  a request matching it goes to the candidate whatever the weight, the rest by sticky / weight.
- **salt**: sticky buckets are ``bucket_of(salt + key)``, so two plans with different salts move
  different users first; ``""`` is the unsalted bucket of plans started before salts existed.
- **cohort baggage**: with ``baggage`` on, the proxy tells the upstream which side served the
  request (W3C ``baggage: facade-cohort=old|new``); a request that comes back through the facade
  with that member stays on the same side while both sides serve live traffic (a hint: it only
  chooses between the two backends of the split, which a canary header can do anyway).

``shadow`` says whether a copy of a primary request should be mirrored to the candidate.
The proxy owns the randomness: it passes ``rand`` (and optionally ``shadow_rand``) in [0, 1).
"""

from __future__ import annotations

import bisect
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .config import FaultPolicy

__all__ = [
    "BAGGAGE_MAX_BYTES",
    "BAGGAGE_MAX_MEMBERS",
    "BUCKETS",
    "COHORT_KEY",
    "STICKY_COOKIE_MAX_AGE",
    "CanarySpec",
    "Decision",
    "Split",
    "StickySpec",
    "WeightedChoice",
    "baggage_with_cohort",
    "bucket_of",
    "choose_weighted",
    "cohort_of",
    "cookie_value",
    "decide",
    "header_value",
]

BUCKETS = 10_000  # basis points: weight_bps / BUCKETS is the candidate's share
STICKY_COOKIE_MAX_AGE = 30 * 24 * 3600  # 30 days: long enough to outlive a whole migration
COHORT_KEY = "facade-cohort"  # the baggage member naming the side of a split: old | new
BAGGAGE_MAX_BYTES = 8192  # W3C baggage: a header up to 8192 bytes ...
BAGGAGE_MAX_MEMBERS = 64  # ... and 64 list-members must be propagated; beyond, the cohort is not added


def bucket_of(key: str | bytes) -> int:
    """The bucket (0..BUCKETS-1) of a sticky key; stable across processes and Python versions."""
    data = key.encode("utf-8") if isinstance(key, str) else key
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True, slots=True)
class StickySpec:
    """Where a user's sticky key lives: a cookie or a request header (``name`` of a header is lower-case)."""

    kind: Literal["cookie", "header"]
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class CanarySpec:
    """Requests whose header / cookie ``name`` equals ``value`` exactly go to the candidate."""

    kind: Literal["header", "cookie"]
    name: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}={self.value}"


@dataclass(frozen=True, slots=True)
class Split:
    """How one route divides its traffic between ``primary`` and ``candidate`` right now."""

    primary: str
    candidate: str
    weight_bps: int = 0
    sticky: StickySpec | None = None
    canary: CanarySpec | None = None
    shadow_percent: float = 0.0
    step_label: str = ""
    shadow_unsafe: bool = False  # mirror POST/PUT/PATCH/DELETE too (the plan must say so explicitly)
    salt: str = ""  # prefixed to sticky keys ("" = the unsalted buckets of plans started before salts)
    baggage: bool = False  # set facade-cohort baggage upstream, honour it on the way in
    fault: FaultPolicy | None = None  # injected into the candidate's share only (a step's ``fault`` option)

    @property
    def both_live(self) -> bool:
        """Both sides serve live traffic now (a canary, or a weight strictly between 0 and 100 %)."""
        return self.weight_bps < BUCKETS and (self.weight_bps > 0 or self.canary is not None)

    def __post_init__(self) -> None:
        assert 0 <= self.weight_bps <= BUCKETS, f"weight_bps out of range: {self.weight_bps}"
        assert 0.0 <= self.shadow_percent <= 100.0, f"shadow_percent out of range: {self.shadow_percent}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one request.

    ``sticky_key`` is the key the decision was made with (None without sticky); ``set_cookie`` is
    the value of a ``Set-Cookie`` header the proxy must add to the response (a newly assigned
    cookie key); ``shadow`` asks the proxy to mirror the request to the candidate.
    """

    backend: str
    sticky_key: str | None = None
    set_cookie: bytes | None = None
    shadow: bool = False


def decide(
    split: Split,
    *,
    headers: Sequence[tuple[bytes, bytes]],
    rand: float,
    shadow_rand: float | None = None,
) -> Decision:
    """Choose the backend for one request (ASGI-style ``headers``, names lower-case).

    ``rand`` and ``shadow_rand`` are uniform in [0, 1).  Without ``shadow_rand`` the shadow
    draw is derived from the fractional digits of ``rand * BUCKETS``, which is independent of
    the weight draw for a uniform ``rand`` and keeps callers simple.
    """
    sticky_key: str | None = None
    set_cookie: bytes | None = None
    cohort = cohort_of(headers) if split.baggage and split.both_live else None
    if cohort is not None:
        to_candidate = cohort == "new"  # a call chain stays on the side its first request was sent to
    elif split.canary is not None and _canary_matches(split.canary, headers):
        to_candidate = True  # a tester, on a canary step or on a weight step that keeps the canary
    elif split.canary is not None and split.weight_bps == 0:
        to_candidate = False  # a canary step: everyone else stays (and gets no sticky cookie)
    elif split.sticky is not None:
        sticky_key = _sticky_key(split.sticky, headers)
        if sticky_key is None:
            # A newcomer: assign a key now so this and every later request land on the same side.
            sticky_key = uuid.uuid4().hex
            if split.sticky.kind == "cookie":
                set_cookie = _cookie(split.sticky.name, sticky_key)
        to_candidate = bucket_of(f"{split.salt}\x00{sticky_key}" if split.salt else sticky_key) < split.weight_bps
    else:
        to_candidate = rand * BUCKETS < split.weight_bps
    backend = split.candidate if to_candidate else split.primary
    shadow = False
    if split.shadow_percent > 0.0 and not to_candidate:
        draw = shadow_rand if shadow_rand is not None else (rand * BUCKETS) % 1.0
        shadow = draw * 100.0 < split.shadow_percent
    return Decision(backend=backend, sticky_key=sticky_key, set_cookie=set_cookie, shadow=shadow)


def cohort_of(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """``old`` / ``new`` from a ``baggage: facade-cohort=...`` member of any baggage header, else None."""
    for key, value in headers:
        if key != b"baggage":
            continue
        for member in value.split(b","):
            k, sep, v = member.partition(b"=")
            if sep and k.strip() == b"facade-cohort":
                cohort = v.split(b";", 1)[0].strip()  # a member may carry ;properties
                return cohort.decode("latin-1") if cohort in (b"old", b"new") else None
    return None


def baggage_with_cohort(values: Sequence[str], cohort: str) -> str | None:
    """The one ``baggage`` header to send upstream: the request's members with ``facade-cohort`` set.

    An existing ``facade-cohort`` member is replaced; others keep their order. Returns None when the
    result would exceed W3C's limits (8192 bytes, 64 members): then the request's baggage goes on
    unchanged rather than being cut (the call chain then follows the split's own rule downstream).
    """
    members = [m.strip() for v in values for m in v.split(",") if m.strip()]
    members = [m for m in members if m.partition("=")[0].strip() != COHORT_KEY]
    members.append(f"{COHORT_KEY}={cohort}")
    text = ",".join(members)
    if len(members) > BAGGAGE_MAX_MEMBERS or len(text.encode("latin-1", "replace")) > BAGGAGE_MAX_BYTES:
        return None
    return text


def header_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case), or None."""
    for key, value in headers:
        if key == name or key.lower() == name:
            return value
    return None


def cookie_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of cookie ``name`` in any Cookie header, or None."""
    # HTTP/2 clients may split cookies over several headers (RFC 9113 8.2.3); look at all of them.
    for key, value in headers:
        if key != b"cookie" and key.lower() != b"cookie":
            continue
        for pair in value.split(b";"):
            k, sep, v = pair.strip().partition(b"=")
            if sep and k == name:
                return v.strip().strip(b'"')
    return None


def _sticky_key(sticky: StickySpec, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    name = sticky.name.encode("latin-1")
    raw = cookie_value(headers, name) if sticky.kind == "cookie" else header_value(headers, name.lower())
    if not raw:
        return None
    return raw.decode("latin-1")


def _canary_matches(canary: CanarySpec, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    name = canary.name.encode("latin-1")
    raw = cookie_value(headers, name) if canary.kind == "cookie" else header_value(headers, name.lower())
    return raw is not None and raw.decode("latin-1") == canary.value


def _cookie(name: str, key: str) -> bytes:
    return f"{name}={key}; Path=/; Max-Age={STICKY_COOKIE_MAX_AGE}; HttpOnly; SameSite=Lax".encode("latin-1")


@dataclass(frozen=True, slots=True)
class WeightedChoice:
    """Plain weighted choice between backends, cumulative weights precomputed once per table."""

    names: tuple[str, ...]
    cumulative: tuple[int, ...]

    @classmethod
    def from_backends(cls, backends: Sequence[tuple[str, int]]) -> WeightedChoice:
        """``[("monolith", 90), ("catalog", 10)]``; weights are non-negative and not all zero."""
        names: list[str] = []
        cumulative: list[int] = []
        total = 0
        for name, weight in backends:
            if weight < 0:
                raise ValueError(f"backend {name!r}: weight must not be negative, got {weight}")
            if weight == 0:
                continue  # never picked; leaving it out keeps bisect from landing on it
            total += weight
            names.append(name)
            cumulative.append(total)
        if not names:
            raise ValueError("weighted backends need at least one backend with a positive weight")
        return cls(tuple(names), tuple(cumulative))

    def pick(self, rand: float) -> str:
        """The backend for a uniform ``rand`` in [0, 1)."""
        point = rand * self.cumulative[-1]
        index = bisect.bisect_right(self.cumulative, point)
        return self.names[min(index, len(self.names) - 1)]


def choose_weighted(backends: Sequence[tuple[str, int]], rand: float) -> str:
    """One-off weighted choice; routes should keep a ``WeightedChoice`` instead."""
    return WeightedChoice.from_backends(backends).pick(rand)
