"""RouteTable: match semantics, first-match order, rewrite, and equivalence with a linear scan."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from urllib.parse import parse_qsl

import pytest

from facade.config import Route, RouteMatch, StringMatch, WeightedBackend
from facade.errors import ConfigError
from facade.normalize import canonical_route_path, normalize_path
from facade.routing import RouteHit, RouteTable, _regex_literal_prefix

Headers = Sequence[tuple[bytes, bytes]]


def route(name: str, *matches: RouteMatch, rewrite: str | None = None, line: int = 0) -> Route:
    return Route(
        name=name,
        matches=matches or (RouteMatch(),),
        backends=(WeightedBackend("monolith"),),
        rewrite_prefix=rewrite,
        line=line,
    )


def prefix(path: str, **kw: object) -> RouteMatch:
    return RouteMatch(path_kind="prefix", path=path, **kw)  # type: ignore[arg-type]


def exact(path: str, **kw: object) -> RouteMatch:
    return RouteMatch(path_kind="exact", path=path, **kw)  # type: ignore[arg-type]


def regex(path: str, **kw: object) -> RouteMatch:
    return RouteMatch(path_kind="regex", path=path, **kw)  # type: ignore[arg-type]


def hit(
    table: RouteTable,
    path: str,
    *,
    host: str = "shop.local",
    method: str = "GET",
    headers: Headers = (),
    query: bytes = b"",
) -> RouteHit | None:
    return table.resolve(host=host, path=path, method=method, headers=headers, query_string=query)


def name(table: RouteTable, path: str, **kw: object) -> str | None:
    found = hit(table, path, **kw)  # type: ignore[arg-type]
    return None if found is None else found.route.name


# -- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config_prefix", "path", "matches"),
    [
        ("/catalog", "/catalog", True),
        ("/catalog", "/catalog/", True),
        ("/catalog", "/catalog/x", True),
        ("/catalog", "/catalog/x/y", True),
        ("/catalog", "/catalogue", False),
        ("/catalog", "/catalo", False),
        ("/catalog", "/", False),
        ("/catalog/", "/catalog/x", True),
        ("/catalog/", "/catalog/", True),
        ("/catalog/", "/catalog", False),
        ("/catalog/", "/catalogue/x", False),
        ("/", "/", True),
        ("/", "/anything/at/all", True),
        ("/a/b", "/a/b/c", True),
        ("/a/b", "/a/bc", False),
        ("/a/b", "/a", False),
        ("/a/b/", "/a/b/", True),
        ("/a/b/", "/a/b", False),
    ],
)
def test_prefix_is_segment_aware(config_prefix: str, path: str, matches: bool) -> None:
    table = RouteTable.compile([route("r", prefix(config_prefix))])
    assert (name(table, path) == "r") is matches


@pytest.mark.parametrize(
    ("config_path", "path", "matches"),
    [
        ("/healthz", "/healthz", True),
        ("/healthz", "/healthz/", False),
        ("/healthz", "/healthz/x", False),
        ("/healthz", "/HEALTHZ", False),
        ("/a/", "/a/", True),
        ("/a/", "/a", False),
    ],
)
def test_exact_path_is_byte_equality(config_path: str, path: str, matches: bool) -> None:
    table = RouteTable.compile([route("r", exact(config_path))])
    assert (name(table, path) == "r") is matches


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        (r"/orders/\d+", "/orders/42", True),
        (r"/orders/\d+", "/orders/42/items", False),  # full match, not search
        (r"/orders/\d+", "/x/orders/42", False),
        (r"/orders/\d+.*", "/orders/42/items", True),
        (r"/users/[a-z]+", "/users/bob", True),
        (r"/users/[a-z]+", "/users/Bob", False),
    ],
)
def test_regex_path_is_a_full_match(pattern: str, path: str, matches: bool) -> None:
    table = RouteTable.compile([route("r", regex(pattern))])
    assert (name(table, path) == "r") is matches


# -- hosts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "host", "matches"),
    [
        ((), "anything.example", True),
        (("*",), "anything.example", True),
        (("shop.local",), "shop.local", True),
        (("shop.local",), "SHOP.local", True),  # compared lower-case
        (("Shop.Local",), "shop.local", True),
        (("shop.local",), "api.shop.local", False),
        (("shop.local",), "shop.local.evil", False),
        (("*.shop.local",), "a.shop.local", True),
        (("*.shop.local",), "a.b.shop.local", True),
        (("*.shop.local",), "shop.local", False),
        (("*.shop.local",), "xshop.local", False),
        (("*.shop.local",), ".shop.local", False),
        (("*.shop.local",), "a.shop.local.evil", False),
        (("*.shop.local",), "A.SHOP.LOCAL", True),
        (("*.local",), "a.shop.local", True),
        (("api.shop.local", "*.admin.local"), "api.shop.local", True),
        (("api.shop.local", "*.admin.local"), "x.admin.local", True),
        (("api.shop.local", "*.admin.local"), "admin.local", False),
        (("api.shop.local", "*"), "other", True),
    ],
)
def test_host_matching(hosts: tuple[str, ...], host: str, matches: bool) -> None:
    table = RouteTable.compile([route("r", prefix("/", hosts=hosts))])
    assert (name(table, "/x", host=host) == "r") is matches


def test_a_route_listing_overlapping_hosts_matches_once() -> None:
    table = RouteTable.compile([route("r", prefix("/", hosts=("a.shop.local", "*.shop.local", "a.shop.local")))])
    found = hit(table, "/", host="a.shop.local")
    assert found is not None and found.index == 0


# -- methods, headers, query ---------------------------------------------------------------------


def test_methods() -> None:
    table = RouteTable.compile([route("write", prefix("/", methods=("POST", "PUT"))), route("rest", prefix("/"))])
    assert name(table, "/x", method="POST") == "write"
    assert name(table, "/x", method="PUT") == "write"
    assert name(table, "/x", method="GET") == "rest"
    assert name(table, "/x", method="post") == "rest"  # methods are case-sensitive tokens


@pytest.mark.parametrize(
    ("sm", "headers", "matches"),
    [
        (StringMatch("exact", "1"), [(b"x-canary", b"1")], True),
        (StringMatch("exact", "1"), [(b"x-canary", b"10")], False),
        (StringMatch("exact", "1"), [], False),
        (StringMatch("exact", "abc"), [(b"x-canary", b"ABC")], False),  # values are case-sensitive
        (StringMatch("exact", "abc", case_sensitive=False), [(b"x-canary", b"ABC")], True),
        (StringMatch("prefix", "ab"), [(b"x-canary", b"abc")], True),
        (StringMatch("prefix", "ab"), [(b"x-canary", b"xab")], False),
        (StringMatch("prefix", "AB", case_sensitive=False), [(b"x-canary", b"abc")], True),
        (StringMatch("regex", r"v\d"), [(b"x-canary", b"v2")], True),
        (StringMatch("regex", r"v\d"), [(b"x-canary", b"v2x")], False),  # full match
        (StringMatch("regex", r"V\d", case_sensitive=False), [(b"x-canary", b"v2")], True),
        (StringMatch("present"), [(b"x-canary", b"")], True),
        (StringMatch("present"), [(b"other", b"1")], False),
        (StringMatch("absent"), [(b"other", b"1")], True),
        (StringMatch("absent"), [(b"x-canary", b"")], False),
        # Repeated headers are joined with "," (Envoy) before matching.
        (StringMatch("exact", "a,b"), [(b"x-canary", b"a"), (b"x-canary", b"b")], True),
        (StringMatch("exact", "a"), [(b"x-canary", b"a"), (b"x-canary", b"b")], False),
        (StringMatch("prefix", "a,"), [(b"x-canary", b"a"), (b"other", b"z"), (b"x-canary", b"b")], True),
        (StringMatch("regex", r".*\bb"), [(b"x-canary", b"a"), (b"x-canary", b"b")], True),
        (StringMatch("exact", "1"), [(b"X-Canary", b"1")], True),  # names compared lower-case
    ],
)
def test_header_conditions(sm: StringMatch, headers: Headers, matches: bool) -> None:
    table = RouteTable.compile([route("r", prefix("/", headers=(("x-canary", sm),)))])
    assert (name(table, "/", headers=headers) == "r") is matches


def test_all_header_conditions_must_hold() -> None:
    both = (("x-a", StringMatch("exact", "1")), ("x-b", StringMatch("absent")))
    table = RouteTable.compile([route("r", prefix("/", headers=both))])
    assert name(table, "/", headers=[(b"x-a", b"1")]) == "r"
    assert name(table, "/", headers=[(b"x-a", b"1"), (b"x-b", b"1")]) is None
    assert name(table, "/", headers=[(b"x-a", b"2")]) is None


@pytest.mark.parametrize(
    ("sm", "query", "matches"),
    [
        (StringMatch("exact", "1"), b"debug=1", True),
        (StringMatch("exact", "1"), b"a=2&debug=1&b=3", True),
        (StringMatch("exact", "1"), b"debug=2", False),
        (StringMatch("exact", "1"), b"debug=1&debug=2", True),  # the first value counts
        (StringMatch("exact", "2"), b"debug=1&debug=2", False),
        (StringMatch("exact", "a b"), b"debug=a%20b", True),  # decoded
        (StringMatch("exact", "a b"), b"debug=a+b", True),
        (StringMatch("exact", ""), b"debug=", True),  # blank values are kept
        (StringMatch("present"), b"debug", True),
        (StringMatch("present"), b"debug=", True),
        (StringMatch("present"), b"debugx=1", False),
        (StringMatch("absent"), b"", True),
        (StringMatch("absent"), b"debug=0", False),
        (StringMatch("prefix", "on"), b"debug=only", True),
        (StringMatch("regex", r"[0-9]+"), b"debug=123", True),
        (StringMatch("regex", r"[0-9]+"), b"debug=123a", False),
    ],
)
def test_query_conditions(sm: StringMatch, query: bytes, matches: bool) -> None:
    table = RouteTable.compile([route("r", prefix("/", query=(("debug", sm),)))])
    assert (name(table, "/", query=query) == "r") is matches


# -- first match order ---------------------------------------------------------------------------


def test_first_route_wins_across_match_types() -> None:
    table = RouteTable.compile(
        [
            route("regex-first", regex(r"/orders/\d+")),
            route("exact-later", exact("/orders/1")),
            route("prefix-latest", prefix("/orders")),
        ]
    )
    assert name(table, "/orders/1") == "regex-first"
    assert name(table, "/orders/x") == "prefix-latest"
    assert name(table, "/orders") == "prefix-latest"


def test_earlier_any_host_beats_later_exact_host() -> None:
    table = RouteTable.compile(
        [
            route("any", prefix("/api")),
            route("exact-host", prefix("/api", hosts=("shop.local",))),
            route("wild-host", prefix("/", hosts=("*.shop.local",))),
        ]
    )
    assert name(table, "/api/x", host="shop.local") == "any"
    assert name(table, "/api/x", host="a.shop.local") == "any"
    assert name(table, "/other", host="a.shop.local") == "wild-host"
    assert name(table, "/other", host="shop.local") is None


def test_earlier_wildcard_beats_later_exact_host_and_longer_prefix() -> None:
    table = RouteTable.compile(
        [
            route("wild", prefix("/", hosts=("*.shop.local",))),
            route("exact", prefix("/catalog", hosts=("api.shop.local",))),
        ]
    )
    found = hit(table, "/catalog/1", host="api.shop.local")
    assert found is not None and (found.route.name, found.index) == ("wild", 0)


def test_longer_prefix_does_not_beat_earlier_shorter_prefix() -> None:
    table = RouteTable.compile([route("short", prefix("/a")), route("long", prefix("/a/b/c"))])
    assert name(table, "/a/b/c/d") == "short"


def test_failed_predicate_falls_through_to_next_route() -> None:
    table = RouteTable.compile(
        [
            route("canary", prefix("/catalog", headers=(("x-canary", StringMatch("exact", "1")),))),
            route("catalog", prefix("/catalog")),
            route("default", prefix("/")),
        ]
    )
    assert name(table, "/catalog/1", headers=[(b"x-canary", b"1")]) == "canary"
    assert name(table, "/catalog/1", headers=[(b"x-canary", b"0")]) == "catalog"
    assert name(table, "/cart") == "default"


def test_match_entries_are_ored_and_the_hit_names_the_entry() -> None:
    first = exact("/a", methods=("POST",))
    second = prefix("/b")
    third = prefix("/", hosts=("admin.local",))
    table = RouteTable.compile([route("multi", first, second, third), route("default", prefix("/"))])
    found = hit(table, "/a", method="POST")
    assert found is not None and found.match is first
    found = hit(table, "/b/1")
    assert found is not None and found.match is second and found.route.name == "multi"
    found = hit(table, "/zzz", host="admin.local")
    assert found is not None and found.match is third
    assert name(table, "/a", method="GET") == "default"


def test_when_two_entries_of_one_route_match_the_first_is_reported() -> None:
    first = prefix("/", methods=("GET",))
    second = exact("/x")
    table = RouteTable.compile([route("r", second, first)])
    found = hit(table, "/x")
    assert found is not None and found.match is second


def test_no_route_no_hit() -> None:
    assert hit(RouteTable.compile([]), "/") is None
    table = RouteTable.compile([route("r", exact("/only"))])
    assert hit(table, "/other") is None
    assert len(table) == 1 and table.routes[0].name == "r"
    assert "routes=1" in repr(table)


def test_index_is_the_table_position() -> None:
    table = RouteTable.compile([route(f"r{i}", exact(f"/p{i}")) for i in range(5)])
    found = hit(table, "/p3")
    assert found is not None and found.index == 3 and found.route is table.routes[3]


# -- rewrite -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "rewrite_to", "path", "upstream"),
    [
        (prefix("/catalog"), None, "/catalog/x", "/catalog/x"),
        (prefix("/catalog"), "/v2", "/catalog/x", "/v2/x"),
        (prefix("/catalog"), "/v2", "/catalog", "/v2"),
        (prefix("/catalog"), "/v2", "/catalog/", "/v2/"),
        (prefix("/catalog"), "/", "/catalog/x", "/x"),
        (prefix("/catalog"), "/", "/catalog", "/"),
        (prefix("/catalog"), "/", "/catalog/", "/"),
        (prefix("/catalog"), "/v2/", "/catalog/x", "/v2/x"),
        (prefix("/catalog"), "/v2/", "/catalog", "/v2/"),
        (prefix("/catalog/"), "/v2", "/catalog/x", "/v2/x"),
        (prefix("/catalog/"), "/v2/", "/catalog/x", "/v2/x"),
        (prefix("/catalog/"), "/", "/catalog/x/y", "/x/y"),
        (prefix("/"), "/api", "/x", "/api/x"),
        (prefix("/"), "/", "/x", "/x"),
        (prefix("/a/b"), "/c", "/a/b/d", "/c/d"),
        (exact("/old"), "/new", "/old", "/new"),  # whole path replaced
        (regex(r"/o/\d+"), "/orders", "/o/12", "/orders"),
    ],
)
def test_prefix_rewrite(match: RouteMatch, rewrite_to: str | None, path: str, upstream: str) -> None:
    table = RouteTable.compile([route("r", match, rewrite=rewrite_to)])
    found = hit(table, path)
    assert found is not None and found.upstream_path == upstream


def test_canonicalize_applies_to_config_paths_and_rewrite() -> None:
    def canonical(p: str) -> str:
        return p.lower()

    table = RouteTable.compile([route("r", prefix("/Catalog"), rewrite="/V2")], canonicalize=canonical)
    found = hit(table, "/catalog/x")
    assert found is not None and found.upstream_path == "/v2/x"
    assert hit(table, "/Catalog/x") is None


@pytest.mark.parametrize(
    ("pattern", "start"),
    [
        (r"/orders/\d+", "/orders/"),
        (r"/a\.b/.*", "/a.b/"),
        (r"\/a/.*", "/a/"),
        (r"/ab?/c", "/a"),  # "b" is optional
        (r"/a/b{2}", "/a/"),
        (r"/a/?b", "/a"),  # the "/" is optional: not filed under "/a/"
        (r"/catalog/(x|y)", "/catalog/"),
        (r"/a/[]|]/z", "/a/"),  # "|" inside a class is a literal
        (r"/a/b|/c", ""),  # top-level alternation: no common start
        (r"/x/[|]/y|z", ""),
        (r"(?i)/a", ""),
        (r"^/a", ""),
        (r"\d+/a", ""),
        (r"", ""),
    ],
)
def test_regex_literal_prefix_is_conservative(pattern: str, start: str) -> None:
    assert _regex_literal_prefix(pattern) == start


def test_regex_filed_under_its_literal_prefix_still_matches_in_order() -> None:
    table = RouteTable.compile(
        [
            route("orders-id", regex(r"/orders/\d+")),
            route("orders", prefix("/orders/")),
            route("alt", regex(r"/x/\d+|/y/\d+")),
            route("any", regex(r".*/z")),
        ]
    )
    assert name(table, "/orders/12") == "orders-id"
    assert name(table, "/orders/ab") == "orders"
    assert name(table, "/orders/") == "orders"
    assert name(table, "/y/3") == "alt"
    assert name(table, "/q/z") == "any"
    assert name(table, "/q") is None


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "field", "text"),
    [
        (regex("/(unclosed"), "routes[1].match[0].path.regex", "invalid regex"),
        (prefix("/", headers=(("x", StringMatch("regex", "[")),)), "routes[1].match[0].headers.x.regex", "invalid"),
        (prefix("/", query=(("q", StringMatch("regex", "(")),)), "routes[1].match[0].query.q.regex", "invalid"),
        (prefix("/", hosts=("a.*.local",)), "routes[1].match[0].hosts", "not supported"),
        (prefix("/", hosts=("*shop.local",)), "routes[1].match[0].hosts", "not supported"),
        (prefix("/", hosts=("*.",)), "routes[1].match[0].hosts", "not supported"),
        (prefix("catalog"), "routes[1].match[0].path.prefix", "must start with '/'"),
        (exact(""), "routes[1].match[0].path.exact", "must start with '/'"),
    ],
)
def test_bad_routes_raise_config_error_with_position(bad: RouteMatch, field: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        RouteTable.compile([route("ok", prefix("/")), route("bad", bad, line=12)], source="facade.yaml")
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.path) == ("facade.yaml", 12, field)
    assert text in problem.message
    assert str(problem).startswith("facade.yaml:12:1: " + field)


def test_rewrite_must_be_a_path() -> None:
    with pytest.raises(ConfigError) as info:
        RouteTable.compile([route("r", prefix("/a"), prefix("/b"), rewrite="v2", line=3)])
    assert [(p.path, p.line) for p in info.value.problems] == [("routes[0].rewrite", 3)]


def test_a_path_without_canonical_form_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        RouteTable.compile([route("r", prefix("/a?b"), line=4)], canonicalize=canonical_route_path)
    (problem,) = info.value.problems
    assert (problem.path, problem.line) == ("routes[0].match[0].path.prefix", 4)
    assert "no canonical form" in problem.message


def test_config_paths_are_matched_in_canonical_form() -> None:
    table = RouteTable.compile(
        [route("user", prefix("/%7euser//home")), route("cafe", exact("/caf%c3%a9"), rewrite="/new%7e")],
        canonicalize=canonical_route_path,
    )
    assert name(table, normalize_path(b"/~user/home/x")) == "user"
    found = hit(table, normalize_path("/café".encode()))
    assert found is not None and found.route.name == "cafe"
    assert found.upstream_path == canonical_route_path("/new~")


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        RouteTable.compile([route("a", regex("(")), route("b", regex("["))])
    assert [p.path for p in info.value.problems] == ["routes[0].match[0].path.regex", "routes[1].match[0].path.regex"]


# -- equivalence with a linear scan ---------------------------------------------------------------


def _reference_value(sm: StringMatch, value: str | None) -> bool:
    if sm.kind == "present":
        return value is not None
    if sm.kind == "absent":
        return value is None
    if value is None:
        return False
    want = sm.value
    if not sm.case_sensitive:
        value, want = value.lower(), want.lower()
    if sm.kind == "exact":
        return value == want
    if sm.kind == "prefix":
        return value.startswith(want)
    return re.fullmatch(want, value) is not None


def _reference_host(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower(), host.lower()
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and len(host) > len(suffix) and not host.startswith(".")
    return pattern == host


def _reference_path(m: RouteMatch, path: str) -> bool:
    if m.path_kind == "exact":
        return path == m.path
    if m.path_kind == "regex":
        return re.fullmatch(m.path, path) is not None
    if m.path.endswith("/"):
        return path.startswith(m.path)
    return path == m.path or path.startswith(m.path + "/")


def reference_resolve(
    routes: Sequence[Route], host: str, path: str, method: str, headers: Headers, query: bytes
) -> tuple[int, RouteMatch] | None:
    """The specification, as a plain linear scan."""
    header_map: dict[str, list[str]] = {}
    for k, v in headers:
        header_map.setdefault(k.decode("latin-1").lower(), []).append(v.decode("latin-1"))
    query_map: dict[str, str] = {}
    for k2, v2 in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        query_map.setdefault(k2, v2)
    for index, r in enumerate(routes):
        for m in r.matches:
            if m.hosts and not any(_reference_host(p, host) for p in m.hosts):
                continue
            if not _reference_path(m, path):
                continue
            if m.methods and method not in m.methods:
                continue
            if not all(
                _reference_value(sm, ",".join(header_map[n]) if n in header_map else None) for n, sm in m.headers
            ):
                continue
            if not all(_reference_value(sm, query_map.get(n)) for n, sm in m.query):
                continue
            return index, m
    return None


_SEGMENTS = ["a", "b", "ab", "catalog", "c"]
_HOSTS = ["shop.local", "a.shop.local", "b.a.shop.local", "admin.local", "other"]
_HOST_PATTERNS = ["shop.local", "a.shop.local", "*.shop.local", "*.local", "*", "admin.local", "*.a.shop.local"]


def _random_path(rnd: random.Random, *, trailing: bool) -> str:
    path = "/" + "/".join(rnd.choice(_SEGMENTS) for _ in range(rnd.randint(0, 3)))
    if rnd.random() < 0.1:
        path = rnd.choice(["/a/b/c", "/a/cc", "/a//b", "/c", "/ab/c", "/catalog/x"])
    if trailing and path != "/" and rnd.random() < 0.3:
        path += "/"
    return path


def _random_string_match(rnd: random.Random) -> StringMatch:
    kind = rnd.choice(["exact", "prefix", "regex", "present", "absent"])
    value = {"exact": rnd.choice(["1", "a", "a,b"]), "prefix": rnd.choice(["a", "1"]), "regex": "[a1].*"}.get(kind, "")
    return StringMatch(kind, value, case_sensitive=rnd.random() < 0.8)  # type: ignore[arg-type]


_REGEXES = [
    r"/a(/.*)?",
    r"/[ab]+/c",
    r"/a/b|/c",
    r"/a/\w+",
    r"/ab?/c",
    r"/a/(b|c)/.*",
    r"/catalog/.+",
    r"/a/b/",
    r"\/a/b",
    r"/a/c*",
    r"/a/[/b]+",
    r"/a/?b",
]


def _random_match(rnd: random.Random) -> RouteMatch:
    kind = rnd.choice(["prefix", "prefix", "exact", "regex"])
    path = rnd.choice(_REGEXES) if kind == "regex" else ""
    return RouteMatch(
        hosts=tuple(rnd.sample(_HOST_PATTERNS, rnd.choice([0, 0, 1, 2]))),
        path_kind=kind,  # type: ignore[arg-type]
        path=path or _random_path(rnd, trailing=True),
        methods=tuple(rnd.sample(["GET", "POST"], 1)) if rnd.random() < 0.2 else (),
        headers=(("x-h", _random_string_match(rnd)),) if rnd.random() < 0.2 else (),
        query=(("q", _random_string_match(rnd)),) if rnd.random() < 0.15 else (),
    )


def _random_request(rnd: random.Random) -> tuple[str, str, str, list[tuple[bytes, bytes]], bytes]:
    headers = [(b"x-h", rnd.choice([b"1", b"a", b"A1", b"b"])) for _ in range(rnd.randint(0, 2))]
    query = rnd.choice([b"", b"q=1", b"q=a&q=1", b"q=", b"q", b"x=1", b"q=A"])
    return rnd.choice(_HOSTS), _random_path(rnd, trailing=True), rnd.choice(["GET", "POST"]), headers, query


@pytest.mark.parametrize("seed", range(40))
def test_table_agrees_with_linear_scan(seed: int) -> None:
    rnd = random.Random(seed)
    routes = [
        route(f"r{i}", *(_random_match(rnd) for _ in range(rnd.randint(1, 3))), rewrite=rnd.choice([None, "/v2"]))
        for i in range(rnd.randint(1, 30))
    ]
    table = RouteTable.compile(routes)
    for _ in range(150):
        host, path, method, headers, query = _random_request(rnd)
        expected = reference_resolve(routes, host, path, method, headers, query)
        got = table.resolve(host=host, path=path, method=method, headers=headers, query_string=query)
        if expected is None:
            assert got is None, (host, path, method, headers, query, got)
        else:
            assert got is not None, (host, path, method, headers, query, expected)
            assert (got.index, got.match) == expected, (host, path, method, headers, query)


class CountingMethod(str):
    """A method string that counts how often a route's method condition looks at it."""

    looks = 0

    def __hash__(self) -> int:
        CountingMethod.looks += 1
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other)


def test_resolve_tests_only_the_candidates_the_index_yields() -> None:
    # Not a timing test: every route has a method condition, and the request's method counts
    # how many of them were evaluated. A scan would look 5,000 times; the index looks once.
    routes = [route(f"r{i}", prefix(f"/svc{i}", methods=("GET",), hosts=(f"h{i % 7}.local",))) for i in range(5000)]
    routes.append(route("default", prefix("/", methods=("GET",))))
    table = RouteTable.compile(routes)
    CountingMethod.looks = 0
    assert name(table, "/svc4999/x", host="h1.local", method=CountingMethod("GET")) == "r4999"
    assert CountingMethod.looks == 1
    CountingMethod.looks = 0
    assert name(table, "/svc4999/x", host="h2.local", method=CountingMethod("GET")) == "default"
    assert CountingMethod.looks == 1
