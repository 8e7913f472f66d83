"""Istio manifests from the facade's config at one routing state (pure: values in, dicts out).

- ``VirtualService`` per host group (``model.host_groups``), bound to the ingress ``Gateway``,
  ``http[]`` in the facade's first-match order;
- ``DestinationRule`` per service (load balancer, outlier detection, connection pool, mTLS);
- ``ServiceEntry`` per service outside the mesh (no SPIFFE identity) when the config has a mesh;
- ``PeerAuthentication`` from the mesh's mTLS modes and the plan's ``mtls: strict`` steps;
- ``AuthorizationPolicy`` per mesh policy (and per service it selects).

docs/export.md has the field-by-field table.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from ..config import Config, CorsPolicy, FaultPolicy, HeaderOps, Retries, RouteMatch, ServiceSpec, StringMatch
from .model import (
    ExportError,
    ExportOptions,
    Finding,
    HostGroup,
    RoutingState,
    Rule,
    host_groups,
    object_name,
    path_variants,
    rules_for,
)

__all__ = ["ISTIO_API", "duration", "export_istio", "istio_string_match"]

ISTIO_API = {
    "VirtualService": "networking.istio.io/v1",
    "DestinationRule": "networking.istio.io/v1",
    "ServiceEntry": "networking.istio.io/v1",
    "PeerAuthentication": "security.istio.io/v1",
    "AuthorizationPolicy": "security.istio.io/v1",
}
_KIND_ORDER = ("ServiceEntry", "DestinationRule", "VirtualService", "PeerAuthentication", "AuthorizationPolicy")
_LB = {"round_robin": "ROUND_ROBIN", "least_request": "LEAST_REQUEST", "random": "RANDOM"}
_ANY = ".*"  # matches any present value (a missing header / parameter matches no regex in Envoy)
# Python-only regex syntax RE2 (Envoy's engine) rejects: lookaround, backreferences, atomic groups, \Z.
_NOT_RE2 = re.compile(r"\(\?[=!]|\(\?<[=!]|\(\?P=|\\[1-9]|\(\?>|\\Z|[*+?}][+]")
_DEFAULT_MAX_EJECTION = 300.0  # Envoy's max_ejection_time, which Istio does not expose


def export_istio(config: Config, state: RoutingState, options: ExportOptions) -> tuple[list[dict[str, Any]], list[Finding]]:
    """Every Istio document for ``config`` at ``state``, sorted by kind then name, and the findings."""
    options = replace(options, services=tuple(s.name for s in config.services))
    rules, findings = rules_for(config, state)
    docs: list[dict[str, Any]] = []
    for group in host_groups(rules):
        docs.append(_virtual_service(group, options))
    # Services that share one Kubernetes host (--service-host) become subsets of its DestinationRule.
    by_host: dict[str, list[ServiceSpec]] = {}
    for service in config.services:
        by_host.setdefault(options.host_of(service.name), []).append(service)
    for host, services in by_host.items():
        docs.extend(_destination_rule(host, services, config, options, findings))
    if config.mesh is not None:
        docs.extend(_peer_authentications(config, state, options))
        docs.extend(_authorization_policies(config, options, findings))
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        kind, name = duplicates[0]
        raise ExportError(f"two {kind} objects would both be named {name!r}; rename a route host, service or policy")
    docs.sort(key=lambda d: (_KIND_ORDER.index(d["kind"]), d["metadata"]["name"]))
    return docs, findings


def _meta(kind: str, name: str, options: ExportOptions) -> dict[str, Any]:
    return {
        "apiVersion": ISTIO_API[kind],
        "kind": kind,
        "metadata": {"name": name, "namespace": options.namespace, "labels": {"app.kubernetes.io/managed-by": "facade"}},
    }


def duration(seconds: float) -> str:
    """A protobuf / Gateway API duration: ``15s``, ``1500ms``, ``2h``."""
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    for unit, size in (("h", 3600), ("m", 60)):
        if s >= size and s % size == 0 and s // size < 100_000:
            return f"{s // size}{unit}"
    return f"{s}s"


# -- VirtualService ------------------------------------------------------------------------------


def _virtual_service(group: HostGroup, options: ExportOptions) -> dict[str, Any]:
    doc = _meta("VirtualService", object_name("facade", group.host), options)
    http: list[dict[str, Any]] = []
    for rule in group.rules:
        http.extend(_http_routes(rule, options))
    doc["spec"] = {"hosts": [group.host], "gateways": [options.gateway], "http": http}
    return doc


def _http_routes(rule: Rule, options: ExportOptions) -> list[dict[str, Any]]:
    """One ``http[]`` entry, or two when the exact and the prefix half of a per-segment prefix need
    different rewrites (Istio rewrites per route, not per match)."""
    variants = [(m, kind, path) for m in rule.matches for kind, path in path_variants(m)]
    per_kind = rule.rewrite_prefix is not None or (rule.redirect is not None and rule.redirect.prefix is not None)
    if not per_kind:
        return [_http_route(rule, rule.name, variants, None, options)]
    # Keyed by (how the facade matched, how Istio matches): a prefix's exact half and a true exact
    # match rewrite differently.
    keys = sorted({(m.path_kind, kind) for m, kind, _ in variants})
    out = []
    for origin, kind in keys:
        part = [v for v in variants if (v[0].path_kind, v[1]) == (origin, kind)]
        name = rule.name if len(keys) == 1 else f"{rule.name}-{kind}" if origin == "prefix" else f"{rule.name}-{origin}"
        out.append(_http_route(rule, name, part, kind if origin == "prefix" else "keep", options))
    return out


def _http_route(
    rule: Rule, name: str, variants: Sequence[tuple[RouteMatch, str, str]], kind: str | None, options: ExportOptions
) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "match": [_match(rule, m, k, p) for m, k, p in variants]}
    if rule.direct is not None:
        entry["directResponse"] = {"status": rule.direct.status, "body": {"string": rule.direct.body}}
    elif rule.redirect is not None:
        entry["redirect"] = _redirect(rule, kind)
    else:
        many = len(rule.destinations) > 1
        entry["route"] = [
            {"destination": _destination(d.service, options), **({"weight": d.weight} if many else {})}
            for d in rule.destinations
        ]
        if rule.mirror is not None:
            entry["mirror"] = _destination(rule.mirror.service, options)
            entry["mirrorPercentage"] = {"value": rule.mirror.percent}
        rewrite: dict[str, Any] = {}
        if rule.rewrite_prefix is not None:
            rewrite["uri"] = _prefix_value(rule.rewrite_prefix, kind)
        if rule.rewrite_regex is not None:
            _check_re2(rule.rewrite_regex[0], rule, "rewrite pattern")
            rewrite["uriRegexRewrite"] = {"match": rule.rewrite_regex[0], "rewrite": rule.rewrite_regex[1]}
        if rule.rewrite_authority is not None:
            rewrite["authority"] = rule.rewrite_authority
        if rewrite:
            entry["rewrite"] = rewrite
        if rule.fault is not None:
            entry["fault"] = _fault(rule.fault)
        if rule.cors is not None:
            entry["corsPolicy"] = _cors(rule.cors, rule)
    headers = _header_ops(rule.request_headers, rule.response_headers, rule)
    if headers:
        entry["headers"] = headers
    if rule.destinations:
        if rule.timeout is not None:
            entry["timeout"] = duration(rule.timeout)
        if rule.retries is not None:
            entry["retries"] = _retries(rule.retries)
    return entry


def _fault(fault: FaultPolicy) -> dict[str, Any]:
    """Istio's HTTPFaultInjection (the facade's percents are Istio's ``percentage.value``)."""
    out: dict[str, Any] = {}
    if fault.delay is not None:
        out["delay"] = {"fixedDelay": duration(fault.delay.fixed), "percentage": {"value": fault.delay.percent}}
    if fault.abort is not None:
        out["abort"] = {"httpStatus": fault.abort.status, "percentage": {"value": fault.abort.percent}}
    return out


def _cors(cors: CorsPolicy, rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"allowOrigins": [istio_string_match(m, rule, "CORS origin")[0] for m in cors.allow_origins]}
    for key, values in (("allowMethods", cors.allow_methods), ("allowHeaders", cors.allow_headers),
                        ("exposeHeaders", cors.expose_headers)):
        if values:
            out[key] = list(values)
    if cors.max_age is not None:
        out["maxAge"] = duration(cors.max_age)
    if cors.allow_credentials:
        out["allowCredentials"] = True
    return out


def _destination(service: str, options: ExportOptions) -> dict[str, Any]:
    service, _, subset = service.partition("/")  # a facade subset is an Istio subset of the service's host
    host = options.host_of(service)
    out: dict[str, Any] = {"host": host}
    if subset:
        out["subset"] = subset
    elif sum(options.host_of(s) == host for s in options.services) > 1:
        out["subset"] = subset_name(service)
    port = options.port_of(service)
    if port is not None:
        out["port"] = {"number": port}
    return out


def subset_name(service: str) -> str:
    """The subset of a service that shares its host with others; its pods carry ``version: <subset>``."""
    return service.replace("_", "-")


def _prefix_value(value: str, kind: str | None) -> str:
    # The exact half takes the value as is; the "P/" half replaces "P/" by "value/" (facade and
    # Envoy agree on "/catalog/x" -> "/v2/x" and "/catalog" -> "/v2").
    return value if kind == "exact" else value.rstrip("/") + "/"


def _redirect(rule: Rule, kind: str | None) -> dict[str, Any]:
    rd = rule.redirect
    assert rd is not None
    out: dict[str, Any] = {}
    if rd.path is not None:
        out["uri"] = rd.path
    elif rd.prefix is not None and kind == "exact":
        out["uri"] = rd.prefix  # the whole path was the prefix ("keep": a true exact / regex match keeps its path)
    elif rd.prefix is not None and kind == "prefix":
        out["prefixRewrite"] = _prefix_value(rd.prefix, kind)
    if rd.host is not None:
        out["authority"] = rd.host
    if rd.scheme is not None:
        out["scheme"] = rd.scheme
    if rd.port is not None:
        out["port"] = rd.port
    out["redirectCode"] = rd.code
    return out


def _match(rule: Rule, m: RouteMatch, kind: str, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if kind == "regex":
        _check_re2(path, rule, "path regex")
    out["uri"] = {kind: path}
    if len(m.methods) == 1:
        out["method"] = {"exact": m.methods[0]}
    elif m.methods:
        out["method"] = {"regex": "|".join(re.escape(x) for x in m.methods)}
    headers: dict[str, Any] = {}
    without: dict[str, Any] = {}
    for name, sm in m.headers:
        value, inverted = istio_string_match(sm, rule, f"header {name}")
        (without if inverted else headers)[name] = value
    if headers:
        out["headers"] = headers
    if without:
        out["withoutHeaders"] = without
    query: dict[str, Any] = {}
    for name, sm in m.query:
        value, inverted = istio_string_match(sm, rule, f"query parameter {name}")
        if inverted:
            raise ExportError(f"route {rule.route!r}: query parameter {name!r} absent has no Istio equivalent "
                              "(VirtualService has withoutHeaders but no withoutQueryParams)")
        if "prefix" in value:  # Istio's queryParams take exact and regex only
            value = {"regex": re.escape(value["prefix"]) + ".*"}
        query[name] = value
    if query:
        out["queryParams"] = query
    return out


def istio_string_match(sm: StringMatch, rule: Rule, what: str) -> tuple[dict[str, str], bool]:
    """An Istio ``StringMatch`` and whether it goes under ``withoutHeaders`` (an absence test)."""
    if sm.kind == "present":
        return {"regex": _ANY}, False
    if sm.kind == "absent":
        return {"regex": _ANY}, True
    if sm.kind == "regex":
        _check_re2(sm.value, rule, what)
        return {"regex": sm.value}, False
    if not sm.case_sensitive:
        tail = "" if sm.kind == "exact" else ".*"
        return {"regex": "(?i)" + re.escape(sm.value) + tail}, False
    return {sm.kind: sm.value}, False


def _check_re2(pattern: str, rule: Rule, what: str) -> None:
    if _NOT_RE2.search(pattern):
        raise ExportError(f"route {rule.route!r}: {what} {pattern!r} uses Python regex syntax RE2 does not have "
                          "(lookaround, backreference, atomic group, \\Z or a possessive quantifier)")


def _header_ops(request: HeaderOps, response: HeaderOps, rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side, ops in (("request", request), ("response", response)):
        part: dict[str, Any] = {}
        if ops.set:
            part["set"] = dict(ops.set)
        if ops.add:
            part["add"] = dict(ops.add)
        if ops.remove:
            part["remove"] = list(ops.remove)
        if side == "response" and rule.direct is not None:
            part.setdefault("set", {})["content-type"] = rule.direct.content_type
        if part:
            out[side] = part
    return out


def _retries(r: Retries) -> dict[str, Any]:
    out: dict[str, Any] = {"attempts": r.attempts}
    if r.attempts:
        if r.per_try_timeout is not None:
            out["perTryTimeout"] = duration(r.per_try_timeout)
        # Istio takes the retriable statuses as numbers in retryOn (retriable-status-codes alone
        # would read them from a request header).
        kinds: list[str] = [k for k in r.retry_on if k != "retriable-status-codes"]
        if "retriable-status-codes" in r.retry_on:
            kinds += [str(code) for code in r.retriable_status_codes if str(code) not in kinds]
        out["retryOn"] = ",".join(kinds) if kinds else "connect-failure"
    return out


# -- services ------------------------------------------------------------------------------------


def in_mesh(service: ServiceSpec, config: Config) -> bool:
    """A service is in the mesh when the config has a mesh and the service has an identity."""
    mesh = config.mesh
    if mesh is None:
        return False
    spec = mesh.service(service.name)
    return service.identity is not None or (spec is not None and spec.identity is not None)


def _destination_rule(
    host: str, services: list[ServiceSpec], config: Config, options: ExportOptions, findings: list[Finding]
) -> list[dict[str, Any]]:
    """One DestinationRule per host: the service's traffic policy, or one subset per service."""
    docs: list[dict[str, Any]] = []
    policies = []
    for service in services:
        policy, extra = _traffic_policy(service, host, config, options, findings)
        policies.append(policy)
        docs.extend(d for d in extra if not any(x["metadata"]["name"] == d["metadata"]["name"] for x in docs))
    dr = _meta("DestinationRule", object_name(host), options)
    if len(services) == 1:
        dr["spec"] = {"host": host, "trafficPolicy": policies[0]}
        if services[0].subsets:  # DestinationRule subsets: the pods carry the endpoints' labels
            dr["spec"]["subsets"] = [{"name": sub.name, "labels": dict(sub.labels)} for sub in services[0].subsets]
    else:
        for s in services:
            if s.subsets:
                findings.append(Finding(f"service {s.name!r}", (
                    f"its subsets are not exported: host {host!r} is shared, and its subsets already select "
                    "services by version")))
        names = ", ".join(s.name for s in services)
        findings.append(Finding(f"host {host!r}", (
            f"services {names} share it: each is a subset selected by the pod label version=<service name>")))
        dr["spec"] = {"host": host, "subsets": [
            {"name": subset_name(s.name), "labels": {"version": subset_name(s.name)}, "trafficPolicy": p}
            for s, p in zip(services, policies, strict=True)
        ]}
    docs.append(dr)
    return docs


def _traffic_policy(
    service: ServiceSpec, host: str, config: Config, options: ExportOptions, findings: list[Finding]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    subject = f"service {service.name!r}"
    docs: list[dict[str, Any]] = []
    policy: dict[str, Any] = {"loadBalancer": _load_balancer(service)}
    pool = service.connection_pool
    policy["connectionPool"] = {
        "tcp": {"maxConnections": pool.max_connections, "connectTimeout": duration(service.timeouts.connect)},
        "http": {"idleTimeout": duration(pool.idle_timeout)},
    }
    od = service.outlier_detection
    if od is not None:
        percent = round(od.max_ejection_percent)
        policy["outlierDetection"] = {
            "consecutive5xxErrors": od.consecutive_5xx,
            "consecutiveGatewayErrors": od.consecutive_gateway_errors,
            "baseEjectionTime": duration(od.base_ejection),
            "maxEjectionPercent": percent,
        }
        if percent != od.max_ejection_percent:
            findings.append(Finding(subject, f"max_ejection_percent {od.max_ejection_percent:g} is rounded to "
                                             f"{percent} (Istio takes a whole percent)"))
        if od.max_ejection != _DEFAULT_MAX_EJECTION:
            findings.append(Finding(subject, f"max_ejection {od.max_ejection:g}s has no Istio field; Envoy caps "
                                             "ejections at 300s"))
    if service.health_check is not None:
        hc = service.health_check
        findings.append(Finding(subject, (
            f"active health checks ({hc.path} every {hc.interval:g}s) have no Istio equivalent: give the "
            "Deployment a readinessProbe on the same path (outlier detection still ejects failing endpoints)")))
    if len(service.groups) > 1:
        findings.append(Finding(subject, "endpoint groups (weights, priorities) are not exported: use Istio "
                                         "localityLbSetting for zone failover"))
    if in_mesh(service, config):
        policy["tls"] = {"mode": "ISTIO_MUTUAL"}
    elif config.mesh is not None:
        docs.append(_service_entry(service, host, options, findings))
        if any(e.startswith("https://") for g in service.groups for e in g.endpoints):
            tls: dict[str, Any] = {"mode": "SIMPLE"}
            if service.tls is not None and service.tls.server_name:
                tls["sni"] = service.tls.server_name
            if service.tls is not None and not service.tls.verify:
                tls["insecureSkipVerify"] = True
            policy["tls"] = tls
    return policy, docs


def _load_balancer(service: ServiceSpec) -> dict[str, Any]:
    hp = service.hash_policy
    if hp is None:
        return {"simple": _LB.get(service.load_balancer, "ROUND_ROBIN")}
    if hp.header is not None:
        return {"consistentHash": {"httpHeaderName": hp.header}}
    if hp.cookie is not None:
        # Istio issues the cookie only with a ttl; "0s" asks for a session cookie, as the facade's default.
        return {"consistentHash": {"httpCookie": {"name": hp.cookie, "ttl": duration(hp.cookie_ttl or 0.0)}}}
    return {"consistentHash": {"useSourceIp": True}}


def _service_entry(service: ServiceSpec, host: str, options: ExportOptions, findings: list[Finding]) -> dict[str, Any]:
    """The service outside the mesh (the monolith): its endpoints as the facade config names them."""
    endpoints: list[dict[str, Any]] = []
    ports: dict[int, str] = {}
    static = True
    for group in service.groups:
        for url in group.endpoints:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            ports.setdefault(port, "HTTPS" if parts.scheme == "https" else "HTTP")
            address = parts.hostname or ""
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                static = False
            else:
                if ip.is_loopback:
                    findings.append(Finding(f"service {service.name!r}", (
                        f"endpoint {url} is a loopback address: the ServiceEntry points there; edit it, or map the "
                        "service to a real host with --service-host")))
            endpoints.append({"address": address, "ports": {f"{ports[port].lower()}-{port}": port}})
    doc = _meta("ServiceEntry", object_name(host), options)
    spec: dict[str, Any] = {
        "hosts": [host],
        "location": "MESH_EXTERNAL",
        "ports": [{"number": p, "name": f"{proto.lower()}-{p}", "protocol": proto} for p, proto in sorted(ports.items())],
        "resolution": "STATIC" if static else "DNS",
    }
    if options.service_hosts.get(service.name):
        spec["resolution"] = "DNS"  # the mapped host is the endpoint
    else:
        spec["endpoints"] = endpoints
    doc["spec"] = spec
    return doc


# -- mesh ----------------------------------------------------------------------------------------


def _app_label(service: str, options: ExportOptions) -> dict[str, Any]:
    return {"matchLabels": {"app": options.host_of(service).split(".")[0]}}


def _peer_authentications(config: Config, state: RoutingState, options: ExportOptions) -> list[dict[str, Any]]:
    mesh = config.mesh
    assert mesh is not None  # called only for a config with a mesh
    docs = []
    default = _meta("PeerAuthentication", "default", options)
    default["spec"] = {"mtls": {"mode": mesh.mode}}
    docs.append(default)
    for service in config.services:
        mode = "STRICT" if service.name in state.strict else mesh.mode_for(service.name)
        if mode == mesh.mode or not in_mesh(service, config):
            continue
        doc = _meta("PeerAuthentication", object_name(options.host_of(service.name)), options)
        doc["spec"] = {"selector": _app_label(service.name, options), "mtls": {"mode": mode}}
        docs.append(doc)
    return docs


def _authorization_policies(config: Config, options: ExportOptions, findings: list[Finding]) -> list[dict[str, Any]]:
    mesh = config.mesh
    assert mesh is not None  # called only for a config with a mesh
    docs = []
    if mesh.trust_domain != "cluster.local":
        findings.append(Finding("mesh", (
            f"principals are in trust domain {mesh.trust_domain!r}: set Istio's meshConfig.trustDomain to it "
            "(or list it in trustDomainAliases)")))
    edge = str(mesh.edge())
    for policy in mesh.policies:
        rules = [_policy_rule(r) for r in policy.rules]
        if any(edge in s.principals for r in policy.rules for s in r.from_):
            findings.append(Finding(f"policy {policy.name!r}", (
                f"allows the facade's edge identity {edge}; in Istio the ingress gateway calls with its own "
                "service account: add its principal to the policy")))
        targets: list[str | None] = list(policy.services) or [None]
        for service in targets:
            name = policy.name if len(targets) == 1 else object_name(policy.name, service or "")
            doc = _meta("AuthorizationPolicy", object_name(name), options)
            spec: dict[str, Any] = {}
            if service is not None:
                spec["selector"] = _app_label(service, options)
            spec["action"] = policy.action
            spec["rules"] = rules
            doc["spec"] = spec
            docs.append(doc)
    return docs


def _principal(value: str) -> str:
    return value.removeprefix("spiffe://")


def _policy_rule(rule: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rule.from_:
        sources = []
        for s in rule.from_:
            src: dict[str, Any] = {}
            for key, values in (("principals", s.principals), ("notPrincipals", s.not_principals),
                                ("namespaces", s.namespaces), ("notNamespaces", s.not_namespaces)):
                if values:
                    src[key] = [_principal(v) for v in values] if "rincipal" in key else list(values)
            sources.append({"source": src})
        out["from"] = sources
    if rule.to:
        ops = []
        for o in rule.to:
            op: dict[str, Any] = {}
            for key, values in (("hosts", o.hosts), ("notHosts", o.not_hosts), ("paths", o.paths),
                                ("notPaths", o.not_paths), ("methods", o.methods), ("notMethods", o.not_methods)):
                if values:
                    op[key] = list(values)
            ops.append({"operation": op})
        out["to"] = ops
    if rule.when:
        conds = []
        for c in rule.when:
            cond: dict[str, Any] = {"key": c.key}
            convert = _principal if c.key == "source.principal" else str
            if c.values:
                cond["values"] = [convert(v) for v in c.values]
            if c.not_values:
                cond["notValues"] = [convert(v) for v in c.not_values]
            conds.append(cond)
        out["when"] = conds
    return out
