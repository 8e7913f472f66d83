"""Retry policies in the Istio export: Envoy's kinds pass through, retriable statuses become numbers."""

from __future__ import annotations

from facade.config import Retries
from facade.export.istio import _retries


def test_retriable_status_codes_are_exported_as_numbers() -> None:
    r = Retries(
        attempts=2, per_try_timeout=0.5, retry_on=("5xx", "retriable-status-codes", "503"), retriable_status_codes=(503, 429)
    )
    assert _retries(r) == {"attempts": 2, "perTryTimeout": "500ms", "retryOn": "5xx,503,429"}


def test_envoy_kinds_pass_through() -> None:
    r = Retries(attempts=1, retry_on=("gateway-error", "retriable-4xx", "reset", "connect-failure"))
    assert _retries(r)["retryOn"] == "gateway-error,retriable-4xx,reset,connect-failure"
    assert _retries(Retries(attempts=0)) == {"attempts": 0}
