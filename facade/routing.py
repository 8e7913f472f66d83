"""The compiled route table: which config route a request belongs to, first match wins.

Semantics follow Istio's ``http[]`` / Envoy's route table: the route with the lowest index
whose ANY ``matches`` entry matches wins; within an entry every condition must hold (hosts,
path, methods, headers, query). See docs/routing.md for the exact host and path rules.

Resolution is indexed, not scanned, so 10,000 routes cost about what 10 do:

    host  ─▶ exact-host bucket  (dict)
          ─▶ wildcard buckets   (dict keyed by ".suffix", looked up per label suffix of the host)
          ─▶ any-host bucket
    bucket ─▶ exact paths        (dict path -> entries)
           ─▶ prefixes           (dict prefix -> entries, looked up per segment prefix of the path)
           ─▶ regex paths        (short list, scanned)

Every list of entries is sorted by table position, so the first entry of each list that
passes its remaining predicates (methods, regex, headers, query) is that list's best; the
winner is the lowest position across the few lists gathered, and a list stops being read as
soon as it reaches a position at or past the best found so far. Everything is computed at
compile time; a compiled table is never mutated and can be shared across threads.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from .config import Route, RouteMatch, StringMatch
from .errors import ConfigError, Problem
from .traffic_policy import RoutePolicy, compile_policy

__all__ = ["RouteEntry", "RouteHit", "RouteTable"]


def _same_path(path: str) -> str:
    return path


@dataclass(frozen=True, slots=True)
class RouteHit:
    """The outcome of a successful resolution."""

    route: Route  # the config route
    index: int  # its position in the table
    match: RouteMatch  # which of its matches[] entries matched
    upstream_path: str  # path after prefix rewrite (== request path when no rewrite)


# -- predicates on one value (a joined header or a query parameter) -------------------------

_ValueTest = Callable[[str | None], bool]


def _value_test(m: StringMatch, pattern: re.Pattern[str] | None) -> _ValueTest:
    """A predicate over the value of a header / query parameter; ``None`` means it is missing."""
    kind = m.kind
    if kind == "present":
        return lambda v: v is not None
    if kind == "absent":
        return lambda v: v is None
    if kind == "regex":
        assert pattern is not None
        fullmatch = pattern.fullmatch
        return lambda v: v is not None and fullmatch(v) is not None
    if m.case_sensitive:
        want = m.value
        if kind == "exact":
            return lambda v: v == want
        return lambda v: v is not None and v.startswith(want)
    folded = m.value.lower()
    if kind == "exact":
        return lambda v: v is not None and v.lower() == folded
    return lambda v: v is not None and v.lower().startswith(folded)


class _Request:
    """The parts of a request that predicates read, with the header and query maps built lazily
    (only when the first candidate with header / query conditions is tested)."""

    __slots__ = ("_headers", "_joined", "_query", "_query_string", "method", "path")

    def __init__(self, path: str, method: str, headers: Sequence[tuple[bytes, bytes]], query_string: bytes) -> None:
        self.path = path
        self.method = method
        self._headers = headers
        self._query_string = query_string
        self._joined: dict[bytes, str] | None = None
        self._query: dict[str, str] | None = None

    def headers(self) -> dict[bytes, str]:
        # Envoy matches a repeated header against its values joined with ",".
        if self._joined is None:
            joined: dict[bytes, str] = {}
            for name, raw in self._headers:
                name = name.lower()
                value = raw.decode("latin-1")
                previous = joined.get(name)
                joined[name] = value if previous is None else previous + "," + value
            self._joined = joined
        return self._joined

    def query(self) -> dict[str, str]:
        # The first value of a repeated parameter counts, like Envoy's query_parameters matcher.
        if self._query is None:
            params: dict[str, str] = {}
            text = self._query_string.decode("latin-1")
            for name, value in parse_qsl(text, keep_blank_values=True, errors="replace"):
                params.setdefault(name, value)
            self._query = params
        return self._query


@dataclass(frozen=True, slots=True, eq=False)
class RouteEntry:
    """One (route, matches[j]) pair with its conditions precompiled (``RouteTable.lookup`` returns one)."""

    seq: int  # position in (route index, match index) order: the first-match key
    key: str  # the canonical exact / prefix path; "" for a regex
    index: int
    route: Route
    match: RouteMatch
    simple: bool  # no condition beyond the indexed host and path: the index alone decides
    methods: frozenset[str] | None
    path_regex: re.Pattern[str] | None
    headers: tuple[tuple[bytes, _ValueTest], ...]
    query: tuple[tuple[str, _ValueTest], ...]
    strip: int  # prefix matches: length of the prefix without its trailing "/"; else -1
    rewrite: str | None  # "" with a regex rewrite (``path_sub``): None alone means "the path as is"
    rewrite_base: str  # the rewrite without its trailing "/", joined with the rest of the path
    path_sub: Callable[[str], str] | None  # Envoy's regex_rewrite: every match of the pattern substituted
    policy: RoutePolicy | None  # fault injection / CORS; None for a route without either

    def accepts(self, req: _Request) -> bool:
        if self.methods is not None and req.method not in self.methods:
            return False
        if self.path_regex is not None and self.path_regex.fullmatch(req.path) is None:
            return False
        if self.headers:
            values = req.headers()
            for bname, test in self.headers:
                if not test(values.get(bname)):
                    return False
        if self.query:
            params = req.query()
            for qname, test in self.query:
                if not test(params.get(qname)):
                    return False
        return True

    def upstream_path(self, path: str) -> str:
        rewrite = self.rewrite
        if rewrite is None:
            return path
        if self.path_sub is not None:
            out = self.path_sub(path)
            return out if out.startswith("/") else "/" + out
        if self.strip < 0:
            return rewrite  # exact / regex match: the whole path is replaced (Istio uri rewrite)
        # Replace the matched segments, keep the rest: "/catalog" -> "/v2" maps "/catalog/x" to
        # "/v2/x" and "/catalog" to "/v2"; a rewrite of "/" never leaves "" or "//".
        rest = path[self.strip :]
        if not rest:
            return rewrite
        return self.rewrite_base + rest


# -- buckets: the path index under one host key ----------------------------------------------


class _Bucket:
    __slots__ = ("exact", "max_prefix", "prefix", "prefix_lens", "regex")

    def __init__(
        self,
        exact: dict[str, tuple[RouteEntry, ...]],
        prefix: dict[str, tuple[RouteEntry, ...]],
        regex: tuple[RouteEntry, ...],
    ) -> None:
        self.exact = exact
        self.prefix = prefix
        self.prefix_lens = frozenset(len(p) for p in prefix)
        self.max_prefix = max(self.prefix_lens, default=0)
        self.regex = regex

    def collect(self, path: str, out: list[tuple[RouteEntry, ...]]) -> None:
        """Append the sorted candidate lists for ``path``: its exact entries, the entries of
        every prefix that covers it segment-wise, and the regex entries."""
        found = self.exact.get(path)
        if found is not None:
            out.append(found)
        prefix = self.prefix
        if prefix:
            lens = self.prefix_lens
            n = len(path)
            # A prefix P covers path p when p == P, or P ends with "/" and p starts with P, or
            # p starts with P + "/". So the keys to try are p itself and, at every "/" of p,
            # the text before it and the text up to and including it.
            if n in lens:
                found = prefix.get(path)
                if found is not None:
                    out.append(found)
            limit = self.max_prefix
            i = path.find("/")
            while 0 <= i <= limit:
                if i > 0 and i in lens:
                    found = prefix.get(path[:i])
                    if found is not None:
                        out.append(found)
                j = i + 1
                if j < n and j in lens:
                    found = prefix.get(path[:j])
                    if found is not None:
                        out.append(found)
                i = path.find("/", j)
        if self.regex:
            out.append(self.regex)


class _BucketBuilder:
    __slots__ = ("exact", "prefix", "regex")

    def __init__(self) -> None:
        self.exact: dict[str, list[RouteEntry]] = {}
        self.prefix: dict[str, list[RouteEntry]] = {}
        self.regex: list[RouteEntry] = []

    def add(self, entry: RouteEntry, kind: str, path: str) -> None:
        if kind == "regex":
            # A regex whose matches all start with "/a/b/" is filed under that prefix (its own
            # fullmatch still decides); only a regex without such a literal start is scanned.
            assert entry.path_regex is not None
            start = _regex_literal_prefix(entry.path_regex.pattern)
            start = start[: start.rfind("/") + 1]
            target = self.prefix.setdefault(start, []) if start else self.regex
        else:
            target = (self.exact if kind == "exact" else self.prefix).setdefault(path, [])
        # A route listing the same host twice must not appear twice in one list.
        if not target or target[-1] is not entry:
            target.append(entry)

    def build(self) -> _Bucket:
        return _Bucket(
            {k: tuple(v) for k, v in self.exact.items()},
            {k: tuple(v) for k, v in self.prefix.items()},
            tuple(self.regex),
        )


# -- the table --------------------------------------------------------------------------------


class RouteTable:
    """An immutable, indexed route table. Build it with ``RouteTable.compile(routes)``."""

    __slots__ = ("_any", "_exact_hosts", "_wild_hosts", "routes")

    def __init__(
        self,
        routes: tuple[Route, ...],
        any_host: _Bucket | None,
        exact_hosts: dict[str, _Bucket],
        wild_hosts: dict[str, _Bucket],
    ) -> None:
        self.routes = routes
        self._any = any_host
        self._exact_hosts = exact_hosts
        self._wild_hosts = wild_hosts

    @classmethod
    def compile(
        cls,
        routes: Sequence[Route],
        *,
        canonicalize: Callable[[str], str] = _same_path,
        source: str = "<routes>",
    ) -> RouteTable:
        """Index ``routes`` (in order; first match wins).

        ``canonicalize`` maps a config path (exact / prefix match, rewrite) to the canonical form
        requests are resolved in; the proxy passes ``facade.normalize.canonical_route_path``.
        ``source`` names the config file in error messages. Raises ConfigError (every problem,
        located by the route's line) for a bad regex, a host pattern other than ``*`` /
        ``*.suffix``, or a path that does not start with "/".
        """
        problems: list[Problem] = []
        any_host = _BucketBuilder()
        exact_hosts: dict[str, _BucketBuilder] = {}
        wild_hosts: dict[str, _BucketBuilder] = {}
        seq = 0
        routes = tuple(routes)
        for index, route in enumerate(routes):
            report = _Report(source, route, problems)
            rewrite = route.rewrite_prefix
            if rewrite is not None:
                rewrite = report.path(canonicalize, rewrite, f"routes[{index}].rewrite")
            path_sub: Callable[[str], str] | None = None
            if route.rewrite_regex is not None:
                pattern = report.regex(route.rewrite_regex[0], 0, f"routes[{index}].rewrite.regex.pattern")
                if pattern is not None:
                    path_sub = functools.partial(pattern.sub, route.rewrite_regex[1])
                    rewrite = ""
            policy = compile_policy(route)
            for j, match in enumerate(route.matches):
                where = f"routes[{index}].match[{j}]"
                entry = _compile_entry(seq, index, route, match, canonicalize, rewrite, where, report, path_sub, policy)
                seq += 1
                if entry is None:
                    continue
                kind = match.path_kind
                key = entry.key
                hosts = tuple(h.lower() for h in match.hosts)
                if not hosts or "*" in hosts:
                    any_host.add(entry, kind, key)
                    continue
                for host in hosts:
                    if host.startswith("*."):
                        if "*" in host[1:] or len(host) < 3:
                            report(f"{where}.hosts", _BAD_HOST % host)
                            continue
                        wild_hosts.setdefault(host[1:], _BucketBuilder()).add(entry, kind, key)
                    elif "*" in host or not host:
                        report(f"{where}.hosts", _BAD_HOST % host)
                    else:
                        exact_hosts.setdefault(host, _BucketBuilder()).add(entry, kind, key)
        if problems:
            raise ConfigError(problems)
        any_bucket = any_host.build()
        return cls(
            routes,
            any_bucket if (any_bucket.exact or any_bucket.prefix or any_bucket.regex) else None,
            {h: b.build() for h, b in exact_hosts.items()},
            {s: b.build() for s, b in wild_hosts.items()},
        )

    def __len__(self) -> int:
        return len(self.routes)

    def __repr__(self) -> str:
        return (
            f"<RouteTable routes={len(self.routes)} exact_hosts={len(self._exact_hosts)} "
            f"wildcard_hosts={len(self._wild_hosts)} any_host={self._any is not None}>"
        )

    def resolve(
        self,
        *,
        host: str,
        path: str,
        method: str,
        headers: Sequence[tuple[bytes, bytes]],
        query_string: bytes,
    ) -> RouteHit | None:
        """The first route matching the request, or None (the proxy answers 404).

        ``host`` is normalized (no port, no trailing dot; compared lower-case), ``path`` is the
        canonical path, ``headers`` are ASGI headers, ``query_string`` the raw query bytes.
        """
        best = self.lookup(host=host, path=path, method=method, headers=headers, query_string=query_string)
        if best is None:
            return None
        return RouteHit(best.route, best.index, best.match, best.upstream_path(path))

    def lookup(
        self,
        *,
        host: str,
        path: str,
        method: str,
        headers: Sequence[tuple[bytes, bytes]],
        query_string: bytes,
    ) -> RouteEntry | None:
        """``resolve`` without building a ``RouteHit``: the winning precompiled entry (shared, never
        mutated), for the hot path (``facade.resolve``), which builds its own decision value instead."""
        lists: list[tuple[RouteEntry, ...]] = []
        if self._any is not None:
            self._any.collect(path, lists)
        if self._exact_hosts or self._wild_hosts:
            host = host.lower()
            bucket = self._exact_hosts.get(host)
            if bucket is not None:
                bucket.collect(path, lists)
            wild = self._wild_hosts
            if wild:
                # "*.shop.local" is keyed ".shop.local"; it needs at least one label before it.
                i = host.find(".", 1)
                while i > 0:
                    bucket = wild.get(host[i:])
                    if bucket is not None:
                        bucket.collect(path, lists)
                    i = host.find(".", i + 1)

        # Read the lists lowest head first, so that the predicates of an entry behind the
        # eventual winner are rarely evaluated.
        if len(lists) > 1:
            lists.sort(key=_head_seq)
        best: RouteEntry | None = None
        req: _Request | None = None
        for candidates in lists:
            for entry in candidates:
                if best is not None and entry.seq >= best.seq:
                    break
                if entry.simple:
                    best = entry
                    break
                if req is None:
                    req = _Request(path, method, headers, query_string)
                if entry.accepts(req):
                    best = entry
                    break
        return best


_REGEX_SPECIAL = frozenset(".^$*+?{}[]\\|()")
_REGEX_QUANTIFIER = frozenset("*+?{")


def _regex_literal_prefix(pattern: str) -> str:
    """The text every full match of ``pattern`` starts with; "" when that is not certain.

    Conservative on purpose: it reads plain characters and escaped punctuation up to the first
    construct (class, group, anchor, ``\\d``...), drops a character a quantifier applies to, and
    gives up on a top-level alternation.
    """
    if _has_top_level_alternation(pattern):
        return ""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n or pattern[i + 1].isalnum() or not pattern[i + 1].isascii():
                break  # \d, \w, \b, \1, \A ...: not a literal
            literal, step = pattern[i + 1], 2
        elif c in _REGEX_SPECIAL or not c.isascii():
            break
        else:
            literal, step = c, 1
        if i + step < n and pattern[i + step] in _REGEX_QUANTIFIER:
            break
        out.append(literal)
        i += step
    return "".join(out)


def _has_top_level_alternation(pattern: str) -> bool:
    depth, in_class, i, n = 0, False, 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            # "]" first in a class (after an optional "^") is a literal, not the end.
            if pattern.startswith("^", i + 1):
                i += 1
            if pattern.startswith("]", i + 1):
                i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return True
        i += 1
    return False


def _head_seq(candidates: tuple[RouteEntry, ...]) -> int:
    return candidates[0].seq


_BAD_HOST = "host pattern %r is not supported: use an exact host, '*.suffix' or '*'"


@dataclass(frozen=True, slots=True)
class _Report:
    """Collects the problems of one route, located at the route's line."""

    source: str
    route: Route
    problems: list[Problem]

    def __call__(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.source, self.route.line, 1, path, message))

    def path(self, canonicalize: Callable[[str], str], text: str, where: str) -> str:
        """The canonical form of a config path; reported when there is none or it is not absolute."""
        try:
            path = canonicalize(text)
        except ValueError as exc:  # normalize.PathRejected
            self(where, f"{text!r} has no canonical form: {exc}")
            return text
        if not path.startswith("/"):
            self(where, f"must start with '/', got {text!r}")
        return path

    def regex(self, text: str, flags: int, where: str) -> re.Pattern[str] | None:
        try:
            return re.compile(text, flags)
        except re.error as exc:
            self(where, f"invalid regex {text!r}: {exc}")
            return None


def _compile_entry(
    seq: int,
    index: int,
    route: Route,
    match: RouteMatch,
    canonicalize: Callable[[str], str],
    rewrite: str | None,
    where: str,
    report: _Report,
    path_sub: Callable[[str], str] | None = None,
    policy: RoutePolicy | None = None,
) -> RouteEntry | None:
    """Precompile one match entry; report what is wrong with it (and return None)."""
    before = len(report.problems)
    path_regex: re.Pattern[str] | None = None
    strip = -1
    if match.path_kind == "regex":
        path_regex = report.regex(match.path, 0, f"{where}.path.regex")
        key = ""
    else:
        key = report.path(canonicalize, match.path, f"{where}.path.{match.path_kind}")
        if match.path_kind == "prefix":
            strip = len(key.rstrip("/"))

    headers: list[tuple[bytes, _ValueTest]] = []
    for name, sm in match.headers:
        pattern = _string_pattern(sm, f"{where}.headers.{name}", report)
        if pattern is not None or sm.kind != "regex":
            headers.append((name.lower().encode("latin-1"), _value_test(sm, pattern)))
    query: list[tuple[str, _ValueTest]] = []
    for name, sm in match.query:
        pattern = _string_pattern(sm, f"{where}.query.{name}", report)
        if pattern is not None or sm.kind != "regex":
            query.append((name, _value_test(sm, pattern)))
    if len(report.problems) > before:
        return None

    methods = frozenset(match.methods) if match.methods else None
    return RouteEntry(
        seq=seq,
        key=key,
        index=index,
        route=route,
        match=match,
        simple=methods is None and path_regex is None and not headers and not query,
        methods=methods,
        path_regex=path_regex,
        headers=tuple(headers),
        query=tuple(query),
        strip=strip,
        rewrite=rewrite,
        rewrite_base=(rewrite or "").rstrip("/"),
        path_sub=path_sub,
        policy=policy,
    )


def _string_pattern(sm: StringMatch, where: str, report: _Report) -> re.Pattern[str] | None:
    if sm.kind != "regex":
        return None
    flags = 0 if sm.case_sensitive else re.IGNORECASE
    return report.regex(sm.value, flags, f"{where}.regex")
