"""A log-linear latency histogram (HdrHistogram-like), sparse, mergeable.

Buckets grow geometrically by ``GROWTH`` (1 %) from ``LOWEST_S`` (10 µs) to ``HIGHEST_S`` (100 s):
bucket ``i >= 1`` covers ``[LOWEST_S * GROWTH**(i-1), LOWEST_S * GROWTH**i)``; bucket 0 holds
everything below 10 µs and the last bucket everything from 100 s up. A quantile is reported as the
geometric middle of its bucket, so it is within ~0.5 % of the exact sample quantile (the nearest-rank
one) for values inside the range.

Counts live in a plain ``dict[int, int]`` (index -> count): a request path touches a few hundred
buckets at most, and ``dict.get`` + store is the cheapest update CPython has. The recorder inlines
``bucket_index`` on its hot path; this class is the query side.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping

__all__ = [
    "GROWTH",
    "HIGHEST_S",
    "LOWEST_S",
    "MAX_INDEX",
    "PROMETHEUS_BUCKETS",
    "LogLinearHistogram",
    "bucket_index",
    "bucket_value",
]

LOWEST_S = 1e-5
HIGHEST_S = 100.0
GROWTH = 1.01
# index = int((ln(x) - ln(LOWEST)) / ln(GROWTH)) + 1, written as ln(x) * K + C so recording is one log,
# one multiply-add and one int().
INV_LOG_GROWTH = 1.0 / math.log(GROWTH)
INDEX_OFFSET = 1.0 - math.log(LOWEST_S) * INV_LOG_GROWTH
MAX_INDEX = int(math.log(HIGHEST_S / LOWEST_S) * INV_LOG_GROWTH) + 1

# The coarse ``le`` boundaries exposed to Prometheus (seconds), as in prometheus_client's defaults.
PROMETHEUS_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_log = math.log


def bucket_index(seconds: float) -> int:
    """The bucket a duration falls into (0 = below 10 µs, ``MAX_INDEX`` = 100 s and up)."""
    if seconds < LOWEST_S:  # also catches 0, negatives and NaN-free clock skew
        return 0
    index = int(_log(seconds) * INV_LOG_GROWTH + INDEX_OFFSET)
    return min(MAX_INDEX, index)


def bucket_value(index: int) -> float:
    """The value a bucket stands for: its geometric middle; the range edges for the two open buckets."""
    if index <= 0:
        return LOWEST_S
    if index >= MAX_INDEX:
        return HIGHEST_S
    return float(LOWEST_S * GROWTH ** (index - 0.5))


def _prometheus_thresholds() -> tuple[int, ...]:
    # The fine bucket that ``le`` itself falls into counts as "<= le": an observation exactly at a boundary
    # (a round timeout, a test's sleep) is counted as Prometheus defines it; one up to a fine bucket (~1 %)
    # above the boundary is counted there too. That is the price of deriving coarse from fine buckets.
    return tuple(bucket_index(le) for le in PROMETHEUS_BUCKETS)


_PROMETHEUS_THRESHOLDS = _prometheus_thresholds()


class LogLinearHistogram:
    """Counts of durations (seconds) in ~1 %-wide buckets; ``quantile`` within ~0.5 % of the exact value."""

    __slots__ = ("counts", "total")

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts) if counts else {}
        self.total = sum(self.counts.values())

    def __repr__(self) -> str:
        return f"LogLinearHistogram(total={self.total}, buckets={len(self.counts)})"

    @classmethod
    def of(cls, values: Iterable[float]) -> LogLinearHistogram:
        hist = cls()
        for value in values:
            hist.record(value)
        return hist

    def record(self, seconds: float, count: int = 1) -> None:
        index = bucket_index(seconds)
        self.counts[index] = self.counts.get(index, 0) + count
        self.total += count

    def merge(self, other: LogLinearHistogram | Mapping[int, int]) -> None:
        """Add another histogram's counts to this one."""
        counts = other.counts if isinstance(other, LogLinearHistogram) else other
        mine = self.counts
        for index, count in counts.items():
            mine[index] = mine.get(index, 0) + count
            self.total += count

    def subtract(self, baseline: Mapping[int, int]) -> LogLinearHistogram:
        """A new histogram of what was recorded since ``baseline`` (an earlier copy of ``counts``)."""
        out = LogLinearHistogram()
        for index, count in self.counts.items():
            left = count - baseline.get(index, 0)
            if left > 0:
                out.counts[index] = left
                out.total += left
        return out

    def quantile(self, q: float) -> float | None:
        """The nearest-rank ``q`` quantile in seconds (``None`` when empty)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within 0..1, got {q}")
        if not self.total:
            return None
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return bucket_value(index)
        return bucket_value(max(self.counts))  # unreachable while total matches counts

    def quantiles(self, qs: Iterable[float]) -> list[float | None]:
        """Several quantiles in one pass over the sorted buckets."""
        wanted = list(qs)
        if not self.total:
            return [None] * len(wanted)
        ranks = sorted((max(1, math.ceil(q * self.total)), i) for i, q in enumerate(wanted))
        out: list[float | None] = [None] * len(wanted)
        seen = 0
        pending = iter(ranks)
        rank, slot = next(pending)
        for index in sorted(self.counts):
            seen += self.counts[index]
            while seen >= rank:
                out[slot] = bucket_value(index)
                nxt = next(pending, None)
                if nxt is None:
                    return out
                rank, slot = nxt
        return out

    def cumulative_buckets(self) -> Iterator[tuple[float, int]]:
        """``(le, cumulative count)`` for each Prometheus boundary, then ``(inf, total)``."""
        items = sorted(self.counts.items())
        position = 0
        seen = 0
        for le, threshold in zip(PROMETHEUS_BUCKETS, _PROMETHEUS_THRESHOLDS):
            while position < len(items) and items[position][0] <= threshold:
                seen += items[position][1]
                position += 1
            yield le, seen
        yield math.inf, self.total
