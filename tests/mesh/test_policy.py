"""AuthorizationPolicy semantics as a decision table, bypass attempts, and YAML parsing with positions."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from facade.errors import ConfigError
from facade.mesh.policy import (
    AuthorizationPolicy,
    Condition,
    Operation,
    PolicyError,
    RequestAttributes,
    Rule,
    Source,
    evaluate,
    parse_policies,
    policies_for,
)
from facade.mesh.spiffe import SpiffeId
from facade.normalize import PathRejected, normalize_path
from facade.yamlfile import Problems, YamlDocument

WEB = SpiffeId.workload("shop.local", "shop", "web")
ADMIN_TOOL = SpiffeId.workload("shop.local", "ops", "admin-tool")


def req(
    path: str = "/catalog/1",
    *,
    peer: SpiffeId | None = WEB,
    method: str = "GET",
    host: str = "catalog.shop.local",
    headers: dict[str, str] | None = None,
) -> RequestAttributes:
    return RequestAttributes.of(peer, path=path, method=method, host=host, headers=headers)


def allow(name: str, *rules: Rule) -> AuthorizationPolicy:
    return AuthorizationPolicy(name, "ALLOW", tuple(rules))


def deny(name: str, *rules: Rule) -> AuthorizationPolicy:
    return AuthorizationPolicy(name, "DENY", tuple(rules))


def audit(name: str, *rules: Rule) -> AuthorizationPolicy:
    return AuthorizationPolicy(name, "AUDIT", tuple(rules))


def to(**operation: tuple[str, ...]) -> Rule:
    return Rule(to=(Operation(**operation),))


def from_(**source: tuple[str, ...]) -> Rule:
    return Rule(from_=(Source(**source),))


def when(key: str, values: tuple[str, ...] = (), not_values: tuple[str, ...] = ()) -> Rule:
    return Rule(when=(Condition(key, values, not_values),))


EVERYTHING = Rule()
DENY_ADMIN = deny("deny-admin", to(paths=("/admin/*",)))

# (case id, policies, request, expected allowed, expected deciding policy)
TABLE: list[tuple[str, list[AuthorizationPolicy], RequestAttributes, bool, str | None]] = [
    ("no policies: allow", [], req(), True, None),
    ("only DENY, not matching: allow", [DENY_ADMIN], req("/catalog/1"), True, None),
    ("only DENY, matching: deny", [DENY_ADMIN], req("/admin/users"), False, "deny-admin"),
    ("DENY over ALLOW", [allow("all", EVERYTHING), DENY_ADMIN], req("/admin/x"), False, "deny-admin"),
    ("ALLOW matches", [allow("web", from_(principals=(str(WEB),)))], req(), True, "web"),
    ("ALLOW present, none matches: deny", [allow("ops", from_(namespaces=("ops",)))], req(), False, None),
    ("ALLOW with no rules allows nothing", [allow("nothing")], req(), False, None),
    ("ALLOW with an empty rule allows everything", [allow("anything", EVERYTHING)], req(peer=None), True, "anything"),
    ("DENY with no rules never matches", [deny("inert")], req(), True, None),
    ("DENY with an empty rule denies everything", [deny("all", EVERYTHING)], req(), False, "all"),
    ("principal * = any authenticated", [allow("authn", from_(principals=("*",)))], req(), True, "authn"),
    ("principal * refuses plaintext", [allow("authn", from_(principals=("*",)))], req(peer=None), False, None),
    ("Istio principal form", [allow("p", from_(principals=("shop.local/ns/shop/sa/web",)))], req(), True, "p"),
    ("principal prefix", [allow("p", from_(principals=("shop.local/ns/shop/*",)))], req(), True, "p"),
    ("principal prefix no match", [allow("p", from_(principals=("shop.local/ns/ops/*",)))], req(), False, None),
    ("principal suffix", [allow("p", from_(principals=("*/sa/web",)))], req(), True, "p"),
    ("not_principals excludes", [allow("p", from_(not_principals=(str(WEB),)))], req(), False, None),
    ("not_principals lets others in", [allow("p", from_(not_principals=(str(WEB),)))], req(peer=ADMIN_TOOL), True, "p"),
    ("namespaces", [allow("n", from_(namespaces=("shop",)))], req(), True, "n"),
    ("not_namespaces", [deny("n", from_(not_namespaces=("shop",)))], req(peer=ADMIN_TOOL), False, "n"),
    ("not_namespaces, plaintext has none", [deny("n", from_(not_namespaces=("shop",)))], req(peer=None), False, "n"),
    ("path prefix", [allow("p", to(paths=("/catalog/*",)))], req("/catalog/42"), True, "p"),
    ("prefix does not match the bare dir", [allow("p", to(paths=("/catalog/*",)))], req("/catalog"), False, None),
    ("path suffix", [deny("php", to(paths=("*.php",)))], req("/x/index.php"), False, "php"),
    ("path exact", [allow("p", to(paths=("/healthz",)))], req("/healthz/"), False, None),
    ("not_paths", [allow("p", to(not_paths=("/admin/*",)))], req("/catalog/1"), True, "p"),
    ("not_paths excludes", [allow("p", to(not_paths=("/admin/*",)))], req("/admin/1"), False, None),
    ("methods", [allow("ro", to(methods=("GET", "HEAD")))], req(method="POST"), False, None),
    ("not_methods", [deny("w", to(not_methods=("GET", "HEAD")))], req(method="DELETE"), False, "w"),
    (
        "hosts ignore case and port",
        [allow("h", to(hosts=("Catalog.Shop.Local",)))],
        req(host="CATALOG.shop.local:15001"),
        True,
        "h",
    ),
    ("hosts suffix", [allow("h", to(hosts=("*.shop.local",)))], req(host="orders.shop.local"), True, "h"),
    ("not_hosts", [deny("h", to(not_hosts=("*.shop.local",)))], req(host="evil.example"), False, "h"),
    (
        "header condition",
        [allow("c", when("request.headers[x-canary]", ("1",)))],
        req(headers={"X-Canary": "1"}),
        True,
        "c",
    ),
    ("header condition absent", [allow("c", when("request.headers[x-canary]", ("1",)))], req(), False, None),
    (
        "header condition not_values",
        [deny("c", when("request.headers[x-env]", not_values=("prod",)))],
        req(headers={"x-env": "dev"}),
        False,
        "c",
    ),
    (
        "header presence with *",
        [deny("c", when("request.headers[x-debug]", ("*",)))],
        req(headers={"x-debug": ""}),
        False,
        "c",
    ),
    ("source.principal condition", [allow("c", when("source.principal", ("*/sa/web",)))], req(), True, "c"),
    ("source.namespace condition", [allow("c", when("source.namespace", ("ops",)))], req(), False, None),
    (
        "within a rule every part must match",
        [allow("r", Rule(from_=(Source(namespaces=("shop",)),), to=(Operation(methods=("POST",)),)))],
        req(method="GET"),
        False,
        None,
    ),
    (
        "sources are ORed",
        [allow("r", Rule(from_=(Source(namespaces=("ops",)), Source(principals=(str(WEB),)))))],
        req(),
        True,
        "r",
    ),
    (
        "conditions are ANDed",
        [allow("r", Rule(when=(Condition("request.headers[a]", ("1",)), Condition("request.headers[b]", ("2",)))))],
        req(headers={"a": "1", "b": "3"}),
        False,
        None,
    ),
    ("rules are ORed", [allow("r", to(methods=("POST",)), to(paths=("/catalog/*",)))], req(), True, "r"),
]


@pytest.mark.parametrize(
    ("policies", "request_", "allowed", "deciding"), [c[1:] for c in TABLE], ids=[c[0] for c in TABLE]
)
def test_decision_table(
    policies: list[AuthorizationPolicy], request_: RequestAttributes, allowed: bool, deciding: str | None
) -> None:
    decision = evaluate(policies, request_)
    assert decision.allowed is allowed, decision.reason
    assert decision.policy_name == deciding


def test_audit_is_recorded_but_never_decides() -> None:
    watch = audit("watch-admin", to(paths=("/admin/*",)))
    allowed = evaluate([watch], req("/admin/x"))
    assert allowed.allowed and allowed.audit and allowed.audit_policies == ("watch-admin",)
    assert allowed.action_matched is None
    denied = evaluate([watch, DENY_ADMIN], req("/admin/x"))
    assert not denied.allowed and denied.audit and denied.action_matched == "DENY"
    quiet = evaluate([watch], req("/catalog"))
    assert quiet.allowed and not quiet.audit
    # An AUDIT policy is not an ALLOW policy: it does not switch on default-deny.
    assert evaluate([audit("a", EVERYTHING)], req()).allowed


def test_decision_names_the_reason() -> None:
    assert evaluate([DENY_ADMIN], req("/admin/x")).reason == "denied by policy 'deny-admin'"
    assert "none matches" in evaluate([allow("x")], req()).reason
    assert "allowed by default" in evaluate([], req()).reason


# -- bypass attempts against DENY /admin/* ----------------------------------------------------

BYPASSES = [
    b"/admin/../admin/x",
    b"/%61dmin/x",
    b"//admin/x",
    b"/admin%2fx",
    b"/admin;x/y",
    b"/./admin/x",
    b"/catalog/../admin/x",
    b"/admin/%2e%2e/admin/x",
    b"/%2e/admin/x",
    b"/admin//x",
]


@pytest.mark.parametrize("raw", BYPASSES, ids=[b.decode() for b in BYPASSES])
def test_path_tricks_against_deny_admin_are_denied_or_rejected(raw: bytes) -> None:
    try:
        path = normalize_path(raw)
    except PathRejected:
        return  # the request never reaches policy: 400
    decision = evaluate([allow("all", EVERYTHING), DENY_ADMIN], req(path))
    assert not decision.allowed, f"{raw!r} -> {path!r} slipped past DENY /admin/*"


def test_upper_case_is_a_different_path_as_in_istio() -> None:
    # Istio matches paths case-sensitively; a backend that folds case needs an allow-list
    # (default deny) rather than a deny-list. docs/mesh.md says so.
    path = normalize_path(b"/ADMIN/x")
    assert evaluate([DENY_ADMIN], req(path)).allowed
    allow_list = [allow("public", to(paths=("/catalog/*", "/healthz")))]
    assert not evaluate(allow_list, req(path)).allowed


def test_policy_paths_are_canonicalized_like_request_paths() -> None:
    encoded = deny("d", to(paths=("/%61dmin/*", "/a/./b/../c")))
    assert encoded.rules[0].to[0].paths == ("/admin/*", "/a/c")
    assert not evaluate([encoded], req(normalize_path(b"/admin/x"))).allowed


# -- construction errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Source(principals=("spiffe://Shop/x",)), "not a SPIFFE ID"),
        (lambda: Source(principals=("shop.local/ns/*/sa/web",)), "'*' may only be"),
        (lambda: Source(principals=("",)), "non-empty"),
        (lambda: Operation(paths=("admin/*",)), "must start with '/'"),
        (lambda: Operation(paths=("/a%zz",)), "no canonical form"),
        (lambda: Operation(paths=("/a#b",)), "no canonical form"),
        (lambda: Operation(methods=("get",)), "upper-case"),
        (lambda: Condition("request.auth.claims[iss]", ("x",)), "unsupported condition key"),
        (lambda: Condition("request.headers[x]"), "needs values or not_values"),
        (lambda: AuthorizationPolicy("p", "REJECT"), "action must be one of"),  # type: ignore[arg-type]
    ],
)
def test_bad_policy_values_raise_policy_error(build: Callable[[], object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        build()


def test_policies_for_selects_by_service() -> None:
    scoped = AuthorizationPolicy("catalog-only", "DENY", (EVERYTHING,), services=("catalog",))
    everywhere = AuthorizationPolicy("all", "AUDIT", (EVERYTHING,))
    assert policies_for([scoped, everywhere], "catalog") == (scoped, everywhere)
    assert policies_for([scoped, everywhere], "orders") == (everywhere,)


# -- YAML -------------------------------------------------------------------------------------

GOOD = """\
mesh:
  policies:
    - name: deny-admin
      action: DENY
      rules:
        - to: [{operation: {paths: ["/admin/*"]}}]
    - name: web-reads-catalog
      services: [catalog]
      rules:
        - from: [{source: {principals: ["shop.local/ns/shop/sa/web"]}}]
          to: [{operation: {methods: [GET, HEAD], paths: ["/catalog/*"]}}]
          when:
            - key: request.headers[X-Canary]
              not_values: ["0"]
    - name: everything
      action: AUDIT
      rules: [{}]
"""


def _parse(text: str) -> tuple[tuple[AuthorizationPolicy, ...], Problems]:
    doc = YamlDocument.load(text, "facade.yaml")
    problems = Problems(doc.file)
    mesh = doc.root.get("mesh")
    assert mesh is not None
    return parse_policies(mesh.get("policies"), problems), problems


def test_yaml_policies_parse_into_the_model() -> None:
    policies, problems = _parse(GOOD)
    assert not problems.items
    assert [p.name for p in policies] == ["deny-admin", "web-reads-catalog", "everything"]
    web = policies[1]
    assert web.action == "ALLOW" and web.services == ("catalog",)
    assert web.rules[0].from_[0].principals == (str(WEB),)
    assert web.rules[0].when[0].key == "request.headers[x-canary]"
    assert policies[2].rules == (Rule(),)
    assert evaluate(policies, req("/catalog/1", headers={"x-canary": "1"})).allowed
    assert not evaluate(policies, req("/catalog/1", method="POST")).allowed


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "mesh:\n  policies:\n    - name: p\n      acton: DENY\n",
            "facade.yaml:4:7: mesh.policies[0].acton: unknown field 'acton'; did you mean 'action'?",
        ),
        (
            "mesh:\n  policies:\n    - name: p\n      action: REJECT\n",
            "facade.yaml:4:15: mesh.policies[0].action: must be one of ALLOW, DENY, AUDIT, got 'REJECT'",
        ),
        (
            "mesh:\n  policies:\n    - name: p\n      rules:\n        - from: [{source: {principals: [spiffe://Shop/x]}}]\n",
            "facade.yaml:5:41: mesh.policies[0].rules[0].from[0].source.principals[0]: principal 'spiffe://Shop/x'",
        ),
        (
            "mesh:\n  policies:\n    - name: p\n      rules:\n        - to: [{operation: {notPaths: [/a]}}]\n",
            "unknown field 'notPaths'; did you mean 'not_paths'?",
        ),
        (
            "mesh:\n  policies:\n    - name: p\n      rules:\n        - to: [{operation: {paths: []}}]\n",
            "facade.yaml:5:36: mesh.policies[0].rules[0].to[0].operation.paths: must not be empty",
        ),
        (
            (
                "mesh:\n  policies:\n    - name: p\n      rules:\n"
                '        - when: [{key: "request.auth.claims[x]", values: [a]}]\n'
            ),
            "unsupported condition key 'request.auth.claims[x]'",
        ),
        (
            "mesh:\n  policies:\n    - name: p\n      rules: [{}]\n    - name: p\n      rules: [{}]\n",
            "facade.yaml:5:7: mesh.policies[1]: duplicate policy name 'p' (first at line 3)",
        ),
        ("mesh:\n  policies:\n    - action: DENY\n", "facade.yaml:3:7: mesh.policies[0].name: is required"),
        ("mesh:\n  policies: {name: p}\n", "facade.yaml:2:13: mesh.policies: must be a list of policies"),
    ],
)
def test_yaml_errors_point_at_file_line_col(yaml_text: str, expected: str) -> None:
    _, problems = _parse(yaml_text)
    with pytest.raises(ConfigError) as excinfo:
        problems.raise_if_errors()
    assert expected in str(excinfo.value)


def test_a_bad_policy_is_reported_and_left_out_while_good_ones_load() -> None:
    text = "mesh:\n  policies:\n    - name: bad\n      action: NOPE\n    - name: good\n      rules: [{}]\n"
    policies, problems = _parse(text)
    assert len(problems.errors) == 1
    assert [p.name for p in policies] == ["good"]


def test_allow_without_rules_is_a_warning() -> None:
    policies, problems = _parse("mesh:\n  policies:\n    - name: nothing\n")
    assert not problems.errors
    assert "allows nothing" in str(problems.warnings[0])
    assert policies[0].rules == ()
