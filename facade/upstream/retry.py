"""Whether a failed try is retried, pure (Envoy's ``retry_on`` names; docs/upstreams.md, "Retries").

Which kinds apply to which methods (a deliberate difference from Envoy, which retries any
method it is told to): a try whose request may have reached the upstream is retried only
for idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE); a connect failure sent
nothing, so it is retried for every method.

| outcome of the try          | retried when retry_on has                                            | methods    |
|-----------------------------|----------------------------------------------------------------------|------------|
| connect failure             | connect-failure, 5xx, gateway-error                                  | any        |
| reset (no complete head)    | reset, 5xx, gateway-error                                            | idempotent |
| per-try timeout             | 504, 5xx, gateway-error                                              | idempotent |
| response 502 / 503 / 504    | "502" / "503" / "504" (that status), 5xx, gateway-error              | idempotent |
| other 5xx response          | 5xx, retriable-status-codes listing it                               | idempotent |
| 409 response                | retriable-4xx, retriable-status-codes listing it                     | idempotent |
| other 4xx response          | retriable-status-codes listing it                                    | idempotent |

On top of the kind: attempts left, a body that can be sent again, time left before the
request's deadline, and the service's retry budget (``budget_allows``).
"""

from __future__ import annotations

from ..config import Retries, RetryBudget
from .outcome import Outcome

__all__ = ["IDEMPOTENT", "budget_allows", "retry_failure", "retry_status"]

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

_GATEWAY_STATUSES = frozenset({502, 503, 504})


def retry_status(status: int, retries: Retries, *, idempotent: bool) -> bool:
    """Whether the kinds in ``retries.retry_on`` ask for a response with ``status`` to be retried."""
    if not idempotent or status < 400:
        return False
    on = retries.retry_on
    if status in _GATEWAY_STATUSES and ("gateway-error" in on or str(status) in on):
        return True
    if status >= 500 and "5xx" in on:
        return True
    if status == 409 and "retriable-4xx" in on:
        return True
    return "retriable-status-codes" in on and status in retries.retriable_status_codes


def retry_failure(outcome: Outcome, retries: Retries, *, idempotent: bool) -> bool:
    """Whether a try that got no response (``outcome``) is retried by kind and method."""
    on = retries.retry_on
    broad = "5xx" in on or "gateway-error" in on  # Envoy: both include resets and connect failures
    if outcome is Outcome.CONNECT_FAILURE:
        return broad or "connect-failure" in on  # nothing was sent: any method
    if not idempotent:
        return False
    if outcome is Outcome.RESET:
        return broad or "reset" in on
    if outcome is Outcome.TIMEOUT:
        return broad or "504" in on
    return False


def budget_allows(budget: RetryBudget | None, *, retries_active: int, requests_active: int) -> bool:
    """One more retry may start: retries in flight stay within ``budget_percent`` % of the service's
    active requests, but ``min_retry_concurrency`` retries are always allowed (Envoy's retry budget)."""
    if budget is None:
        return True
    limit = max(budget.min_retry_concurrency, int(budget.budget_percent * requests_active / 100.0))
    return retries_active < limit
