"""Authorization policy with Istio's AuthorizationPolicy semantics, as pure values and one pure function.

    decision = evaluate(policies, RequestAttributes.of(peer, path=..., method=..., host=..., headers=...))

Evaluation (Istio):

1. every matching AUDIT policy is recorded (``decision.audit``); it never changes the outcome;
2. any matching DENY policy -> denied;
3. no ALLOW policy at all -> allowed;
4. some ALLOW policy matches -> allowed; otherwise denied.

Matching: a policy matches when any of its rules matches; a policy with no rules never matches
(an ALLOW policy with ``rules: []`` therefore allows nothing; write ``rules: [{}]`` to match
everything). A rule matches when its ``from`` (any source), ``to`` (any operation) and ``when``
(every condition) all match; an absent part matches anything. Inside a source/operation, every
present field must match: ``principals`` etc. when any value matches, ``not_*`` when none does.

Strings match exactly, by ``prefix*``, by ``*suffix``, or ``*`` (anything present; an
unauthenticated request has no principal, so ``principals: ["*"]`` means "any authenticated
peer"). Paths and methods are case-sensitive, as in Istio: ``/ADMIN`` is not ``/admin``. Hosts
compare case-insensitively and without the port.

Principals are SPIFFE IDs. Policies may write them as ``spiffe://td/ns/x/sa/y`` or in Istio's
form ``td/ns/x/sa/y``; both become the ``spiffe://`` form at load time.

Paths are matched against the request path *after* ``facade.normalize.normalize_path`` (the
same bytes the router matched and the app receives), and every path in a policy is put in the
same canonical form when the policy is built, so ``/%61dmin/*`` in a policy is ``/admin/*``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from facade.yamlfile import Node, Problems, read_str, read_str_list

from .spiffe import InvalidSpiffeId, SpiffeId

__all__ = [
    "ACTIONS",
    "Action",
    "AuthorizationPolicy",
    "Condition",
    "Operation",
    "PolicyDecision",
    "PolicyError",
    "RequestAttributes",
    "Rule",
    "Source",
    "evaluate",
    "parse_policies",
    "policies_for",
]

Action = Literal["ALLOW", "DENY", "AUDIT"]
ACTIONS: tuple[Action, ...] = ("ALLOW", "DENY", "AUDIT")

_HEADER_KEY_RE = re.compile(r"^request\.headers\[([!#$%&'*+.^_`|~0-9A-Za-z-]+)\]$")
_CONDITION_KEYS = ("request.headers[<name>]", "source.principal", "source.namespace")
_METHOD_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Z-]+$")


_T = TypeVar("_T")


class PolicyError(ValueError):
    """A policy value is invalid; the message names the value and the rule it breaks."""


# -- string patterns --------------------------------------------------------------------


def _check_pattern(pattern: str, what: str) -> None:
    if not isinstance(pattern, str) or pattern == "":
        raise PolicyError(f"{what} must be a non-empty string")
    stars = pattern.count("*")
    if stars == 0 or pattern == "*":
        return
    if stars == 1 and (pattern.startswith("*") or pattern.endswith("*")):
        return
    raise PolicyError(f"{what} {pattern!r}: '*' may only be the whole value, a prefix ('*x') or a suffix ('x*')")


def _matches(pattern: str, value: str | None) -> bool:
    """Istio string match. An absent value matches no pattern (not even ``*``)."""
    if value is None:
        return False
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _any(patterns: Sequence[str], value: str | None) -> bool:
    return any(_matches(p, value) for p in patterns)


def _field_ok(values: Sequence[str], not_values: Sequence[str], value: str | None) -> bool:
    # An empty tuple means "field not present": it constrains nothing.
    if values and not _any(values, value):
        return False
    return not (not_values and _any(not_values, value))


def _canonical_principal(pattern: str) -> str:
    _check_pattern(pattern, "principal")
    if pattern == "*" or pattern.startswith("*"):
        return pattern  # a suffix does not depend on the scheme
    text = pattern if pattern.startswith("spiffe://") else "spiffe://" + pattern
    if text.endswith("*"):
        head = text[:-1]
        # A prefix must still be the start of a possible SPIFFE ID.
        if not re.fullmatch(r"spiffe://[a-z0-9._-]*(/[A-Za-z0-9._/-]*)?", head):
            raise PolicyError(f"principal prefix {pattern!r} cannot start any valid SPIFFE ID")
        return text
    try:
        sid = SpiffeId.parse(text)
    except InvalidSpiffeId as exc:
        raise PolicyError(f"principal {pattern!r} is not a SPIFFE ID: {exc}") from None
    if sid.is_trust_domain_id:
        # No peer can present it (verify_peer refuses it), so such a rule is a mistake, not a rule.
        raise PolicyError(
            f"principal {pattern!r} is a trust domain ID, which no workload carries; "
            f"write '{sid}/*' for every workload of the trust domain"
        )
    return str(sid)


def _canonical_path(pattern: str) -> str:
    """The canonical form of a policy path: the fixed part goes through the facade's normalizer."""
    _check_pattern(pattern, "path")
    if pattern == "*" or pattern.startswith("*"):
        # A suffix ('*.php') is not a path on its own; it is compared to the canonical request path as is.
        return pattern
    from facade.normalize import PathRejected, canonical_route_path  # shared with the router

    head, star = (pattern[:-1], "*") if pattern.endswith("*") else (pattern, "")
    if not head.startswith("/"):
        raise PolicyError(f"path {pattern!r} must start with '/' (or be '*' / '*suffix')")
    try:
        return canonical_route_path(head) + star
    except PathRejected as exc:
        raise PolicyError(f"path {pattern!r} has no canonical form: {exc.reason}") from None


def _canonical_host(pattern: str) -> str:
    _check_pattern(pattern, "host")
    return pattern.lower()


def _canonical_method(method: str) -> str:
    _check_pattern(method, "method")
    if method != "*" and not _METHOD_RE.match(method.strip("*")):
        raise PolicyError(f"method {method!r} is not an HTTP method token (methods are upper-case, e.g. GET)")
    return method


def _canonical_namespace(pattern: str) -> str:
    _check_pattern(pattern, "namespace")
    return pattern


# -- the model --------------------------------------------------------------------------


def _tuple(values: Iterable[str], canon: object) -> tuple[str, ...]:
    assert not isinstance(values, str), "pass a tuple of strings, not a string"
    return tuple(canon(v) for v in values)  # type: ignore[operator]


@dataclass(frozen=True, slots=True)
class Source:
    """Who is calling (Istio ``from.source``). Values are canonicalized on construction."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "principals", _tuple(self.principals, _canonical_principal))
        object.__setattr__(self, "not_principals", _tuple(self.not_principals, _canonical_principal))
        object.__setattr__(self, "namespaces", _tuple(self.namespaces, _canonical_namespace))
        object.__setattr__(self, "not_namespaces", _tuple(self.not_namespaces, _canonical_namespace))

    def matches(self, request: RequestAttributes) -> bool:
        return _field_ok(self.principals, self.not_principals, request.principal) and _field_ok(
            self.namespaces, self.not_namespaces, request.namespace
        )


@dataclass(frozen=True, slots=True)
class Operation:
    """What is called (Istio ``to.operation``). Paths are canonical, hosts lower-case."""

    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", _tuple(self.paths, _canonical_path))
        object.__setattr__(self, "not_paths", _tuple(self.not_paths, _canonical_path))
        object.__setattr__(self, "methods", _tuple(self.methods, _canonical_method))
        object.__setattr__(self, "not_methods", _tuple(self.not_methods, _canonical_method))
        object.__setattr__(self, "hosts", _tuple(self.hosts, _canonical_host))
        object.__setattr__(self, "not_hosts", _tuple(self.not_hosts, _canonical_host))

    def matches(self, request: RequestAttributes) -> bool:
        return (
            _field_ok(self.paths, self.not_paths, request.path)
            and _field_ok(self.methods, self.not_methods, request.method)
            and _field_ok(self.hosts, self.not_hosts, request.host_without_port)
        )


@dataclass(frozen=True, slots=True)
class Condition:
    """An Istio ``when`` condition: ``key`` is ``request.headers[name]``, ``source.principal`` or
    ``source.namespace``; it matches when the value matches any of ``values`` (if given) and
    none of ``not_values``."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        header = _HEADER_KEY_RE.match(self.key)
        if header is None and self.key not in ("source.principal", "source.namespace"):
            raise PolicyError(f"unsupported condition key {self.key!r} (supported: {', '.join(_CONDITION_KEYS)})")
        if header is not None:
            object.__setattr__(self, "key", f"request.headers[{header.group(1).lower()}]")
        if not self.values and not self.not_values:
            raise PolicyError(f"condition {self.key!r} needs values or not_values")
        canon = _canonical_principal if self.key == "source.principal" else _canonical_namespace
        object.__setattr__(self, "values", _tuple(self.values, canon))
        object.__setattr__(self, "not_values", _tuple(self.not_values, canon))

    def value_of(self, request: RequestAttributes) -> str | None:
        if self.key == "source.principal":
            return request.principal
        if self.key == "source.namespace":
            return request.namespace
        return request.header(self.key[len("request.headers[") : -1])

    def matches(self, request: RequestAttributes) -> bool:
        return _field_ok(self.values, self.not_values, self.value_of(request))


@dataclass(frozen=True, slots=True)
class Rule:
    """``from_`` (any source matches) AND ``to`` (any operation) AND ``when`` (all conditions)."""

    from_: tuple[Source, ...] = ()
    to: tuple[Operation, ...] = ()
    when: tuple[Condition, ...] = ()

    def matches(self, request: RequestAttributes) -> bool:
        if self.from_ and not any(s.matches(request) for s in self.from_):
            return False
        if self.to and not any(o.matches(request) for o in self.to):
            return False
        return all(c.matches(request) for c in self.when)


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    """A named policy. ``services`` limits it to those services' sidecars (empty: every sidecar),
    like an Istio workload selector."""

    name: str
    action: Action = "ALLOW"
    rules: tuple[Rule, ...] = ()
    services: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise PolicyError(f"action must be one of {', '.join(ACTIONS)}, got {self.action!r}")

    def matches(self, request: RequestAttributes) -> bool:
        return any(rule.matches(request) for rule in self.rules)

    def applies_to(self, service: str) -> bool:
        return not self.services or service in self.services


@dataclass(frozen=True, slots=True)
class RequestAttributes:
    """What policy sees of a request. ``path`` is already canonical (``normalize_path``);
    ``principal`` is the verified peer's SPIFFE ID (None for plaintext)."""

    principal: str | None
    namespace: str | None
    path: str
    method: str
    host: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls, peer: SpiffeId | None, *, path: str, method: str, host: str = "", headers: Mapping[str, str] | None = None
    ) -> RequestAttributes:
        """Attributes for a request from ``peer`` (namespace taken from its ``/ns/<ns>/`` path)."""
        return cls(
            principal=str(peer) if peer is not None else None,
            namespace=peer.namespace if peer is not None else None,
            path=path,
            method=method,
            host=host,
            headers=headers or {},
        )

    @property
    def host_without_port(self) -> str:
        host = self.host.lower()
        if host.startswith("["):
            return host.split("]", 1)[0] + "]"
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        if value is not None:
            return value
        for key, value in self.headers.items():
            if key.lower() == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The outcome: ``allowed``, the deciding policy (None when decided by default) and a reason.
    ``audit`` is True when an AUDIT policy matched (``audit_policies`` names them)."""

    allowed: bool
    action_matched: Action | None
    policy_name: str | None
    reason: str
    audit: bool = False
    audit_policies: tuple[str, ...] = ()


def evaluate(policies: Sequence[AuthorizationPolicy], request: RequestAttributes) -> PolicyDecision:
    """Decide one request by Istio's order: AUDIT recorded; DENY wins; no ALLOW -> allow; ALLOW match -> allow."""
    audits = tuple(p.name for p in policies if p.action == "AUDIT" and p.matches(request))
    audit = bool(audits)
    for policy in policies:
        if policy.action == "DENY" and policy.matches(request):
            return PolicyDecision(False, "DENY", policy.name, f"denied by policy {policy.name!r}", audit, audits)
    allows = [p for p in policies if p.action == "ALLOW"]
    if not allows:
        return PolicyDecision(True, None, None, "no ALLOW policy applies: allowed by default", audit, audits)
    for policy in allows:
        if policy.matches(request):
            return PolicyDecision(True, "ALLOW", policy.name, f"allowed by policy {policy.name!r}", audit, audits)
    return PolicyDecision(False, None, None, "ALLOW policies exist and none matches", audit, audits)


def policies_for(policies: Iterable[AuthorizationPolicy], service: str) -> tuple[AuthorizationPolicy, ...]:
    """The policies a given service's sidecar enforces."""
    return tuple(p for p in policies if p.applies_to(service))


# -- YAML -------------------------------------------------------------------------------

_POLICY_FIELDS = ("name", "action", "rules", "services")
_RULE_FIELDS = ("from", "to", "when")
_SOURCE_FIELDS = ("principals", "not_principals", "namespaces", "not_namespaces")
_OPERATION_FIELDS = ("paths", "not_paths", "methods", "not_methods", "hosts", "not_hosts")
_CONDITION_FIELDS = ("key", "values", "not_values")


def parse_policies(node: Node | None, problems: Problems) -> tuple[AuthorizationPolicy, ...]:
    """Read a ``mesh.policies`` list. Errors go to ``problems`` with file:line:col; bad policies are skipped.

    ::

        - name: deny-admin
          action: DENY                    # ALLOW (default) | DENY | AUDIT
          services: [catalog]             # optional; default every sidecar
          rules:
            - from: [{source: {principals: ["spiffe://shop.local/ns/shop/sa/web"]}}]
              to: [{operation: {paths: ["/admin/*"], methods: [GET]}}]
              when: [{key: "request.headers[x-canary]", values: ["1"]}]
    """
    if node is None or node.is_null:
        return ()
    if not node.is_list:
        problems.error(node, f"must be a list of policies, got {node.kind}")
        return ()
    out: list[AuthorizationPolicy] = []
    seen: dict[str, Node] = {}
    for element in node.elements():
        policy = _parse_policy(element, problems)
        if policy is None:
            continue
        if policy.name in seen:
            first = seen[policy.name]
            problems.error(element, f"duplicate policy name {policy.name!r} (first at line {first.line})")
            continue
        seen[policy.name] = element
        out.append(policy)
    return tuple(out)


def _parse_policy(node: Node, problems: Problems) -> AuthorizationPolicy | None:
    before = len(problems.errors)
    fields = node.fields(problems, _POLICY_FIELDS, required=("name",))
    name = read_str(fields.get("name"), problems)
    action = read_str(fields.get("action"), problems, default="ALLOW", choices=ACTIONS)
    services = tuple(read_str_list(fields.get("services"), problems, default=[]))
    rules: list[Rule] = []
    rules_node = fields.get("rules")
    if rules_node is not None and not rules_node.is_null:
        if not rules_node.is_list:
            problems.error(rules_node, f"must be a list of rules, got {rules_node.kind}")
        for rule_node in rules_node.elements():
            rule = _parse_rule(rule_node, problems)
            if rule is not None:
                rules.append(rule)
    if not rules and action == "ALLOW" and (rules_node is None or rules_node.is_null or rules_node.is_list):
        problems.warn(node, "an ALLOW policy without rules allows nothing (write `rules: [{}]` to allow everything)")
    if len(problems.errors) > before or name is None:
        return None
    return AuthorizationPolicy(name=name, action=action, rules=tuple(rules), services=services)  # type: ignore[arg-type]


def _parse_rule(node: Node, problems: Problems) -> Rule | None:
    if node.is_null:
        return Rule()
    fields = node.fields(problems, _RULE_FIELDS)
    sources = _parse_wrapped(fields.get("from"), "source", _SOURCE_FIELDS, problems)
    operations = _parse_wrapped(fields.get("to"), "operation", _OPERATION_FIELDS, problems)
    conditions: list[Condition] = []
    when = fields.get("when")
    if when is not None:
        if not when.is_list or not when.elements():
            problems.error(when, "must be a non-empty list of conditions (omit `when` to match any request)")
        for cond_node in when.elements():
            cond = _build(
                cond_node, problems, Condition, cond_node.fields(problems, _CONDITION_FIELDS, required=("key",))
            )
            if cond is not None:
                conditions.append(cond)
    try:
        return Rule(
            from_=tuple(Source(**f) for f in sources),
            to=tuple(Operation(**f) for f in operations),
            when=tuple(conditions),
        )
    except PolicyError:  # already reported with its position by _parse_wrapped
        return None


def _parse_wrapped(
    node: Node | None, wrapper: str, allowed: tuple[str, ...], problems: Problems
) -> list[dict[str, tuple[str, ...]]]:
    """``from: [{source: {...}}]`` / ``to: [{operation: {...}}]`` -> validated keyword dicts."""
    if node is None:
        return []
    if not node.is_list or not node.elements():
        problems.error(node, f"must be a non-empty list of {{{wrapper}: ...}} (omit it to match any request)")
        return []
    out: list[dict[str, tuple[str, ...]]] = []
    for element in node.elements():
        inner = element.fields(problems, (wrapper,), required=(wrapper,)).get(wrapper)
        if inner is None:
            continue
        values = _read_lists(inner, allowed, problems)
        if values is None:
            continue
        cls = Source if wrapper == "source" else Operation
        if _build(inner, problems, cls, values) is not None:
            out.append(values)
    return out


def _read_lists(node: Node, allowed: tuple[str, ...], problems: Problems) -> dict[str, tuple[str, ...]] | None:
    fields = node.fields(problems, allowed)
    if node.is_mapping and not fields and not node.items():
        problems.error(node, "is empty; omit it to match any request")
        return None
    out: dict[str, tuple[str, ...]] = {}
    for key, value_node in fields.items():
        values = read_str_list(value_node, problems)
        if values is None:
            continue
        if not values:
            problems.error(value_node, "must not be empty (omit the field to match any value)")
            continue
        out[key] = tuple(values)
    return out


def _build(node: Node, problems: Problems, cls: type[_T], values: Mapping[str, object]) -> _T | None:
    """Construct ``cls(**values)``, reporting a PolicyError at the position of the offending field."""
    kwargs: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, Node):
            if key == "key":
                value = read_str(value, problems)
            else:
                value = read_str_list(value, problems, default=[])
                value = tuple(value)  # type: ignore[arg-type]
            if value is None:
                return None
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except PolicyError as exc:
        problems.error(_offending(node, exc, kwargs), str(exc))
        return None


def _offending(node: Node, exc: PolicyError, kwargs: Mapping[str, object]) -> Node:
    # Point at the list element whose value the error quotes, else at the field, else the mapping.
    message = str(exc)
    for key in kwargs:
        child = node.get(key)
        if child is None:
            continue
        for element in child.elements() or [child]:
            if element.is_scalar and repr(str(element.value)) in message:
                return element
    return node
