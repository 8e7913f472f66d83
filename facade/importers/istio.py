"""Istio ``VirtualService`` / ``DestinationRule`` / ``ServiceEntry`` -> facade services and routes
(``facade import istio``).

Files hold any number of YAML documents (``---``), each one resource or a ``kind: List`` of them,
as ``kubectl get -o yaml`` writes them. The translation (docs/import.md has the table):

- a ServiceEntry's hosts become services, its ``endpoints`` their endpoints (weights become groups);
- a DestinationRule's traffic policy (load balancer, outlier detection) goes onto the service of its
  host, and each subset becomes a service of its own: the endpoints whose labels match the subset's;
- each ``http[]`` entry of a VirtualService becomes a route, in order (Istio's first match is the
  facade's), matching the VirtualService's hosts; destinations become ``backend``/``backends``.

Istio's ``prefix`` compares characters (``/api`` matches ``/apix``), so a prefix that does not end
in ``/`` becomes a regex. Whatever has no facade equivalent (fault injection, CORS, mirroring,
TCP/TLS routes, ...) is reported with its position and what is lost.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..yamlfile import Node, _SafeLoader, parse_duration
from .emit import Imported, unique_name

__all__ = ["import_istio"]

_KINDS = ("VirtualService", "DestinationRule", "ServiceEntry")
# Istio kinds that are read but have no facade counterpart here: reported, not refused.
_OTHER_ISTIO_KINDS = frozenset({
    "Gateway", "Sidecar", "EnvoyFilter", "WorkloadEntry", "WorkloadGroup", "ProxyConfig", "PeerAuthentication",
    "AuthorizationPolicy", "RequestAuthentication", "Telemetry", "WasmPlugin",
})
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_LB = {"ROUND_ROBIN": "round_robin", "LEAST_REQUEST": "least_request", "LEAST_CONN": "least_request",
       "RANDOM": "random"}
_RETRY_ON = {"connect-failure": ["connect-failure"], "reset": ["reset"], "503": ["503"],
             "gateway-error": ["502", "503", "504"], "5xx": ["502", "503", "504"], "refused-stream": ["reset"]}
_RESERVED_HEADERS = frozenset({
    "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te", "trailer",
    "upgrade", "host",
})


@dataclass
class _Endpoint:
    address: str
    ports: dict[str, int]
    labels: dict[str, str]
    weight: int


@dataclass
class _Host:
    """What the ServiceEntries say about one host."""

    host: str
    node: Node
    ports: list[tuple[int, str, str, int | None]] = field(default_factory=list)  # number, name, protocol, target
    endpoints: list[_Endpoint] = field(default_factory=list)


@dataclass
class _Rule:
    host: str
    node: Node
    policy: dict[str, Any]
    subsets: dict[str, tuple[dict[str, str], dict[str, Any], Node]]  # name -> (labels, policy, node)


class _Reader:
    def __init__(self, out: Imported) -> None:
        self.out = out
        self.hosts: dict[str, _Host] = {}
        self.rules: dict[str, _Rule] = {}
        self.virtual_services: list[tuple[Node, str]] = []  # (resource, namespace)
        self.services: dict[tuple[str, str | None, int | None], str] = {}
        self.service_names: set[str] = set()
        self.route_names: set[str] = set()

    # -- findings ---------------------------------------------------------------------------------
    # Messages name the field themselves (``http[4].fault``), so findings carry no separate path.
    def error(self, node: Node, message: str) -> None:
        self.out.error(node.file, node.line, node.col, message)

    def lost(self, node: Node, message: str) -> None:
        self.out.lost(node.file, node.line, node.col, message)

    def str_of(self, node: Node | None) -> str | None:
        if node is None or node.is_null:
            return None
        value = node.value if node.is_scalar else None
        if isinstance(value, bool) or value is None or not isinstance(value, (str, int, float)):
            self.error(node, f"must be a string, got {node.kind}")
            return None
        return str(value)

    def int_of(self, node: Node | None, *, lo: int = 0, hi: int = 2**31) -> int | None:
        if node is None or node.is_null:
            return None
        value = node.value if node.is_scalar else None
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            self.error(node, f"must be an integer {lo}-{hi}, got {value if node.is_scalar else node.kind}")
            return None
        return value

    def lost_key(self, parent: Node, key: str, message: str) -> None:
        """A loss reported at the key (``fault:``), where a reader looks for it."""
        node = parent.key_node(key) or parent.get(key) or parent
        self.out.lost(node.file, node.line, node.col, message)

    def duration(self, node: Node, what: str) -> str | None:
        """An Istio duration ("5s", "250ms") the facade reads the same way; "0s" (Istio: no timeout)
        and anything else are reported and left out."""
        text = self.str_of(node)
        if text is None:
            return None
        try:
            seconds = parse_duration(text)
        except ValueError:
            self.lost(node, f"{what} {text!r}: not a duration the facade reads; not imported")
            return None
        if seconds <= 0:
            self.lost(node, f"{what} {text}: Istio's 'no timeout'; the facade's default applies")
            return None
        return text

    def report_unknown(self, node: Node, handled: set[str], what: str) -> None:
        for key in [k for k, _ in node.items() if k not in handled]:
            self.lost_key(node, key, f"{what}.{key}: not imported")

    # -- documents --------------------------------------------------------------------------------
    def resource(self, doc: Node) -> None:
        if doc.is_null:
            return
        if not doc.is_mapping:
            self.error(doc, f"a resource must be a mapping, got {doc.kind}")
            return
        kind_node = doc.get("kind")
        kind = self.str_of(kind_node)
        if kind_node is None or kind is None:
            self.error(doc, "missing kind")
            return
        if kind == "List":
            for item in (doc.get("items") or doc).elements():
                self.resource(item)
            return
        api = self.str_of(doc.get("apiVersion")) or ""
        if kind in _OTHER_ISTIO_KINDS and api.split("/")[0].endswith("istio.io"):
            self.lost(kind_node, f"{kind}: not imported (only VirtualService, DestinationRule and ServiceEntry are)")
            return
        if kind not in _KINDS:
            self.error(kind_node, f"unknown kind {kind!r} (expected one of {', '.join(_KINDS)})")
            return
        if not api.startswith("networking.istio.io/"):
            self.error(doc.get("apiVersion") or doc, f"{kind} needs apiVersion networking.istio.io/..., got {api!r}")
            return
        metadata = doc.get("metadata")
        namespace = (self.str_of(metadata.get("namespace")) if metadata else None) or "default"
        spec = doc.get("spec")
        if spec is None or not spec.is_mapping:
            self.error(doc if spec is None else spec, f"{kind} needs a spec mapping")
            return
        if kind == "ServiceEntry":
            self.service_entry(spec, namespace)
        elif kind == "DestinationRule":
            self.destination_rule(spec, namespace)
        else:
            self.virtual_services.append((doc, namespace))

    def service_entry(self, spec: Node, namespace: str) -> None:
        self.report_unknown(spec, {"hosts", "ports", "endpoints", "resolution", "location", "exportTo",
                                   "addresses"}, "spec")
        hosts_node = spec.get("hosts")
        hosts = [h for h in (self.str_of(e) for e in (hosts_node.elements() if hosts_node else [])) if h]
        if not hosts:
            self.error(hosts_node or spec, "ServiceEntry needs hosts")
            return
        ports: list[tuple[int, str, str, int | None]] = []
        for p in (spec.get("ports") or spec).elements():
            number = self.int_of(p.get("number"), lo=1, hi=65535)
            if number is None:
                self.error(p, "a port needs a number")
                continue
            ports.append((number, self.str_of(p.get("name")) or "", (self.str_of(p.get("protocol")) or "HTTP").upper(),
                          self.int_of(p.get("targetPort"), lo=1, hi=65535)))
        endpoints: list[_Endpoint] = []
        for e in (spec.get("endpoints") or spec).elements():
            address = self.str_of(e.get("address"))
            if not address:
                self.error(e, "an endpoint needs an address")
                continue
            if address.startswith("unix://"):
                self.lost(e, f"endpoint {address}: the facade connects over TCP only")
                continue
            eports = {k: v for k, v in ((k, self.int_of(n, lo=1, hi=65535)) for k, n in _items(e.get("ports")))
                      if v is not None}
            labels = {k: str(n.value) for k, n in _items(e.get("labels"))}
            weight = self.int_of(e.get("weight"), lo=0) if e.get("weight") is not None else None
            endpoints.append(_Endpoint(address, eports, labels, 1 if weight is None else weight))
            for key, child in e.items():
                if key not in ("address", "ports", "labels", "weight"):
                    self.lost(child, f"endpoint {key}: not imported")
        for host in hosts:
            entry = self.hosts.setdefault(host, _Host(host, spec))
            entry.ports.extend(ports)
            entry.endpoints.extend(endpoints)

    def destination_rule(self, spec: Node, namespace: str) -> None:
        self.report_unknown(spec, {"host", "trafficPolicy", "subsets", "exportTo"}, "spec")
        host = self.str_of(spec.get("host"))
        if not host:
            self.error(spec.get("host") or spec, "DestinationRule needs a host")
            return
        host = _fqdn(host, namespace)
        subsets: dict[str, tuple[dict[str, str], dict[str, Any], Node]] = {}
        for s in (spec.get("subsets") or spec).elements():
            name = self.str_of(s.get("name"))
            if not name:
                self.error(s, "a subset needs a name")
                continue
            labels = {k: str(n.value) for k, n in _items(s.get("labels"))}
            policy = self.traffic_policy(s.get("trafficPolicy"))
            subsets[name] = (labels, policy, s)
        self.rules[host] = _Rule(host, spec, self.traffic_policy(spec.get("trafficPolicy")), subsets)

    def traffic_policy(self, node: Node | None) -> dict[str, Any]:
        if node is None or node.is_null:
            return {}
        out: dict[str, Any] = {}
        for key, child in node.items():
            if key == "loadBalancer":
                simple = self.str_of(child.get("simple"))
                if simple in _LB:
                    out["load_balancer"] = _LB[simple]
                for k2, c2 in child.items():
                    if k2 != "simple" or simple not in _LB:
                        self.lost(c2, f"loadBalancer.{k2}{' ' + simple if simple and k2 == 'simple' else ''}: "
                                  "not imported (round robin)")
            elif key == "outlierDetection":
                out["outlier_detection"] = self.outlier(child)
            else:
                self.lost(child, f"trafficPolicy.{key}: not imported")
        return out

    def outlier(self, node: Node) -> dict[str, Any]:
        out: dict[str, Any] = {}
        names = {"consecutive5xxErrors": "consecutive_5xx", "consecutiveGatewayErrors": "consecutive_gateway_errors",
                 "baseEjectionTime": "base_ejection", "maxEjectionPercent": "max_ejection_percent"}
        for key, child in node.items():
            if key in names and child.is_scalar and not child.is_null:
                value = child.value
                if names[key].startswith("consecutive") and (not isinstance(value, int) or value < 1):
                    self.lost(child, f"outlierDetection.{key} {value!r}: not imported")
                    continue
                if key == "baseEjectionTime":
                    value = self.duration(child, f"outlierDetection.{key}")
                    if value is None:
                        continue
                elif key == "maxEjectionPercent" and not (isinstance(value, int) and 0 <= value <= 100):
                    self.lost(child, f"outlierDetection.{key} {value!r}: not imported")
                    continue
                out[names[key]] = value
            else:
                self.lost(child, f"outlierDetection.{key}: not imported")
        return out

    # -- services ---------------------------------------------------------------------------------
    def service(self, dest: Node, host: str, subset: str | None, port: int | None) -> str | None:
        key = (host, subset, port)
        if key in self.services:
            return self.services[key]
        entry = self.hosts.get(host)
        rule = self.rules.get(host)
        spec: dict[str, Any] = {}
        if entry is None:
            # A Kubernetes Service: only its cluster DNS name is known.
            self.lost(dest, f"host {host!r} has no ServiceEntry: its endpoint is assumed to be http://{host}:"
                      f"{port or 80} (edit it to where the service runs)")
            spec["endpoints"] = [f"http://{_netloc(host)}:{port or 80}"]
            if subset is not None:
                self.lost(dest, f"subset {subset!r} of {host!r}: its endpoints are chosen by labels, unknown outside "
                          "the cluster; the subset's service points at the host")
        else:
            endpoints = entry.endpoints
            if subset is not None and rule is not None and subset in rule.subsets:
                labels = rule.subsets[subset][0]
                endpoints = [e for e in endpoints if all(e.labels.get(k) == v for k, v in labels.items())]
            urls = self.endpoint_urls(entry, endpoints, port, dest)
            if not urls:
                self.error(dest, f"no endpoint of {host!r}" + (f" in subset {subset!r}" if subset else "") +
                           " to send traffic to")
                return None
            weights = sorted({w for _, w in urls}, reverse=True)
            if len(weights) == 1:
                spec["endpoints"] = [u for u, _ in urls]
            else:
                spec["groups"] = [{"name": f"weight-{w}", "endpoints": [u for u, wu in urls if wu == w],
                                   "weight": w * sum(1 for _, wu in urls if wu == w)} for w in weights]
        if rule is not None:
            spec |= rule.policy
            if subset is not None and subset in rule.subsets:
                spec |= rule.subsets[subset][1]
        if subset is not None and (rule is None or subset not in rule.subsets):
            self.error(dest, f"unknown subset {subset!r} of {host!r}: no DestinationRule for the host defines it")
            return None
        wanted = _short(host) + (f"-{subset}" if subset else "") + (f"-{port}" if port and entry and
                                                                    len(entry.ports) > 1 else "")
        name = unique_name(wanted, self.service_names, fallback="service")
        self.out.services[name] = spec
        self.services[key] = name
        return name

    def endpoint_urls(self, entry: _Host, endpoints: list[_Endpoint], port: int | None,
                      dest: Node) -> list[tuple[str, int]]:
        chosen = next((p for p in entry.ports if p[0] == port), None) if port else (entry.ports[0] if entry.ports else None)
        if chosen is None:
            self.error(dest, f"{entry.host!r} has no port {port}" if port else f"{entry.host!r} declares no ports")
            return []
        number, name, protocol, target = chosen
        scheme = "https" if protocol in ("HTTPS", "TLS") else "http"
        if protocol not in ("HTTP", "HTTP2", "GRPC", "HTTPS", "TLS"):
            self.lost(dest, f"port {number} protocol {protocol}: treated as HTTP")
        if not endpoints:  # resolution DNS without endpoints: the host itself
            return [(f"{scheme}://{_netloc(entry.host)}:{target or number}", 1)]
        return [(f"{scheme}://{_netloc(e.address)}:{e.ports.get(name, target or number)}", e.weight)
                for e in endpoints if e.weight > 0]

    # -- virtual services -------------------------------------------------------------------------
    def virtual_service(self, doc: Node, namespace: str) -> None:
        metadata = doc.get("metadata")
        vs_name = (self.str_of(metadata.get("name")) if metadata else None) or "virtualservice"
        spec = doc.get("spec")
        assert spec is not None
        self.report_unknown(spec, {"hosts", "http", "gateways", "exportTo", "tcp", "tls"}, "spec")
        for key in ("tcp", "tls"):
            if spec.get(key) is not None:
                self.lost_key(spec, key, f"{key} routes: not imported (the facade routes HTTP)")
        hosts_node = spec.get("hosts")
        hosts = [h for h in (self.str_of(e) for e in (hosts_node.elements() if hosts_node else [])) if h]
        if hosts_node is not None and not hosts_node.is_list:
            self.error(hosts_node, f"hosts must be a list, got {hosts_node.kind}")
            return
        if not hosts:
            self.error(hosts_node or spec, f"VirtualService {vs_name!r} has no hosts")
            return
        match_hosts = [] if "*" in hosts else hosts
        http = spec.get("http")
        if http is None:
            self.lost(spec, f"VirtualService {vs_name!r} has no http routes: nothing imported")
            return
        for i, entry in enumerate(http.elements()):
            self.http_route(entry, i, vs_name, match_hosts, namespace)

    def http_route(self, entry: Node, index: int, vs_name: str, hosts: list[str], namespace: str) -> None:
        handled = {"name", "match", "route", "redirect", "directResponse", "rewrite", "headers", "timeout",
                   "retries"}
        for key in [k for k, _ in entry.items() if k not in handled]:
            self.lost_key(entry, key, f"http[{index}].{key}: not imported")
        label = self.str_of(entry.get("name")) or str(index)
        route: dict[str, Any] = {"name": unique_name(f"{vs_name}-{label}", self.route_names, fallback="route")}
        rewrite = entry.get("rewrite")
        match_node = entry.get("match")
        # The facade rewrites prefix matches only: a rewriting route whose every match is a uri prefix
        # keeps its prefixes as (segment) prefixes; otherwise the rewrite is what is lost.
        rewritable = (rewrite is not None and rewrite.get("uri") is not None and match_node is not None
                      and bool(match_node.elements()) and all(_plain_prefix(m) for m in match_node.elements()))
        matches = self.matches(match_node, hosts, segment_prefixes=rewritable)
        if matches is None:
            return
        if matches:
            route["match"] = matches if len(matches) > 1 else matches[0]
        actions = [k for k in ("route", "redirect", "directResponse") if entry.get(k) is not None]
        if len(actions) != 1:
            self.error(entry, "an http route needs exactly one of route, redirect, directResponse"
                       + (f" (has {', '.join(actions)})" if actions else ""))
            return
        action = actions[0]
        node = entry.get(action)
        assert node is not None
        if action == "route":
            if not self.destinations(node, route, namespace):
                return
        elif action == "redirect":
            redirect = self.redirect(node)
            if redirect is None:
                return
            route["redirect"] = redirect
        else:
            response = self.direct_response(node)
            if response is None:
                return
            route["direct_response"] = response
        self.rewrite(entry.get("rewrite"), route, matches)
        ops = self.header_ops(entry.get("headers"))
        for direction, value in ops.items():
            route[direction] = value
        timeout_node = entry.get("timeout")
        if timeout_node is not None and action == "route":
            timeout = self.duration(timeout_node, "timeout")
            if timeout is not None:
                route["timeout"] = timeout
        retries = entry.get("retries")
        if retries is not None and action == "route":
            route["retries"] = self.retries(retries)
        comment = f"{entry.file}:{entry.line} VirtualService {vs_name}, http[{index}]"
        self.out.routes.append((comment, route))

    def matches(self, node: Node | None, hosts: list[str], *, segment_prefixes: bool) -> list[dict[str, Any]] | None:
        base: dict[str, Any] = {"host": hosts} if hosts else {}
        if node is None or node.is_null:
            return [base] if base else []
        out: list[dict[str, Any]] = []
        for m in node.elements():
            match = dict(base)
            for key, child in m.items():
                if key == "uri":
                    path = self.uri_match(child, m.get("ignoreUriCase"), segment_prefix=segment_prefixes)
                    if path is None:
                        return None
                    match["path"] = path
                elif key == "method":
                    kind, value = self.string_match(child)
                    if kind == "exact":
                        match["methods"] = [value]
                    else:
                        self.lost(child, f"method {kind} match: the facade matches methods exactly; condition dropped")
                elif key == "authority":
                    kind, value = self.string_match(child)
                    if kind == "exact":
                        match["host"] = [value]
                    else:
                        self.lost(child, f"authority {kind} match: not imported; condition dropped")
                elif key in ("headers", "queryParams"):
                    target = "headers" if key == "headers" else "query"
                    for name, matcher in child.items():
                        kind, value = self.string_match(matcher)
                        if kind is None:
                            continue
                        if kind == "regex" and not self.regex_ok(matcher, value):
                            return None
                        match.setdefault(target, {})[name] = {kind: value}
                elif key == "withoutHeaders":
                    for name, matcher in child.items():
                        if matcher.is_mapping and not matcher.items():
                            match.setdefault("headers", {})[name] = {"absent": True}
                        else:
                            self.lost(matcher, f"withoutHeaders {name} with a value: not imported; condition dropped")
                elif key in ("ignoreUriCase", "name"):
                    continue
                else:
                    self.lost(child, f"match.{key}: not imported; condition dropped")
            out.append(match)
        if not out:
            return [base] if base else []
        return out

    def string_match(self, node: Node) -> tuple[str | None, str]:
        kinds = [(k, c) for k, c in node.items() if k in ("exact", "prefix", "regex")]
        if len(kinds) != 1 or len(node.items()) != 1:
            self.error(node, "a string match needs exactly one of exact, prefix, regex")
            return None, ""
        kind, child = kinds[0]
        return kind, self.str_of(child) or ""

    def regex_ok(self, node: Node, pattern: str) -> bool:
        try:
            re.compile(pattern)
        except re.error as exc:
            self.error(node, f"regex {pattern!r} is not supported by Python's re: {exc}")
            return False
        return True

    def uri_match(self, node: Node, ignore_case: Node | None, *, segment_prefix: bool) -> dict[str, str] | None:
        kind, value = self.string_match(node)
        if kind is None:
            return None
        icase = bool(ignore_case is not None and ignore_case.value is True)
        if kind == "regex":
            if not self.regex_ok(node, value):
                return None
            return {"regex": f"(?i:{value})" if icase else value}
        if not value.startswith("/"):
            self.error(node, f"uri {kind} must start with '/', got {value!r}")
            return None
        literal = re.sub(r"([.^$*+?{}\[\]\\|()])", r"\\\1", value)
        if icase:
            return {"regex": f"(?i:{literal}{'.*' if kind == 'prefix' else ''})"}
        if kind == "exact":
            return {"exact": value}
        # Istio (Envoy) prefixes compare characters; a facade prefix compares segments. A regex keeps
        # Istio's meaning, except on a route that rewrites: the facade rewrites prefix matches only.
        if value.endswith("/"):
            return {"prefix": value}
        if segment_prefix:
            self.lost(node, f"prefix {value!r} with a rewrite: matched by segments ({value}/..., not {value}x)")
            return {"prefix": value}
        return {"regex": literal + ".*"}

    def destinations(self, node: Node, route: dict[str, Any], namespace: str) -> bool:
        items = node.elements()
        if not items:
            self.error(node, "route needs at least one destination")
            return False
        backends: list[dict[str, Any]] = []
        header_ops: list[dict[str, Any]] = []
        for d in items:
            dest = d.get("destination")
            host = self.str_of(dest.get("host")) if dest is not None else None
            if dest is None or not host:
                self.error(d, "a route destination needs destination.host")
                return False
            subset = self.str_of(dest.get("subset"))
            port_node = dest.get("port")
            port = self.int_of(port_node.get("number"), lo=1, hi=65535) if port_node is not None else None
            service = self.service(dest, _fqdn(host, namespace) if host not in self.hosts else host, subset, port)
            if service is None:
                return False
            weight = self.int_of(d.get("weight"), lo=0) if d.get("weight") is not None else None
            backends.append({"service": service, "weight": weight})
            header_ops.append(self.header_ops(d.get("headers")))
            for key, child in d.items():
                if key not in ("destination", "weight", "headers"):
                    self.lost(child, f"route.{key}: not imported")
        if len(backends) == 1:
            route["backend"] = backends[0]["service"]
        else:
            weights = [b["weight"] or 0 for b in backends]
            total = sum(weights)
            if total != 100:
                scaled = _scale_to_100(weights)
                self.lost(node, f"destination weights sum to {total}: scaled to {scaled} (the facade needs 100)")
                weights = scaled
            route["backends"] = [{"service": b["service"], "weight": w} for b, w in zip(backends, weights, strict=True)]
        if any(header_ops):
            if all(ops == header_ops[0] for ops in header_ops):
                route.update(header_ops[0])
            else:
                self.lost(node, "per-destination header rules that differ: not imported")
        return True

    def redirect(self, node: Node) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        for key, child in node.items():
            if key == "uri":
                out["path"] = self.str_of(child)
            elif key == "authority":
                out["host"] = self.str_of(child)
            elif key == "scheme":
                out["scheme"] = self.str_of(child)
            elif key == "port":
                out["port"] = self.int_of(child, lo=1, hi=65535)
            elif key == "redirectCode":
                code = self.int_of(child)
                if code not in _REDIRECT_CODES:
                    self.error(child, f"redirectCode must be one of {', '.join(map(str, _REDIRECT_CODES))}, got {code}")
                    return None
                out["code"] = code
            else:
                self.lost(child, f"redirect.{key}: not imported")
        if not any(k in out for k in ("path", "host", "scheme", "port")):
            self.error(node, "a redirect needs uri, authority, scheme or port")
            return None
        out.setdefault("code", 301)
        return out

    def direct_response(self, node: Node) -> dict[str, Any] | None:
        status = self.int_of(node.get("status"), lo=100, hi=599)
        if status is None:
            self.error(node, "directResponse needs a status 100-599")
            return None
        out: dict[str, Any] = {"status": status}
        body = node.get("body")
        if body is not None:
            text = self.str_of(body.get("string"))
            raw = self.str_of(body.get("bytes"))
            if raw is not None:
                try:
                    text = base64.b64decode(raw, validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    self.lost(body, "directResponse.body.bytes that are not UTF-8 text: body not imported")
            if text:
                out["body"] = text
        return out

    def rewrite(self, node: Node | None, route: dict[str, Any], matches: list[dict[str, Any]]) -> None:
        if node is None:
            return
        for key, child in node.items():
            uri = self.str_of(child) if key == "uri" else None
            if key == "uri" and uri and "redirect" not in route and "direct_response" not in route and matches and all(
                "prefix" in m.get("path", {}) for m in matches
            ):
                route["rewrite"] = {"prefix": uri}
            else:
                self.lost(child, f"rewrite.{key}: not imported" + (" (the facade rewrites only routes whose every match is a uri prefix)"
                                                                  if key == "uri" else ""))

    def header_ops(self, node: Node | None) -> dict[str, Any]:
        if node is None or node.is_null:
            return {}
        out: dict[str, Any] = {}
        for direction, ops in node.items():
            if direction not in ("request", "response"):
                self.lost(ops, f"headers.{direction}: not imported")
                continue
            rules: dict[str, Any] = {}
            for op, values in ops.items():
                if op in ("set", "add"):
                    for name, value in values.items():
                        if name.lower() in _RESERVED_HEADERS:
                            self.lost(value, f"header {name}: the facade sets it itself")
                            continue
                        rules.setdefault(op, {})[name.lower()] = self.str_of(value) or ""
                elif op == "remove":
                    for name_node in values.elements():
                        name = self.str_of(name_node) or ""
                        if name.lower() in _RESERVED_HEADERS:
                            self.lost(name_node, f"header {name}: the facade sets it itself")
                            continue
                        rules.setdefault("remove", []).append(name.lower())
                else:
                    self.lost(values, f"headers.{direction}.{op}: not imported")
            if rules:
                out[f"{direction}_headers"] = rules
        return out

    def retries(self, node: Node) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, child in node.items():
            if key == "attempts":
                attempts = self.int_of(child, lo=0)
                if attempts is not None and attempts > 10:
                    self.lost(child, f"retries.attempts {attempts}: the facade allows at most 10")
                    attempts = 10
                out["attempts"] = attempts
            elif key == "perTryTimeout":
                per_try = self.duration(child, "retries.perTryTimeout")
                if per_try is not None:
                    out["per_try_timeout"] = per_try
            elif key == "retryOn":
                kinds: list[str] = []
                for part in (self.str_of(child) or "").split(","):
                    mapped = _RETRY_ON.get(part.strip())
                    if mapped is None:
                        self.lost(child, f"retryOn {part.strip()!r}: not imported")
                        continue
                    kinds.extend(k for k in mapped if k not in kinds)
                out["retry_on"] = kinds or ["connect-failure"]
            else:
                self.lost(child, f"retries.{key}: not imported")
        return out


def _plain_prefix(match: Node) -> bool:
    uri = match.get("uri")
    ignore_case = match.get("ignoreUriCase")
    return uri is not None and uri.get("prefix") is not None and not (ignore_case is not None and ignore_case.value)


def _items(node: Node | None) -> list[tuple[str, Node]]:
    return node.items() if node is not None else []


def _fqdn(host: str, namespace: str) -> str:
    # Istio resolves a short name in the resource's namespace.
    return host if "." in host or host == "*" else f"{host}.{namespace}.svc.cluster.local"


def _short(host: str) -> str:
    # "catalog.shop.svc.cluster.local" and "catalog.example.com" both name the service "catalog"
    # (unique_name adds "-2" on a clash); an IP address stays whole.
    return host if host.replace(".", "").isdigit() or ":" in host else host.split(".")[0]


def _netloc(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _scale_to_100(weights: list[int]) -> list[int]:
    total = sum(weights)
    if total == 0:
        return [100 // len(weights) + (1 if i < 100 % len(weights) else 0) for i in range(len(weights))]
    scaled = [w * 100 // total for w in weights]
    remainders = sorted(range(len(weights)), key=lambda i: -(weights[i] * 100 % total))
    for i in remainders[: 100 - sum(scaled)]:
        scaled[i] += 1
    return scaled


def _documents(path: str, out: Imported) -> list[Node]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        out.error(path, 1, 0, f"cannot read file: {exc.strerror or exc}")
        return []
    except UnicodeDecodeError as exc:
        out.error(path, 1, 0, f"file is not UTF-8: {exc.reason}")
        return []
    loader = _SafeLoader(text)
    docs: list[Node] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            loader.construct_object(node, deep=True)  # tags such as !!python/object are errors here
            docs.append(Node(node, loader, "", path))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 0)
        out.error(path, line, col, f"invalid YAML: {exc.problem or exc.context}")
        return []
    except yaml.YAMLError as exc:
        out.error(path, 1, 0, f"invalid YAML: {exc}")
        return []
    finally:
        loader.dispose()
    return docs


def import_istio(paths: list[str]) -> Imported:
    """Translate the Istio resources in ``paths``. Never raises on bad input: errors and losses are
    ``Imported.findings`` with file:line:col. ServiceEntries and DestinationRules of every file are
    read before any VirtualService, so their order across files does not matter."""
    out = Imported()
    reader = _Reader(out)
    for path in paths:
        for doc in _documents(path, out):
            reader.resource(doc)
    if out.errors:
        return out
    for doc, namespace in reader.virtual_services:
        reader.virtual_service(doc, namespace)
    if not out.routes and not out.errors:
        out.error(paths[0], 1, 0, "no VirtualService with http routes: nothing to import")
    return out
