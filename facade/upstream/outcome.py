"""What happened to one forwarded request, as the pool's health bookkeeping sees it."""

from __future__ import annotations

import enum

__all__ = ["Outcome"]


class Outcome(enum.Enum):
    """The result of one try against one endpoint (Envoy's outlier detection result types)."""

    SUCCESS = "success"
    HTTP_5XX = "http_5xx"  # a 5xx other than 502/503/504
    GATEWAY_ERROR = "gateway_error"  # 502 / 503 / 504 from the endpoint
    CONNECT_FAILURE = "connect_failure"
    RESET = "reset"  # the connection died before a complete response head
    TIMEOUT = "timeout"

    @staticmethod
    def from_status(status: int) -> Outcome:
        """Classify a response status: 502/503/504 are gateway errors, other 5xx plain 5xx, the rest success."""
        if status < 500:
            return Outcome.SUCCESS
        if status in (502, 503, 504):
            return Outcome.GATEWAY_ERROR
        if status < 600:
            return Outcome.HTTP_5XX
        return Outcome.SUCCESS

    @property
    def is_5xx(self) -> bool:
        """Counts towards ``consecutive_5xx`` (every failure; locally originated ones map to 503 like Envoy)."""
        return self is not Outcome.SUCCESS

    @property
    def is_gateway_error(self) -> bool:
        """Counts towards ``consecutive_gateway_errors``."""
        return self in _GATEWAY


_GATEWAY = frozenset({Outcome.GATEWAY_ERROR, Outcome.CONNECT_FAILURE, Outcome.RESET, Outcome.TIMEOUT})
