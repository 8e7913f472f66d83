"""Istio ServiceEntries and DestinationRules -> facade services (part of ``facade import istio``).

``MeshServices`` remembers what the ServiceEntries say about each host (ports, endpoints with
labels and weights) and what the DestinationRules say (traffic policy, subsets), and declares a
facade service the first time a route's destination names a (host, subset, port): a subset over
labelled endpoints is a ``subsets:`` entry of its host's service (``facade_subset``). ``Findings``
is what every Istio reader shares: typed reads of YAML nodes that record problems at their
position instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..yamlfile import Node, parse_duration
from .emit import Imported, unique_name

__all__ = ["Findings", "MeshServices", "fqdn"]

_LB = {
    "ROUND_ROBIN": "round_robin",
    "LEAST_REQUEST": "least_request",
    "LEAST_CONN": "least_request",
    "RANDOM": "random",
}


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


class Findings:
    """Typed reads of YAML nodes; a bad value is a finding at its position, never an exception."""

    def __init__(self, out: Imported) -> None:
        self.out = out

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


class MeshServices(Findings):
    """Hosts (ServiceEntry), rules (DestinationRule) and the facade services made of them."""

    def __init__(self, out: Imported) -> None:
        super().__init__(out)
        self.hosts: dict[str, _Host] = {}
        self.rules: dict[str, _Rule] = {}
        self.services: dict[tuple[str, str | None, int | None], str] = {}
        self.service_names: set[str] = set()

    def service_entry(self, spec: Node, namespace: str) -> None:
        self.report_unknown(
            spec, {"hosts", "ports", "endpoints", "resolution", "location", "exportTo", "addresses"}, "spec"
        )
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
            ports.append(
                (
                    number,
                    self.str_of(p.get("name")) or "",
                    (self.str_of(p.get("protocol")) or "HTTP").upper(),
                    self.int_of(p.get("targetPort"), lo=1, hi=65535),
                )
            )
        endpoints: list[_Endpoint] = []
        for e in (spec.get("endpoints") or spec).elements():
            address = self.str_of(e.get("address"))
            if not address:
                self.error(e, "an endpoint needs an address")
                continue
            if address.startswith("unix://"):
                self.lost(e, f"endpoint {address}: the facade connects over TCP only")
                continue
            eports = {
                k: v
                for k, v in ((k, self.int_of(n, lo=1, hi=65535)) for k, n in _items(e.get("ports")))
                if v is not None
            }
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
        host = fqdn(host, namespace)
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
                    if k2 == "simple" and simple in _LB:
                        continue
                    if k2 == "consistentHash":
                        hashed = self.consistent_hash(c2)
                        if hashed:
                            out["load_balancer"] = {"consistent_hash": hashed}
                        continue
                    self.lost(
                        c2,
                        f"loadBalancer.{k2}{' ' + simple if simple and k2 == 'simple' else ''}: "
                        "not imported (round robin)",
                    )
            elif key == "outlierDetection":
                out["outlier_detection"] = self.outlier(child)
            else:
                self.lost(child, f"trafficPolicy.{key}: not imported")
        return out

    def consistent_hash(self, node: Node) -> dict[str, Any]:
        """``consistentHash`` -> ``{consistent_hash: {header | cookie | source_ip}}``; the ring's own
        settings (``ringHash``, ``maglev``, ``minimumRingSize``) are the facade's (lost)."""
        out: dict[str, Any] = {}
        for key, child in node.items():
            if key == "httpHeaderName" and self.str_of(child):
                out["header"] = (self.str_of(child) or "").lower()
            elif key == "useSourceIp" and child.value is True:
                out["source_ip"] = True
            elif key == "httpCookie":
                cookie = self.hash_cookie(child)
                if cookie is not None:
                    out["cookie"] = cookie
            else:
                self.lost(child, f"consistentHash.{key}: not imported (the facade's ring: docs/upstreams.md)")
        if len(out) > 1:
            self.error(node, "consistentHash needs exactly one of httpHeaderName, httpCookie, useSourceIp")
            return {}
        return out

    def hash_cookie(self, node: Node) -> dict[str, Any] | None:
        name = self.str_of(node.get("name"))
        if not name:
            self.error(node, "consistentHash.httpCookie needs a name")
            return None
        cookie: dict[str, Any] = {"name": name}
        ttl_node = node.get("ttl")
        ttl = self.str_of(ttl_node) if ttl_node is not None else None
        if ttl is not None:
            try:
                seconds = parse_duration(ttl)
            except ValueError:
                self.lost(node, f"httpCookie.ttl {ttl!r}: not a duration the facade reads; a session cookie")
            else:
                if seconds > 0:  # 0s: Istio's session cookie, the facade's cookie without ttl
                    cookie["ttl"] = ttl
        else:
            self.lost(node, f"httpCookie {name} without ttl: Istio sets no cookie, the facade sets a session cookie")
        for key, child in node.items():
            if key == "path" and self.str_of(child) != "/":
                self.lost(child, "httpCookie.path: not imported (the facade's cookie has Path=/)")
            elif key not in ("name", "ttl", "path"):
                self.lost(child, f"httpCookie.{key}: not imported")
        return cookie

    def outlier(self, node: Node) -> dict[str, Any]:
        out: dict[str, Any] = {}
        names = {
            "consecutive5xxErrors": "consecutive_5xx",
            "consecutiveGatewayErrors": "consecutive_gateway_errors",
            "baseEjectionTime": "base_ejection",
            "maxEjectionPercent": "max_ejection_percent",
        }
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
        if subset is not None and entry is not None and rule is not None and _labelled_subset(entry, rule, subset):
            return self.facade_subset(dest, host, subset, port)
        spec: dict[str, Any] = {}
        if entry is None:
            # A Kubernetes Service: only its cluster DNS name is known.
            self.lost(
                dest,
                f"host {host!r} has no ServiceEntry: its endpoint is assumed to be http://{host}:"
                f"{port or 80} (edit it to where the service runs)",
            )
            spec["endpoints"] = [f"http://{_netloc(host)}:{port or 80}"]
            if subset is not None:
                self.lost(
                    dest,
                    f"subset {subset!r} of {host!r}: its endpoints are chosen by labels, unknown outside "
                    "the cluster; the subset's service points at the host",
                )
        else:
            endpoints = entry.endpoints
            if subset is not None and rule is not None and subset in rule.subsets:
                labels = rule.subsets[subset][0]
                endpoints = [e for e in endpoints if all(e.labels.get(k) == v for k, v in labels.items())]
            urls = self.endpoint_urls(entry, endpoints, port, dest)
            if not urls:
                self.error(
                    dest,
                    f"no endpoint of {host!r}" + (f" in subset {subset!r}" if subset else "") + " to send traffic to",
                )
                return None
            # Labels travel with the endpoints of a host whose subsets select by them (facade_subset).
            labelled = subset is None and rule is not None and bool(rule.subsets)
            spec |= _endpoint_groups(urls, labelled=labelled)
        if rule is not None:
            spec |= rule.policy
            if subset is not None and subset in rule.subsets:
                spec |= rule.subsets[subset][1]
        if subset is not None and (rule is None or subset not in rule.subsets):
            self.error(dest, f"unknown subset {subset!r} of {host!r}: no DestinationRule for the host defines it")
            return None
        wanted = (
            _short(host)
            + (f"-{subset}" if subset else "")
            + (f"-{port}" if port and entry and len(entry.ports) > 1 else "")
        )
        name = unique_name(wanted, self.service_names, fallback="service")
        self.out.services[name] = spec
        self.services[key] = name
        return name

    def facade_subset(self, dest: Node, host: str, subset: str, port: int | None) -> str | None:
        """``service/subset``: the host's service (its endpoints with their labels) gains the subset
        (``{name, labels}``), so the service and its subsets share endpoints' health and ejections."""
        base = self.service(dest, host, None, port)
        if base is None:
            return None
        rule = self.rules[host]
        labels = rule.subsets[subset][0]
        spec = self.out.services[base]
        endpoints = [e for g in spec.get("groups", [{"endpoints": spec.get("endpoints", [])}]) for e in g["endpoints"]]
        if not any(isinstance(e, dict) and all(e["labels"].get(k) == v for k, v in labels.items()) for e in endpoints):
            self.error(dest, f"no endpoint of {host!r} in subset {subset!r} to send traffic to")
            return None
        subsets = spec.setdefault("subsets", [])
        if all(s["name"] != subset for s in subsets):
            subsets.append({"name": subset, "labels": dict(labels)})
        name = f"{base}/{subset}"
        self.services[(host, subset, port)] = name
        return name

    def endpoint_urls(
        self, entry: _Host, endpoints: list[_Endpoint], port: int | None, dest: Node
    ) -> list[tuple[str, int, dict[str, str]]]:
        chosen = (
            next((p for p in entry.ports if p[0] == port), None) if port else (entry.ports[0] if entry.ports else None)
        )
        if chosen is None:
            self.error(dest, f"{entry.host!r} has no port {port}" if port else f"{entry.host!r} declares no ports")
            return []
        number, name, protocol, target = chosen
        scheme = "https" if protocol in ("HTTPS", "TLS") else "http"
        if protocol not in ("HTTP", "HTTP2", "GRPC", "HTTPS", "TLS"):
            self.lost(dest, f"port {number} protocol {protocol}: treated as HTTP")
        if not endpoints:  # resolution DNS without endpoints: the host itself
            return [(f"{scheme}://{_netloc(entry.host)}:{target or number}", 1, {})]
        return [
            (f"{scheme}://{_netloc(e.address)}:{e.ports.get(name, target or number)}", e.weight, e.labels)
            for e in endpoints
            if e.weight > 0
        ]


def _labelled_subset(entry: _Host, rule: _Rule, subset: str) -> bool:
    """Whether ``subset`` can be a facade subset of the host's service: the ServiceEntry's endpoints
    carry labels, the subset selects by labels and has no traffic policy of its own (a facade subset
    takes its service's load balancer and outlier detection). Otherwise it is a service of its own."""
    if subset not in rule.subsets or not any(e.labels for e in entry.endpoints):
        return False
    labels, policy, _ = rule.subsets[subset]
    return bool(labels) and not policy


def _endpoint_groups(urls: list[tuple[str, int, dict[str, str]]], *, labelled: bool) -> dict[str, Any]:
    """``endpoints`` (one weight) or ``groups`` weighted by endpoint weight; ``{url, labels}`` entries
    when ``labelled`` and the endpoint has labels.

    Labelled, a group holds endpoints of one weight *and* one label set: a subset then takes whole
    groups, so its endpoints keep Istio's weights relative to each other (a group that lost some of
    its endpoints to a subset would keep the weight of all of them)."""
    def entry(url: str, labels: dict[str, str]) -> str | dict[str, Any]:
        return {"url": url, "labels": dict(labels)} if labelled and labels else url

    def key(weight: int, labels: dict[str, str]) -> tuple[Any, ...]:
        return (weight, tuple(sorted(labels.items())) if labelled else ())

    keys = sorted({key(w, labels) for _, w, labels in urls}, key=lambda k: (-k[0], k[1]))
    if len(keys) == 1:
        return {"endpoints": [entry(u, labels) for u, _, labels in urls]}
    groups: list[dict[str, Any]] = []
    for k in keys:
        members = [entry(u, labels) for u, w, labels in urls if key(w, labels) == k]
        same_weight = sum(1 for other in keys if other[0] == k[0])
        name = f"weight-{k[0]}" if same_weight == 1 else f"weight-{k[0]}-{len(groups) + 1}"
        groups.append({"name": name, "endpoints": members, "weight": k[0] * len(members)})
    return {"groups": groups}


def _items(node: Node | None) -> list[tuple[str, Node]]:
    return node.items() if node is not None else []


def fqdn(host: str, namespace: str) -> str:
    # Istio resolves a short name in the resource's namespace.
    return host if "." in host or host == "*" else f"{host}.{namespace}.svc.cluster.local"


def _short(host: str) -> str:
    # "catalog.shop.svc.cluster.local" and "catalog.example.com" both name the service "catalog"
    # (unique_name adds "-2" on a clash); an IP address stays whole.
    return host if host.replace(".", "").isdigit() or ":" in host else host.split(".")[0]


def _netloc(host: str) -> str:
    return f"[{host}]" if ":" in host else host
