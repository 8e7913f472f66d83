"""Reading ``services:``: endpoints, groups, health checks, outlier detection, retries, timeouts, pools, TLS.
"""

from __future__ import annotations

import difflib
import re
from typing import cast
from urllib.parse import urlsplit

from ..yamlfile import (
    Node,
    Problems,
    read_bool,
    read_int,
    read_percent,
    read_str,
    read_str_list,
)
from .model import (
    ConnectionPool,
    EndpointGroup,
    HealthCheck,
    LoadBalancer,
    OutlierDetection,
    Retries,
    RetryOn,
    ServiceSpec,
    Timeouts,
    UpstreamTLS,
)
from .reading import (
    _RETRY_ON,
    _SERVICE_FIELDS,
    _SERVICE_NAME_RE,
    _Ctx,
    _nonempty_str,
    _optional_duration,
    _positive_duration,
    _read_abs_path,
    _workload_id_problem,
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
    f = node.fields(
        problems, ("path", "interval", "timeout", "healthy_threshold", "unhealthy_threshold", "expected_statuses")
    )
    path = _read_abs_path(f.get("path"), problems) or d.path
    return HealthCheck(
        expected_statuses=_read_status_ranges(f.get("expected_statuses"), problems) or d.expected_statuses,
        path=path,
        interval=_positive_duration(f.get("interval"), problems, d.interval),
        timeout=_positive_duration(f.get("timeout"), problems, d.timeout),
        healthy_threshold=read_int(f.get("healthy_threshold"), problems, default=d.healthy_threshold, min=1),
        unhealthy_threshold=read_int(f.get("unhealthy_threshold"), problems, default=d.unhealthy_threshold, min=1),
    )


def _read_status_ranges(node: Node | None, problems: Problems) -> tuple[tuple[int, int], ...]:
    """``expected_statuses: [200, 204, "200-299"]``: statuses and inclusive ranges, 100-599 (() when absent or bad)."""
    if node is None or node.is_null:
        return ()
    elements = node.elements() if node.is_list else [node]
    if node.is_list and not elements:
        problems.error(node, "must list at least one status or range (e.g. [200-299, 404])")
    out: list[tuple[int, int]] = []
    for element in elements:
        value = element.value if element.is_scalar else None
        low = high = None
        if isinstance(value, int) and not isinstance(value, bool):
            low = high = value
        elif isinstance(value, str) and re.fullmatch(r"\s*\d{3}\s*-\s*\d{3}\s*", value):
            low, high = (int(part) for part in value.split("-"))
        if low is None or high is None:
            problems.error(element, f"must be a status (200) or an inclusive range (\"200-299\"), got {value!r}")
        elif not (100 <= low <= 599 and 100 <= high <= 599):
            problems.error(element, f"statuses must be 100-599, got {value}")
        elif low > high:
            problems.error(element, f"range {value!r} is empty: its start is above its end")
        else:
            out.append((low, high))
    return tuple(out) if len(out) == len(elements) else ()


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


