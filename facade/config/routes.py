"""Reading ``routes:``: matches (hosts, path, methods, headers, query), actions and header operations.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Literal, NamedTuple, cast

from ..yamlfile import (
    Node,
    Problems,
    read_bool,
    read_int,
    read_str,
)
from .model import (
    DirectResponse,
    HeaderOps,
    RateLimit,
    RateLimitUnit,
    Redirect,
    Route,
    RouteMatch,
    StringMatch,
    WeightedBackend,
)
from .policies import read_cors, read_fault
from .reading import (
    _ACTIONS,
    _HOST_LABELS_RE,
    _REDIRECT_CODES,
    _ROUTE_FIELDS,
    _STRING_MATCH_KINDS,
    _TOKEN_RE,
    _Ctx,
    _nonempty_str,
    _optional_duration,
    _read_abs_path,
    header_value_problem,
)
from .regex import regex_problem
from .services import _read_retries

# -- routes --------------------------------------------------------------------------------------


def _read_routes(node: Node | None, ctx: _Ctx, services: list[str], root: Node) -> list[tuple[Route, Node]]:
    problems = ctx.problems
    out: list[tuple[Route, Node]] = []
    if node is None or node.is_null:
        problems.warn(node or root, "no routes: every request gets 404", path="routes")
        return out
    if not node.is_list:
        problems.error(node, f"must be a list of routes, got {node.kind}")
        return out
    if not node.elements():
        problems.warn(node, "no routes: every request gets 404")
    names: dict[str, int] = {}
    for element in node.elements():
        route = _read_route(element, ctx, services, names)
        if route is not None:
            out.append((route, element))
    return out


def _read_route(node: Node, ctx: _Ctx, services: list[str], names: dict[str, int]) -> Route | None:
    problems = ctx.problems
    before = len(problems.errors)
    f = node.fields(problems, _ROUTE_FIELDS, required=("name",))
    if not node.is_mapping:
        return None
    name = _nonempty_str(f.get("name"), problems)
    if name is not None and name in names:
        problems.error(f["name"], f"duplicate route name {name!r} (first at line {names[name]})")
    elif name is not None:
        names[name] = node.line
    matches = _read_matches(f.get("match"), problems)

    actions = [k for k in f if k in _ACTIONS]  # file order, so the error points at the second one
    if not actions:
        problems.error(node, "needs one action: backend, backends, redirect or direct_response")
    for extra in actions[1:]:
        problems.error(
            node.key_node(extra) or f[extra],
            f"only one action per route: {actions[0]!r} is already given",
            path=f[extra].path,
        )
    backends: tuple[WeightedBackend, ...] = ()
    if "backend" in f:
        service = _service_ref(f["backend"], problems, services)
        backends = (WeightedBackend(service),) if service is not None else ()
    elif "backends" in f:
        backends = _read_backends(f["backends"], problems, services)
    redirect = _read_redirect(f["redirect"], problems) if "redirect" in f else None
    direct = _read_direct_response(f["direct_response"], problems) if "direct_response" in f else None

    rewrite = _read_rewrite(f.get("rewrite"), problems)
    forwards = "backend" in f or "backends" in f
    for key in ("rewrite", "fault", "cors"):
        if key in f and not forwards:
            where = node.key_node(key) or f[key]
            problems.error(where, f"{key} only applies to routes with backend or backends", path=f[key].path)

    if "rate_limit" in f and not ("backend" in f or "backends" in f):
        problems.error(
            node.key_node("rate_limit") or f["rate_limit"],
            "rate_limit applies to routes with backend or backends",
            path=f["rate_limit"].path,
        )
    # null or absent: the service's request timeout applies
    timeout = _optional_duration(f.get("timeout"), problems, None)
    route = Route(
        name=name or "",
        matches=matches,
        backends=backends,
        redirect=redirect,
        direct_response=direct,
        rewrite_prefix=rewrite.prefix,
        rewrite_regex=rewrite.regex,
        rewrite_authority=rewrite.authority,
        request_headers=_read_header_ops(f.get("request_headers"), problems, RESERVED_REQUEST_HEADERS),
        response_headers=_read_header_ops(f.get("response_headers"), problems, _RESERVED_RESPONSE_HEADERS),
        timeout=timeout,
        retries=_read_retries(f.get("retries"), problems),
        rate_limit=_read_rate_limit(f.get("rate_limit"), problems),
        fault=read_fault(f.get("fault"), problems),
        cors=read_cors(f.get("cors"), problems),
        line=node.line,
    )
    return route if len(problems.errors) == before else None


def _read_rate_limit(node: Node | None, problems: Problems) -> RateLimit | None:
    """``rate_limit: {requests_per_unit: 100, unit: second, burst: 200, key: client_ip}`` (Envoy local_ratelimit)."""
    if node is None or node.is_null:
        return None
    f = node.fields(problems, ("requests_per_unit", "unit", "burst", "key"), required=("requests_per_unit",))
    if not node.is_mapping:
        return None
    rate = read_int(f.get("requests_per_unit"), problems, default=None, min=1)
    unit = read_str(f.get("unit"), problems, default="second", choices=("second", "minute", "hour"))
    burst = read_int(f.get("burst"), problems, default=0, min=1)
    raw_key = read_str(f.get("key"), problems, default="route")
    key: Literal["route", "client_ip", "header"] = "route"
    header = ""
    if raw_key in ("route", "client_ip"):
        key = cast(Literal["route", "client_ip"], raw_key)
    elif raw_key is not None and raw_key.startswith("header:") and _TOKEN_RE.match(raw_key[7:].strip()):
        key, header = "header", raw_key[7:].strip().lower()
    elif raw_key is not None:
        problems.error(f["key"], f"must be route, client_ip or header:<name> (e.g. header:x-api-key), got {raw_key!r}")
    if rate is None:
        return None
    return RateLimit(
        requests_per_unit=rate, unit=cast(RateLimitUnit, unit), burst=burst, key=key, header=header
    )


class _Rewrite(NamedTuple):
    prefix: str | None = None
    regex: tuple[str, str] | None = None
    authority: str | None = None


# What a regex substitution may put into a path: RFC 3986 pchar, "/" and group references; never
# a space, "?" or "#" (the upstream target would be another request line, query or fragment).
_SUBSTITUTION_RE = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@%/\\<>]*$")


def _read_rewrite(node: Node | None, problems: Problems) -> _Rewrite:
    """``rewrite: {prefix | regex: {pattern, substitution}, authority}``.

    ``prefix`` replaces the matched prefix of a prefix match and the whole path of an exact or
    regex match (Istio ``rewrite.uri``); ``regex`` substitutes every match of ``pattern`` in the
    path (Envoy ``regex_rewrite``, ``\\1`` for groups); ``authority`` is the Host sent upstream.
    """
    if node is None or node.is_null:
        return _Rewrite()
    f = node.fields(problems, ("prefix", "regex", "authority"))
    if node.is_mapping and not f and not node.items():
        problems.error(node, "needs prefix, regex or authority")
    if "prefix" in f and "regex" in f:
        problems.error(node.key_node("regex") or f["regex"], "give either prefix or regex, not both", path=f["regex"].path)
    prefix = _read_abs_path(f.get("prefix"), problems)
    regex: tuple[str, str] | None = None
    if "regex" in f:
        rf = f["regex"].fields(problems, ("pattern", "substitution"), required=("pattern", "substitution"))
        pattern = _read_regex(rf["pattern"], problems) if "pattern" in rf else None
        substitution: str | None = read_str(rf.get("substitution"), problems)
        if substitution is not None and not _SUBSTITUTION_RE.match(substitution):
            problems.error(
                rf["substitution"], f"substitution {substitution!r} may hold only path characters and \\N group references"
            )
            substitution = None
        if pattern is not None and substitution is not None:
            try:
                re.compile(pattern).sub(substitution, "")  # checks the group references against the pattern
            except (re.error, IndexError) as exc:
                problems.error(rf["substitution"], f"invalid substitution {substitution!r}: {exc}")
            else:
                regex = (pattern, substitution)
    authority: str | None = None
    if "authority" in f:
        value = _nonempty_str(f["authority"], problems)
        if value is not None:
            host = _canonical_host(value)
            port = value.strip().rpartition("]")[2].partition(":")[2] if ":" in value.strip().rpartition("]")[2] else ""
            if host is None or "*" in host:
                problems.error(f["authority"], f"invalid authority {value!r} (expected a host, e.g. catalog.internal:8080)")
            elif port and not 1 <= int(port) <= 65535:
                problems.error(f["authority"], f"invalid authority {value!r}: the port must be 1-65535")
            else:
                authority = value.strip().lower()
    return _Rewrite(prefix, regex, authority)


def _service_ref(node: Node, problems: Problems, services: list[str]) -> str | None:
    name = _nonempty_str(node, problems)
    if name is None:
        return None
    if name not in services and "/" in name and name.split("/", 1)[0] in services:
        # service/subset: the service exists, the subset does not
        service, subset = name.split("/", 1)
        subsets = [s.split("/", 1)[1] for s in services if s.startswith(service + "/")]
        hint = difflib.get_close_matches(subset, subsets, n=1)
        known = f" (subsets: {', '.join(subsets)})" if subsets else " (it declares no subsets)"
        problems.error(
            node, f"unknown subset {subset!r} of service {service!r}" + (f"; did you mean {hint[0]!r}?" if hint else known)
        )
        return None
    if name not in services:
        hint = difflib.get_close_matches(name, services, n=1)
        if hint:
            extra = f"; did you mean {hint[0]!r}?"
        else:
            extra = f" (services: {', '.join(services)})" if services else " (no services are defined)"
        problems.error(node, f"unknown service {name!r}{extra}")
        return None
    return name


def _read_backends(node: Node, problems: Problems, services: list[str]) -> tuple[WeightedBackend, ...]:
    if not node.is_list or not node.elements():
        problems.error(node, "must be a non-empty list of {service, weight}")
        return ()
    elements = node.elements()
    # Istio: a lone destination takes all traffic; several must state weights that sum to 100.
    default_weight = 100 if len(elements) == 1 else 0
    out: list[WeightedBackend] = []
    total = 0
    weights_ok = True
    for element in elements:
        f = element.fields(problems, ("service", "weight"), required=("service",))
        service = _service_ref(f["service"], problems, services) if "service" in f else None
        weight = read_int(f.get("weight"), problems, default=None, min=0)
        if "weight" in f and weight is None:
            weights_ok = False
        weight = default_weight if weight is None else weight
        total += weight
        if service is not None and any(b.service == service for b in out):
            problems.error(f["service"], f"service {service!r} is listed twice")
        elif service is not None:
            out.append(WeightedBackend(service, weight))
    if len(elements) > 1 and weights_ok and total != 100:
        problems.error(node, f"backend weights must sum to 100, got {total}")
    return tuple(out)


def _read_redirect(node: Node, problems: Problems) -> Redirect | None:
    f = node.fields(problems, ("scheme", "host", "port", "path", "prefix", "code"))
    if not node.is_mapping:
        return None
    if not any(k in f for k in ("scheme", "host", "port", "path", "prefix")):
        problems.error(node, "redirect needs at least one of scheme, host, port, path, prefix")
    if "path" in f and "prefix" in f:
        problems.error(
            node.key_node("prefix") or f["prefix"], "give either path or prefix, not both", path=f["prefix"].path
        )
    code = read_int(f.get("code"), problems, default=301)
    if code not in _REDIRECT_CODES:
        problems.error(f["code"], f"must be one of {', '.join(map(str, _REDIRECT_CODES))}, got {code}")
        code = 301
    host = _nonempty_str(f.get("host"), problems)
    return Redirect(
        scheme=read_str(f.get("scheme"), problems, default=None, choices=("http", "https")),
        host=host.lower() if host else None,
        port=read_int(f.get("port"), problems, default=None, min=1, max=65535),
        path=_read_abs_path(f.get("path"), problems),
        prefix=_read_abs_path(f.get("prefix"), problems),
        code=code,
    )


def _read_direct_response(node: Node, problems: Problems) -> DirectResponse | None:
    d = DirectResponse()
    f = node.fields(problems, ("status", "body", "content_type"))
    if not node.is_mapping:
        return None
    return DirectResponse(
        status=read_int(f.get("status"), problems, default=d.status, min=100, max=599),
        body=read_str(f.get("body"), problems, default=d.body),
        content_type=_nonempty_str(f.get("content_type"), problems) or d.content_type,
    )


# Headers that frame the message or belong to one hop: a rule changing them would desynchronize
# the connection (a Content-Length that lies about the body makes its tail a second request) or
# break keep-alive. Host addresses the request; the upstream must see the one the router matched.
_FRAMING_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}
)
# What a route may not set on the request (the importers leave such rules out for the same reason).
RESERVED_REQUEST_HEADERS = _FRAMING_HEADERS | {"host"}
_RESERVED_RESPONSE_HEADERS = _FRAMING_HEADERS


def _read_header_ops(node: Node | None, problems: Problems, reserved: frozenset[str]) -> HeaderOps:
    if node is None or node.is_null:
        return HeaderOps()
    f = node.fields(problems, ("set", "add", "remove"))

    def allowed(header: str | None, at: Node, path: str) -> str | None:
        if header is not None and header in reserved:
            problems.error(at, f"header {header!r} frames or addresses the message: the facade sets it, rules cannot", path=path)
            return None
        return header

    def pairs(n: Node | None) -> tuple[tuple[str, str], ...]:
        if n is None or n.is_null:
            return ()
        if not n.is_mapping:
            problems.error(n, f"must be a mapping of header name -> value, got {n.kind}")
            return ()
        out: list[tuple[str, str]] = []
        for key, value_node in n.items():
            at = n.key_node(key) or value_node
            header = allowed(_header_name(key, at, problems, value_node.path), at, value_node.path)
            value: str | None = read_str(value_node, problems)
            reason = header_value_problem(value) if value is not None else None
            if reason is not None:
                problems.error(value_node, reason)
                value = None
            if header is not None and value is not None:
                out.append((header, value))
        return tuple(out)

    remove: list[str] = []
    rn = f.get("remove")
    for element in rn.elements() if rn is not None else []:
        value = read_str(element, problems)
        header = _header_name(value, element, problems, element.path) if value is not None else None
        header = allowed(header, element, element.path)
        if header is not None:
            remove.append(header)
    if rn is not None and not rn.is_list and not rn.is_null:
        problems.error(rn, f"must be a list of header names, got {rn.kind}")
    return HeaderOps(set=pairs(f.get("set")), add=pairs(f.get("add")), remove=tuple(remove))


def _header_name(name: str, node: Node, problems: Problems, path: str) -> str | None:
    if not _TOKEN_RE.match(name):
        problems.error(node, f"invalid header name {name!r}", path=path)
        return None
    return name.lower()


# -- route matches ---------------------------------------------------------------------------------


def _read_matches(node: Node | None, problems: Problems) -> tuple[RouteMatch, ...]:
    if node is None or node.is_null:
        return (RouteMatch(),)
    if node.is_list:
        if not node.elements():
            problems.error(node, "must not be empty (leave match out to match every request)")
            return (RouteMatch(),)
        return tuple(_read_match(e, problems) for e in node.elements())
    return (_read_match(node, problems),)


def _read_match(node: Node, problems: Problems) -> RouteMatch:
    f = node.fields(problems, ("host", "path", "methods", "headers", "query"))
    hosts = _read_hosts(f.get("host"), problems)
    path_kind, path = _read_path_match(f.get("path"), problems)
    methods: list[str] = []
    mn = f.get("methods")
    for element in mn.elements() if mn is not None and mn.is_list else [mn] if mn is not None else []:
        value = read_str(element, problems)
        if value is None:
            continue
        if not _TOKEN_RE.match(value):
            problems.error(element, f"invalid method {value!r}")
        elif value.upper() not in methods:
            methods.append(value.upper())
    return RouteMatch(
        hosts=hosts,
        path_kind=path_kind,
        path=path,
        methods=tuple(methods),
        headers=_read_value_matches(f.get("headers"), problems, headers=True),
        query=_read_value_matches(f.get("query"), problems, headers=False),
    )


def _read_hosts(node: Node | None, problems: Problems) -> tuple[str, ...]:
    if node is None or node.is_null:
        return ()
    elements = node.elements() if node.is_list else [node]
    out: list[str] = []
    for element in elements:
        value = read_str(element, problems)
        if value is None:
            continue
        host = _canonical_host(value)
        if host is None:
            problems.error(element, f"invalid host {value!r} (expected e.g. shop.local, *.shop.local or *)")
        elif host not in out:
            out.append(host)
    return tuple(out)


def _canonical_host(value: str) -> str | None:
    """Lower-case, without port and trailing dot; None when not a host or host pattern."""
    host = value.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        literal, rest = host[1:end], host[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return None
        return f"[{literal}]"
    if host.count(":") == 1:
        host, port = host.split(":")
        if not port.isdigit():
            return None
    host = host.rstrip(".") if host != "." else host
    if host == "*":
        return host
    labels = host.removeprefix("*.")
    return host if _HOST_LABELS_RE.match(labels) else None


def _read_path_match(node: Node | None, problems: Problems) -> tuple[Literal["exact", "prefix", "regex"], str]:
    if node is None or node.is_null:
        return "prefix", "/"
    f = node.fields(problems, ("prefix", "exact", "regex"))
    given = [k for k, _ in node.items() if k in f and k in ("prefix", "exact", "regex")]
    if node.is_mapping and len(given) != 1:
        if not given:
            problems.error(node, "needs exactly one of prefix, exact, regex")
        for extra in given[1:]:
            problems.error(
                node.key_node(extra) or f[extra],
                f"give only one of prefix, exact, regex ({given[0]!r} is already given)",
                path=f[extra].path,
            )
    if not given:
        return "prefix", "/"
    kind = cast(Literal["exact", "prefix", "regex"], given[0])
    if kind == "regex":
        pattern = _read_regex(f[kind], problems)
        return kind, pattern if pattern is not None else ""
    return kind, _read_abs_path(f[kind], problems) or "/"


def _read_regex(node: Node, problems: Problems) -> str | None:
    pattern = read_str(node, problems)
    if pattern is None:
        return None
    reason = regex_problem(pattern)
    if reason is not None:
        problems.error(node, reason)
        return None
    return pattern


def _read_value_matches(node: Node | None, problems: Problems, *, headers: bool) -> tuple[tuple[str, StringMatch], ...]:
    if node is None or node.is_null:
        return ()
    what = "header" if headers else "query parameter"
    if not node.is_mapping:
        problems.error(node, f"must be a mapping of {what} name -> matcher, got {node.kind}")
        return ()
    out: list[tuple[str, StringMatch]] = []
    for key, value_node in node.items():
        key_node = node.key_node(key) or value_node
        if headers:
            name = _header_name(key, key_node, problems, value_node.path)
        else:
            name = key if key else None
            if name is None:
                problems.error(key_node, "query parameter name must not be empty", path=value_node.path)
        if name is None:
            continue
        if any(n == name for n, _ in out):
            problems.error(key_node, f"{what} {name!r} is matched twice", path=value_node.path)
            continue
        match = _read_string_match(value_node, problems)
        if match is not None:
            out.append((name, match))
    return tuple(out)


def _read_string_match(node: Node, problems: Problems) -> StringMatch | None:
    if node.is_scalar and not node.is_null:
        value = read_str(node, problems)  # a bare string means exact
        return StringMatch("exact", value) if value is not None else None
    f = node.fields(problems, (*_STRING_MATCH_KINDS, "case_sensitive"))
    given = [k for k, _ in node.items() if k in f and k in _STRING_MATCH_KINDS]
    if len(given) != 1:
        if not given and node.is_mapping:
            problems.error(node, f"needs exactly one of {', '.join(_STRING_MATCH_KINDS)}")
        for extra in given[1:]:
            problems.error(
                node.key_node(extra) or f[extra],
                f"give only one matcher ({given[0]!r} is already given)",
                path=f[extra].path,
            )
        return None
    kind = given[0]
    value_node = f[kind]
    # Envoy's StringMatcher.ignore_case, for exact and prefix only (a regex can say (?i) itself).
    case_node = f.get("case_sensitive")
    case_sensitive = read_bool(case_node, problems, default=True)
    if case_node is not None and kind not in ("exact", "prefix"):
        problems.error(
            node.key_node("case_sensitive") or case_node,
            f"applies to exact and prefix only, not {kind}" + (" (use (?i) in the regex)" if kind == "regex" else ""),
            path=case_node.path,
        )
    if kind in ("present", "absent"):
        flag = read_bool(value_node, problems)
        if flag is False:
            other = "absent" if kind == "present" else "present"
            problems.error(value_node, f"must be true (write {other}: true for the opposite)")
        return StringMatch(cast(Literal["present", "absent"], kind)) if flag else None
    if kind == "regex":
        pattern = _read_regex(value_node, problems)
        return StringMatch("regex", pattern) if pattern is not None else None
    value = read_str(value_node, problems)
    if value is None:
        return None
    return StringMatch(cast(Literal["exact", "prefix"], kind), value, case_sensitive=case_sensitive)

