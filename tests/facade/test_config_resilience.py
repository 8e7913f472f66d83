"""Reading the resilience settings: retry kinds and budget, rate limits, pending requests, statistical outlier detection."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from facade.config import Config, OutlierDetection, RateLimit, Retries, RetryBudget, parse_config
from facade.errors import Problem
from facade.yamlfile import YamlDocument


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def run(text: str) -> tuple[Config | None, list[Problem]]:
    Path("facade.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    return parse_config(YamlDocument.read("facade.yaml"), env={})


def messages(text: str) -> list[str]:
    return [str(p) for p in run(text)[1] if p.severity == "error"]


def test_valid_resilience_settings_become_frozen_values() -> None:
    config, problems = run(
        """
        services:
          a:
            endpoints: [http://127.0.0.1:1]
            retries:
              attempts: 3
              per_try_timeout: 250ms
              retry_on: [5xx, retriable-status-codes, reset, 503]
              retriable_status_codes: [503, 429]
              retry_budget: {budget_percent: 25, min_retry_concurrency: 2}
            connection_pool: {max_connections: 8, max_pending_requests: 0}
            outlier_detection: {interval: 5s, success_rate_minimum_hosts: 3, failure_percentage_threshold: 90}
        routes:
          - name: r
            backend: a
            rate_limit: {requests_per_unit: 100, unit: minute, burst: 20, key: "header:X-Api-Key"}
            retries: {retry_on: [gateway-error, retriable-4xx]}
        """
    )
    assert [p for p in problems if p.severity == "error"] == [] and config is not None
    svc = config.services[0]
    assert svc.retries == Retries(
        attempts=3,
        per_try_timeout=0.25,
        retry_on=("5xx", "retriable-status-codes", "reset", "503"),
        retriable_status_codes=(503, 429),
        retry_budget=RetryBudget(budget_percent=25.0, min_retry_concurrency=2),
    )
    assert svc.connection_pool.max_pending_requests == 0
    assert svc.outlier_detection == OutlierDetection(
        interval=5.0,
        success_rate_stdev_factor=1900,  # any success_rate_* key turns the detector on with Envoy's default
        success_rate_minimum_hosts=3,
        failure_percentage_threshold=90,
    )
    route = config.routes[0]
    assert route.rate_limit == RateLimit(requests_per_unit=100, unit="minute", burst=20, key="header", header="x-api-key")
    assert route.rate_limit.capacity == 20 and route.rate_limit.unit_seconds == 60.0
    assert route.retries is not None and route.retries.retry_on == ("gateway-error", "retriable-4xx")


def test_statistical_detectors_are_off_unless_asked_for() -> None:
    config, _ = run(
        """
        services:
          a: {endpoints: [http://127.0.0.1:1], outlier_detection: {consecutive_5xx: 3}}
        routes: [{name: r, backend: a}]
        """
    )
    assert config is not None
    od = config.services[0].outlier_detection
    assert od is not None and not od.statistical
    assert od.success_rate_stdev_factor is None and od.failure_percentage_threshold is None


def test_retry_errors_are_positioned() -> None:
    assert messages(
        """
        services:
          a:
            endpoints: [http://127.0.0.1:1]
            retries: {retry_on: [5xx], retriable_status_codes: [503]}
          b:
            endpoints: [http://127.0.0.1:2]
            retries: {retry_on: [retriable-status-codes]}
          c:
            endpoints: [http://127.0.0.1:3]
            retries: {retry_on: [retriable-status-codes], retriable_status_codes: [200, 600, x]}
          d:
            endpoints: [http://127.0.0.1:4]
            retries: {retry_on: [429, gateway-eror], retry_budget: {budget_percent: 150, min_retry_concurrency: -1}}
        routes:
          - name: r
            backend: a
            retries: {retry_budget: {budget_percent: 10}}
        """
    ) == [
        "facade.yaml:4:32: services.a.retries.retriable_status_codes: applies only with retriable-status-codes in retry_on",
        (
            "facade.yaml:7:25: services.b.retries.retriable_status_codes: retriable-status-codes needs "
            "retriable_status_codes: [...] (e.g. [503, 429])"
        ),
        "facade.yaml:10:76: services.c.retries.retriable_status_codes[0]: must be 400-599, got 200",
        "facade.yaml:10:81: services.c.retries.retriable_status_codes[1]: must be 400-599, got 600",
        "facade.yaml:10:86: services.c.retries.retriable_status_codes[2]: must be an integer, got 'x'",
        (
            "facade.yaml:13:26: services.d.retries.retry_on[0]: must be one of connect-failure, reset, 5xx, "
            "gateway-error, retriable-4xx, retriable-status-codes, 502, 503, 504, got '429'; "
            "for other statuses use retriable-status-codes with retriable_status_codes: [429]"
        ),
        (
            "facade.yaml:13:31: services.d.retries.retry_on[1]: must be one of connect-failure, reset, 5xx, "
            "gateway-error, retriable-4xx, retriable-status-codes, 502, 503, 504, got 'gateway-eror'; "
            "did you mean 'gateway-error'?"
        ),
        "facade.yaml:13:77: services.d.retries.retry_budget.budget_percent: must be 0-100, got 150",
        "facade.yaml:13:105: services.d.retries.retry_budget.min_retry_concurrency: must be at least 0, got -1",
        (
            "facade.yaml:17:15: routes[0].retries.retry_budget: retry_budget is per service "
            "(services.<name>.retries.retry_budget): every route to it shares it"
        ),
    ]


def test_rate_limit_errors_are_positioned() -> None:
    assert messages(
        """
        services:
          a: {endpoints: [http://127.0.0.1:1]}
        routes:
          - name: r1
            backend: a
            rate_limit: {requests_per_unit: 0, unit: day, burst: 0, key: "header:"}
          - name: r2
            direct_response: {status: 200}
            rate_limit: {requests_per_unit: 5}
          - name: r3
            backend: a
            rate_limit: {unit: second, key: cookie}
        """
    ) == [
        "facade.yaml:6:37: routes[0].rate_limit.requests_per_unit: must be at least 1, got 0",
        "facade.yaml:6:46: routes[0].rate_limit.unit: must be one of second, minute, hour, got 'day'",
        "facade.yaml:6:58: routes[0].rate_limit.burst: must be at least 1, got 0",
        (
            "facade.yaml:6:66: routes[0].rate_limit.key: must be route, client_ip or header:<name> "
            "(e.g. header:x-api-key), got 'header:'"
        ),
        "facade.yaml:9:5: routes[1].rate_limit: rate_limit applies to routes with backend or backends",
        "facade.yaml:12:17: routes[2].rate_limit.requests_per_unit: is required",
        (
            "facade.yaml:12:37: routes[2].rate_limit.key: must be route, client_ip or header:<name> "
            "(e.g. header:x-api-key), got 'cookie'"
        ),
    ]


def test_pool_and_outlier_errors_are_positioned() -> None:
    assert messages(
        """
        services:
          a:
            endpoints: [http://127.0.0.1:1]
            connection_pool: {max_pending_requests: -1}
            outlier_detection:
              interval: 0s
              success_rate_stdev_factor: 0
              failure_percentage_threshold: 101
          b:
            endpoints: [http://127.0.0.1:2]
            outlier_detection: {failure_percentage_request_volume: 10}
        routes: [{name: r, backend: a}]
        """
    ) == [
        "facade.yaml:4:45: services.a.connection_pool.max_pending_requests: must be at least 0, got -1",
        "facade.yaml:6:17: services.a.outlier_detection.interval: must be greater than 0, got 0s",
        "facade.yaml:7:34: services.a.outlier_detection.success_rate_stdev_factor: must be 1-100000, got 0",
        "facade.yaml:8:37: services.a.outlier_detection.failure_percentage_threshold: must be 0-100, got 101",
        (
            "facade.yaml:11:60: services.b.outlier_detection.failure_percentage_request_volume: needs "
            "failure_percentage_threshold (the failure percentage detector is off without it)"
        ),
    ]
