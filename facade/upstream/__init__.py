"""Upstream pools: load balancing, endpoint groups with failover, active health checks, outlier ejection.

    upstreams = Upstreams(config.services)        # one ServicePool per service
    pool = upstreams.get("catalog")
    ep = pool.pick(exclude=tried)                   # raises UpstreamUnavailable
    ep.begin()
    try:
        resp = await pool.h1.request(ep.address, method, ep.target_for(path_and_query), headers, body)
    finally:
        ep.end()
    pool.report(ep, Outcome.from_status(resp.status))

Modules: ``balancer`` (group and endpoint choice, pure), ``outlier`` (ejection bookkeeping,
pure), ``health`` (threshold state machine + probe loop), ``tls`` (client contexts),
``h1`` (the proxy's HTTP/1.1 client), ``pool`` (one service), ``registry`` (all services, hot reload).
"""

from .balancer import GroupCandidates, choose_group, pick_least_request, pick_random, pick_round_robin
from .health import HealthState, record_check
from .outcome import Outcome
from .outlier import OutlierState
from .pool import Endpoint, ServicePool
from .registry import DEFAULT_DRAIN_GRACE, Upstreams
from .tls import UpstreamTLSError, client_ssl_context

__all__ = [
    "DEFAULT_DRAIN_GRACE",
    "Endpoint",
    "GroupCandidates",
    "HealthState",
    "Outcome",
    "OutlierState",
    "ServicePool",
    "UpstreamTLSError",
    "Upstreams",
    "choose_group",
    "client_ssl_context",
    "pick_least_request",
    "pick_random",
    "pick_round_robin",
    "record_check",
]
