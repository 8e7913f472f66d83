"""When to renew an SVID: at ~50 % of the lifetime *left when it arrived*, with per-certificate jitter.

The CA backdates every certificate (clock skew), so ``not_before`` lies in the past; for a 24 h
SVID that changes nothing, but for the seconds-long SVIDs of rotation tests half the nominal
lifetime may already be gone on arrival. Measuring from ``max(not_before, received_at)`` gives
the same answer as ``WorkloadIdentity.rotate_at`` for long lifetimes and a sane one for short.
Pure: the jitter comes from the certificate's random serial, as in ``WorkloadIdentity``.
"""

from __future__ import annotations

from datetime import datetime

from .identity import DEFAULT_ROTATE_FRACTION, DEFAULT_ROTATE_JITTER, WorkloadIdentity

__all__ = ["rotation_time"]


def rotation_time(
    identity: WorkloadIdentity,
    received_at: datetime,
    *,
    fraction: float = DEFAULT_ROTATE_FRACTION,
    jitter: float = DEFAULT_ROTATE_JITTER,
) -> datetime:
    """``start + (not_after - start) * (fraction +/- jitter)`` with ``start = max(not_before, received_at)``."""
    assert 0 < fraction < 1 and 0 <= jitter < min(fraction, 1 - fraction), "fraction/jitter out of range"
    start = max(identity.not_before, received_at)
    spread = ((identity.leaf.serial_number % 10_007) / 10_006) * 2 - 1  # in [-1, 1]
    return start + (identity.not_after - start) * (fraction + jitter * spread)
