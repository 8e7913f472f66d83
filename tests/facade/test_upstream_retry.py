"""Which tries are retried, for which methods, within which budget (facade.upstream.retry, pure)."""

from __future__ import annotations

import pytest

from facade.config import Retries, RetryBudget
from facade.upstream import Outcome
from facade.upstream.retry import budget_allows, retry_failure, retry_status


def _r(*on: str, codes: tuple[int, ...] = ()) -> Retries:
    return Retries(retry_on=on, retriable_status_codes=codes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("on", "codes", "status", "idempotent", "retried"),
    [
        (("503",), (), 503, True, True),
        (("503",), (), 502, True, False),  # the legacy status kinds name one status each
        (("503",), (), 503, False, False),  # statuses: idempotent methods only
        (("gateway-error",), (), 502, True, True),
        (("gateway-error",), (), 504, True, True),
        (("gateway-error",), (), 500, True, False),
        (("5xx",), (), 500, True, True),
        (("5xx",), (), 599, True, True),
        (("5xx",), (), 429, True, False),
        (("5xx",), (), 500, False, False),
        (("retriable-4xx",), (), 409, True, True),
        (("retriable-4xx",), (), 429, True, False),
        (("retriable-status-codes",), (503, 429), 429, True, True),
        (("retriable-status-codes",), (503, 429), 503, True, True),
        (("retriable-status-codes",), (503, 429), 500, True, False),
        (("retriable-status-codes",), (429,), 429, False, False),
        (("5xx", "retriable-status-codes"), (), 200, True, False),
        (("connect-failure", "reset"), (), 503, True, False),
    ],
)
def test_retry_status(on: tuple[str, ...], codes: tuple[int, ...], status: int, idempotent: bool, retried: bool) -> None:
    assert retry_status(status, _r(*on, codes=codes), idempotent=idempotent) is retried


@pytest.mark.parametrize(
    ("on", "outcome", "idempotent", "retried"),
    [
        # A connect failure sent nothing: any method.
        (("connect-failure",), Outcome.CONNECT_FAILURE, False, True),
        (("5xx",), Outcome.CONNECT_FAILURE, False, True),
        (("gateway-error",), Outcome.CONNECT_FAILURE, True, True),
        (("reset",), Outcome.CONNECT_FAILURE, True, False),
        (("503",), Outcome.CONNECT_FAILURE, True, False),
        # A reset or a timeout may have reached the upstream: idempotent methods only.
        (("reset",), Outcome.RESET, True, True),
        (("reset",), Outcome.RESET, False, False),
        (("5xx",), Outcome.RESET, True, True),
        (("gateway-error",), Outcome.RESET, False, False),
        (("connect-failure",), Outcome.RESET, True, False),
        (("504",), Outcome.TIMEOUT, True, True),
        (("gateway-error",), Outcome.TIMEOUT, True, True),
        (("5xx",), Outcome.TIMEOUT, False, False),
        (("reset",), Outcome.TIMEOUT, True, False),
        (("retriable-status-codes",), Outcome.TIMEOUT, True, False),
    ],
)
def test_retry_failure(on: tuple[str, ...], outcome: Outcome, idempotent: bool, retried: bool) -> None:
    assert retry_failure(outcome, _r(*on, codes=(503,)), idempotent=idempotent) is retried


@pytest.mark.parametrize(
    ("budget", "retries_active", "requests_active", "allowed"),
    [
        (None, 1000, 1, True),  # no budget: bounded by attempts only
        (RetryBudget(20.0, 3), 2, 1, True),  # the minimum concurrency is always allowed
        (RetryBudget(20.0, 3), 3, 1, False),
        (RetryBudget(20.0, 3), 3, 20, True),  # 20 % of 20 = 4
        (RetryBudget(20.0, 3), 4, 20, False),
        (RetryBudget(20.0, 3), 19, 100, True),
        (RetryBudget(20.0, 3), 20, 100, False),
        (RetryBudget(0.0, 0), 0, 100, False),  # a zero budget refuses every retry
        (RetryBudget(100.0, 0), 9, 10, True),
        (RetryBudget(100.0, 0), 10, 10, False),
    ],
)
def test_budget_allows(budget: RetryBudget | None, retries_active: int, requests_active: int, allowed: bool) -> None:
    assert budget_allows(budget, retries_active=retries_active, requests_active=requests_active) is allowed
