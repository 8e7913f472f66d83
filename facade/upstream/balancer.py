"""Load-balancing decisions, pure: which group gets a request, and which endpoint inside it.

Group choice follows Envoy's priority levels and locality weights: the lowest priority level
that has a candidate in a group with weight > 0 gets the request, split among that level's
groups by weight. A group without a candidate is skipped and its share goes to the others,
which is failover. Groups with weight 0 are drained: they only get requests when no weighted
group has a candidate at all.

Inside a group: round robin (a per-group counter), least request (Envoy's power of two
choices by in-flight count), random, or consistent hash (``HashRing``: a ketama-style ring
with virtual nodes, so removing one of N endpoints moves only the keys it owned, ~1/N).
Randomness comes from an injected ``random.Random`` so the tests can fix the seed.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..config import HashPolicy
from ..split import cookie_value, header_value

__all__ = [
    "DEFAULT_RING_VNODES",
    "GroupCandidates",
    "HashRing",
    "choose_group",
    "hash_of",
    "pick_least_request",
    "pick_random",
    "pick_round_robin",
    "request_hash",
]


@dataclass(frozen=True, slots=True)
class GroupCandidates:
    """One group as the group choice sees it: its config and how many candidates it has now."""

    weight: int
    priority: int
    candidates: int


def choose_group(
    groups: Sequence[GroupCandidates], rng: random.Random, *, drained: bool = False, draw: float | None = None
) -> int | None:
    """Index of the group that gets the request, or None when no group qualifies.

    With ``drained=False`` only groups with weight > 0 qualify, chosen by weight within the
    lowest priority level that has a candidate. With ``drained=True`` only weight-0 groups
    qualify (the last resort), chosen in proportion to their candidates. ``draw`` in [0, 1)
    replaces the random draw (consistent hashing: the same key lands in the same group).
    """
    eligible = [
        i for i, g in enumerate(groups) if g.candidates > 0 and ((g.weight == 0) if drained else (g.weight > 0))
    ]
    if not eligible:
        return None
    level = min(groups[i].priority for i in eligible)
    tier = [i for i in eligible if groups[i].priority == level]
    if len(tier) == 1:
        return tier[0]
    weights = [groups[i].candidates if drained else groups[i].weight for i in tier]
    point = (rng.random() if draw is None else draw) * sum(weights)
    for i, w in zip(tier, weights, strict=True):
        point -= w
        if point < 0:
            return i
    return tier[-1]  # float rounding at the upper edge


def pick_round_robin(count: int, counter: int) -> int:
    """The ``counter``-th endpoint of ``count`` candidates, cycling."""
    assert count > 0, "no candidates"
    return counter % count


def pick_least_request(in_flight: Sequence[int], rng: random.Random) -> int:
    """Power of two choices: sample two distinct candidates, take the one with fewer requests in flight.

    Ties go to the first sample, which is itself random, so equal load spreads evenly.
    """
    n = len(in_flight)
    assert n > 0, "no candidates"
    if n == 1:
        return 0
    a = rng.randrange(n)
    b = rng.randrange(n - 1)
    if b >= a:
        b += 1
    return a if in_flight[a] <= in_flight[b] else b


def pick_random(count: int, rng: random.Random) -> int:
    """Any of ``count`` candidates, uniformly."""
    assert count > 0, "no candidates"
    return rng.randrange(count)


# -- consistent hashing ----------------------------------------------------------------------------

DEFAULT_RING_VNODES = 160  # points per endpoint (ketama's count): keeps the shares within a few percent
_HASH_SPACE = 1 << 64


def hash_of(data: bytes) -> int:
    """A 64-bit hash, stable across processes and Python versions (so replicas agree)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class HashRing:
    """Endpoints placed on a 64-bit ring ``vnodes`` times each; a key belongs to the next point clockwise.

    Built once per pool (compile time). Removing an endpoint from the ring, or skipping it while
    it is unavailable, moves only the keys it owned: the others keep their endpoint.
    """

    points: tuple[int, ...]
    owners: tuple[int, ...]  # index into the endpoint list, per point
    size: int  # number of endpoints

    @classmethod
    def build(cls, names: Sequence[str], *, vnodes: int = DEFAULT_RING_VNODES) -> HashRing:
        placed = sorted(
            (hash_of(f"{name}#{i}".encode()), index) for index, name in enumerate(names) for i in range(vnodes)
        )
        return cls(tuple(p for p, _ in placed), tuple(o for _, o in placed), len(names))

    def order(self, key: int) -> Iterator[int]:
        """The endpoints in ring order from ``key``: the owner first, then the fallbacks, each once."""
        n = len(self.points)
        start = bisect.bisect_left(self.points, key % _HASH_SPACE)
        seen: set[int] = set()
        for i in range(n):
            owner = self.owners[(start + i) % n]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == self.size:
                    return

    def pick(self, key: int, usable: Sequence[bool]) -> int | None:
        """The first usable endpoint clockwise from ``key`` (None when none is usable)."""
        owner = self.owners[bisect.bisect_left(self.points, key % _HASH_SPACE) % len(self.points)]
        if usable[owner]:  # the common case: the owner is up; no walk
            return owner
        return next((i for i in self.order(key) if usable[i]), None)


def request_hash(
    policy: HashPolicy, headers: Sequence[tuple[bytes, bytes]], client_ip: str | None
) -> tuple[int | None, bytes | None]:
    """The hash key of one request and, for a cookie policy without the cookie, the Set-Cookie to issue.

    No key (header absent, no client address) gives None: the pool then picks at random, as Envoy does.
    """
    if policy.header is not None:
        raw = header_value(headers, policy.header.encode("latin-1"))
        return (hash_of(raw) if raw else None), None
    if policy.cookie is not None:
        name = policy.cookie.encode("latin-1")
        raw = cookie_value(headers, name)
        if raw:
            return hash_of(raw), None
        fresh = uuid.uuid4().hex.encode()
        max_age = f"; Max-Age={int(policy.cookie_ttl)}" if policy.cookie_ttl else ""
        return hash_of(fresh), name + b"=" + fresh + f"; Path=/{max_age}; HttpOnly; SameSite=Lax".encode()
    if policy.source_ip and client_ip:
        return hash_of(client_ip.encode("latin-1")), None
    return None, None
