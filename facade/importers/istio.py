"""Istio ``VirtualService`` / ``DestinationRule`` / ``ServiceEntry`` -> facade services and routes
(``facade import istio``).

Files hold any number of YAML documents (``---``), each one resource or a ``kind: List`` of them,
as ``kubectl get -o yaml`` writes them. The translation (docs/import.md has the table):

- a ServiceEntry's hosts become services, its ``endpoints`` their endpoints (weights become groups);
- a DestinationRule's traffic policy (load balancer, consistent hashing, outlier detection) goes onto
  the service of its host; a subset becomes a facade subset of that service (``service/subset``)
  when the ServiceEntry's endpoints carry labels and the subset has no policy of its own, else a
  service of its own: the endpoints whose labels match the subset's;
- each ``http[]`` entry of a VirtualService becomes a route, in order (Istio's first match is the
  facade's), matching the VirtualService's hosts; destinations become ``backend``/``backends``.

Istio's ``prefix`` compares characters (``/api`` matches ``/apix``), so a prefix that does not end
in ``/`` becomes a regex. Fault injection, CORS policies, rewrites (uri, regex, authority) and
retry kinds become the facade's keys of the same meaning. Whatever has no facade equivalent
(mirroring, TCP/TLS routes, gRPC faults, ...) is reported with its position and what is lost. Services (ServiceEntry,
DestinationRule) are read by ``istio_services``; this module reads the documents and the routes.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import yaml

from ..config.routes import RESERVED_REQUEST_HEADERS
from ..yamlfile import Node, _SafeLoader
from .emit import Imported, unique_name
from .istio_services import MeshServices, fqdn

__all__ = ["import_istio"]

_KINDS = ("VirtualService", "DestinationRule", "ServiceEntry")
# Istio kinds that are read but have no facade counterpart here: reported, not refused.
_OTHER_ISTIO_KINDS = frozenset(
    {
        "Gateway",
        "Sidecar",
        "EnvoyFilter",
        "WorkloadEntry",
        "WorkloadGroup",
        "ProxyConfig",
        "PeerAuthentication",
        "AuthorizationPolicy",
        "RequestAuthentication",
        "Telemetry",
        "WasmPlugin",
    }
)
_REDIRECT_CODES = (301, 302, 303, 307, 308)
# Istio retryOn policies -> facade retry_on kinds (the same Envoy names); a number is a status.
_RETRY_ON = {
    "connect-failure": "connect-failure",
    "reset": "reset",
    "refused-stream": "reset",  # a stream the upstream refused before processing: a reset to the facade
    "5xx": "5xx",
    "gateway-error": "gateway-error",
    "retriable-4xx": "retriable-4xx",
}
_NAMED_STATUSES = frozenset({502, 503, 504})  # statuses the facade's retry_on names itself


class _Reader(MeshServices):
    """Reads every resource; ServiceEntries and DestinationRules at once, VirtualServices after."""

    def __init__(self, out: Imported) -> None:
        super().__init__(out)
        self.virtual_services: list[tuple[Node, str]] = []  # (resource, namespace)
        self.route_names: set[str] = set()

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
        handled = {
            "name", "match", "route", "redirect", "directResponse", "rewrite", "headers", "timeout", "retries",
            "fault", "corsPolicy",
        }
        for key in [k for k, _ in entry.items() if k not in handled]:
            self.lost_key(entry, key, f"http[{index}].{key}: not imported")
        label = self.str_of(entry.get("name")) or str(index)
        route: dict[str, Any] = {"name": unique_name(f"{vs_name}-{label}", self.route_names, fallback="route")}
        rewrite = entry.get("rewrite")
        match_node = entry.get("match")
        # rewrite.uri replaces a prefix match's prefix and an exact or regex match's whole path (Istio
        # and the facade alike). A rewriting route keeps its prefixes as (segment) prefixes, so each
        # match keeps its kind; a case-insensitive prefix (a regex here) or no uri match cannot.
        rewritable = (
            rewrite is not None
            and rewrite.get("uri") is not None
            and entry.get("route") is not None
            and match_node is not None
            and bool(match_node.elements())
            and all(_rewritable_match(m) for m in match_node.elements())
        )
        matches = self.matches(match_node, hosts, segment_prefixes=rewritable)
        if matches is None:
            return
        if matches:
            route["match"] = matches if len(matches) > 1 else matches[0]
        actions = [k for k in ("route", "redirect", "directResponse") if entry.get(k) is not None]
        if len(actions) != 1:
            self.error(
                entry,
                "an http route needs exactly one of route, redirect, directResponse"
                + (f" (has {', '.join(actions)})" if actions else ""),
            )
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
        self.rewrite(entry.get("rewrite"), route, rewritable=rewritable)
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
        for key, read, target in (("fault", self.fault, "fault"), ("corsPolicy", self.cors, "cors")):
            policy_node = entry.get(key)
            if policy_node is None or policy_node.is_null:
                continue
            if action != "route":
                self.lost_key(entry, key, f"http[{index}].{key}: not imported (the facade applies it to routes "
                              "that forward only)")
                continue
            policy = read(policy_node)
            if policy:
                route[target] = policy
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
                        if target == "headers" and (matcher.is_null or (matcher.is_mapping and not matcher.items())):
                            match.setdefault(target, {})[name] = {"present": True}  # Istio: a name alone
                            continue
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
            service = self.service(dest, fqdn(host, namespace) if host not in self.hosts else host, subset, port)
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

    def rewrite(self, node: Node | None, route: dict[str, Any], *, rewritable: bool) -> None:
        """``rewrite.uri`` -> ``rewrite.prefix`` (on a route whose matches kept their kind), ``authority``
        -> ``rewrite.authority``, ``uriRegexRewrite`` -> ``rewrite.regex`` (RE2 and Python agree on
        ``\\1``; a pattern Python cannot compile is an error)."""
        if node is None or node.is_null:
            return
        out: dict[str, Any] = {}
        forwards = "redirect" not in route and "direct_response" not in route
        for key, child in node.items():
            if not forwards:
                self.lost(child, f"rewrite.{key}: not imported (a route that does not forward rewrites nothing)")
            elif key == "uri":
                uri = self.str_of(child)
                if uri and rewritable:
                    out["prefix"] = uri
                else:
                    self.lost(child, "rewrite.uri: not imported (the facade rewrites only routes whose every match "
                              "is a uri prefix, exact or regex, a prefix case-sensitive)")
            elif key == "authority":
                authority = self.str_of(child)
                if authority:
                    out["authority"] = authority
            elif key == "uriRegexRewrite":
                regex = self.regex_rewrite(child)
                if regex is not None:
                    out["regex"] = regex
            else:
                self.lost(child, f"rewrite.{key}: not imported")
        if "prefix" in out and "regex" in out:
            self.error(node, "rewrite.uri and rewrite.uriRegexRewrite together (Istio refuses them too)")
            return
        if out:
            route["rewrite"] = out

    def regex_rewrite(self, node: Node) -> dict[str, str] | None:
        pattern_node, substitution_node = node.get("match"), node.get("rewrite")
        pattern, substitution = self.str_of(pattern_node), self.str_of(substitution_node)
        if pattern_node is None or pattern is None or substitution is None:
            self.error(node, "uriRegexRewrite needs match and rewrite")
            return None
        if not self.regex_ok(pattern_node, pattern):
            return None
        return {"pattern": pattern, "substitution": substitution}

    def fault(self, node: Node) -> dict[str, Any]:
        """``fault.delay`` (``fixedDelay``, ``percentage``) and ``fault.abort`` (``httpStatus``,
        ``percentage``) -> the facade's ``fault``; an unset percentage faults every request in both."""
        out: dict[str, Any] = {}
        for key, child in node.items():
            if key == "delay":
                delay = self.fault_part(child, "delay", "fixedDelay", "fixed")
                if delay is not None:
                    out["delay"] = delay
            elif key == "abort":
                abort = self.fault_part(child, "abort", "httpStatus", "status")
                if abort is not None:
                    out["abort"] = abort
            else:
                self.lost(child, f"fault.{key}: not imported")
        return out

    def fault_part(self, node: Node, what: str, key: str, target: str) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        reported = False
        for name, child in node.items():
            if name == key == "fixedDelay":
                fixed = self.duration(child, "fault.delay.fixedDelay")
                if fixed is None:
                    return None
                out[target] = fixed
            elif name == key == "httpStatus":
                status = self.int_of(child, lo=0, hi=999)
                if status is None:
                    return None
                if not 200 <= status <= 599:
                    self.lost(child, f"fault.abort.httpStatus {status}: the facade aborts with 200-599; not imported")
                    return None
                out[target] = status
            elif name in ("percentage", "percent"):
                percent = _percent(child)
                if percent is None or not 0 <= percent <= 100:
                    self.error(child, f"fault.{what}.{name} must be a percentage 0-100")
                    return None
                out["percent"] = percent
            else:
                self.lost(child, f"fault.{what}.{name}: not imported (the facade injects {key} only)")
                reported = True
        if target not in out:
            if not reported:
                self.lost(node, f"fault.{what} without {key}: not imported")
            return None
        return out

    def cors(self, node: Node) -> dict[str, Any]:
        """``corsPolicy`` -> ``cors`` (Envoy's cors filter both: origins matched exactly, by prefix or
        by a full-match regex; ``"*"`` allows any)."""
        out: dict[str, Any] = {}
        lists = {"allowMethods": "allow_methods", "allowHeaders": "allow_headers", "exposeHeaders": "expose_headers"}
        for key, child in node.items():
            if key in ("allowOrigins", "allowOrigin"):  # allowOrigin: the deprecated list of exact strings
                for origin in child.elements():
                    if origin.is_scalar:
                        value = self.str_of(origin)
                        if value:
                            out.setdefault("allow_origins", []).append(value)
                        continue
                    kind, value = self.string_match(origin)
                    if kind == "regex" and not self.regex_ok(origin, value):
                        continue
                    if kind is not None:
                        out.setdefault("allow_origins", []).append(value if kind == "exact" else {kind: value})
            elif key in lists:
                out[lists[key]] = [v for v in (self.str_of(e) for e in child.elements()) if v]
            elif key == "maxAge":
                age = self.duration(child, "corsPolicy.maxAge")
                if age is not None:
                    out["max_age"] = age
            elif key == "allowCredentials":
                if child.value is True:
                    out["allow_credentials"] = True
            elif key == "unmatchedPreflights" and self.str_of(child) == "FORWARD":
                pass  # what the facade does: a preflight from another origin goes upstream
            else:
                self.lost(child, f"corsPolicy.{key}: not imported")
        if not out.get("allow_origins"):
            self.lost(node, "corsPolicy without allowOrigins: allows no origin; not imported")
            return {}
        return out

    def retry_on(self, node: Node) -> dict[str, Any]:
        """``retryOn: "5xx,gateway-error,retriable-4xx,429"`` -> ``retry_on`` (and the statuses other
        than 502/503/504 as ``retriable_status_codes``)."""
        kinds: list[str] = []
        codes: list[int] = []
        for part in (p.strip() for p in (self.str_of(node) or "").split(",")):
            if not part:
                continue
            if part.isdigit() and 400 <= int(part) <= 599:
                status = int(part)
                if status in _NAMED_STATUSES:
                    kinds.append(part)
                elif status not in codes:
                    codes.append(status)
                continue
            mapped = _RETRY_ON.get(part)
            if mapped is None:
                self.lost(node, f"retryOn {part!r}: not imported")
            elif mapped not in kinds:
                kinds.append(mapped)
        if codes:
            kinds.append("retriable-status-codes")
        out: dict[str, Any] = {"retry_on": list(dict.fromkeys(kinds)) or ["connect-failure"]}
        if codes:
            out["retriable_status_codes"] = codes
        return out

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
                        if name.lower() in RESERVED_REQUEST_HEADERS:
                            self.lost(value, f"header {name}: the facade sets it itself")
                            continue
                        rules.setdefault(op, {})[name.lower()] = self.str_of(value) or ""
                elif op == "remove":
                    for name_node in values.elements():
                        name = self.str_of(name_node) or ""
                        if name.lower() in RESERVED_REQUEST_HEADERS:
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
                out |= self.retry_on(child)
            else:
                self.lost(child, f"retries.{key}: not imported")
        return out


def _percent(node: Node | None) -> float | None:
    """Istio's ``percentage: {value: 12.5}`` (or the deprecated integer ``percent``) as a number."""
    if node is None or node.is_null:
        return None
    inner = node.get("value") if node.is_mapping else node
    value = inner.value if inner is not None and inner.is_scalar else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _rewritable_match(match: Node) -> bool:
    """A match whose uri condition the facade keeps as the same kind (prefix, exact, regex), so a
    ``rewrite.uri`` replaces what Istio's replaces: not a case-insensitive prefix (a regex here)."""
    uri = match.get("uri")
    if uri is None or not uri.is_mapping:
        return False
    ignore_case = match.get("ignoreUriCase")
    icase = ignore_case is not None and ignore_case.value is True
    return any(uri.get(k) is not None for k in ("exact", "regex")) or (uri.get("prefix") is not None and not icase)


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
