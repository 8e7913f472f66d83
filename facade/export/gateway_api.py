"""Kubernetes Gateway API ``HTTPRoute``s from the facade's config at one routing state (pure).

The facade routes by first match; an HTTPRoute by *precedence*: across its rules, an Exact path
beats the longest PathPrefix, then a method match, then the most header matches, then the most
query matches, and only ties go to the first rule. So the facade's order cannot simply be copied.
``order_by_precedence`` makes the two agree by construction: wherever a later facade route ``b``
would outrank an earlier one ``a`` on requests both match, it adds the intersection of the two
(``b``'s path, both routes' conditions) with ``a``'s action, placed before ``b``; such an entry
outranks ``b`` and keeps ``a``'s requests on ``a``. It repeats until nothing outranks a route it
must not, and refuses (naming both routes) what an intersection cannot express.

Paths: Gateway API's PathPrefix is per segment like the facade's, so ``prefix: /catalog`` is
``PathPrefix /catalog``. A facade prefix ending in "/" (``/img/``, which does not match ``/img``)
and regex paths (implementation-specific precedence) have no exact equivalent and are refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..config import Config, HeaderOps, RouteMatch, StringMatch
from .istio import duration
from .model import (
    ExportError,
    ExportOptions,
    Finding,
    HostGroup,
    RoutingState,
    Rule,
    host_groups,
    object_name,
    rules_for,
)

__all__ = ["GATEWAY_API", "GwMatch", "export_gateway_api", "order_by_precedence"]

GATEWAY_API = "gateway.networking.k8s.io/v1"
DEFAULT_PORT = 80  # backendRefs to a Service need a port; --service-host SERVICE=HOST:PORT sets it
MAX_RULES = 16  # HTTPRoute spec.rules maxItems
MAX_MATCHES = 128  # matches across all rules of one HTTPRoute (CEL validation)
_MAX_ENTRIES = 1000  # the precedence construction gives up (refuses) beyond this
_CLUSTER_SUFFIX = ".svc.cluster.local"

# (name, "Exact" | "RegularExpression", value)
ValueMatch = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class GwMatch:
    """One ``HTTPRouteMatch``: every condition must hold."""

    path_type: str  # "Exact" | "PathPrefix"
    path: str
    method: str | None = None
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()

    @property
    def precedence(self) -> tuple[int, int, int, int, int]:
        """The HTTPRoute precedence key: larger wins (Exact, prefix length, method, headers, query)."""
        return (self.path_type == "Exact", len(self.path), self.method is not None, len(self.headers), len(self.query))

    def covers_path(self, path: str) -> bool:
        if self.path_type == "Exact":
            return path == self.path
        base = self.path.rstrip("/")
        return path == self.path or path == base or path.startswith(base + "/")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": {"type": self.path_type, "value": self.path}}
        if self.headers:
            out["headers"] = [{"name": n, "type": t, "value": v} for n, t, v in self.headers]
        if self.query:
            out["queryParams"] = [{"name": n, "type": t, "value": v} for n, t, v in self.query]
        if self.method is not None:
            out["method"] = self.method
        return out


@dataclass(frozen=True, slots=True)
class _Entry:
    match: GwMatch
    rule: Rule


def export_gateway_api(
    config: Config, state: RoutingState, options: ExportOptions
) -> tuple[list[dict[str, Any]], list[Finding]]:
    """One HTTPRoute per host group, sorted by name, and the findings."""
    hosts: dict[str, str] = {}
    for s in config.services:
        host = options.host_of(s.name)
        if host in hosts:
            raise ExportError(f"services {hosts[host]!r} and {s.name!r} both map to {host!r}: a backendRef names a "
                              "whole Service (no subsets in the Gateway API); give each its own Service")
        hosts[host] = s.name
    rules, findings = rules_for(config, state)
    warned: set[str] = set()
    docs = [_http_route(group, options, findings, warned) for group in host_groups(rules)]
    retried = [r.route for r in rules if f"retries:{r.route}" in warned]
    if retried:
        findings.append(Finding("routes " + ", ".join(dict.fromkeys(retried)), (
            "retries have no standard HTTPRoute field (GEP-1731 is experimental): configure them on the gateway "
            "implementation")))
    findings.extend(_service_findings(config, state))
    docs.sort(key=lambda d: d["metadata"]["name"])
    return docs, findings


# -- matches ---------------------------------------------------------------------------------------


def gw_matches(rule: Rule, m: RouteMatch) -> list[GwMatch]:
    """The facade match as HTTPRouteMatches (one per method), or ExportError naming the route."""
    if m.path_kind == "regex":
        raise ExportError(f"route {rule.route!r}: path regex {m.path!r}: the precedence of RegularExpression paths "
                          "is implementation-specific in the Gateway API, so first-match order cannot be kept")
    if m.path_kind == "prefix" and m.path != "/" and m.path.endswith("/"):
        raise ExportError(f"route {rule.route!r}: prefix {m.path!r} does not match {m.path.rstrip('/')!r} in the "
                          f"facade, but PathPrefix {m.path!r} does (a trailing '/' is ignored); write prefix "
                          f"{m.path.rstrip('/')!r} if that is meant")
    path_type = "Exact" if m.path_kind == "exact" else "PathPrefix"
    headers = tuple(_value_match(rule, "header", n, sm) for n, sm in m.headers)
    query = tuple(_value_match(rule, "query parameter", n, sm) for n, sm in m.query)
    methods: Sequence[str | None] = m.methods or (None,)
    return [GwMatch(path_type, m.path, method, headers, query) for method in methods]


def _value_match(rule: Rule, what: str, name: str, sm: StringMatch) -> ValueMatch:
    if sm.kind == "absent":
        raise ExportError(f"route {rule.route!r}: {what} {name!r} absent has no Gateway API equivalent "
                          "(HTTPRouteMatch has no negation)")
    if sm.kind == "exact" and sm.case_sensitive:
        return (name, "Exact", sm.value)
    if sm.kind == "present":
        return (name, "RegularExpression", ".*")
    if sm.kind == "regex":
        return (name, "RegularExpression", sm.value)
    flags = "" if sm.case_sensitive else "(?i)"
    tail = ".*" if sm.kind == "prefix" else ""
    return (name, "RegularExpression", flags + re.escape(sm.value) + tail)


# -- precedence ------------------------------------------------------------------------------------


def _paths_overlap(a: GwMatch, b: GwMatch) -> bool:
    if a.path_type == "Exact":
        return b.covers_path(a.path)
    if b.path_type == "Exact":
        return a.covers_path(b.path)
    return a.covers_path(b.path) or b.covers_path(a.path)


def _values_disjoint(a: Sequence[ValueMatch], b: Sequence[ValueMatch]) -> bool:
    theirs = {n: (t, v) for n, t, v in b}
    return any(t == "Exact" and theirs.get(n, (t, v))[0] == "Exact" and theirs[n][1] != v
               for n, t, v in a if n in theirs)


def may_overlap(a: GwMatch, b: GwMatch) -> bool:
    """False only when no request can match both (conservative: True when unsure)."""
    if not _paths_overlap(a, b):
        return False
    if a.method is not None and b.method is not None and a.method != b.method:
        return False
    return not (_values_disjoint(a.headers, b.headers) or _values_disjoint(a.query, b.query))


def _merge(a: Sequence[ValueMatch], b: Sequence[ValueMatch]) -> tuple[ValueMatch, ...] | None:
    """Both sets of conditions, or None when one name carries two different ones (not expressible:
    the Gateway API considers only the first match of a name)."""
    out = list(a)
    for n, t, v in b:
        same = [x for x in out if x[0] == n]
        if not same:
            out.append((n, t, v))
        elif same[0] != (n, t, v):
            return None
    return tuple(out)


def intersect(a: GwMatch, b: GwMatch) -> GwMatch | None:
    """The requests both match, as one match; None when not expressible."""
    if a.path_type == "Exact" or (b.path_type != "Exact" and len(a.path) >= len(b.path)):
        path_type, path = a.path_type, a.path
    else:
        path_type, path = b.path_type, b.path
    headers = _merge(a.headers, b.headers)
    query = _merge(a.query, b.query)
    if headers is None or query is None:
        return None
    return GwMatch(path_type, path, a.method or b.method, headers, query)


def _same_action(a: Rule, b: Rule) -> bool:
    if a is b:
        return True
    if a.rewrite_prefix is not None or b.rewrite_prefix is not None:
        return False  # the result depends on the matched prefix
    strip = {"route": "", "name": "", "matches": ()}
    return replace(a, **strip) == replace(b, **strip)  # type: ignore[arg-type]


def covers(a: GwMatch, b: GwMatch) -> bool:
    """Every request ``b`` matches, ``a`` matches too (so after ``a``, ``b`` can never win a first match)."""
    if b.path_type == "Exact":
        path_ok = a.covers_path(b.path)
    else:
        path_ok = a.path_type == "PathPrefix" and a.covers_path(b.path.rstrip("/") or "/") and (
            a.path.rstrip("/") == "" or b.path.rstrip("/").startswith(a.path.rstrip("/")))
    return (
        path_ok
        and (a.method is None or a.method == b.method)
        and set(a.headers) <= set(b.headers)
        and set(a.query) <= set(b.query)
    )


def order_by_precedence(entries: Sequence[tuple[GwMatch, Rule]]) -> list[tuple[GwMatch, Rule]]:
    """Entries (in the facade's first-match order) reordered/extended so that the HTTPRoute
    precedence picks, for every request, the entry the facade's first match would. See module doc."""
    # A match an earlier one covers never wins in the facade: leave it out (fewer copies below).
    out: list[_Entry] = []
    for m, r in entries:
        if not any(covers(e.match, m) for e in out):
            out.append(_Entry(m, r))
    changed = True
    while changed:
        changed = False
        for j, b in enumerate(out):
            for i in range(j):
                a = out[i]
                if _same_action(a.rule, b.rule) or b.match.precedence <= a.match.precedence:
                    continue
                if not may_overlap(a.match, b.match):
                    continue
                both = intersect(a.match, b.match)
                if both is None:
                    raise ExportError(
                        f"routes {a.rule.route!r} and {b.rule.route!r}: Gateway API precedence would send some "
                        f"requests of {a.rule.route!r} to {b.rule.route!r} (a more specific match), and the requests "
                        "both match cannot be written as one match (one header or query parameter tested two ways)")
                if any(e.match == both and e.rule is a.rule for e in out[:j]):
                    continue
                if (a.rule.rewrite_prefix is not None or _redirects_prefix(a.rule)) and both.path != a.match.path:
                    raise ExportError(
                        f"routes {a.rule.route!r} and {b.rule.route!r}: keeping {a.rule.route!r} ahead of the more "
                        f"specific {b.rule.route!r} needs a copy of it on path {both.path!r}, where its prefix "
                        "rewrite would replace a different prefix")
                out.insert(i, _Entry(both, a.rule))
                if len(out) > _MAX_ENTRIES:
                    raise ExportError(f"routes {a.rule.route!r} and {b.rule.route!r}: keeping first-match order under "
                                      f"Gateway API precedence needs more than {_MAX_ENTRIES} matches")
                changed = True
                break
            if changed:
                break
    return [(e.match, e.rule) for e in out]


def _redirects_prefix(rule: Rule) -> bool:
    return rule.redirect is not None and rule.redirect.prefix is not None


# -- HTTPRoute -------------------------------------------------------------------------------------


def _http_route(group: HostGroup, options: ExportOptions, findings: list[Finding], warned: set[str]
                ) -> dict[str, Any]:
    entries: list[tuple[GwMatch, Rule]] = []
    for rule in group.rules:
        if rule.direct is not None:
            raise ExportError(f"route {rule.route!r}: direct_response has no Gateway API equivalent (HTTPRoute only "
                              "forwards or redirects); export istio, or serve it from a backend")
        entries.extend((gm, rule) for m in rule.matches for gm in gw_matches(rule, m))
    ordered = order_by_precedence(entries)
    # Consecutive entries of one rule share an HTTPRoute rule (its matches are ORed).
    runs: list[tuple[Rule, list[GwMatch]]] = []
    for match, rule in ordered:
        if runs and runs[-1][0] is rule:
            runs[-1][1].append(match)
        else:
            runs.append((rule, [match]))
    if len(runs) > MAX_RULES or len(ordered) > MAX_MATCHES:
        raise ExportError(f"host {group.host!r} needs {len(runs)} HTTPRoute rules with {len(ordered)} matches; an "
                          f"HTTPRoute allows {MAX_RULES} rules and {MAX_MATCHES} matches")
    rules = [_rule(rule, matches, options, findings, warned) for rule, matches in runs]
    gateway_ns, _, gateway = options.gateway.rpartition("/")
    parent: dict[str, Any] = {"name": gateway}
    if gateway_ns:
        parent["namespace"] = gateway_ns
    spec: dict[str, Any] = {"parentRefs": [parent]}
    if group.host != "*":
        spec["hostnames"] = [group.host]
    spec["rules"] = rules
    return {
        "apiVersion": GATEWAY_API,
        "kind": "HTTPRoute",
        "metadata": {"name": object_name("facade", group.host), "namespace": options.namespace,
                     "labels": {"app.kubernetes.io/managed-by": "facade"}},
        "spec": spec,
    }


def _rule(rule: Rule, matches: list[GwMatch], options: ExportOptions, findings: list[Finding], warned: set[str]
          ) -> dict[str, Any]:
    out: dict[str, Any] = {"matches": [m.to_json() for m in matches]}
    if any(t == "RegularExpression" for m in matches for _, t, _ in (*m.headers, *m.query)) and rule.route not in warned:
        warned.add(rule.route)
        findings.append(Finding(f"route {rule.route!r}", (
            "header / query matches that are not exact become RegularExpression, whose dialect is "
            "implementation-specific (the facade uses Python's re; Envoy-based gateways RE2)")))
    filters: list[dict[str, Any]] = []
    for kind, ops in (("RequestHeaderModifier", rule.request_headers), ("ResponseHeaderModifier", rule.response_headers)):
        modifier = _header_modifier(ops)
        if modifier:
            key = kind[0].lower() + kind[1:]
            filters.append({"type": kind, key: modifier})
    prefix_match = all(m.path_type == "PathPrefix" for m in matches)
    if rule.redirect is not None:
        filters.append({"type": "RequestRedirect", "requestRedirect": _redirect(rule, matches, prefix_match)})
    else:
        if rule.mirror is not None:
            mirror: dict[str, Any] = {"backendRef": _backend_ref(rule.mirror.service, options)}
            if float(rule.mirror.percent).is_integer():
                mirror["percent"] = int(rule.mirror.percent)
            else:
                mirror["fraction"] = {"numerator": round(rule.mirror.percent * 100), "denominator": 10_000}
            filters.append({"type": "RequestMirror", "requestMirror": mirror})
        rewrite: dict[str, Any] = {}
        if rule.rewrite_prefix is not None:
            rewrite["path"] = _prefix_path(rule, rule.rewrite_prefix, matches)
        if rule.rewrite_authority is not None:
            rewrite["hostname"] = _hostname(rule.rewrite_authority)
        if rewrite:
            filters.append({"type": "URLRewrite", "urlRewrite": rewrite})
        lacking = [what for what, given in (("fault injection", rule.fault), ("a CORS policy", rule.cors),
                                            ("a regex rewrite", rule.rewrite_regex)) if given is not None]
        if lacking and f"policy:{rule.route}" not in warned:
            warned.add(f"policy:{rule.route}")
            findings.append(Finding(f"route {rule.route!r}", (
                f"{', '.join(lacking)}: no Gateway API equivalent, not exported (export istio has them)")))
    if filters:
        out["filters"] = filters
    if rule.redirect is None:
        out["backendRefs"] = [{**_backend_ref(d.service, options), "weight": d.weight} for d in rule.destinations]
        timeouts: dict[str, str] = {}
        if rule.timeout is not None:
            timeouts["request"] = duration(rule.timeout)
        if rule.retries is not None and rule.retries.per_try_timeout is not None and rule.retries.attempts:
            per_try = rule.retries.per_try_timeout
            if rule.timeout is None or per_try <= rule.timeout:
                timeouts["backendRequest"] = duration(per_try)
        if timeouts:
            out["timeouts"] = timeouts
        if rule.retries is not None and rule.retries.attempts:
            warned.add(f"retries:{rule.route}")
    return out


def _hostname(authority: str) -> str:
    """URLRewrite's hostname has no port: ``api.internal:8080`` -> ``api.internal`` (``[::1]:80`` -> ``[::1]``)."""
    host, sep, port = authority.rpartition(":")
    return host if sep and port.isdigit() and not authority.endswith("]") else authority


def _prefix_path(rule: Rule, value: str, matches: list[GwMatch]) -> dict[str, Any]:
    # ReplacePrefixMatch needs PathPrefix matches; "/v2/" would give "/v2/" for the path itself
    # where the facade also gives "/v2/" but some gateways "/v2": keep values without a trailing "/".
    if not all(m.path_type == "PathPrefix" for m in matches):
        raise ExportError(f"route {rule.route!r}: a prefix rewrite needs prefix matches")
    if value != "/" and value.endswith("/"):
        raise ExportError(f"route {rule.route!r}: prefix rewrite {value!r} ends with '/': the facade maps the prefix "
                          f"itself to {value!r}, ReplacePrefixMatch to {value.rstrip('/')!r}; write "
                          f"{value.rstrip('/')!r}")
    return {"type": "ReplacePrefixMatch", "replacePrefixMatch": value}


def _redirect(rule: Rule, matches: list[GwMatch], prefix_match: bool) -> dict[str, Any]:
    rd = rule.redirect
    assert rd is not None
    out: dict[str, Any] = {}
    if rd.scheme is not None:
        out["scheme"] = rd.scheme
    if rd.host is not None:
        out["hostname"] = rd.host
    if rd.path is not None:
        out["path"] = {"type": "ReplaceFullPath", "replaceFullPath": rd.path}
    elif rd.prefix is not None and prefix_match:
        out["path"] = _prefix_path(rule, rd.prefix, matches)
    if rd.port is not None:
        out["port"] = rd.port
    out["statusCode"] = rd.code
    return out


def _header_modifier(ops: HeaderOps) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if ops.set:
        out["set"] = [{"name": n, "value": v} for n, v in ops.set]
    if ops.add:
        out["add"] = [{"name": n, "value": v} for n, v in ops.add]
    if ops.remove:
        out["remove"] = list(ops.remove)
    return out


def _backend_ref(service: str, options: ExportOptions) -> dict[str, Any]:
    """A backendRef names a Service object (and its namespace), not a DNS host."""
    if "/" in service:
        raise ExportError(f"backend {service!r} is a subset: Gateway API has no subsets; give the subset's "
                          "pods a Service of their own, or export to Istio (a DestinationRule subset)")
    host = options.host_of(service)
    name, namespace = host, None
    if host.endswith(_CLUSTER_SUFFIX) and host.count(".") == 4:
        name, namespace, _ = host.split(".", 2)
    elif host.count(".") == 1:
        name, namespace = host.split(".")
    elif "." in host:
        raise ExportError(f"service {service!r} maps to {host!r}, which is not a Kubernetes Service "
                          "(NAME, NAME.NAMESPACE or NAME.NAMESPACE.svc.cluster.local): a backendRef names a Service")
    ref: dict[str, Any] = {"name": name}
    if namespace is not None and namespace != options.namespace:
        ref["namespace"] = namespace
    ref["port"] = options.port_of(service) or DEFAULT_PORT
    return ref


def _service_findings(config: Config, state: RoutingState) -> list[Finding]:
    out: list[Finding] = []
    for s in config.services:
        parts = []
        if s.load_balancer != "round_robin":
            parts.append(f"load_balancer {s.load_balancer}")
        if s.outlier_detection is not None:
            parts.append("outlier detection")
        if s.health_check is not None:
            parts.append("active health checks (use a readinessProbe)")
        if s.connection_pool.max_connections != 1024:
            parts.append("connection limits")
        if parts:
            out.append(Finding(f"service {s.name!r}", ", ".join(parts) + " have no Gateway API equivalent (export "
                                                                        "istio for DestinationRules)"))
    if config.mesh is not None:
        strict = f"; this step holds {', '.join(sorted(state.strict))} STRICT" if state.strict else ""
        out.append(Finding("mesh", "mTLS modes and authorization policies have no Gateway API equivalent: export "
                                   f"istio for PeerAuthentication and AuthorizationPolicy{strict}"))
    return out
