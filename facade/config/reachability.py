"""Routes that can never match: an earlier route matches every request a later one could.
"""

from __future__ import annotations

from collections.abc import Sequence

from .model import Route, RouteMatch

# == unreachable routes =====================================================================
#
# A later route is reported only when an earlier route certainly matches every request the
# later one could: same or broader hosts, path and methods, and no header / query condition
# the later route does not also have. Earlier routes are indexed by host and path (like the
# route table itself), so a config with thousands of routes is checked in about linear time.


def unreachable_routes(routes: Sequence[Route]) -> list[tuple[int, int]]:
    """``(later, earlier)`` index pairs: route ``later`` can never match because route ``earlier``
    (the first such) matches every request it could. Conservative: only certain cases."""
    index = _CoverIndex()
    out: list[tuple[int, int]] = []
    for j, route in enumerate(routes):
        common: set[int] | None = None
        for m in route.matches:
            covering = {i for i, em in index.candidates(m) if _match_covers(em, m)}
            common = covering if common is None else common & covering
            if not common:
                break
        if common:
            out.append((j, min(common)))
        for m in route.matches:
            index.add(j, m)
    return out


class _CoverIndex:
    """Earlier match entries by host key, then by exact path / prefix path (regex paths never cover)."""

    def __init__(self) -> None:
        self._buckets: dict[
            str, tuple[dict[str, list[tuple[int, RouteMatch]]], dict[str, list[tuple[int, RouteMatch]]]]
        ] = {}

    def add(self, index: int, m: RouteMatch) -> None:
        if m.path_kind == "regex":
            return
        keys = [""] if (not m.hosts or "*" in m.hosts) else list(m.hosts)
        for key in keys:
            exact, prefix = self._buckets.setdefault(key, ({}, {}))
            (exact if m.path_kind == "exact" else prefix).setdefault(m.path, []).append((index, m))

    def candidates(self, m: RouteMatch) -> list[tuple[int, RouteMatch]]:
        out: list[tuple[int, RouteMatch]] = []
        for key in self._host_keys(m.hosts):
            bucket = self._buckets.get(key)
            if bucket is None:
                continue
            exact, prefix = bucket
            if m.path_kind == "regex":
                out.extend(prefix.get("/", ()))
                continue
            if m.path_kind == "exact":
                out.extend(exact.get(m.path, ()))
            for p in _covering_prefixes(m.path):
                out.extend(prefix.get(p, ()))
        return out

    @staticmethod
    def _host_keys(hosts: tuple[str, ...]) -> list[str]:
        if not hosts or "*" in hosts:
            return [""]
        first = hosts[0]  # an earlier match must cover every host, so covering the first is necessary
        keys = ["", first]
        labels = first[2:].split(".") if first.startswith("*.") else first.split(".")[1:]
        keys.extend("*." + ".".join(labels[i:]) for i in range(len(labels)))
        return keys


def _covering_prefixes(path: str) -> list[str]:
    """Every prefix P that covers ``path`` segment-wise: P == path, or P ends with "/" and path
    starts with P, or path starts with P + "/" (the router's prefix rule)."""
    out = [path]
    i = path.find("/")
    while i >= 0:
        if i > 0:
            out.append(path[:i])
        if i + 1 < len(path):
            out.append(path[: i + 1])
        i = path.find("/", i + 1)
    return out


def _match_covers(earlier: RouteMatch, later: RouteMatch) -> bool:
    if not _hosts_cover(earlier.hosts, later.hosts):
        return False
    if earlier.methods and not (later.methods and set(later.methods) <= set(earlier.methods)):
        return False
    if not set(earlier.headers) <= set(later.headers) or not set(earlier.query) <= set(later.query):
        return False
    if earlier.path_kind == "regex":
        return False
    if earlier.path_kind == "exact":
        return later.path_kind == "exact" and later.path == earlier.path
    if later.path_kind == "regex":
        return earlier.path == "/"
    return earlier.path in _covering_prefixes(later.path)


def _hosts_cover(earlier: tuple[str, ...], later: tuple[str, ...]) -> bool:
    if not earlier or "*" in earlier:
        return True
    if not later or "*" in later:
        return False
    return all(any(_host_covers(e, h) for e in earlier) for h in later)


def _host_covers(earlier: str, host: str) -> bool:
    # "*.x" covers "a.x", "a.b.x" and "*.a.x" (Envoy suffix wildcards), but not "x" itself.
    return earlier == host or (earlier.startswith("*.") and host.endswith(earlier[1:]))
