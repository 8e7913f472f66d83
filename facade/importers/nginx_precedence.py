"""nginx's precedence as a first-match list: which location and which server nginx picks, turned
into an order of facade routes that picks the same (docs/import.md, "Which request goes where").

Pure: the nginx importer (``nginx.py``) reads the config into ``Server`` / ``Location`` values;
this module only orders them and translates their patterns. ``tests/facade/importers/
test_nginx_live.py`` checks the result against a real nginx, request by request.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .nginx import Stmt

__all__ = ["Location", "Server", "host_tiers", "literal", "nginx_regex_to_facade", "order_locations", "prefix_match"]

_GLOBAL_FLAGS = re.compile(r"^\(\?([aiLmsux]+)\)")

# -- patterns ---------------------------------------------------------------------------------------


def nginx_regex_to_facade(pattern: str, *, ignore_case: bool, within: str | None = None) -> str:
    """A facade path regex (Python ``re.fullmatch``) that matches exactly the paths on which nginx's
    PCRE search ``pattern`` matches; ``within`` restricts it to paths starting with that string.
    Raises ValueError with the reason when Python's ``re`` cannot express the pattern."""
    flags = ""
    body = pattern
    m = _GLOBAL_FLAGS.match(body)
    if m:
        flags, body = m[1], body[m.end() :]
    if ignore_case and "i" not in flags:
        flags += "i"
    _check_python_regex(pattern, body, flags)
    alternation = _has_top_level_alternation(body)
    anchored_start = body.startswith("^") and not alternation
    anchored_end = _ends_with_dollar(body) and not alternation
    core = ("" if anchored_start else ".*") + f"(?:{body})" + ("" if anchored_end else ".*")
    if flags:
        core = f"(?{flags}:{core})"
    out = (f"(?={literal(within)})" if within and within != "/" else "") + core
    re.compile(out)  # the translation itself must compile when the pattern does
    return out


def _check_python_regex(original: str, body: str, flags: str) -> None:
    with warnings.catch_warnings():
        # "[[:alpha:]]" compiles in Python as a different set (with a FutureWarning): refuse it.
        warnings.simplefilter("error", FutureWarning)
        try:
            re.compile(f"(?{flags}:{body})" if flags else body)
        except re.error as exc:
            hint = ""
            if "?<" in body and "unknown extension ?<" in str(exc):
                hint = " (write (?P<name>...) for a named group)"
            raise ValueError(f"regex {original!r} is not supported by Python's re: {exc}{hint}") from None
        except FutureWarning as exc:
            raise ValueError(f"regex {original!r} means something else in Python's re: {exc}") from None


def _has_top_level_alternation(body: str) -> bool:
    depth, i, in_class = 0, 0, False
    while i < len(body):
        c = body[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if body[i + 1 : i + 2] == "]":  # "[]...]": a leading "]" is a member
                i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return True
        i += 1
    return False


def _ends_with_dollar(body: str) -> bool:
    if not body.endswith("$"):
        return False
    backslashes = len(body[:-1]) - len(body[:-1].rstrip("\\"))
    return backslashes % 2 == 0


def literal(text: str) -> str:
    return re.sub(r"([.^$*+?{}\[\]\\|()])", r"\\\1", text)


def prefix_match(prefix: str) -> dict[str, str]:
    # nginx prefixes compare characters: "/api" matches "/apix". A facade prefix compares segments,
    # which is the same thing only when the prefix ends with "/".
    if prefix.endswith("/"):
        return {"prefix": prefix}
    return {"regex": literal(prefix) + ".*"}


@dataclass
class Location:
    stmt: Stmt
    modifier: str  # "=", "^~", "", "~", "~*"
    pattern: str
    action: dict[str, Any]
    proxies: bool  # has proxy_pass (nginx then redirects "/p" to "/p/" for a location "/p/")


@dataclass
class Server:
    stmt: Stmt
    label: str
    names: list[tuple[str, str]] = field(default_factory=list)  # ("exact" | "star" | "dot", name), in order
    default: bool = False
    listens: list[str] = field(default_factory=list)
    server_return: dict[str, Any] | None = None
    locations: list[Location] = field(default_factory=list)


# -- order: nginx's precedence as a first-match list ----------------------------------------------


def order_locations(locs: list[Location]) -> list[tuple[Location, dict[str, Any], dict[str, str]]]:
    """``(location, action, facade path match)`` in an order where the first match is nginx's choice.

    1. ``=`` locations, and the ``/p`` -> ``/p/`` redirects nginx answers for a proxied ``/p/``;
    2. per ``^~`` prefix P, longest first: the plain prefixes Q longer than P under it, each after
       the regexes restricted to paths under Q (a plain longest prefix still loses to a regex),
       then P itself (when it is the longest prefix, no regex is tried);
    3. the regexes in file order; 4. the remaining plain prefixes, longest first.
    """
    exact = [loc for loc in locs if loc.modifier == "="]
    prefixes = [loc for loc in locs if loc.modifier in ("", "^~")]
    regexes = [loc for loc in locs if loc.modifier in ("~", "~*")]
    out: list[tuple[Location, dict[str, Any], dict[str, str]]] = [
        (loc, loc.action, {"exact": loc.pattern}) for loc in exact
    ]
    static = {loc.pattern for loc in exact + prefixes}
    for loc in exact + prefixes:
        bare = loc.pattern[:-1]
        if loc.proxies and len(loc.pattern) > 1 and loc.pattern.endswith("/") and bare not in static:
            static.add(bare)  # "= /p/" and "/p/" both proxied: one redirect
            out.append((loc, {"redirect": {"path": loc.pattern, "code": 301}}, {"exact": bare}))

    def regex(loc: Location, within: str | None) -> dict[str, str]:
        return {"regex": nginx_regex_to_facade(loc.pattern, ignore_case=loc.modifier == "~*", within=within)}

    by_length = sorted(prefixes, key=lambda loc: -len(loc.pattern))
    emitted: set[int] = set()
    for p in (loc for loc in by_length if loc.modifier == "^~"):
        for q in by_length:
            if (
                q.modifier == ""
                and id(q) not in emitted
                and len(q.pattern) > len(p.pattern)
                and q.pattern.startswith(p.pattern)
            ):
                emitted.add(id(q))
                out.extend((r, r.action, regex(r, q.pattern)) for r in regexes)
                out.append((q, q.action, prefix_match(q.pattern)))
        out.append((p, p.action, prefix_match(p.pattern)))
    out.extend((r, r.action, regex(r, None)) for r in regexes)
    out.extend((q, q.action, prefix_match(q.pattern)) for q in by_length if q.modifier == "" and id(q) not in emitted)
    return out


@dataclass(frozen=True)
class _Wildcard:
    server: Server
    suffix: str  # "a.test" for "*.a.test" and ".a.test"
    dot: bool  # ".a.test": also "a.test" itself
    order: int  # registration order

    def covers(self, host: str) -> bool:
        return host.endswith("." + self.suffix) or (self.dot and host == self.suffix)

    @property
    def hosts(self) -> list[str]:
        return ([self.suffix] if self.dot else []) + ["*." + self.suffix]


def _register_names(servers: list[Server]) -> tuple[dict[str, Server], list[_Wildcard]]:
    """Which server owns each name, as nginx decides at start: the first server to register a name
    keeps it; a later duplicate is ignored ("conflicting server name"). ``.a.test`` and ``*.a.test``
    are one wildcard key, and ``.a.test`` also claims the exact name ``a.test`` (while still
    matching it in the wildcard phase)."""
    exact: dict[str, Server] = {}
    claimed: set[str] = set()  # nginx's conflict table of exact names
    wildcards: dict[str, _Wildcard] = {}
    for srv in servers:
        for kind, name in srv.names:
            if kind == "exact":
                if name not in claimed:
                    claimed.add(name)
                    exact[name] = srv
            elif kind == "dot":
                if name in claimed:
                    continue
                claimed.add(name)
                if name not in wildcards:
                    wildcards[name] = _Wildcard(srv, name, True, len(wildcards))
            elif name not in wildcards:
                wildcards[name] = _Wildcard(srv, name, False, len(wildcards))
    return exact, sorted(wildcards.values(), key=lambda w: (-len(w.suffix), w.order))


def host_tiers(servers: list[Server], default: Server) -> list[tuple[Server, list[str] | None]]:
    """``(server, hosts)`` in first-match order: exact names, then wildcards longest suffix first,
    then the default server for any host (``None``). The default server's own names get a tier only
    where another server's wildcard would otherwise take them."""
    exact, wildcards = _register_names(servers)
    others = [w for w in wildcards if w.server is not default]
    tiers: list[tuple[Server, list[str] | None]] = []
    for srv in servers:
        hosts = [
            h for h, owner in exact.items() if owner is srv and (srv is not default or any(w.covers(h) for w in others))
        ]
        if hosts:
            tiers.append((srv, hosts))
    for w in wildcards:
        if w.server is default and not any(o.covers(h) for o in others for h in w.hosts):
            continue
        if (
            tiers
            and tiers[-1][0] is w.server
            and tiers[-1][1]
            and all(h in _wild_hosts(wildcards) for h in tiers[-1][1])
        ):
            tiers[-1][1].extend(w.hosts)  # consecutive wildcards of one server share its routes
        else:
            tiers.append((w.server, list(w.hosts)))
    tiers.append((default, None))
    return tiers


def _wild_hosts(wildcards: list[_Wildcard]) -> set[str]:
    return {h for w in wildcards for h in w.hosts}
