"""Active health checking: a pure threshold state machine and the probe loop that feeds it.

Thresholds count consecutive results (Envoy): ``unhealthy_threshold`` failures in a row mark
an endpoint unhealthy, ``healthy_threshold`` successes in a row mark it healthy again.
Endpoints start healthy (unlike Envoy, which waits for the first check) so a facade with a
health check does not answer 503 to its first requests; the first check runs at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from ..config import HealthCheck

if TYPE_CHECKING:
    from .pool import Endpoint

__all__ = ["HEALTH_CHECK_USER_AGENT", "INTERVAL_JITTER", "HealthState", "probe", "record_check", "run_checks"]

HEALTH_CHECK_USER_AGENT = "facade-health-check"
INTERVAL_JITTER = 0.1  # each wait is the interval +- 10 %, so checks of many endpoints do not align


@dataclass(frozen=True, slots=True)
class HealthState:
    healthy: bool = True
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    checks: int = 0
    last_detail: str = ""  # "200", or why the last check failed


def record_check(state: HealthState, ok: bool, spec: HealthCheck, detail: str = "") -> HealthState:
    """Apply one check result to the threshold state machine."""
    if ok:
        successes = state.consecutive_successes + 1
        healthy = state.healthy or successes >= spec.healthy_threshold
        return HealthState(healthy, successes, 0, state.checks + 1, detail)
    failures = state.consecutive_failures + 1
    healthy = state.healthy and failures < spec.unhealthy_threshold
    return HealthState(healthy, 0, failures, state.checks + 1, detail)


async def probe(session: aiohttp.ClientSession, endpoint: Endpoint, spec: HealthCheck) -> tuple[bool, str]:
    """One check: GET the health path within the timeout; success when the status is in the expected range."""
    low, high = spec.expected_statuses
    try:
        async with session.get(
            endpoint.url_for(spec.path if spec.path.startswith("/") else "/" + spec.path),
            timeout=aiohttp.ClientTimeout(total=spec.timeout),
            allow_redirects=False,
            headers={"User-Agent": HEALTH_CHECK_USER_AGENT},
        ) as resp:
            await resp.read()  # drain so the connection can be reused for the next check
            return low <= resp.status <= high, str(resp.status)
    except TimeoutError:
        return False, f"timeout after {spec.timeout:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        return False, f"{type(exc).__name__}: {exc}"


async def run_checks(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    spec: HealthCheck,
    *,
    rng: random.Random,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Check one endpoint forever (until cancelled): first at once, then every jittered interval."""
    while True:
        ok, detail = await probe(session, endpoint, spec)
        endpoint.health = record_check(endpoint.health, ok, spec, detail)
        endpoint.last_checked = clock()
        jitter = 1.0 + INTERVAL_JITTER * (2.0 * rng.random() - 1.0)
        await asyncio.sleep(spec.interval * jitter)
