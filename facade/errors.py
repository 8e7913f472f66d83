"""The facade's error hierarchy, mapped to statuses and exit codes once, at the boundaries.

    FacadeError
    ├── ConfigError            a config / plan / policy file failed validation (carries every Problem)
    └── ProxyError             a request could not be forwarded; ``status`` is what the client gets
        ├── UpstreamConnectError   connect failure or reset before a response   -> 502
        ├── UpstreamUnavailable    no healthy endpoint, pool exhausted          -> 503
        ├── UpstreamTimeout        connect / per-try / request timeout          -> 504
        └── UpgradeRefused         the upstream answered a WebSocket upgrade    -> its status (4xx/5xx), else 502
                                   with a status instead of 101
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ConfigError",
    "FacadeError",
    "Problem",
    "ProxyError",
    "UpgradeRefused",
    "UpstreamConnectError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of a validator, located in its source file (1-based line and column)."""

    file: str
    line: int
    col: int
    path: str  # the field path, e.g. "routes[2].match.path.prefix"
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        what = f"{self.path}: {self.message}" if self.path else self.message
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}: {prefix}{what}"

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "path": self.path,
            "message": self.message,
            "severity": self.severity,
        }


class FacadeError(Exception):
    """Base class of every error the facade raises on purpose."""


class ConfigError(FacadeError):
    """A file failed validation. ``problems`` holds every error (and warning) found, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        super().__init__("\n".join(str(p) for p in errors) or "invalid configuration")

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


class ProxyError(FacadeError):
    """A request could not be proxied. ``status`` is the HTTP status the client receives."""

    status = 502
    reason = "bad gateway"

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(detail or self.reason)


class UpstreamConnectError(ProxyError):
    status = 502
    reason = "upstream connect error or reset before response"


class UpstreamUnavailable(ProxyError):
    status = 503
    reason = "no healthy upstream"


class UpstreamTimeout(ProxyError):
    status = 504
    reason = "upstream request timeout"


class UpgradeRefused(ProxyError):
    """The upstream refused a WebSocket upgrade (a policy's 403, a 404...): the client gets that status, as
    behind Envoy; an answer that is no refusal (a 200 instead of 101) is a bad gateway."""

    reason = "upstream refused the upgrade"

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(detail)
        self.status = status if 400 <= status < 600 else 502
