"""Load-balancing decisions, pure: which group gets a request, and which endpoint inside it.

Group choice follows Envoy's priority levels and locality weights: the lowest priority level
that has a candidate in a group with weight > 0 gets the request, split among that level's
groups by weight. A group without a candidate is skipped and its share goes to the others,
which is failover. Groups with weight 0 are drained: they only get requests when no weighted
group has a candidate at all.

Inside a group: round robin (a per-group counter), least request (Envoy's power of two
choices by in-flight count) or random. Randomness comes from an injected ``random.Random``
so the tests can fix the seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "GroupCandidates",
    "choose_group",
    "pick_least_request",
    "pick_random",
    "pick_round_robin",
]


@dataclass(frozen=True, slots=True)
class GroupCandidates:
    """One group as the group choice sees it: its config and how many candidates it has now."""

    weight: int
    priority: int
    candidates: int


def choose_group(groups: Sequence[GroupCandidates], rng: random.Random, *, drained: bool = False) -> int | None:
    """Index of the group that gets the request, or None when no group qualifies.

    With ``drained=False`` only groups with weight > 0 qualify, chosen by weight within the
    lowest priority level that has a candidate. With ``drained=True`` only weight-0 groups
    qualify (the last resort), chosen in proportion to their candidates.
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
    point = rng.random() * sum(weights)
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
