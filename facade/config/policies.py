"""Reading a route's traffic policies: ``fault`` (also a migration step option) and ``cors``.

Semantics are Istio's (HTTPFaultInjection, CorsPolicy); docs/configuration.md lists the keys.
"""

from __future__ import annotations

from typing import Literal, cast

from ..yamlfile import Node, Problems, read_bool, read_duration, read_int, read_percent, read_str
from .model import CorsPolicy, FaultAbort, FaultDelay, FaultPolicy, StringMatch
from .reading import _TOKEN_RE, header_value_problem
from .regex import regex_problem

__all__ = ["read_cors", "read_fault"]

_ORIGIN_KINDS = ("exact", "prefix", "regex")


def read_fault(node: Node | None, problems: Problems) -> FaultPolicy | None:
    """``fault: {delay: {fixed: 2s, percent: 10}, abort: {status: 503, percent: 5}}``; None when absent."""
    if node is None or node.is_null:
        return None
    f = node.fields(problems, ("delay", "abort"))
    if node.is_mapping and not f and not node.items():
        problems.error(node, "needs delay, abort or both")
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    if "delay" in f:
        df = f["delay"].fields(problems, ("fixed", "percent"), required=("fixed",))
        fixed = read_duration(df.get("fixed"), problems, default=None)
        if fixed is not None and fixed <= 0:
            problems.error(df["fixed"], f"must be greater than 0, got {df['fixed'].value}")
            fixed = None
        percent = read_percent(df.get("percent"), problems, default=100.0)
        if fixed is not None and percent is not None:
            delay = FaultDelay(fixed=fixed, percent=percent)
    if "abort" in f:
        af = f["abort"].fields(problems, ("status", "percent"), required=("status",))
        status = read_int(af.get("status"), problems, default=None)
        if status is not None and not 200 <= status <= 599:
            problems.error(af["status"], f"must be an HTTP status 200-599, got {status}")
            status = None
        percent = read_percent(af.get("percent"), problems, default=100.0)
        if status is not None and percent is not None:
            abort = FaultAbort(status=status, percent=percent)
    if delay is None and abort is None:
        return None
    return FaultPolicy(delay=delay, abort=abort)


def read_cors(node: Node | None, problems: Problems) -> CorsPolicy | None:
    """``cors: {allow_origins: [...], allow_methods, allow_headers, expose_headers, max_age, allow_credentials}``."""
    if node is None or node.is_null:
        return None
    f = node.fields(
        problems,
        ("allow_origins", "allow_methods", "allow_headers", "expose_headers", "max_age", "allow_credentials"),
        required=("allow_origins",),
    )
    if not node.is_mapping:
        return None
    origins: list[StringMatch] = []
    on = f.get("allow_origins")
    if on is not None and (not on.is_list or not on.elements()):
        problems.error(on, "must be a non-empty list of origins (\"https://shop.example\", {prefix: ...}, {regex: ...})")
    for element in on.elements() if on is not None and on.is_list else []:
        match = _read_origin(element, problems)
        if match is not None:
            origins.append(match)
    credentials = read_bool(f.get("allow_credentials"), problems, default=False)
    if credentials and any(m.kind == "exact" and m.value == "*" for m in origins):
        # The facade echoes the request's origin (never "*", which browsers refuse with credentials),
        # so this lets every web site send requests with the user's cookies and read the answers.
        problems.warn(
            f["allow_credentials"],
            'with allow_origins "*" every web site may make credentialed requests and read the answers; '
            "list the origins that may",
        )
    methods = _read_tokens(f.get("allow_methods"), problems, "method", upper=True)
    max_age: int | None = None
    if "max_age" in f:
        seconds = read_duration(f["max_age"], problems, default=None, min=0.0)
        max_age = int(seconds) if seconds is not None else None
    return CorsPolicy(
        allow_origins=tuple(origins),
        allow_methods=methods,
        allow_headers=_read_tokens(f.get("allow_headers"), problems, "header name", upper=False),
        expose_headers=_read_tokens(f.get("expose_headers"), problems, "header name", upper=False),
        max_age=max_age,
        allow_credentials=credentials,
    )


def _origin_problem(kind: str, value: str) -> str | None:
    """Why an allowed origin can never match a browser's ``Origin`` (or is not header text), or None.

    A browser sends ``scheme://host[:port]`` (or ``null``), never a path: ``https://shop.example/`` looks
    allowed in the file but matches nothing, which shows up only as CORS errors in someone's browser.
    """
    if not value:
        return "must not be empty"
    reason = header_value_problem(value)
    if reason is not None or any(c.isspace() for c in value):
        return reason or "an origin has no spaces or tabs"
    if kind != "exact" or value in ("*", "null"):
        return None
    scheme, sep, rest = value.partition("://")
    if not sep or not scheme or not rest:
        return f"an origin is scheme://host[:port] (e.g. https://shop.example) or \"*\", got {value!r}"
    if "/" in rest or "?" in rest or "#" in rest:
        bare = f"{scheme}://{rest.split('/')[0].split('?')[0].split('#')[0]}"
        return f"an origin has no path, and browsers send none: {value!r} never matches; did you mean {bare!r}?"
    return None


def _warn_upper_case(node: Node, value: str, problems: Problems) -> None:
    # Browsers serialize an origin's scheme and host in lower case, and origins compare case-sensitively.
    scheme, sep, rest = value.partition("://")
    host = rest.split(":")[0] if not rest.startswith("[") else rest
    if sep and (scheme + host) != (scheme + host).lower():
        lower = f"{scheme.lower()}://{host.lower()}{rest[len(host):]}"
        problems.warn(node, f"browsers send the origin in lower case: {value!r} never matches; write {lower!r}")


def _read_origin(node: Node, problems: Problems) -> StringMatch | None:
    if node.is_scalar and not node.is_null:
        if not isinstance(node.value, str):
            problems.error(node, f"must be a string (an origin such as \"https://shop.example\"), got {node.value!r}")
            return None
        value = node.value  # a bare string is exact; "*" is any origin
        reason = _origin_problem("exact", value)
        if reason is not None:
            problems.error(node, reason)
            return None
        _warn_upper_case(node, value, problems)
        return StringMatch("exact", value)
    f = node.fields(problems, _ORIGIN_KINDS)
    given = [k for k, _ in node.items() if k in f]
    if node.is_mapping and len(given) != 1:
        problems.error(node, "needs exactly one of exact, prefix, regex")
        return None
    if not given:
        return None
    kind = given[0]
    value = read_str(f[kind], problems)
    if value is None:
        return None
    reason = _origin_problem(kind, value) if kind != "regex" or not value else None
    if reason is not None:
        problems.error(f[kind], reason)
        return None
    if kind == "regex":
        reason = regex_problem(value)
        if reason is not None:
            problems.error(f[kind], reason)
            return None
    else:
        _warn_upper_case(f[kind], value, problems)
    return StringMatch(cast(Literal["exact", "prefix", "regex"], kind), value)


def _read_tokens(node: Node | None, problems: Problems, what: str, *, upper: bool) -> tuple[str, ...]:
    if node is None or node.is_null:
        return ()
    if not node.is_list:
        problems.error(node, f"must be a list of {what}s, got {node.kind}")
        return ()
    out: list[str] = []
    for element in node.elements():
        value = read_str(element, problems)
        if value is None:
            continue
        if value != "*" and not _TOKEN_RE.match(value):
            problems.error(element, f"invalid {what} {value!r}")
            continue
        value = value.upper() if upper else value.lower()
        if value not in out:
            out.append(value)
    return tuple(out)
