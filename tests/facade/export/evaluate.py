"""Routing decisions for the export equivalence tests, three ways:

- ``facade_outcome``: the facade itself (``RouteTable.resolve`` + ``split.decide`` + ``shadow.mirrorable``);
- ``istio_outcome``: a small evaluator of exported VirtualServices (one virtual host per request:
  exact host, then the longest wildcard suffix, then ``*``; ``http[]`` first match);
- ``gateway_outcome``: a small evaluator of exported HTTPRoutes (the Gateway API precedence rules as
  the HTTPRoute CRD states them: hostname, Exact path, longest PathPrefix, method, header count,
  query count, then rule order).

An outcome is None (404), ``("direct", status, body)``, ``("redirect", code, scheme, host, port,
path)`` or ``("forward", {(service, weight)}, mirror, upstream_path)`` with ``mirror`` =
``(service, percent of the matching requests)`` or None. Weighted steps compare the set of
destinations and weights, never a draw.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from facade.resolve import swap_prefix
from facade.routing import RouteTable
from facade.shadow import mirrorable
from facade.split import Split, decide

Outcome = tuple[Any, ...] | None
_GRID = 100  # draws per request: weights are whole percents, so a midpoint grid of 100 is exact


@dataclass(frozen=True)
class Request:
    host: str
    path: str
    method: str
    headers: tuple[tuple[str, str], ...] = ()  # lower-case names, each once
    query: tuple[tuple[str, str], ...] = ()  # each name once

    @property
    def asgi_headers(self) -> list[tuple[bytes, bytes]]:
        return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in self.headers]

    @property
    def query_string(self) -> bytes:
        return "&".join(f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in self.query).encode("ascii")

    def header(self, name: str) -> str | None:
        return dict(self.headers).get(name)


# -- the facade ------------------------------------------------------------------------------------


def facade_outcome(table: RouteTable, splits: Mapping[str, Split], req: Request) -> Outcome:
    hit = table.resolve(host=req.host, path=req.path, method=req.method, headers=req.asgi_headers,
                        query_string=req.query_string)
    if hit is None:
        return None
    route = hit.route
    if route.direct_response is not None:
        return ("direct", route.direct_response.status, route.direct_response.body)
    if route.redirect is not None:
        rd = route.redirect
        if rd.path is not None:
            path = rd.path
        elif rd.prefix is not None and hit.match.path_kind == "prefix":
            path = swap_prefix(req.path, hit.match.path, rd.prefix)
        else:
            path = req.path
        return ("redirect", rd.code, rd.scheme, rd.host, rd.port, path)
    split = splits.get(route.name)
    if split is None:
        backends = [b for b in route.backends if b.weight > 0]
        weights = {(b.service, b.weight if len(backends) > 1 else 100) for b in backends}
        return ("forward", frozenset(weights), None, hit.upstream_path)
    # Sticky cohorts are exported as plain weights (with a warning): compare the weights.
    plain = replace(split, sticky=None)
    counts: dict[str, int] = {}
    primary_draw: float | None = None
    for i in range(_GRID):
        rand = (i + 0.5) / _GRID
        backend = decide(plain, headers=req.asgi_headers, rand=rand, shadow_rand=0.9999999).backend
        counts[backend] = counts.get(backend, 0) + 1
        if backend == split.primary and primary_draw is None:
            primary_draw = rand
    mirror = None
    if primary_draw is not None and mirrorable(req.method, split):
        copies = sum(
            decide(plain, headers=req.asgi_headers, rand=primary_draw, shadow_rand=(j + 0.5) / (10 * _GRID)).shadow
            for j in range(10 * _GRID)
        )
        percent = counts[split.primary] / _GRID * copies / (10 * _GRID) * 100
        if percent > 0:
            mirror = (split.candidate, round(percent, 2))
    weights = frozenset((s, n * 100 // _GRID) for s, n in counts.items())
    return ("forward", weights, mirror, hit.upstream_path)


# -- Istio ------------------------------------------------------------------------------------------


def _pick_host(keys: Sequence[str], host: str) -> str | None:
    if host in keys:
        return host
    wild = [k for k in keys if k.startswith("*.") and host.endswith(k[1:]) and len(host) > len(k) - 1]
    if wild:
        return max(wild, key=len)
    return "*" if "*" in keys else None


def _string(sm: Mapping[str, str], value: str | None) -> bool:
    if value is None:
        return False
    if "exact" in sm:
        return value == sm["exact"]
    if "prefix" in sm:
        return value.startswith(sm["prefix"])
    return re.fullmatch(sm["regex"], value) is not None


def istio_outcome(docs: Sequence[Mapping[str, Any]], services: Mapping[str, str], req: Request) -> Outcome:
    """``services``: Kubernetes host -> facade service (the inverse of the export's host mapping)."""
    vss = {h: d for d in docs if d["kind"] == "VirtualService" for h in d["spec"]["hosts"]}
    key = _pick_host(list(vss), req.host)
    if key is None:
        return None
    query = dict(req.query)
    for http in vss[key]["spec"]["http"]:
        for m in http.get("match") or [{}]:
            uri = m.get("uri", {"prefix": "/"})
            if not _string(uri, req.path):
                continue
            if "method" in m and not _string(m["method"], req.method):
                continue
            if not all(_string(sm, req.header(n)) for n, sm in m.get("headers", {}).items()):
                continue
            if any(_string(sm, req.header(n)) for n, sm in m.get("withoutHeaders", {}).items()):
                continue
            if not all(_string(sm, query.get(n)) for n, sm in m.get("queryParams", {}).items()):
                continue
            return _istio_action(http, uri, services, req)
    return None


def _istio_service(destination: Mapping[str, Any], services: Mapping[str, str]) -> str:
    """The facade service a destination names: its host's, or ``service/subset`` for a subset."""
    service = services[destination["host"]]
    return f"{service}/{destination['subset']}" if "subset" in destination else service


def _istio_action(http: Mapping[str, Any], uri: Mapping[str, str], services: Mapping[str, str], req: Request
                  ) -> Outcome:
    if "directResponse" in http:
        return ("direct", http["directResponse"]["status"], http["directResponse"]["body"]["string"])
    if "redirect" in http:
        rd = http["redirect"]
        path = req.path
        if "uri" in rd:
            path = rd["uri"]
        elif "prefixRewrite" in rd:
            path = rd["prefixRewrite"] + req.path[len(uri["prefix"]):]
        return ("redirect", rd.get("redirectCode", 301), rd.get("scheme"), rd.get("authority"), rd.get("port"), path)
    route = http["route"]
    weights = frozenset((_istio_service(r["destination"], services), r.get("weight", 100)) for r in route)
    mirror = None
    if "mirror" in http:
        mirror = (services[http["mirror"]["host"]], round(http["mirrorPercentage"]["value"], 2))
    path = req.path
    if "rewrite" in http:
        new = http["rewrite"]["uri"]
        path = new + req.path[len(uri["prefix"]):] if "prefix" in uri else new
    return ("forward", weights, mirror, path)


# -- Gateway API ------------------------------------------------------------------------------------


def _gw_path(match: Mapping[str, Any], path: str) -> bool:
    kind, value = match["path"]["type"], match["path"]["value"]
    if kind == "Exact":
        return path == value
    base = value.rstrip("/")  # "a trailing / is ignored"; matching is per path element
    return path == value or path == base or path.startswith(base + "/") or base == ""


def _gw_value(m: Mapping[str, Any], value: str | None) -> bool:
    if value is None:
        return False
    if m.get("type", "Exact") == "Exact":
        return value == m["value"]
    return re.fullmatch(m["value"], value) is not None


def _gw_key(match: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    path = match["path"]
    return (path["type"] == "Exact", len(path["value"]), "method" in match, len(match.get("headers", [])),
            len(match.get("queryParams", [])))


def _host_rank(route: Mapping[str, Any], host: str) -> tuple[int, int] | None:
    """Hostname precedence: (characters of a matching non-wildcard hostname, of any matching hostname)."""
    names = route["spec"].get("hostnames")
    if not names:
        return (0, 0)
    best: tuple[int, int] | None = None
    for name in names:
        if name == host:
            rank = (len(name), len(name))
        elif name.startswith("*.") and host.endswith(name[1:]) and len(host) > len(name) - 1:
            rank = (0, len(name))
        else:
            continue
        best = rank if best is None or rank > best else best
    return best


def gateway_outcome(docs: Sequence[Mapping[str, Any]], services: Mapping[str, str], req: Request) -> Outcome:
    """``services``: backendRef name -> facade service."""
    routes = [(rank, d) for d in docs if d["kind"] == "HTTPRoute" if (rank := _host_rank(d, req.host)) is not None]
    routes.sort(key=lambda x: x[0], reverse=True)
    query = dict(req.query)
    for _, route in routes:
        best: tuple[Any, ...] | None = None
        for index, rule in enumerate(route["spec"]["rules"]):
            for match in rule.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]:
                if not _gw_path(match, req.path):
                    continue
                if "method" in match and match["method"] != req.method:
                    continue
                if not all(_gw_value(h, req.header(h["name"].lower())) for h in match.get("headers", [])):
                    continue
                if not all(_gw_value(q, query.get(q["name"])) for q in match.get("queryParams", [])):
                    continue
                candidate = (_gw_key(match), -index, rule, match)
                if best is None or candidate[:2] > best[:2]:
                    best = candidate
        if best is not None:
            return _gw_action(best[2], best[3], services, req)
    return None


def _gw_action(rule: Mapping[str, Any], match: Mapping[str, Any], services: Mapping[str, str], req: Request
               ) -> Outcome:
    filters = {f["type"]: f for f in rule.get("filters", [])}
    matched = match["path"]["value"].rstrip("/")

    def new_path(spec: Mapping[str, Any]) -> str:
        if spec["type"] == "ReplaceFullPath":
            return str(spec["replaceFullPath"])
        rest = req.path[len(matched):]
        replacement = spec["replacePrefixMatch"]
        if replacement == "/":
            return rest or "/"
        return replacement.rstrip("/") + rest

    if "RequestRedirect" in filters:
        rd = filters["RequestRedirect"]["requestRedirect"]
        path = new_path(rd["path"]) if "path" in rd else req.path
        return ("redirect", rd.get("statusCode", 302), rd.get("scheme"), rd.get("hostname"), rd.get("port"), path)
    refs = rule["backendRefs"]
    total = sum(r.get("weight", 1) for r in refs)
    weights = frozenset((services[r["name"]], r.get("weight", 1) * 100 // total) for r in refs if r.get("weight", 1))
    mirror = None
    if "RequestMirror" in filters:
        m = filters["RequestMirror"]["requestMirror"]
        percent = m["percent"] if "percent" in m else m["fraction"]["numerator"] * 100 / m["fraction"]["denominator"]
        mirror = (services[m["backendRef"]["name"]], round(percent, 2))
    path = new_path(filters["URLRewrite"]["urlRewrite"]["path"]) if "URLRewrite" in filters else req.path
    return ("forward", weights, mirror, path)
