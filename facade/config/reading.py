"""What every reader of ``facade.yaml`` shares: the field lists, the reading context and scalar readers.

YAML -> Config in one pass that never stops at the first error: every reader records a
Problem and returns a default, so `facade validate` lists everything wrong in the file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..yamlfile import (
    Node,
    Problems,
    read_duration,
    read_str,
)

ENV_ADMIN_TOKEN = "FACADE_ADMIN_TOKEN"

_TOP_FIELDS = (
    "listen",
    "tls",
    "admin",
    "state_dir",
    "state_store",
    "migrations",
    "trusted_proxies",
    "access_log",
    "limits",
    "normalize",
    "services",
    "routes",
    "mesh",
    "mark_responses",
    "shadow",
    "headers_with_underscores",
    "debug_error_details",
    "workers",
)
_SHADOW_FIELDS = (
    "concurrency",
    "queue_size",
    "max_body",
    "timeout",
    "max_queued_bytes",
    "host_suffix",
    "learn_noise",
    "ring_size",
    "redact",
    "sender",
)
_SHADOW_MAX_CONCURRENCY = 1024
_SHADOW_MAX_QUEUE = 100_000
_SHADOW_MAX_RING = 100_000
_SERVICE_FIELDS = (
    "endpoints",
    "groups",
    "load_balancer",
    "health_check",
    "outlier_detection",
    "timeouts",
    "retries",
    "connection_pool",
    "tls",
    "identity",
    "subsets",
)
_ROUTE_FIELDS = (
    "name",
    "match",
    "backend",
    "backends",
    "redirect",
    "direct_response",
    "rewrite",
    "request_headers",
    "response_headers",
    "timeout",
    "retries",
    "rate_limit",
    "fault",
    "cors",
)
_ACTIONS = ("backend", "backends", "redirect", "direct_response")
_RETRY_ON: tuple[str, ...] = (
    "connect-failure", "reset", "5xx", "gateway-error", "retriable-4xx", "retriable-status-codes", "502", "503", "504",
)
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_STRING_MATCH_KINDS = ("exact", "prefix", "regex", "present", "absent")

_SERVICE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]*[a-z0-9])?$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token
_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # RFC 9110 5.5: no CTLs but HTAB


def wire_name_problem(name: str, what: str) -> str | None:
    """Why ``name`` cannot be a header or cookie name on the wire (RFC 9110 / RFC 6265: a token), or None.

    Every key that names a header or a cookie the facade reads or writes (hash keys, sticky and
    canary keys, rate-limit keys) goes through here: a space, ';' or '=' in a cookie name would
    forge attributes of the Set-Cookie the facade sends, and a header name with a space never matches.
    """
    if not name:
        return f"{what} must not be empty"
    if not _TOKEN_RE.match(name):
        return f"invalid {what} {name!r}: use letters, digits and !#$%&'*+-.^_`|~ (no spaces, ';', '=' or ',')"
    return None


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent (or matched) as a header value, or None: CTLs and non-latin-1 text."""
    if _CTL_RE.search(value):
        return "header value contains a control character (CR, LF, NUL...)"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "header value must be ASCII (or latin-1): percent-encode other text"
    return None


_LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d+)$")
_HOST_LABELS_RE = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
_SPIFFE_RE = re.compile(r"^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)+$")  # only when the mesh is not installed


def _workload_id_problem(text: str) -> str | None:
    """Why ``text`` cannot be a workload's SPIFFE ID (the mesh's own rules when installed), else None."""
    try:
        from facade.mesh.spiffe import InvalidSpiffeId, SpiffeId
    except ModuleNotFoundError:
        return None if _SPIFFE_RE.match(text) else "not of the form spiffe://<trust-domain>/<path>"
    try:
        SpiffeId.parse_workload(text)
    except InvalidSpiffeId as exc:
        return str(exc)
    return None


@dataclass(frozen=True, slots=True)
class _Ctx:
    problems: Problems
    base_dir: str
    env: Mapping[str, str]

    def path(self, value: str) -> str:
        """A path from the config, resolved against the config file's directory."""
        if os.path.isabs(value) or not self.base_dir:
            return value
        return os.path.join(self.base_dir, value)

    def existing_file(self, node: Node | None) -> str | None:
        value = _nonempty_str(node, self.problems)
        if node is None or value is None:
            return None
        resolved = self.path(value)
        if not os.path.isfile(resolved):
            self.problems.error(node, f"file not found: {resolved}")
            return None
        return resolved

# -- scalars ---------------------------------------------------------------------------------


def _read_state_store(node: Node | None, problems: Problems) -> str | None:
    """``state_store``: absent = the SQLite file under state_dir; else a PostgreSQL URL (libpq's form)."""
    value = _nonempty_str(node, problems)
    if node is None or value is None:
        return None
    if not value.startswith(("postgresql://", "postgres://")):
        # The value is not echoed: it may carry a password.
        problems.error(node, "must be a postgresql://user@host:port/dbname URL (leave it out for the SQLite file "
                       "in state_dir)")
        return None
    reason = _postgres_url_problem(value)
    if reason is not None:
        problems.error(node, reason)
        return None
    return value


def _postgres_url_problem(url: str) -> str | None:
    """Why libpq cannot parse ``url`` (checked offline, so `facade validate` catches it), or None.

    Without psycopg installed the URL is taken as written: opening the store says what to install.
    """
    try:
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict
    except ModuleNotFoundError:
        return None
    try:
        conninfo_to_dict(url)
    except ProgrammingError as exc:
        # libpq's message quotes the whole URL, password included: say what is wrong without it.
        detail = re.sub(r'\s*in URI: ".*"', "", str(exc).splitlines()[0]) if str(exc) else "cannot be parsed"
        return f"not a valid PostgreSQL URL: {detail} (the value is not shown: it may carry a password)"
    return None


def _nonempty_str(node: Node | None, problems: Problems) -> str | None:
    value = read_str(node, problems)
    if node is not None and value is not None and not value.strip():
        problems.error(node, "must not be empty")
        return None
    return value


def _positive_duration(node: Node | None, problems: Problems, default: float) -> float:
    if node is not None and node.is_null:
        problems.error(node, "must be a duration (e.g. 5s), got null")
        return default
    value = read_duration(node, problems, default=None)
    if value is None:
        return default
    if value <= 0:
        problems.error(node, f"must be greater than 0, got {node.value if node else value}")
        return default
    return value


def _optional_duration(node: Node | None, problems: Problems, default: float | None) -> float | None:
    """A positive duration, or ``null`` for none."""
    if node is None:
        return default
    if node.is_null:
        return None
    value = _positive_duration(node, problems, -1.0)
    return default if value < 0 else value


def listen_problem(value: str) -> str | None:
    """Why ``value`` is not a ``host:port`` to listen on, or None (the config's listen keys and
    ``facade serve --listen / --admin-listen`` alike)."""
    m = _LISTEN_RE.match(value)
    if m is None:
        return f"must be host:port (e.g. 127.0.0.1:8080 or [::1]:8080), got {value!r}"
    if m.group("v6") is not None:
        try:
            ipaddress.IPv6Address(m.group("v6"))
        except ValueError:
            return f"invalid IPv6 address {m.group('v6')!r}"
    port = int(m.group("port"))
    if port > 65535:
        return f"port must be 0-65535, got {port}"
    return None


def _read_listen(node: Node | None, problems: Problems, default: str) -> str:
    value = read_str(node, problems)
    if node is None or value is None:
        return default
    reason = listen_problem(value)
    if reason is not None:
        problems.error(node, reason)
        return default
    return value


def _read_cidrs(node: Node | None, problems: Problems) -> list[str]:
    out: list[str] = []
    if node is None:
        return out
    if not node.is_list:
        problems.error(node, f"must be a list of CIDRs, got {node.kind}")
        return out
    for element in node.elements():
        value = read_str(element, problems)
        if value is None:
            continue
        try:
            out.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            problems.error(element, f"invalid CIDR {value!r} (expected e.g. 10.0.0.0/8 or 127.0.0.1/32)")
    return out


def _read_abs_path(node: Node | None, problems: Problems) -> str | None:
    value = _nonempty_str(node, problems)
    if node is None or value is None:
        return None
    if not value.startswith("/"):
        problems.error(node, f"must start with '/', got {value!r}")
        return None
    return value


