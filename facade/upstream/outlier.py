"""Passive outlier detection, pure (Envoy semantics): count consecutive failures, eject, let go.

An endpoint's bookkeeping is an immutable ``OutlierState``; the pool replaces it after each
reported outcome. Ejection ends lazily: ``refresh(state, spec, now)`` is called before a
decision, so no timers are needed.

Next to the consecutive-errors detectors, two statistical ones (Envoy's) judge the outcomes of
every endpoint over an ``interval``: ``success_rate_outliers`` (success rate below the mean of
the service's endpoints by more than ``success_rate_stdev_factor / 1000`` standard deviations) and
``failure_percentage_outliers`` (failures at least ``failure_percentage_threshold`` percent of an
endpoint's requests). Both only judge endpoints with enough requests in the interval, and only
when enough endpoints have them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..config import OutlierDetection
from .outcome import Outcome

__all__ = [
    "OutlierState",
    "count_outcome",
    "eject",
    "ejection_allowed",
    "failure_percentage_outliers",
    "refresh",
    "should_eject",
    "success_rate_outliers",
]


@dataclass(frozen=True, slots=True)
class OutlierState:
    consecutive_5xx: int = 0
    consecutive_gateway_errors: int = 0
    ejected_until: float = 0.0  # 0 = not ejected; otherwise the clock value when the ejection ends
    times_ejected: int = 0  # drives the growing ejection time; decays after good behaviour
    released_at: float = 0.0  # when the last ejection ended, for the decay of times_ejected

    @property
    def ejected(self) -> bool:
        return self.ejected_until != 0.0


def count_outcome(state: OutlierState, outcome: Outcome) -> OutlierState:
    """Update the consecutive counters; a success resets both."""
    if outcome is Outcome.SUCCESS:
        if state.consecutive_5xx == 0 and state.consecutive_gateway_errors == 0:
            return state  # the hot path: no allocation for a run of successes
        return replace(state, consecutive_5xx=0, consecutive_gateway_errors=0)
    return replace(
        state,
        consecutive_5xx=state.consecutive_5xx + 1,
        consecutive_gateway_errors=state.consecutive_gateway_errors + (1 if outcome.is_gateway_error else 0),
    )


def should_eject(state: OutlierState, spec: OutlierDetection) -> bool:
    """A threshold of 0 or less disables that detector."""
    if state.ejected:
        return False
    return (0 < spec.consecutive_5xx <= state.consecutive_5xx) or (
        0 < spec.consecutive_gateway_errors <= state.consecutive_gateway_errors
    )


def ejection_allowed(ejected_now: int, total: int, max_ejection_percent: float) -> bool:
    """Whether one more endpoint may be ejected: at most ``max_ejection_percent`` of the service's
    endpoints at once, but at least one regardless of the percentage (Envoy)."""
    if ejected_now == 0:
        return True
    return 100.0 * (ejected_now + 1) / total <= max_ejection_percent


def eject(state: OutlierState, spec: OutlierDetection, now: float) -> OutlierState:
    """Eject for ``base_ejection * times_ejected`` (this ejection included), capped at ``max_ejection``."""
    times = state.times_ejected + 1
    duration = min(spec.base_ejection * times, max(spec.max_ejection, spec.base_ejection))
    return OutlierState(ejected_until=now + duration, times_ejected=times, released_at=state.released_at)


def refresh(state: OutlierState, spec: OutlierDetection, now: float) -> OutlierState:
    """End an ejection whose time has passed, and forget past ejections after good behaviour.

    Envoy decrements the ejection count every interval a host stays healthy; here it resets
    once the endpoint has gone ``max_ejection`` without being ejected again.
    """
    if state.ejected:
        if now < state.ejected_until:
            return state
        return OutlierState(times_ejected=state.times_ejected, released_at=state.ejected_until)
    if state.times_ejected and now - state.released_at >= spec.max_ejection:
        return replace(state, times_ejected=0)
    return state


def success_rate_outliers(volumes: Sequence[tuple[int, int]], spec: OutlierDetection) -> list[int]:
    """The endpoints (indices into ``volumes``: requests, failures in the interval) whose success rate
    is below ``mean - stdev_factor / 1000 * stdev`` of the endpoints with at least
    ``success_rate_request_volume`` requests; nobody when fewer than ``success_rate_minimum_hosts``
    endpoints have that many (Envoy's success-rate detector; population standard deviation)."""
    if spec.success_rate_stdev_factor is None:
        return []
    volume = spec.success_rate_request_volume
    judged = [(i, 100.0 * (n - failed) / n) for i, (n, failed) in enumerate(volumes) if n >= volume]
    if not judged or len(judged) < spec.success_rate_minimum_hosts:
        return []
    mean = sum(rate for _, rate in judged) / len(judged)
    stdev = math.sqrt(sum((rate - mean) ** 2 for _, rate in judged) / len(judged))
    threshold = mean - spec.success_rate_stdev_factor / 1000.0 * stdev
    return [i for i, rate in judged if rate < threshold]


def failure_percentage_outliers(volumes: Sequence[tuple[int, int]], spec: OutlierDetection) -> list[int]:
    """The endpoints whose failures are at least ``failure_percentage_threshold`` % of their requests,
    among those with at least ``failure_percentage_request_volume`` requests; nobody when fewer than
    ``failure_percentage_minimum_hosts`` endpoints have that many (Envoy's failure-percentage detector)."""
    threshold = spec.failure_percentage_threshold
    if threshold is None:
        return []
    volume = spec.failure_percentage_request_volume
    judged = [(i, 100.0 * failed / n) for i, (n, failed) in enumerate(volumes) if n >= volume]
    if not judged or len(judged) < spec.failure_percentage_minimum_hosts:
        return []
    return [i for i, share in judged if share >= threshold]
