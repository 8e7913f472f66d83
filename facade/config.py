"""The facade's configuration: ``facade.yaml`` -> a frozen ``Config``.

Every value here is immutable and already validated; the rest of the facade never sees
raw YAML.  ``load_config(path)`` returns a Config or raises ConfigError carrying every
problem as ``file:line:col: field.path: message``; ``check_config(path)`` returns the
problems (errors and warnings) without raising.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, cast
from urllib.parse import urlsplit

from .errors import ConfigError, Problem
from .yamlfile import (
    Node,
    Problems,
    YamlDocument,
    read_bool,
    read_duration,
    read_int,
    read_percent,
    read_size,
    read_str,
    read_str_list,
)

if TYPE_CHECKING:
    from mesh.config import MeshSpec  # the optional mesh package reads the mesh: section

__all__ = [
    "DEFAULT_ADMIN_LISTEN",
    "DEFAULT_LISTEN",
    "AdminSpec",
    "Config",
    "ConnectionPool",
    "DirectResponse",
    "EndpointGroup",
    "HeaderOps",
    "HealthCheck",
    "Limits",
    "NormalizeSpec",
    "OutlierDetection",
    "Redirect",
    "Retries",
    "Route",
    "RouteMatch",
    "ServiceSpec",
    "ShadowSpec",
    "StringMatch",
    "TLSListener",
    "Timeouts",
    "UpstreamTLS",
    "WeightedBackend",
    "check_config",
    "load_config",
    "parse_config",
    "unreachable_routes",
]

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:9901"

LoadBalancer = Literal["round_robin", "least_request", "random"]
RetryOn = Literal["connect-failure", "reset", "502", "503", "504"]


# -- services (upstream clusters) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health checking (Envoy semantics: thresholds count consecutive results)."""

    path: str = "/healthz"
    interval: float = 5.0
    timeout: float = 1.0
    healthy_threshold: int = 1
    unhealthy_threshold: int = 2
    expected_statuses: tuple[int, int] = (200, 399)  # inclusive range


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Passive ejection (Envoy semantics): an endpoint with ``consecutive_5xx`` 5xx responses (or
    ``consecutive_gateway_errors`` 502/503/504/connect failures) is ejected for
    ``base_ejection * times_ejected``, capped at ``max_ejection``; at most
    ``max_ejection_percent`` of a service's endpoints are ejected at once (but at least one)."""

    consecutive_5xx: int = 5
    consecutive_gateway_errors: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejection_percent: float = 10.0


@dataclass(frozen=True, slots=True)
class Retries:
    """``attempts`` is the number of retries after the first try (Istio semantics)."""

    attempts: int = 2
    per_try_timeout: float | None = None
    retry_on: tuple[RetryOn, ...] = ("connect-failure",)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0  # Envoy's connect_timeout default
    request: float | None = 15.0  # Envoy's route timeout default; None = no timeout


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    max_connections: int = 1024  # per service; beyond it requests wait up to connect timeout, then 503
    idle_timeout: float = 4.0  # keep below the backends' keep-alive (uvicorn: 5 s)


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """TLS origination to an https:// endpoint."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    verify: bool = True


@dataclass(frozen=True, slots=True)
class EndpointGroup:
    """A zone / cluster of endpoints. Groups with the lowest ``priority`` that have a healthy
    endpoint get traffic, split by ``weight``; weight 0 drains a group."""

    name: str
    endpoints: tuple[str, ...]  # "http://127.0.0.1:8001" / "https://..."
    weight: int = 100
    priority: int = 0


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    groups: tuple[EndpointGroup, ...]
    load_balancer: LoadBalancer = "round_robin"
    health_check: HealthCheck | None = None
    outlier_detection: OutlierDetection | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    retries: Retries = field(default_factory=Retries)
    connection_pool: ConnectionPool = field(default_factory=ConnectionPool)
    tls: UpstreamTLS | None = None
    identity: str | None = None  # expected SPIFFE ID of the peer (mesh)


# -- routes --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StringMatch:
    """How a header / query value matches. Exactly one kind."""

    kind: Literal["exact", "prefix", "regex", "present", "absent"]
    value: str = ""
    case_sensitive: bool = True  # False for hosts; header *values* are case-sensitive like Istio


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """All conditions must hold (AND). A route's ``matches`` are ORed, like Istio's match[]."""

    hosts: tuple[str, ...] = ()  # lower-case; "*.shop.local" wildcards; () = any host
    path_kind: Literal["exact", "prefix", "regex"] = "prefix"
    path: str = "/"
    methods: tuple[str, ...] = ()  # upper-case; () = any
    headers: tuple[tuple[str, StringMatch], ...] = ()  # header names lower-case
    query: tuple[tuple[str, StringMatch], ...] = ()


@dataclass(frozen=True, slots=True)
class WeightedBackend:
    service: str
    weight: int = 100


@dataclass(frozen=True, slots=True)
class Redirect:
    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None  # replaces the whole path
    prefix: str | None = None  # replaces the matched prefix
    code: int = 301


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int = 200
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class HeaderOps:
    """Header manipulation: ``set`` replaces, ``add`` appends, ``remove`` deletes (names lower-case)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.set or self.add or self.remove)


@dataclass(frozen=True, slots=True)
class Route:
    """One entry of ``routes:``; the first route whose any ``matches`` entry matches wins.

    Exactly one action: ``backends`` (one or weighted), ``redirect`` or ``direct_response``.
    """

    name: str
    matches: tuple[RouteMatch, ...]
    backends: tuple[WeightedBackend, ...] = ()
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    rewrite_prefix: str | None = None
    request_headers: HeaderOps = field(default_factory=HeaderOps)
    response_headers: HeaderOps = field(default_factory=HeaderOps)
    timeout: float | None = None  # overrides the service's request timeout
    retries: Retries | None = None  # overrides the service's retries
    line: int = 0  # where the route is declared, for messages


# -- listener, admin, limits --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TLSListener:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # when set, client certificates are requested and verified


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_headers: int = 60 * 1024  # Envoy's max_request_headers_kb default -> 431 beyond
    max_request_body: int | None = None  # bytes; None = unlimited (streamed) -> 413 beyond
    max_concurrent_requests: int = 4096  # -> 503 beyond
    header_timeout: float = 10.0  # a client must send its whole request head within this
    max_response_body_buffer: int = 64 * 1024  # bound of any buffering the facade does itself
    # Header fields in a request head -> 431 beyond; upstream response heads -> 502 (Envoy's max_headers_count).
    max_request_headers_count: int = 100


@dataclass(frozen=True, slots=True)
class AdminSpec:
    listen: str = DEFAULT_ADMIN_LISTEN
    token: str | None = None  # mutations need "Authorization: Bearer <token>"; env FACADE_ADMIN_TOKEN


@dataclass(frozen=True, slots=True)
class NormalizeSpec:
    merge_slashes: bool = True
    reject_encoded_slash: bool = True  # %2F / %5C in a path -> 400 (Envoy: REJECT_REQUEST)
    semicolons: Literal["reject", "keep"] = "reject"  # ";" in a path -> 400 (Spring's StrictHttpFirewall)


@dataclass(frozen=True, slots=True)
class ShadowSpec:
    """The ``shadow:`` section: limits and defaults of the shadow sender (``facade.shadow``).

    None everywhere means "the sender's default" (``facade.shadow.DEFAULT_*``), so the defaults
    live in one place. ``redact_headers`` are redacted *in addition to* the built-in ones
    (Authorization, Cookie, Set-Cookie, Proxy-Authorization): a config cannot un-redact them.
    """

    concurrency: int | None = None
    queue_size: int | None = None
    max_body: int | None = None  # bytes
    timeout: float | None = None  # seconds
    max_queued_bytes: int | None = None
    host_suffix: bool | None = None
    learn_noise: bool | None = None
    ring_size: int | None = None
    redact_headers: tuple[str, ...] = ()
    redact_fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # the file path it was read from
    sha256: str  # of the file's bytes
    listen: str = DEFAULT_LISTEN
    tls: TLSListener | None = None
    admin: AdminSpec = field(default_factory=AdminSpec)
    limits: Limits = field(default_factory=Limits)
    normalize: NormalizeSpec = field(default_factory=NormalizeSpec)
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-* we keep and extend
    services: tuple[ServiceSpec, ...] = ()
    routes: tuple[Route, ...] = ()
    state_dir: str = ".facade"
    # Where migration state lives: None = the SQLite file under state_dir; a postgresql:// URL = shared
    # by every replica (facade.migration.pgstore, docs/replicas.md).
    state_store: str | None = None
    migrations_dir: str | None = None
    access_log: bool = False
    mark_responses: bool = False  # add x-facade-backend / x-facade-step to responses (load tests, demos)
    # Request header names with "_": drop (default; nginx's underscores_in_headers off), reject (400), allow.
    headers_with_underscores: Literal["drop", "reject", "allow"] = "drop"
    # Error bodies name route, backend and the failure's detail only for loopback clients when True.
    debug_error_details: bool = False
    mesh: MeshSpec | None = None  # when the config has a ``mesh:`` section
    shadow: ShadowSpec = field(default_factory=ShadowSpec)
    warnings: tuple[Problem, ...] = ()  # non-fatal findings (shadowed routes, no routes, ...)
    workers: int | Literal["auto"] = 1  # processes serving clients (docs/workers.md); "auto": one per core

    def service(self, name: str) -> ServiceSpec | None:
        for s in self.services:
            if s.name == name:
                return s
        return None


# == parsing ===============================================================================
#
# YAML -> Config in one pass that never stops at the first error: every reader records a
# Problem and returns a default, so `facade validate` lists everything wrong in the file.

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
)
_ACTIONS = ("backend", "backends", "redirect", "direct_response")
_RETRY_ON: tuple[str, ...] = ("connect-failure", "reset", "502", "503", "504")
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_STRING_MATCH_KINDS = ("exact", "prefix", "regex", "present", "absent")

_SERVICE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]*[a-z0-9])?$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token
_LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d+)$")
_HOST_LABELS_RE = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
_SPIFFE_RE = re.compile(r"^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)+$")  # only when the mesh is not installed


def _workload_id_problem(text: str) -> str | None:
    """Why ``text`` cannot be a workload's SPIFFE ID (the mesh's own rules when installed), else None."""
    try:
        from mesh.spiffe import InvalidSpiffeId, SpiffeId
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


def parse_config(doc: YamlDocument, *, env: Mapping[str, str] | None = None) -> tuple[Config | None, list[Problem]]:
    """Validate a loaded ``facade.yaml`` and build the frozen Config.

    Returns ``(config, problems)`` with every error and warning in file order; ``config`` is
    None when any problem is an error. Relative paths resolve against the file's directory.
    ``env`` (default ``os.environ``) supplies ``FACADE_ADMIN_TOKEN`` when the file has no token.
    The only I/O is checking that referenced certificate files exist.
    """
    problems = Problems(doc.file)
    ctx = _Ctx(problems, os.path.dirname(doc.file), os.environ if env is None else env)
    f = doc.root.fields(problems, _TOP_FIELDS)

    listen = _read_listen(f.get("listen"), problems, DEFAULT_LISTEN)
    tls = _read_listener_tls(f.get("tls"), ctx)
    admin = _read_admin(f.get("admin"), ctx)
    state_dir = ctx.path(_nonempty_str(f.get("state_dir"), problems) or ".facade")
    state_store = _read_state_store(f.get("state_store"), problems)
    migrations = _nonempty_str(f.get("migrations"), problems)
    trusted = _read_cidrs(f.get("trusted_proxies"), problems)
    access_log = read_bool(f.get("access_log"), problems, default=False)
    mark_responses = read_bool(f.get("mark_responses"), problems, default=False)
    underscores = cast(
        Literal["drop", "reject", "allow"],
        read_str(f.get("headers_with_underscores"), problems, default="drop", choices=("drop", "reject", "allow")),
    )
    debug_error_details = read_bool(f.get("debug_error_details"), problems, default=False)
    limits = _read_limits(f.get("limits"), problems)
    normalize = _read_normalize(f.get("normalize"), problems)
    services = _read_services(f.get("services"), ctx)
    # Routes may name any declared service, even one with errors of its own (reported there).
    services_node = f.get("services")
    declared = [name for name, _ in services_node.items()] if services_node is not None else []
    routes = _read_routes(f.get("routes"), ctx, declared, doc.root)
    mesh = _read_mesh(f.get("mesh"), problems, declared, ctx)
    shadow_spec = _read_shadow(f.get("shadow"), problems)
    workers = _read_workers(f.get("workers"), problems)

    if not problems.errors:
        for later, earlier in unreachable_routes([r for r, _ in routes]):
            route, node = routes[later]
            shadow = routes[earlier][0]
            problems.warn(
                node,
                f"route {route.name!r} can never match: route {shadow.name!r} (line {shadow.line}) matches first",
            )
    found = problems.sorted()
    if problems.errors:
        return None, found
    config = Config(
        source=doc.file,
        sha256=hashlib.sha256(doc.text.encode("utf-8")).hexdigest(),
        listen=listen,
        tls=tls,
        admin=admin,
        limits=limits,
        normalize=normalize,
        trusted_proxies=tuple(trusted),
        services=tuple(services),
        routes=tuple(r for r, _ in routes),
        state_dir=state_dir,
        state_store=state_store,
        migrations_dir=ctx.path(migrations) if migrations is not None else None,
        access_log=access_log,
        mark_responses=mark_responses,
        headers_with_underscores=underscores,
        debug_error_details=debug_error_details,
        mesh=mesh,
        shadow=shadow_spec,
        warnings=tuple(p for p in found if p.severity == "warning"),
        workers=workers,
    )
    return config, found


MAX_WORKERS = 64


def parse_workers(value: object, cores: int | None = None) -> int:
    """The number of worker processes ``value`` asks for: an integer 1..64 or ``"auto"`` (one per core).

    Shared by ``workers:`` and ``facade serve --workers``; raises ``ValueError`` naming what is wrong.
    """
    if value == "auto":
        return max(1, min(MAX_WORKERS, cores if cores is not None else os.cpu_count() or 1))
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"workers must be an integer 1..{MAX_WORKERS} or 'auto', got {value!r}")  # noqa: TRY004
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"workers must be within 1..{MAX_WORKERS} (or 'auto'), got {value}")
    return value


def _read_workers(node: Node | None, problems: Problems) -> int | Literal["auto"]:
    """``workers:``: 1..64 or ``auto`` (``parse_workers``)."""
    if node is None:
        return 1
    value = node.value if node.is_scalar else None
    try:
        parse_workers(value)
    except ValueError as exc:
        problems.error(node, str(exc))
        return 1
    return "auto" if value == "auto" else int(value)  # type: ignore[arg-type]


def _read_shadow(node: Node | None, problems: Problems) -> ShadowSpec:
    """The ``shadow:`` section (sender limits and defaults); ranges checked with positions."""
    if node is None or node.is_null:
        return ShadowSpec()
    f = node.fields(problems, _SHADOW_FIELDS)
    redact = f.get("redact")
    redact_fields: dict[str, Node] = {}
    if redact is not None and not redact.is_null:
        redact_fields = redact.fields(problems, ("headers", "fields"))
    headers = read_str_list(redact_fields.get("headers"), problems, default=[])
    for element, name in zip((redact_fields["headers"].elements() if "headers" in redact_fields else []), headers,
                             strict=False):
        if not _TOKEN_RE.match(name):
            problems.error(element, f"not a header name: {name!r}")
    fields = read_str_list(redact_fields.get("fields"), problems, default=[])
    from .diff import Redaction  # pure; imported here so reading a config stays light

    for element, name in zip((redact_fields["fields"].elements() if "fields" in redact_fields else []), fields,
                             strict=False):
        try:
            if not name:
                raise ValueError("must not be empty")
            Redaction.of(fields=[name])
        except ValueError as exc:  # the diff engine's own message, at the field's position
            problems.error(element, str(exc))
    max_body = read_size(f.get("max_body"), problems)
    max_queued = read_size(f.get("max_queued_bytes"), problems)
    if max_body is not None and max_queued is not None and 0 < max_queued < max_body:
        problems.warn(f["max_queued_bytes"], f"smaller than max_body ({max_body} bytes): a full-size copy never fits")
    timeout = read_duration(f.get("timeout"), problems, min=0.001)
    return ShadowSpec(
        concurrency=read_int(f.get("concurrency"), problems, min=1, max=_SHADOW_MAX_CONCURRENCY),
        queue_size=read_int(f.get("queue_size"), problems, min=0, max=_SHADOW_MAX_QUEUE),
        max_body=max_body,
        timeout=timeout,
        max_queued_bytes=max_queued,
        host_suffix=read_bool(f.get("host_suffix"), problems),
        learn_noise=read_bool(f.get("learn_noise"), problems),
        ring_size=read_int(f.get("ring_size"), problems, min=1, max=_SHADOW_MAX_RING),
        redact_headers=tuple(h.lower() for h in headers),
        redact_fields=tuple(fields),
    )


def _read_mesh(node: Node | None, problems: Problems, services: list[str], ctx: _Ctx) -> MeshSpec | None:
    """The ``mesh:`` section is the mesh package's to read (identity, mTLS modes, policies)."""
    if node is None or node.is_null:
        return None
    try:
        from mesh.config import parse_mesh
    except ModuleNotFoundError:
        problems.error(node, "the mesh feature is not installed in this build")
        return None
    return parse_mesh(node, problems, services=services, resolve_path=ctx.path)


def check_config(path: str) -> tuple[Config | None, list[Problem]]:
    """Read and validate ``path``; unreadable files and YAML syntax errors become Problems."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return None, [Problem(path, 1, 1, "", f"cannot read file: {exc.strerror or exc}")]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [Problem(path, 1, 1, "", f"file is not UTF-8: {exc.reason}")]
    try:
        doc = YamlDocument.load(text, path)
    except ConfigError as exc:
        return None, list(exc.problems)
    return parse_config(doc)


def load_config(path: str) -> Config:
    """Read and validate ``path``. Raises ConfigError with every problem when any is an error;
    warnings of a valid file are on ``Config.warnings``."""
    config, problems = check_config(path)
    if config is None:
        raise ConfigError(problems)
    return config


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
    return value


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


def _read_listen(node: Node | None, problems: Problems, default: str) -> str:
    value = read_str(node, problems)
    if node is None or value is None:
        return default
    m = _LISTEN_RE.match(value)
    if m is None:
        problems.error(node, f"must be host:port (e.g. 127.0.0.1:8080 or [::1]:8080), got {value!r}")
        return default
    if m.group("v6") is not None:
        try:
            ipaddress.IPv6Address(m.group("v6"))
        except ValueError:
            problems.error(node, f"invalid IPv6 address {m.group('v6')!r}")
            return default
    port = int(m.group("port"))
    if port > 65535:
        problems.error(node, f"port must be 0-65535, got {port}")
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


# -- listener, admin, limits -------------------------------------------------------------------


def _read_listener_tls(node: Node | None, ctx: _Ctx) -> TLSListener | None:
    if node is None or node.is_null:
        return None
    f = node.fields(ctx.problems, ("cert", "key", "client_ca"), required=("cert", "key"))
    cert = ctx.existing_file(f.get("cert"))
    key = ctx.existing_file(f.get("key"))
    client_ca = ctx.existing_file(f.get("client_ca"))
    if cert is None or key is None:
        return None
    return TLSListener(cert_file=cert, key_file=key, client_ca_file=client_ca)


def _read_admin(node: Node | None, ctx: _Ctx) -> AdminSpec:
    listen = DEFAULT_ADMIN_LISTEN
    token: str | None = None
    if node is not None and node.is_scalar and not node.is_null:
        listen = _read_listen(node, ctx.problems, DEFAULT_ADMIN_LISTEN)
    elif node is not None and not node.is_null:
        f = node.fields(ctx.problems, ("listen", "token"))
        listen = _read_listen(f.get("listen"), ctx.problems, DEFAULT_ADMIN_LISTEN)
        token = _nonempty_str(f.get("token"), ctx.problems)
    if token is None:
        token = ctx.env.get(ENV_ADMIN_TOKEN) or None  # the file wins; the environment fills in
    return AdminSpec(listen=listen, token=token)


def _read_limits(node: Node | None, problems: Problems) -> Limits:
    d = Limits()
    if node is None or node.is_null:
        return d
    f = node.fields(
        problems,
        ("max_request_headers", "max_request_headers_count", "max_request_body", "max_concurrent_requests", "header_timeout"),
    )
    headers = read_size(f.get("max_request_headers"), problems, default=d.max_request_headers)
    if headers < 1024 and "max_request_headers" in f:
        problems.error(f["max_request_headers"], f"must be at least 1KiB, got {headers} bytes")
        headers = d.max_request_headers
    body_node = f.get("max_request_body")
    body = None if body_node is None or body_node.is_null else read_size(body_node, problems, default=None)
    return Limits(
        max_request_headers=headers,
        max_request_body=body,
        max_concurrent_requests=read_int(
            f.get("max_concurrent_requests"), problems, default=d.max_concurrent_requests, min=1
        ),
        header_timeout=_positive_duration(f.get("header_timeout"), problems, d.header_timeout),
        max_request_headers_count=read_int(
            f.get("max_request_headers_count"), problems, default=d.max_request_headers_count, min=1, max=10_000
        ),
    )


def _read_normalize(node: Node | None, problems: Problems) -> NormalizeSpec:
    d = NormalizeSpec()
    if node is None or node.is_null:
        return d
    f = node.fields(problems, ("merge_slashes", "reject_encoded_slash", "semicolons"))
    return NormalizeSpec(
        merge_slashes=read_bool(f.get("merge_slashes"), problems, default=d.merge_slashes),
        reject_encoded_slash=read_bool(f.get("reject_encoded_slash"), problems, default=d.reject_encoded_slash),
        semicolons=cast(
            Literal["reject", "keep"],
            read_str(f.get("semicolons"), problems, default=d.semicolons, choices=("reject", "keep")),
        ),
    )


# -- services ------------------------------------------------------------------------------------


def _read_services(node: Node | None, ctx: _Ctx) -> list[ServiceSpec]:
    problems = ctx.problems
    out: list[ServiceSpec] = []
    if node is None or node.is_null:
        return out
    if not node.is_mapping:
        problems.error(node, f"must be a mapping of service name -> service, got {node.kind}")
        return out
    seen: set[str] = set()
    for name, body in node.items():
        key = node.key_node(name) or body
        if name in seen:
            problems.error(key, "duplicate service name", path=body.path)
            continue
        seen.add(name)
        if len(name) > 63 or not _SERVICE_NAME_RE.match(name):
            problems.error(
                key,
                f"invalid service name {name!r}: use at most 63 lower-case letters, digits, '-' and '_', "
                "starting and ending with a letter or digit",
                path=body.path,
            )
        spec = _read_service(name, body, ctx)
        if spec is not None:
            out.append(spec)
    return out


def _read_service(name: str, node: Node, ctx: _Ctx) -> ServiceSpec | None:
    problems = ctx.problems
    before = len(problems.errors)
    f = node.fields(problems, _SERVICE_FIELDS)
    if not node.is_mapping:
        return None
    groups: list[EndpointGroup] = []
    if "endpoints" in f and "groups" in f:
        problems.error(
            node.key_node("groups") or f["groups"], "give either endpoints or groups, not both", path=f["groups"].path
        )
    elif "endpoints" in f:
        groups.append(EndpointGroup(name="default", endpoints=_read_endpoints(f["endpoints"], problems)))
    elif "groups" in f:
        groups = _read_groups(f["groups"], problems)
    else:
        problems.error(node, "needs endpoints (or groups)", path=f"{node.path}.endpoints")
    endpoints = [e for g in groups for e in g.endpoints]

    tls_node = f.get("tls")
    tls = _read_upstream_tls(tls_node, ctx)
    if tls_node is not None and endpoints and not any(e.startswith("https://") for e in endpoints):
        problems.error(
            node.key_node("tls") or tls_node,
            "tls applies to https:// endpoints; this service has none",
            path=tls_node.path,
        )
    identity = _nonempty_str(f.get("identity"), problems)
    reason = _workload_id_problem(identity) if identity is not None else None
    if identity is not None and reason is not None:
        problems.error(
            f["identity"],
            f"must be a SPIFFE ID like spiffe://shop.local/ns/shop/sa/catalog, got {identity!r}"
            + (f" ({reason})" if identity.startswith("spiffe://") else ""),
        )
    spec = ServiceSpec(
        name=name,
        groups=tuple(groups),
        load_balancer=cast(
            LoadBalancer,
            read_str(
                f.get("load_balancer"),
                problems,
                default="round_robin",
                choices=("round_robin", "least_request", "random"),
            ),
        ),
        health_check=_read_health_check(f.get("health_check"), problems),
        outlier_detection=_read_outlier(f.get("outlier_detection"), problems),
        timeouts=_read_timeouts(f.get("timeouts"), problems),
        retries=_read_retries(f.get("retries"), problems) or Retries(),
        connection_pool=_read_pool(f.get("connection_pool"), problems),
        tls=tls,
        identity=identity,
    )
    return spec if len(problems.errors) == before else None


def _read_endpoints(node: Node, problems: Problems) -> tuple[str, ...]:
    urls = read_str_list(node, problems, default=[], allow_scalar=False)
    if node.is_list and not node.elements():
        problems.error(node, "must list at least one endpoint")
    out: list[str] = []
    for element in node.elements():
        url = _endpoint_url(element, problems)
        if url is None:
            continue
        if url in out:
            problems.error(element, f"duplicate endpoint {url}")
            continue
        out.append(url)
    del urls  # read only for its type errors
    return tuple(out)


def _endpoint_url(node: Node, problems: Problems) -> str | None:
    """``http(s)://host[:port]`` -> its canonical form (lower-case scheme and host, no trailing slash)."""
    raw = node.value if node.is_scalar else None
    if not isinstance(raw, str):
        return None  # already reported by read_str_list
    parts = urlsplit(raw.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        problems.error(node, f"endpoint must be http://host:port or https://host:port, got {raw!r}")
        return None
    if parts.username is not None or parts.password is not None:
        problems.error(node, f"endpoint must not carry credentials, got {raw!r}")
        return None
    if not parts.hostname:
        problems.error(node, f"endpoint has no host: {raw!r}")
        return None
    try:
        port = parts.port
    except ValueError:
        problems.error(node, f"endpoint port must be 1-65535, got {raw!r}")
        return None
    if port == 0:
        problems.error(node, f"endpoint port must be 1-65535, got {raw!r}")
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or raw.strip().endswith("?"):
        problems.error(node, f"endpoint must not have a path or query, got {raw!r}")
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def _read_groups(node: Node, problems: Problems) -> list[EndpointGroup]:
    out: list[EndpointGroup] = []
    if not node.is_list:
        problems.error(node, f"must be a list of endpoint groups, got {node.kind}")
        return out
    if not node.elements():
        problems.error(node, "must list at least one group")
        return out
    names: dict[str, int] = {}
    for element in node.elements():
        f = element.fields(problems, ("name", "endpoints", "weight", "priority"), required=("name", "endpoints"))
        name = _nonempty_str(f.get("name"), problems)
        if name is not None and name in names:
            problems.error(f["name"], f"duplicate group name {name!r} (first at line {names[name]})")
            name = None
        if name is not None:
            names[name] = element.line
        endpoints = _read_endpoints(f["endpoints"], problems) if "endpoints" in f else ()
        weight = read_int(f.get("weight"), problems, default=100, min=0)
        priority = read_int(f.get("priority"), problems, default=0, min=0)
        if name is not None and endpoints:
            out.append(EndpointGroup(name=name, endpoints=endpoints, weight=weight, priority=priority))
    if out and all(g.weight == 0 for g in out):
        problems.warn(node, "every group has weight 0: no endpoint gets traffic")
    return out


def _read_health_check(node: Node | None, problems: Problems) -> HealthCheck | None:
    if node is None or node.is_null:
        return None
    d = HealthCheck()
    f = node.fields(problems, ("path", "interval", "timeout", "healthy_threshold", "unhealthy_threshold"))
    path = _read_abs_path(f.get("path"), problems) or d.path
    return HealthCheck(
        path=path,
        interval=_positive_duration(f.get("interval"), problems, d.interval),
        timeout=_positive_duration(f.get("timeout"), problems, d.timeout),
        healthy_threshold=read_int(f.get("healthy_threshold"), problems, default=d.healthy_threshold, min=1),
        unhealthy_threshold=read_int(f.get("unhealthy_threshold"), problems, default=d.unhealthy_threshold, min=1),
    )


def _read_outlier(node: Node | None, problems: Problems) -> OutlierDetection | None:
    if node is None or node.is_null:
        return None
    d = OutlierDetection()
    f = node.fields(
        problems,
        ("consecutive_5xx", "consecutive_gateway_errors", "base_ejection", "max_ejection", "max_ejection_percent"),
    )
    base = _positive_duration(f.get("base_ejection"), problems, d.base_ejection)
    longest = _positive_duration(f.get("max_ejection"), problems, max(d.max_ejection, base))
    if "max_ejection" in f and longest < base:
        problems.error(f["max_ejection"], f"must be at least base_ejection ({base:g}s)")
    return OutlierDetection(
        consecutive_5xx=read_int(f.get("consecutive_5xx"), problems, default=d.consecutive_5xx, min=1),
        consecutive_gateway_errors=read_int(
            f.get("consecutive_gateway_errors"), problems, default=d.consecutive_gateway_errors, min=1
        ),
        base_ejection=base,
        max_ejection=longest,
        max_ejection_percent=read_percent(f.get("max_ejection_percent"), problems, default=d.max_ejection_percent),
    )


def _read_timeouts(node: Node | None, problems: Problems) -> Timeouts:
    d = Timeouts()
    if node is None or node.is_null:
        return d
    f = node.fields(problems, ("connect", "request"))
    return Timeouts(
        connect=_positive_duration(f.get("connect"), problems, d.connect),
        request=_optional_duration(f.get("request"), problems, d.request),
    )


def _read_retries(node: Node | None, problems: Problems) -> Retries | None:
    if node is None or node.is_null:
        return None
    d = Retries()
    f = node.fields(problems, ("attempts", "per_try_timeout", "retry_on"))
    retry_on: list[str] = []
    on = f.get("retry_on")
    if on is not None and not on.is_list:
        problems.error(on, f"must be a list of: {', '.join(_RETRY_ON)}")
    for element in on.elements() if on is not None else []:
        value = read_str(element, problems, default=None)  # 503 may be written as a number
        if value is None:
            continue
        if value not in _RETRY_ON:
            hint = difflib.get_close_matches(value, _RETRY_ON, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            problems.error(element, f"must be one of {', '.join(_RETRY_ON)}, got {value!r}{extra}")
        elif value not in retry_on:
            retry_on.append(value)
    return Retries(
        attempts=read_int(f.get("attempts"), problems, default=d.attempts, min=0, max=10),
        per_try_timeout=_optional_duration(f.get("per_try_timeout"), problems, d.per_try_timeout),
        retry_on=cast(tuple[RetryOn, ...], tuple(retry_on)) if on is not None else d.retry_on,
    )


def _read_pool(node: Node | None, problems: Problems) -> ConnectionPool:
    d = ConnectionPool()
    if node is None or node.is_null:
        return d
    f = node.fields(problems, ("max_connections", "idle_timeout"))
    return ConnectionPool(
        max_connections=read_int(f.get("max_connections"), problems, default=d.max_connections, min=1),
        idle_timeout=_positive_duration(f.get("idle_timeout"), problems, d.idle_timeout),
    )


def _read_upstream_tls(node: Node | None, ctx: _Ctx) -> UpstreamTLS | None:
    if node is None or node.is_null:
        return None
    problems = ctx.problems
    f = node.fields(problems, ("ca", "cert", "key", "server_name", "verify"))
    cert = ctx.existing_file(f.get("cert"))
    key = ctx.existing_file(f.get("key"))
    if ("cert" in f) != ("key" in f):
        missing = "key" if "cert" in f else "cert"
        problems.error(node, "cert and key go together", path=f"{node.path}.{missing}")
    return UpstreamTLS(
        ca_file=ctx.existing_file(f.get("ca")),
        cert_file=cert,
        key_file=key,
        server_name=_nonempty_str(f.get("server_name"), problems),
        verify=read_bool(f.get("verify"), problems, default=True),
    )


# -- routes --------------------------------------------------------------------------------------


def _read_routes(node: Node | None, ctx: _Ctx, services: list[str], root: Node) -> list[tuple[Route, Node]]:
    problems = ctx.problems
    out: list[tuple[Route, Node]] = []
    if node is None or node.is_null:
        problems.warn(node or root, "no routes: every request gets 404", path="routes")
        return out
    if not node.is_list:
        problems.error(node, f"must be a list of routes, got {node.kind}")
        return out
    if not node.elements():
        problems.warn(node, "no routes: every request gets 404")
    names: dict[str, int] = {}
    for element in node.elements():
        route = _read_route(element, ctx, services, names)
        if route is not None:
            out.append((route, element))
    return out


def _read_route(node: Node, ctx: _Ctx, services: list[str], names: dict[str, int]) -> Route | None:
    problems = ctx.problems
    before = len(problems.errors)
    f = node.fields(problems, _ROUTE_FIELDS, required=("name",))
    if not node.is_mapping:
        return None
    name = _nonempty_str(f.get("name"), problems)
    if name is not None and name in names:
        problems.error(f["name"], f"duplicate route name {name!r} (first at line {names[name]})")
    elif name is not None:
        names[name] = node.line
    matches = _read_matches(f.get("match"), problems)

    actions = [k for k in f if k in _ACTIONS]  # file order, so the error points at the second one
    if not actions:
        problems.error(node, "needs one action: backend, backends, redirect or direct_response")
    for extra in actions[1:]:
        problems.error(
            node.key_node(extra) or f[extra],
            f"only one action per route: {actions[0]!r} is already given",
            path=f[extra].path,
        )
    backends: tuple[WeightedBackend, ...] = ()
    if "backend" in f:
        service = _service_ref(f["backend"], problems, services)
        backends = (WeightedBackend(service),) if service is not None else ()
    elif "backends" in f:
        backends = _read_backends(f["backends"], problems, services)
    redirect = _read_redirect(f["redirect"], problems) if "redirect" in f else None
    direct = _read_direct_response(f["direct_response"], problems) if "direct_response" in f else None

    rewrite: str | None = None
    if "rewrite" in f:
        rf = f["rewrite"].fields(problems, ("prefix",), required=("prefix",))
        rewrite = _read_abs_path(rf.get("prefix"), problems)
        where = node.key_node("rewrite") or f["rewrite"]
        if not ("backend" in f or "backends" in f):
            problems.error(where, "rewrite only applies to routes with backend or backends", path=f["rewrite"].path)
        elif any(m.path_kind != "prefix" for m in matches):
            kind = next(m.path_kind for m in matches if m.path_kind != "prefix")
            problems.error(
                where, f"rewrite needs a prefix path match, this route matches by {kind}", path=f["rewrite"].path
            )

    # null or absent: the service's request timeout applies
    timeout = _optional_duration(f.get("timeout"), problems, None)
    route = Route(
        name=name or "",
        matches=matches,
        backends=backends,
        redirect=redirect,
        direct_response=direct,
        rewrite_prefix=rewrite,
        request_headers=_read_header_ops(f.get("request_headers"), problems, _RESERVED_REQUEST_HEADERS),
        response_headers=_read_header_ops(f.get("response_headers"), problems, _RESERVED_RESPONSE_HEADERS),
        timeout=timeout,
        retries=_read_retries(f.get("retries"), problems),
        line=node.line,
    )
    return route if len(problems.errors) == before else None


def _service_ref(node: Node, problems: Problems, services: list[str]) -> str | None:
    name = _nonempty_str(node, problems)
    if name is None:
        return None
    if name not in services:
        hint = difflib.get_close_matches(name, services, n=1)
        if hint:
            extra = f"; did you mean {hint[0]!r}?"
        else:
            extra = f" (services: {', '.join(services)})" if services else " (no services are defined)"
        problems.error(node, f"unknown service {name!r}{extra}")
        return None
    return name


def _read_backends(node: Node, problems: Problems, services: list[str]) -> tuple[WeightedBackend, ...]:
    if not node.is_list or not node.elements():
        problems.error(node, "must be a non-empty list of {service, weight}")
        return ()
    elements = node.elements()
    # Istio: a lone destination takes all traffic; several must state weights that sum to 100.
    default_weight = 100 if len(elements) == 1 else 0
    out: list[WeightedBackend] = []
    total = 0
    weights_ok = True
    for element in elements:
        f = element.fields(problems, ("service", "weight"), required=("service",))
        service = _service_ref(f["service"], problems, services) if "service" in f else None
        weight = read_int(f.get("weight"), problems, default=None, min=0)
        if "weight" in f and weight is None:
            weights_ok = False
        weight = default_weight if weight is None else weight
        total += weight
        if service is not None and any(b.service == service for b in out):
            problems.error(f["service"], f"service {service!r} is listed twice")
        elif service is not None:
            out.append(WeightedBackend(service, weight))
    if len(elements) > 1 and weights_ok and total != 100:
        problems.error(node, f"backend weights must sum to 100, got {total}")
    return tuple(out)


def _read_redirect(node: Node, problems: Problems) -> Redirect | None:
    f = node.fields(problems, ("scheme", "host", "port", "path", "prefix", "code"))
    if not node.is_mapping:
        return None
    if not any(k in f for k in ("scheme", "host", "port", "path", "prefix")):
        problems.error(node, "redirect needs at least one of scheme, host, port, path, prefix")
    if "path" in f and "prefix" in f:
        problems.error(
            node.key_node("prefix") or f["prefix"], "give either path or prefix, not both", path=f["prefix"].path
        )
    code = read_int(f.get("code"), problems, default=301)
    if code not in _REDIRECT_CODES:
        problems.error(f["code"], f"must be one of {', '.join(map(str, _REDIRECT_CODES))}, got {code}")
        code = 301
    host = _nonempty_str(f.get("host"), problems)
    return Redirect(
        scheme=read_str(f.get("scheme"), problems, default=None, choices=("http", "https")),
        host=host.lower() if host else None,
        port=read_int(f.get("port"), problems, default=None, min=1, max=65535),
        path=_read_abs_path(f.get("path"), problems),
        prefix=_read_abs_path(f.get("prefix"), problems),
        code=code,
    )


def _read_direct_response(node: Node, problems: Problems) -> DirectResponse | None:
    d = DirectResponse()
    f = node.fields(problems, ("status", "body", "content_type"))
    if not node.is_mapping:
        return None
    return DirectResponse(
        status=read_int(f.get("status"), problems, default=d.status, min=100, max=599),
        body=read_str(f.get("body"), problems, default=d.body),
        content_type=_nonempty_str(f.get("content_type"), problems) or d.content_type,
    )


# Headers that frame the message or belong to one hop: a rule changing them would desynchronize
# the connection (a Content-Length that lies about the body makes its tail a second request) or
# break keep-alive. Host addresses the request; the upstream must see the one the router matched.
_FRAMING_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}
)
_RESERVED_REQUEST_HEADERS = _FRAMING_HEADERS | {"host"}
_RESERVED_RESPONSE_HEADERS = _FRAMING_HEADERS
_BAD_VALUE_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # RFC 9110 5.5: no CTLs but HTAB


def _read_header_ops(node: Node | None, problems: Problems, reserved: frozenset[str]) -> HeaderOps:
    if node is None or node.is_null:
        return HeaderOps()
    f = node.fields(problems, ("set", "add", "remove"))

    def allowed(header: str | None, at: Node, path: str) -> str | None:
        if header is not None and header in reserved:
            problems.error(at, f"header {header!r} frames or addresses the message: the facade sets it, rules cannot", path=path)
            return None
        return header

    def pairs(n: Node | None) -> tuple[tuple[str, str], ...]:
        if n is None or n.is_null:
            return ()
        if not n.is_mapping:
            problems.error(n, f"must be a mapping of header name -> value, got {n.kind}")
            return ()
        out: list[tuple[str, str]] = []
        for key, value_node in n.items():
            at = n.key_node(key) or value_node
            header = allowed(_header_name(key, at, problems, value_node.path), at, value_node.path)
            value: str | None = read_str(value_node, problems)
            if value is not None:
                if _BAD_VALUE_CHARS.search(value):
                    problems.error(value_node, "header value contains a control character (CR, LF, NUL...)")
                    value = None
                elif not value.isascii():
                    try:
                        value.encode("latin-1")
                    except UnicodeEncodeError:
                        problems.error(value_node, "header value must be ASCII (or latin-1): percent-encode other text")
                        value = None
            if header is not None and value is not None:
                out.append((header, value))
        return tuple(out)

    remove: list[str] = []
    rn = f.get("remove")
    for element in rn.elements() if rn is not None else []:
        value = read_str(element, problems)
        header = _header_name(value, element, problems, element.path) if value is not None else None
        header = allowed(header, element, element.path)
        if header is not None:
            remove.append(header)
    if rn is not None and not rn.is_list and not rn.is_null:
        problems.error(rn, f"must be a list of header names, got {rn.kind}")
    return HeaderOps(set=pairs(f.get("set")), add=pairs(f.get("add")), remove=tuple(remove))


def _header_name(name: str, node: Node, problems: Problems, path: str) -> str | None:
    if not _TOKEN_RE.match(name):
        problems.error(node, f"invalid header name {name!r}", path=path)
        return None
    return name.lower()


def _read_abs_path(node: Node | None, problems: Problems) -> str | None:
    value = _nonempty_str(node, problems)
    if node is None or value is None:
        return None
    if not value.startswith("/"):
        problems.error(node, f"must start with '/', got {value!r}")
        return None
    return value


# -- route matches ---------------------------------------------------------------------------------


def _read_matches(node: Node | None, problems: Problems) -> tuple[RouteMatch, ...]:
    if node is None or node.is_null:
        return (RouteMatch(),)
    if node.is_list:
        if not node.elements():
            problems.error(node, "must not be empty (leave match out to match every request)")
            return (RouteMatch(),)
        return tuple(_read_match(e, problems) for e in node.elements())
    return (_read_match(node, problems),)


def _read_match(node: Node, problems: Problems) -> RouteMatch:
    f = node.fields(problems, ("host", "path", "methods", "headers", "query"))
    hosts = _read_hosts(f.get("host"), problems)
    path_kind, path = _read_path_match(f.get("path"), problems)
    methods: list[str] = []
    mn = f.get("methods")
    for element in mn.elements() if mn is not None and mn.is_list else [mn] if mn is not None else []:
        value = read_str(element, problems)
        if value is None:
            continue
        if not _TOKEN_RE.match(value):
            problems.error(element, f"invalid method {value!r}")
        elif value.upper() not in methods:
            methods.append(value.upper())
    return RouteMatch(
        hosts=hosts,
        path_kind=path_kind,
        path=path,
        methods=tuple(methods),
        headers=_read_value_matches(f.get("headers"), problems, headers=True),
        query=_read_value_matches(f.get("query"), problems, headers=False),
    )


def _read_hosts(node: Node | None, problems: Problems) -> tuple[str, ...]:
    if node is None or node.is_null:
        return ()
    elements = node.elements() if node.is_list else [node]
    out: list[str] = []
    for element in elements:
        value = read_str(element, problems)
        if value is None:
            continue
        host = _canonical_host(value)
        if host is None:
            problems.error(element, f"invalid host {value!r} (expected e.g. shop.local, *.shop.local or *)")
        elif host not in out:
            out.append(host)
    return tuple(out)


def _canonical_host(value: str) -> str | None:
    """Lower-case, without port and trailing dot; None when not a host or host pattern."""
    host = value.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        literal, rest = host[1:end], host[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return None
        return f"[{literal}]"
    if host.count(":") == 1:
        host, port = host.split(":")
        if not port.isdigit():
            return None
    host = host.rstrip(".") if host != "." else host
    if host == "*":
        return host
    labels = host.removeprefix("*.")
    return host if _HOST_LABELS_RE.match(labels) else None


def _read_path_match(node: Node | None, problems: Problems) -> tuple[Literal["exact", "prefix", "regex"], str]:
    if node is None or node.is_null:
        return "prefix", "/"
    f = node.fields(problems, ("prefix", "exact", "regex"))
    given = [k for k, _ in node.items() if k in f and k in ("prefix", "exact", "regex")]
    if node.is_mapping and len(given) != 1:
        if not given:
            problems.error(node, "needs exactly one of prefix, exact, regex")
        for extra in given[1:]:
            problems.error(
                node.key_node(extra) or f[extra],
                f"give only one of prefix, exact, regex ({given[0]!r} is already given)",
                path=f[extra].path,
            )
    if not given:
        return "prefix", "/"
    kind = cast(Literal["exact", "prefix", "regex"], given[0])
    if kind == "regex":
        pattern = _read_regex(f[kind], problems)
        return kind, pattern if pattern is not None else ""
    return kind, _read_abs_path(f[kind], problems) or "/"


def _read_regex(node: Node, problems: Problems) -> str | None:
    pattern = read_str(node, problems)
    if pattern is None:
        return None
    try:
        re.compile(pattern)
    except re.error as exc:
        problems.error(node, f"invalid regex {pattern!r}: {exc}")
        return None
    return pattern


def _read_value_matches(node: Node | None, problems: Problems, *, headers: bool) -> tuple[tuple[str, StringMatch], ...]:
    if node is None or node.is_null:
        return ()
    what = "header" if headers else "query parameter"
    if not node.is_mapping:
        problems.error(node, f"must be a mapping of {what} name -> matcher, got {node.kind}")
        return ()
    out: list[tuple[str, StringMatch]] = []
    for key, value_node in node.items():
        key_node = node.key_node(key) or value_node
        if headers:
            name = _header_name(key, key_node, problems, value_node.path)
        else:
            name = key if key else None
            if name is None:
                problems.error(key_node, "query parameter name must not be empty", path=value_node.path)
        if name is None:
            continue
        if any(n == name for n, _ in out):
            problems.error(key_node, f"{what} {name!r} is matched twice", path=value_node.path)
            continue
        match = _read_string_match(value_node, problems)
        if match is not None:
            out.append((name, match))
    return tuple(out)


def _read_string_match(node: Node, problems: Problems) -> StringMatch | None:
    if node.is_scalar and not node.is_null:
        value = read_str(node, problems)  # a bare string means exact
        return StringMatch("exact", value) if value is not None else None
    f = node.fields(problems, (*_STRING_MATCH_KINDS, "case_sensitive"))
    given = [k for k, _ in node.items() if k in f and k in _STRING_MATCH_KINDS]
    if len(given) != 1:
        if not given and node.is_mapping:
            problems.error(node, f"needs exactly one of {', '.join(_STRING_MATCH_KINDS)}")
        for extra in given[1:]:
            problems.error(
                node.key_node(extra) or f[extra],
                f"give only one matcher ({given[0]!r} is already given)",
                path=f[extra].path,
            )
        return None
    kind = given[0]
    value_node = f[kind]
    # Envoy's StringMatcher.ignore_case, for exact and prefix only (a regex can say (?i) itself).
    case_node = f.get("case_sensitive")
    case_sensitive = read_bool(case_node, problems, default=True)
    if case_node is not None and kind not in ("exact", "prefix"):
        problems.error(
            node.key_node("case_sensitive") or case_node,
            f"applies to exact and prefix only, not {kind}" + (" (use (?i) in the regex)" if kind == "regex" else ""),
            path=case_node.path,
        )
    if kind in ("present", "absent"):
        flag = read_bool(value_node, problems)
        if flag is False:
            other = "absent" if kind == "present" else "present"
            problems.error(value_node, f"must be true (write {other}: true for the opposite)")
        return StringMatch(cast(Literal["present", "absent"], kind)) if flag else None
    if kind == "regex":
        pattern = _read_regex(value_node, problems)
        return StringMatch("regex", pattern) if pattern is not None else None
    value = read_str(value_node, problems)
    if value is None:
        return None
    return StringMatch(cast(Literal["exact", "prefix"], kind), value, case_sensitive=case_sensitive)


# == unreachable routes =====================================================================
#
# A later route is reported only when an earlier route certainly matches every request the
# later one could: same or broader hosts, path and methods, and no header / query condition
# the later route does not also have. Earlier routes are indexed by host and path (like the
# route table itself), so a config with thousands of routes is checked in about linear time.


def unreachable_routes(routes: Sequence[Route]) -> list[tuple[int, int]]:
    """``(later, earlier)`` index pairs: route ``later`` can never match because route ``earlier``
    (the first such) matches every request it could. Conservative: only certain cases."""
    index = _CoverIndex()
    out: list[tuple[int, int]] = []
    for j, route in enumerate(routes):
        common: set[int] | None = None
        for m in route.matches:
            covering = {i for i, em in index.candidates(m) if _match_covers(em, m)}
            common = covering if common is None else common & covering
            if not common:
                break
        if common:
            out.append((j, min(common)))
        for m in route.matches:
            index.add(j, m)
    return out


class _CoverIndex:
    """Earlier match entries by host key, then by exact path / prefix path (regex paths never cover)."""

    def __init__(self) -> None:
        self._buckets: dict[
            str, tuple[dict[str, list[tuple[int, RouteMatch]]], dict[str, list[tuple[int, RouteMatch]]]]
        ] = {}

    def add(self, index: int, m: RouteMatch) -> None:
        if m.path_kind == "regex":
            return
        keys = [""] if (not m.hosts or "*" in m.hosts) else list(m.hosts)
        for key in keys:
            exact, prefix = self._buckets.setdefault(key, ({}, {}))
            (exact if m.path_kind == "exact" else prefix).setdefault(m.path, []).append((index, m))

    def candidates(self, m: RouteMatch) -> list[tuple[int, RouteMatch]]:
        out: list[tuple[int, RouteMatch]] = []
        for key in self._host_keys(m.hosts):
            bucket = self._buckets.get(key)
            if bucket is None:
                continue
            exact, prefix = bucket
            if m.path_kind == "regex":
                out.extend(prefix.get("/", ()))
                continue
            if m.path_kind == "exact":
                out.extend(exact.get(m.path, ()))
            for p in _covering_prefixes(m.path):
                out.extend(prefix.get(p, ()))
        return out

    @staticmethod
    def _host_keys(hosts: tuple[str, ...]) -> list[str]:
        if not hosts or "*" in hosts:
            return [""]
        first = hosts[0]  # an earlier match must cover every host, so covering the first is necessary
        keys = ["", first]
        labels = first[2:].split(".") if first.startswith("*.") else first.split(".")[1:]
        keys.extend("*." + ".".join(labels[i:]) for i in range(len(labels)))
        return keys


def _covering_prefixes(path: str) -> list[str]:
    """Every prefix P that covers ``path`` segment-wise: P == path, or P ends with "/" and path
    starts with P, or path starts with P + "/" (the router's prefix rule)."""
    out = [path]
    i = path.find("/")
    while i >= 0:
        if i > 0:
            out.append(path[:i])
        if i + 1 < len(path):
            out.append(path[: i + 1])
        i = path.find("/", i + 1)
    return out


def _match_covers(earlier: RouteMatch, later: RouteMatch) -> bool:
    if not _hosts_cover(earlier.hosts, later.hosts):
        return False
    if earlier.methods and not (later.methods and set(later.methods) <= set(earlier.methods)):
        return False
    if not set(earlier.headers) <= set(later.headers) or not set(earlier.query) <= set(later.query):
        return False
    if earlier.path_kind == "regex":
        return False
    if earlier.path_kind == "exact":
        return later.path_kind == "exact" and later.path == earlier.path
    if later.path_kind == "regex":
        return earlier.path == "/"
    return earlier.path in _covering_prefixes(later.path)


def _hosts_cover(earlier: tuple[str, ...], later: tuple[str, ...]) -> bool:
    if not earlier or "*" in earlier:
        return True
    if not later or "*" in later:
        return False
    return all(any(_host_covers(e, h) for e in earlier) for h in later)


def _host_covers(earlier: str, host: str) -> bool:
    # "*.x" covers "a.x", "a.b.x" and "*.a.x" (Envoy suffix wildcards), but not "x" itself.
    return earlier == host or (earlier.startswith("*.") and host.endswith(earlier[1:]))
