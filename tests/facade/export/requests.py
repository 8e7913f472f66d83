"""Hypothesis strategies for requests that probe a config's routing where it is easy to get wrong:
paths at and around every prefix boundary (``/catalog``, ``/catalog/``, ``/catalogue``), every host
and wildcard the config names (and hosts just outside them), methods, and the header and query
values its matches and canaries test."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from facade.config import Config

from .evaluate import Request

_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS")
_SEGMENTS = ("a", "x", "v2", "2024", "abc", "ab1")


def _paths(config: Config) -> list[str]:
    literals = {"/"}
    for route in config.routes:
        for m in route.matches:
            if m.path_kind == "regex":
                head = m.path.split("[", 1)[0].split("(", 1)[0]
                literals.add(head if head.startswith("/") else "/")
            else:
                literals.add(m.path)
    out = set()
    for p in literals:
        base = p.rstrip("/") or ""
        for candidate in (p, base, base + "/", base + "x", base + "/a", base + "/a/b", base[:-1], base + "/2024",
                          base + "/2024/abc", base + "/20x", p.upper()):
            if candidate.startswith("/") and "//" not in candidate:
                out.add(candidate)
    return sorted(out)


def _hosts(config: Config) -> list[str]:
    out = {"other.example", "shop.local"}
    for route in config.routes:
        for m in route.matches:
            for h in m.hosts:
                if h.startswith("*."):
                    out.update({"a" + h[1:], "a.b" + h[1:], h[2:]})
                elif h != "*":
                    out.update({h, "x" + h})
    return sorted(out)


def _header_values(config: Config, plans: Sequence[Any]) -> tuple[list[str], list[str]]:
    names = {"x-canary", "cookie"}
    values = {"", "1", "x", "acme", "ACME-1", "beta=yes", "a=b; beta=yes", "beta=no", "session_id=u1"}
    for route in config.routes:
        for m in route.matches:
            for name, sm in m.headers:
                names.add(name)
                values.add(sm.value)
    for plan in plans:
        for step in plan.steps:
            if step.canary is not None:
                names.add("cookie" if step.canary.kind == "cookie" else step.canary.name)
                values.update({step.canary.value, f"{step.canary.name}={step.canary.value}"})
    return sorted(names), sorted(values)


def _query(config: Config) -> tuple[list[str], list[str]]:
    names, values = {"q"}, {"", "en", "fr"}
    for route in config.routes:
        for m in route.matches:
            for name, sm in m.query:
                names.add(name)
                values.add(sm.value)
    return sorted(names), sorted(values)


def requests_for(config: Config, plans: Sequence[Any]) -> st.SearchStrategy[Request]:
    header_names, header_values = _header_values(config, plans)
    query_names, query_values = _query(config)
    path = st.one_of(
        st.sampled_from(_paths(config)),
        st.lists(st.sampled_from(_SEGMENTS), min_size=0, max_size=3).map(lambda parts: "/" + "/".join(parts)),
    )
    headers = st.dictionaries(st.sampled_from(header_names), st.sampled_from(header_values), max_size=3)
    query = st.dictionaries(st.sampled_from(query_names), st.sampled_from(query_values), max_size=2)
    return st.builds(
        lambda host, p, method, h, q: Request(host, p, method, tuple(sorted(h.items())), tuple(sorted(q.items()))),
        st.sampled_from(_hosts(config)),
        path,
        st.sampled_from(_METHODS),
        headers,
        query,
    )
