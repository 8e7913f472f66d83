"""The facade's configuration: ``facade.yaml`` -> a frozen ``Config``.

Every value here is immutable and already validated; the rest of the facade never sees
raw YAML.  ``load_config(path)`` returns a Config or raises ConfigError carrying every
problem as ``file:line:col: field.path: message``; ``check_config(path)`` returns the
problems (errors and warnings) without raising.

The package: ``model`` (the frozen values), ``document`` (the top level and small sections,
``check_config``/``load_config``), ``services`` and ``routes`` (their sections), ``reading``
(what every reader shares), ``reachability`` (routes that can never match).
"""

from __future__ import annotations

from .document import MAX_WORKERS, check_config, load_config, parse_config, parse_workers
from .model import (
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_LISTEN,
    AdminSpec,
    Config,
    ConnectionPool,
    CorsPolicy,
    DirectResponse,
    EndpointGroup,
    FaultAbort,
    FaultDelay,
    FaultPolicy,
    HashPolicy,
    HeaderOps,
    HealthCheck,
    Limits,
    LoadBalancer,
    NormalizeSpec,
    OutlierDetection,
    RateLimit,
    Redirect,
    Retries,
    RetryBudget,
    RetryOn,
    Route,
    RouteMatch,
    ServiceSpec,
    ShadowSpec,
    StringMatch,
    Subset,
    Timeouts,
    TLSListener,
    UpstreamTLS,
    WeightedBackend,
)
from .reachability import unreachable_routes
from .reading import ENV_ADMIN_TOKEN

__all__ = [
    "DEFAULT_ADMIN_LISTEN",
    "DEFAULT_LISTEN",
    "ENV_ADMIN_TOKEN",
    "MAX_WORKERS",
    "AdminSpec",
    "Config",
    "ConnectionPool",
    "CorsPolicy",
    "DirectResponse",
    "EndpointGroup",
    "FaultAbort",
    "FaultDelay",
    "FaultPolicy",
    "HashPolicy",
    "HeaderOps",
    "HealthCheck",
    "Limits",
    "LoadBalancer",
    "NormalizeSpec",
    "OutlierDetection",
    "RateLimit",
    "Redirect",
    "Retries",
    "RetryBudget",
    "RetryOn",
    "Route",
    "RouteMatch",
    "ServiceSpec",
    "ShadowSpec",
    "StringMatch",
    "Subset",
    "TLSListener",
    "Timeouts",
    "UpstreamTLS",
    "WeightedBackend",
    "check_config",
    "load_config",
    "parse_config",
    "parse_workers",
    "unreachable_routes",
]
