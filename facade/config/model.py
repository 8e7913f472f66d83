"""The configuration's values: frozen dataclasses for services, routes, listeners and limits.

Every value here is immutable and already validated; the rest of the facade never sees raw YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from ..errors import Problem

if TYPE_CHECKING:
    from facade.mesh.config import MeshSpec  # the optional mesh package reads the mesh: section



DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:9901"

LoadBalancer = Literal["round_robin", "least_request", "random", "consistent_hash"]
RetryOn = Literal[
    "connect-failure", "reset", "5xx", "gateway-error", "retriable-4xx", "retriable-status-codes", "502", "503", "504"
]
RateLimitUnit = Literal["second", "minute", "hour"]


# -- services (upstream clusters) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health checking (Envoy semantics: thresholds count consecutive results)."""

    path: str = "/healthz"
    interval: float = 5.0
    timeout: float = 1.0
    healthy_threshold: int = 1
    unhealthy_threshold: int = 2
    # Inclusive ranges; a status in any of them is a success (Envoy's expected_statuses, default 200-399).
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 399),)


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
    # Statistical detectors (Envoy), judged every ``interval`` over the outcomes seen since the last
    # judgement. Success rate: on when ``success_rate_stdev_factor`` is set (Envoy's integer form:
    # 1900 = mean - 1.9 stdev); failure percentage: on when ``failure_percentage_threshold`` is set.
    interval: float = 10.0
    success_rate_stdev_factor: int | None = None
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    failure_percentage_threshold: int | None = None
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50

    @property
    def statistical(self) -> bool:
        """A success-rate or failure-percentage detector is on (the pool counts outcomes per interval)."""
        return self.success_rate_stdev_factor is not None or self.failure_percentage_threshold is not None


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Envoy's retry budget: retries in flight to a service at most ``budget_percent`` % of its
    active requests, but always at least ``min_retry_concurrency``."""

    budget_percent: float = 20.0
    min_retry_concurrency: int = 3


@dataclass(frozen=True, slots=True)
class Retries:
    """``attempts`` is the number of retries after the first try (Istio semantics).

    ``retry_on`` kinds (Envoy's names; docs/upstreams.md, "Retries"): which failures are retried and
    for which methods is decided in ``facade.upstream.retry``. ``retry_budget`` is per service.
    """

    attempts: int = 2
    per_try_timeout: float | None = None
    retry_on: tuple[RetryOn, ...] = ("connect-failure",)
    retriable_status_codes: tuple[int, ...] = ()  # with "retriable-status-codes" in retry_on
    retry_budget: RetryBudget | None = None  # None: retries are bounded by attempts only


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0  # Envoy's connect_timeout default
    request: float | None = 15.0  # Envoy's route timeout default; None = no timeout


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    max_connections: int = 1024  # per service; beyond it requests wait up to connect timeout, then 503
    # Requests waiting for a connection at once (Envoy circuit_breakers max_pending_requests); one
    # more is answered 503 at once instead of waiting for the connect timeout.
    max_pending_requests: int = 1024
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
    # url -> its labels, only for endpoints that carry some (``{url: ..., labels: {version: v2}}``)
    labels: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    def labels_of(self, url: str) -> dict[str, str]:
        return next((dict(pairs) for u, pairs in self.labels if u == url), {})


@dataclass(frozen=True, slots=True)
class Subset:
    """A named slice of a service's endpoints, selected by labels (Istio DestinationRule subsets).

    Routes, weighted backends and migration plans name it ``service/subset``; its endpoints keep
    their health and outlier state, shared with the service and every other subset.
    """

    name: str
    labels: tuple[tuple[str, str], ...]

    def selects(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.labels)


@dataclass(frozen=True, slots=True)
class HashPolicy:
    """Consistent-hash load balancing (Istio ``consistentHash``): exactly one key source.

    ``cookie_ttl`` None issues a session cookie when the request has none; a number is its Max-Age.
    """

    header: str | None = None  # lower-case
    cookie: str | None = None
    cookie_ttl: float | None = None
    source_ip: bool = False


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
    subsets: tuple[Subset, ...] = ()
    hash_policy: HashPolicy | None = None  # with load_balancer "consistent_hash"

    def subset_spec(self, subset: Subset) -> ServiceSpec:
        """The service restricted to one subset's endpoints, named ``service/subset``."""
        groups = []
        for g in self.groups:
            urls = tuple(u for u in g.endpoints if subset.selects(g.labels_of(u)))
            if urls:
                groups.append(replace(g, endpoints=urls, labels=tuple(x for x in g.labels if x[0] in urls)))
        return replace(self, name=f"{self.name}/{subset.name}", groups=tuple(groups), subsets=())


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
class RateLimit:
    """Local rate limiting of one route (Envoy local_ratelimit): a token bucket per key that holds
    ``burst`` tokens and gains ``requests_per_unit`` per ``unit``; a request without a token gets 429.

    ``key``: "route" (one bucket), "client_ip", or "header" with ``header`` naming the header
    (requests without it share one bucket).
    """

    requests_per_unit: int
    unit: RateLimitUnit = "second"
    burst: int = 0  # 0 = requests_per_unit
    key: Literal["route", "client_ip", "header"] = "route"
    header: str = ""  # lower-case, for key "header"

    @property
    def unit_seconds(self) -> float:
        return {"second": 1.0, "minute": 60.0, "hour": 3600.0}[self.unit]

    @property
    def capacity(self) -> int:
        return self.burst or self.requests_per_unit

@dataclass(frozen=True, slots=True)
class FaultDelay:
    fixed: float  # seconds
    percent: float = 100.0  # of the requests; Istio: an unset percentage faults every request


@dataclass(frozen=True, slots=True)
class FaultAbort:
    status: int  # 200-599
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    """Istio's HTTPFaultInjection: a delay, then an abort, each drawn independently per request."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """Istio's CorsPolicy (Envoy's cors filter): ``allow_origins`` are exact / prefix / regex matches."""

    allow_origins: tuple[StringMatch, ...]
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int | None = None  # seconds
    allow_credentials: bool = False


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
    rewrite_prefix: str | None = None  # a prefix match: the prefix; an exact / regex match: the whole path
    rewrite_regex: tuple[str, str] | None = None  # (pattern, substitution): Envoy's regex_rewrite
    rewrite_authority: str | None = None  # the Host sent upstream (Istio rewrite.authority)
    request_headers: HeaderOps = field(default_factory=HeaderOps)
    response_headers: HeaderOps = field(default_factory=HeaderOps)
    timeout: float | None = None  # overrides the service's request timeout
    retries: Retries | None = None  # overrides the service's retries
    rate_limit: RateLimit | None = None  # local rate limiting (facade.ratelimit)
    fault: FaultPolicy | None = None
    cors: CorsPolicy | None = None
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
    sender: str | None = None  # "process" | "inline"; None: process under `facade serve` (docs/shadow.md)


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

    @property
    def backend_names(self) -> list[str]:
        """What a route or a migration plan may name: every service and every ``service/subset``."""
        return [s.name for s in self.services] + [f"{s.name}/{sub.name}" for s in self.services for sub in s.subsets]


