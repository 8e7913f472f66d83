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
)
from .model import (
    ConnectionPool,
    EndpointGroup,
    HashPolicy,
    HealthCheck,
    LoadBalancer,
    OutlierDetection,
    Retries,
    RetryBudget,
    RetryOn,
    ServiceSpec,
    Subset,
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
    wire_name_problem,
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


def _declared_subsets(node: Node | None) -> list[str]:
    """``service/subset`` for every subset written down, valid or not (routes may name them; errors are reported once)."""
    out: list[str] = []
    for name, body in node.items() if node is not None and node.is_mapping else []:
        subsets = body.get("subsets") if body.is_mapping else None
        for element in subsets.elements() if subsets is not None and subsets.is_list else []:
            sub = element.get("name") if element.is_mapping else None
            if sub is not None and sub.is_scalar and isinstance(sub.value, str):
                out.append(f"{name}/{sub.value}")
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
        urls, labels = _read_endpoints(f["endpoints"], problems)
        groups.append(EndpointGroup(name="default", endpoints=urls, labels=labels))
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
    load_balancer, hash_policy = _read_load_balancer(f.get("load_balancer"), problems)
    spec = ServiceSpec(
        name=name,
        groups=tuple(groups),
        load_balancer=load_balancer,
        hash_policy=hash_policy,
        subsets=_read_subsets(f.get("subsets"), groups, problems),
        health_check=_read_health_check(f.get("health_check"), problems),
        outlier_detection=_read_outlier(f.get("outlier_detection"), problems),
        timeouts=_read_timeouts(f.get("timeouts"), problems),
        retries=_read_retries(f.get("retries"), problems, per_service=True) or Retries(),
        connection_pool=_read_pool(f.get("connection_pool"), problems),
        tls=tls,
        identity=identity,
    )
    return spec if len(problems.errors) == before else None


def _read_endpoints(node: Node, problems: Problems) -> tuple[tuple[str, ...], tuple[tuple[str, tuple[tuple[str, str], ...]], ...]]:
    """The endpoint URLs, and the labels of those written as ``{url: ..., labels: {k: v}}``."""
    if not node.is_list:
        problems.error(node, f"must be a list of endpoints, got {node.kind}")
        return (), ()
    if not node.elements():
        problems.error(node, "must list at least one endpoint")
    out: list[str] = []
    labelled: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for element in node.elements():
        labels: tuple[tuple[str, str], ...] = ()
        url_node = element
        if element.is_mapping:
            f = element.fields(problems, ("url", "labels"), required=("url",))
            if "url" not in f:
                continue
            url_node = f["url"]
            labels = _read_labels(f.get("labels"), problems)
        elif not element.is_scalar or not isinstance(element.value, str):
            problems.error(element, f"must be a URL or {{url, labels}}, got {element.kind}")
            continue
        url = _endpoint_url(url_node, problems)
        if url is None:
            continue
        if url in out:
            problems.error(url_node, f"duplicate endpoint {url}")
            continue
        out.append(url)
        if labels:
            labelled.append((url, labels))
    return tuple(out), tuple(labelled)


def _read_labels(node: Node | None, problems: Problems) -> tuple[tuple[str, str], ...]:
    """``{version: v2, zone: a}`` -> sorted pairs; keys and values are non-empty strings (numbers read as text)."""
    if node is None or node.is_null:
        return ()
    if not node.is_mapping:
        problems.error(node, f"must be a mapping of label -> value, got {node.kind}")
        return ()
    out: list[tuple[str, str]] = []
    for key, value in node.items():
        text = read_str(value, problems, default=None)
        if text is None or not key:
            if text == "" or not key:
                problems.error(value, "labels need a non-empty name and value")
            continue
        out.append((key, text))
    return tuple(sorted(out))


def _read_subsets(node: Node | None, groups: list[EndpointGroup], problems: Problems) -> tuple[Subset, ...]:
    """``subsets: [{name: v2, labels: {version: v2}}]``; each label must exist on some endpoint."""
    if node is None or node.is_null:
        return ()
    if not node.is_list:
        problems.error(node, f"must be a list of {{name, labels}}, got {node.kind}")
        return ()
    present: dict[str, set[str]] = {}
    for g in groups:
        for _, pairs in g.labels:
            for k, v in pairs:
                present.setdefault(k, set()).add(v)
    out: list[Subset] = []
    names: dict[str, int] = {}
    for element in node.elements():
        f = element.fields(problems, ("name", "labels"), required=("name", "labels"))
        name = _nonempty_str(f.get("name"), problems)
        if name is not None and not _SERVICE_NAME_RE.match(name):
            problems.error(f["name"], f"invalid subset name {name!r}: use lower-case letters, digits, '-' and '_'")
            name = None
        if name is not None and name in names:
            problems.error(f["name"], f"duplicate subset name {name!r} (first at line {names[name]})")
            name = None
        labels = _read_labels(f.get("labels"), problems)
        if "labels" in f and f["labels"].is_mapping and not labels and not f["labels"].items():
            problems.error(f["labels"], "must name at least one label")
        ok = True
        for key, value in labels:
            where = f["labels"].get(key) or f["labels"]
            if key not in present:
                hint = difflib.get_close_matches(key, list(present), n=1)
                known = f"; did you mean {hint[0]!r}?" if hint else (
                    f" (endpoint labels: {', '.join(sorted(present))})" if present else " (no endpoint has labels)"
                )
                problems.error(where, f"no endpoint has the label {key!r}{known}")
                ok = False
            elif value not in present[key]:
                problems.error(where, f"no endpoint has {key}={value} (values: {', '.join(sorted(present[key]))})")
                ok = False
        subset = Subset(name or "", labels)
        if ok and labels and not any(subset.selects(g.labels_of(u)) for g in groups for u in g.endpoints):
            problems.error(f["labels"], "selects no endpoint: no endpoint carries all these labels")
            ok = False
        if name is not None:
            names[name] = element.line
            if ok and labels:
                out.append(subset)
    return tuple(out)


def _read_load_balancer(node: Node | None, problems: Problems) -> tuple[LoadBalancer, HashPolicy | None]:
    """A name (``round_robin``, ``least_request``, ``random``) or ``{consistent_hash: {header | cookie | source_ip}}``."""
    if node is None or not node.is_mapping:
        name = read_str(node, problems, default="round_robin", choices=("round_robin", "least_request", "random"))
        return cast(LoadBalancer, name), None
    f = node.fields(problems, ("consistent_hash",))
    ch = f.get("consistent_hash")
    if ch is None:
        if not node.items():
            problems.error(node, "must be round_robin, least_request, random or {consistent_hash: ...}")
        return "round_robin", None
    keys = ch.fields(problems, ("header", "cookie", "source_ip"))
    if len(keys) != 1:
        problems.error(ch, "needs exactly one of header: NAME, cookie: {name, ttl} or source_ip: true")
        return "consistent_hash", None
    (kind, value), = keys.items()
    if kind == "header":
        header = _nonempty_str(value, problems)
        reason = wire_name_problem(header, "header name") if header else None
        if header and reason:
            problems.error(value, reason)
            return "consistent_hash", None
        return "consistent_hash", HashPolicy(header=header.lower()) if header else None
    if kind == "source_ip":
        if read_bool(value, problems, default=None) is not True:
            problems.error(value, "must be true (or give header / cookie instead)")
            return "consistent_hash", None
        return "consistent_hash", HashPolicy(source_ip=True)
    cf = value.fields(problems, ("name", "ttl"), required=("name",)) if value.is_mapping else {}
    if not value.is_mapping:
        problems.error(value, f"must be a mapping {{name, ttl}}, got {value.kind}")
    cookie = _nonempty_str(cf.get("name"), problems)
    ttl = _optional_duration(cf.get("ttl"), problems, None)
    if cookie is None:
        return "consistent_hash", None
    reason = wire_name_problem(cookie, "cookie name")
    if reason:
        problems.error(cf["name"], reason)
        return "consistent_hash", None
    return "consistent_hash", HashPolicy(cookie=cookie, cookie_ttl=ttl or None)


def _endpoint_url(node: Node, problems: Problems) -> str | None:
    """``http(s)://host[:port]`` -> its canonical form (lower-case scheme and host, no trailing slash)."""
    raw = node.value if node.is_scalar else None
    if not isinstance(raw, str):
        problems.error(node, f"endpoint must be a URL string, got {node.kind}")
        return None
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
        endpoints, labels = _read_endpoints(f["endpoints"], problems) if "endpoints" in f else ((), ())
        weight = read_int(f.get("weight"), problems, default=100, min=0)
        priority = read_int(f.get("priority"), problems, default=0, min=0)
        if name is not None and endpoints:
            out.append(EndpointGroup(name=name, endpoints=endpoints, weight=weight, priority=priority, labels=labels))
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


_OUTLIER_FIELDS = (
    "consecutive_5xx", "consecutive_gateway_errors", "base_ejection", "max_ejection", "max_ejection_percent",
    "interval", "success_rate_stdev_factor", "success_rate_minimum_hosts", "success_rate_request_volume",
    "failure_percentage_threshold", "failure_percentage_minimum_hosts", "failure_percentage_request_volume",
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
    f = node.fields(problems, _OUTLIER_FIELDS)
    base = _positive_duration(f.get("base_ejection"), problems, d.base_ejection)
    longest = _positive_duration(f.get("max_ejection"), problems, max(d.max_ejection, base))
    if "max_ejection" in f and longest < base:
        problems.error(f["max_ejection"], f"must be at least base_ejection ({base:g}s)")
    # Any success_rate_* key turns the success-rate detector on, with Envoy's default factor (1900 = 1.9).
    success_rate = any(k.startswith("success_rate_") for k in f)
    stdev_factor = read_int(f.get("success_rate_stdev_factor"), problems, default=1900, min=1, max=100_000)
    threshold = f.get("failure_percentage_threshold")
    if threshold is None and any(k.startswith("failure_percentage_") for k in f):
        key = next(k for k in f if k.startswith("failure_percentage_"))
        problems.error(f[key], "needs failure_percentage_threshold (the failure percentage detector is off without it)")
    return OutlierDetection(
        consecutive_5xx=read_int(f.get("consecutive_5xx"), problems, default=d.consecutive_5xx, min=1),
        consecutive_gateway_errors=read_int(
            f.get("consecutive_gateway_errors"), problems, default=d.consecutive_gateway_errors, min=1
        ),
        base_ejection=base,
        max_ejection=longest,
        max_ejection_percent=read_percent(f.get("max_ejection_percent"), problems, default=d.max_ejection_percent),
        interval=_positive_duration(f.get("interval"), problems, d.interval),
        success_rate_stdev_factor=stdev_factor if success_rate else None,
        success_rate_minimum_hosts=read_int(
            f.get("success_rate_minimum_hosts"), problems, default=d.success_rate_minimum_hosts, min=1
        ),
        success_rate_request_volume=read_int(
            f.get("success_rate_request_volume"), problems, default=d.success_rate_request_volume, min=1
        ),
        failure_percentage_threshold=read_int(threshold, problems, default=None, min=0, max=100),
        failure_percentage_minimum_hosts=read_int(
            f.get("failure_percentage_minimum_hosts"), problems, default=d.failure_percentage_minimum_hosts, min=1
        ),
        failure_percentage_request_volume=read_int(
            f.get("failure_percentage_request_volume"), problems, default=d.failure_percentage_request_volume, min=1
        ),
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


def _read_retries(node: Node | None, problems: Problems, *, per_service: bool = False) -> Retries | None:
    if node is None or node.is_null:
        return None
    d = Retries()
    allowed = ("attempts", "per_try_timeout", "retry_on", "retriable_status_codes", "retry_budget")
    f = node.fields(problems, allowed)
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
            if value.isdigit():
                extra = f"; for other statuses use retriable-status-codes with retriable_status_codes: [{value}]"
            problems.error(element, f"must be one of {', '.join(_RETRY_ON)}, got {value!r}{extra}")
        elif value not in retry_on:
            retry_on.append(value)
    if on is not None and on.is_list and not on.elements():
        # Envoy's empty retry_on: nothing is retried, whatever attempts says; likely meant the default.
        problems.warn(on, "an empty retry_on retries nothing (attempts has no effect); leave it out for the "
                          "default [connect-failure], or write attempts: 0")
    codes = _read_status_codes(f.get("retriable_status_codes"), problems)
    if "retriable_status_codes" in f and "retriable-status-codes" not in retry_on:
        problems.error(
            node.key_node("retriable_status_codes") or f["retriable_status_codes"],
            "applies only with retriable-status-codes in retry_on",
            path=f["retriable_status_codes"].path,
        )
    if "retriable-status-codes" in retry_on and not codes and "retriable_status_codes" not in f:
        problems.error(
            on or node, "retriable-status-codes needs retriable_status_codes: [...] (e.g. [503, 429])",
            path=f"{node.path}.retriable_status_codes",
        )
    budget_node = f.get("retry_budget")
    budget = _read_retry_budget(budget_node, problems)
    if budget_node is not None and not per_service:
        problems.error(
            node.key_node("retry_budget") or budget_node,
            "retry_budget is per service (services.<name>.retries.retry_budget): every route to it shares it",
            path=budget_node.path,
        )
    return Retries(
        attempts=read_int(f.get("attempts"), problems, default=d.attempts, min=0, max=10),
        per_try_timeout=_optional_duration(f.get("per_try_timeout"), problems, d.per_try_timeout),
        retry_on=cast(tuple[RetryOn, ...], tuple(retry_on)) if on is not None else d.retry_on,
        retriable_status_codes=codes,
        retry_budget=budget,
    )


def _read_status_codes(node: Node | None, problems: Problems) -> tuple[int, ...]:
    if node is None or node.is_null:
        return ()
    if not node.is_list:
        problems.error(node, f"must be a list of statuses 400-599 (e.g. [503, 429]), got {node.kind}")
        return ()
    if not node.elements():
        problems.error(node, "must list at least one status (e.g. [503, 429])")
    codes: list[int] = []
    for element in node.elements():
        code = read_int(element, problems, default=None, min=400, max=599)
        if code is not None and code not in codes:
            codes.append(code)
    return tuple(codes)


def _read_retry_budget(node: Node | None, problems: Problems) -> RetryBudget | None:
    if node is None or node.is_null:
        return None
    d = RetryBudget()
    f = node.fields(problems, ("budget_percent", "min_retry_concurrency"))
    return RetryBudget(
        budget_percent=read_percent(f.get("budget_percent"), problems, default=d.budget_percent),
        min_retry_concurrency=read_int(
            f.get("min_retry_concurrency"), problems, default=d.min_retry_concurrency, min=0
        ),
    )


def _read_pool(node: Node | None, problems: Problems) -> ConnectionPool:
    d = ConnectionPool()
    if node is None or node.is_null:
        return d
    f = node.fields(problems, ("max_connections", "max_pending_requests", "idle_timeout"))
    return ConnectionPool(
        max_connections=read_int(f.get("max_connections"), problems, default=d.max_connections, min=1),
        max_pending_requests=read_int(
            f.get("max_pending_requests"), problems, default=d.max_pending_requests, min=0
        ),
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


