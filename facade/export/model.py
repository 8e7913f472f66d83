"""The target-neutral half of ``facade export``: config + plan step -> ordered rules per host (pure).

The facade routes by *first match* over ``routes:``; a migration step replaces a route's backend
by a ``Split`` (weights, a header canary, a shadow copy). This module turns one such routing state
into ``Rule`` values that say the same thing without any proxy's vocabulary:

- one ``Rule`` per route, in the facade's order; a canary step puts a rule with the canary header
  match *ahead* of the route's rule, and a mirroring step puts a rule for the safe methods (the only
  ones the facade mirrors) ahead of one without the mirror, so every request keeps its outcome;
- rules grouped by host (``HostGroup``): Envoy picks one virtual host per request (exact host, then
  the longest wildcard suffix, then ``*``) and never falls back to another, so every group carries
  every rule that applies to its host, any-host rules included.

``istio.py`` and ``gateway_api.py`` render these into manifests; what a target cannot express is
an ``ExportError`` (nothing is written) or a ``Finding`` (a warning naming what will differ).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..config import (
    Config,
    CorsPolicy,
    DirectResponse,
    FaultPolicy,
    HeaderOps,
    Redirect,
    Retries,
    Route,
    RouteMatch,
    StringMatch,
)
from ..split import Split

__all__ = [
    "DEFAULT_GATEWAY",
    "DEFAULT_NAMESPACE",
    "SAFE_METHODS",
    "Destination",
    "ExportError",
    "ExportOptions",
    "Finding",
    "HostGroup",
    "Mirror",
    "RoutingState",
    "Rule",
    "host_covers",
    "host_groups",
    "object_name",
    "path_variants",
    "routing_state",
    "rules_for",
    "step_directory",
    "step_findings",
]

DEFAULT_NAMESPACE = "default"
DEFAULT_GATEWAY = "facade"
# The methods the facade mirrors unless a plan says ``unsafe_methods`` (facade.shadow.SAFE_METHODS).
SAFE_METHODS: tuple[str, ...] = ("GET", "HEAD", "OPTIONS", "TRACE")

_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HOST_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class ExportError(Exception):
    """The config (or the chosen step) has something a target cannot express safely; nothing is written."""


@dataclass(frozen=True, slots=True)
class Finding:
    """A warning: ``subject`` (a route, service, plan step...) will behave differently in the target."""

    subject: str
    message: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}"


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """Where the manifests go. ``service_hosts`` maps a facade service to a Kubernetes host; a service
    not in it is addressed by its own name (a short host, resolved in ``namespace``)."""

    namespace: str = DEFAULT_NAMESPACE
    gateway: str = DEFAULT_GATEWAY
    service_hosts: Mapping[str, str] = field(default_factory=dict)
    service_ports: Mapping[str, int] = field(default_factory=dict)  # the Kubernetes Service port, when given
    services: tuple[str, ...] = ()  # every facade service (to see which share a host); set by the exporters

    def __post_init__(self) -> None:
        if not _DNS_LABEL_RE.match(self.namespace) or len(self.namespace) > 63:
            raise ExportError(f"--namespace {self.namespace!r} is not a Kubernetes namespace name (RFC 1123 label)")
        gateway = self.gateway.split("/", 1)[-1]
        if not _HOST_RE.match(gateway):
            raise ExportError(f"--gateway {self.gateway!r} is not a Kubernetes object name ([NAMESPACE/]NAME)")
        for service, host in self.service_hosts.items():
            if not _HOST_RE.match(host) or len(host) > 253:
                raise ExportError(f"--service-host {service}={host}: {host!r} is not a DNS host name")

        for service, port in self.service_ports.items():
            if not 1 <= port <= 65535:
                raise ExportError(f"--service-host {service}: port must be 1-65535, got {port}")

    def host_of(self, service: str) -> str:
        return self.service_hosts.get(service) or service.replace("_", "-")

    def port_of(self, service: str) -> int | None:
        return self.service_ports.get(service)


@dataclass(frozen=True, slots=True)
class RoutingState:
    """What the facade does at one point of a plan: the splits in force and the services held STRICT."""

    label: str  # "baseline", "step 3: weight 5"
    splits: Mapping[str, Split] = field(default_factory=dict)
    strict: frozenset[str] = frozenset()
    plan: Any = None  # facade.migration.plan.Plan or None
    step: int = 0  # 0 = before the plan starts; N = on step N (1-based)


def routing_state(plan: Any, step: int) -> RoutingState:
    """The facade's routing with ``plan`` on step ``step`` (1-based; 0 = not started), taken from the
    migration engine itself (``effective_split`` / ``strict_services``), not re-derived here."""
    from ..migration.engine import MigrationState, Phase, effective_split, strict_services

    if plan is None or step == 0:
        return RoutingState("baseline", plan=plan, step=0)
    if not 1 <= step <= len(plan.steps):
        raise ExportError(f"plan {plan.name!r} has steps 1-{len(plan.steps)} (0 = before it starts), got step {step}")
    state = MigrationState(plan=plan.name, phase=Phase.RUNNING, step=step - 1)
    splits = {route: s for route, s in effective_split(plan, state).items() if s is not None}
    label = f"step {step}: {plan.steps[step - 1].summary()}"
    return RoutingState(label, splits=splits, strict=strict_services(plan, state), plan=plan, step=step)


def step_directory(plan: Any, step: int) -> str:
    """``00-baseline``, ``01-shadow-100``, ``03-weight-5``, ``08-mtls-strict``: sorts in apply order."""
    if step == 0:
        return "00-baseline"
    s = plan.steps[step - 1]
    if s.kind == "weight":
        slug = f"weight-{s.weight}"
    elif s.kind == "shadow":
        slug = f"shadow-{s.shadow_percent:g}".replace(".", "-")
    elif s.kind == "mtls":
        slug = "mtls-strict"
    else:
        slug = s.kind
    width = max(2, len(str(len(plan.steps))))
    return f"{step:0{width}d}-{slug}"


# -- rules -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Destination:
    service: str
    weight: int = 100


@dataclass(frozen=True, slots=True)
class Mirror:
    service: str
    percent: float  # of the requests this rule matches


@dataclass(frozen=True, slots=True)
class Rule:
    """One ordered routing rule; any of ``matches`` (hosts already resolved into the group) selects it.

    Exactly one action: ``destinations`` (weights sum to 100), ``redirect`` or ``direct``.
    """

    route: str  # the facade route it comes from (named in messages)
    name: str  # unique in the config: the route name, or route + "-canary" / "-mirror"
    matches: tuple[RouteMatch, ...]
    destinations: tuple[Destination, ...] = ()
    mirror: Mirror | None = None
    redirect: Redirect | None = None
    direct: DirectResponse | None = None
    rewrite_prefix: str | None = None
    request_headers: HeaderOps = field(default_factory=HeaderOps)
    response_headers: HeaderOps = field(default_factory=HeaderOps)
    timeout: float | None = None  # None = no timeout
    retries: Retries | None = None
    rewrite_regex: tuple[str, str] | None = None  # (pattern, substitution)
    rewrite_authority: str | None = None
    fault: FaultPolicy | None = None  # the route's, or a step's on a rule that only the candidate serves
    cors: CorsPolicy | None = None


@dataclass(frozen=True, slots=True)
class HostGroup:
    """The rules a request for ``host`` (``*`` = any host) is routed by, in first-match order."""

    host: str
    rules: tuple[Rule, ...]


def rules_for(config: Config, state: RoutingState) -> tuple[list[Rule], list[Finding]]:
    """Every route of ``config`` as rules, in first-match order, with the splits of ``state`` applied."""
    rules: list[Rule] = []
    findings: list[Finding] = []
    for route in config.routes:
        split = state.splits.get(route.name)
        if route.redirect is not None or route.direct_response is not None:
            rules.append(_rule(route, route.name, route.matches, config, ()))
            continue
        if split is None:
            destinations = tuple(Destination(b.service, b.weight) for b in route.backends if b.weight > 0)
            rules.append(_rule(route, route.name, route.matches, config, destinations, findings))
            continue
        rules.extend(_split_rules(route, split, config, state, findings))
    return rules, findings


def _split_rules(route: Route, split: Split, config: Config, state: RoutingState, findings: list[Finding]) -> list[Rule]:
    where = f"route {route.name!r} ({state.label})"
    primary, candidate = split.primary, split.candidate
    out: list[Rule] = []
    if split.canary is not None:
        canary = split.canary
        if canary.kind == "header":
            condition = (canary.name, StringMatch("exact", canary.value))
        else:
            condition = ("cookie", StringMatch("regex", _cookie_regex(canary.name, canary.value)))
            findings.append(Finding(where, (
                f"the cookie canary {canary.name}={canary.value} becomes a regex on the Cookie header: it also "
                "matches when a later cookie of the same name has the value (the facade reads the first)")))
        matches = tuple(_with_header(m, condition, route) for m in route.matches)
        out.append(_rule(route, route.name + "-canary", matches, config, (Destination(candidate),), findings,
                         fault=split.fault or route.fault))
        if split.weight_bps == 0:  # a canary step; a weight step that keeps the canary goes on below
            out.append(_rule(route, route.name, route.matches, config, (Destination(primary),), findings))
            return out
    weight = split.weight_bps * 100 // 10_000
    destinations = tuple(
        Destination(s, w) for s, w in ((primary, 100 - weight), (candidate, weight)) if w > 0
    )
    step_fault = split.fault if weight > 0 else None
    if step_fault is not None and weight < 100:
        findings.append(Finding(where, (
            f"the step's fault applies to {candidate}'s {weight}% share only; an Istio fault applies to a whole "
            "http route, so it is not exported (rehearse it on the facade, or give the candidate a canary step)")))
        step_fault = None
    if split.sticky is not None and 0 < weight < 100:
        findings.append(Finding(where, (
            f"sticky cohorts by {split.sticky} have no equivalent: the target draws a destination per request, "
            f"so a user may alternate between {primary} and {candidate} (use Flagger/Argo Rollouts session "
            "affinity, or consistent hashing on one destination)")))
    mirror: Mirror | None = None
    if split.shadow_percent > 0 and weight < 100:
        # The facade mirrors a share of what the primary serves; the target mirrors a share of all
        # the rule's requests, so the same number of copies reaches the candidate.
        percent = round(split.shadow_percent * (100 - weight) / 100, 4)
        mirror = Mirror(candidate, percent)
        if weight > 0:
            findings.append(Finding(where, (
                f"mirror {percent:g}% of all requests: the facade copies only requests {primary} serves; the "
                f"target also copies some that {candidate} itself serves (same number of copies overall)")))
        findings.append(Finding(where, (
            f"shadow copies to {candidate} are not compared: response diffs and the diff_rate gate have no "
            "equivalent (use Flagger/Argo Rollouts analysis, e.g. a webhook running `facade compare`)")))
    if mirror is not None and not split.shadow_unsafe:
        safe = tuple(m for m in (_with_methods(m, SAFE_METHODS) for m in route.matches) if m is not None)
        if safe:
            out.append(_rule(route, route.name + "-mirror", safe, config, destinations, findings, mirror=mirror))
        mirror = None
    out.append(_rule(route, route.name, route.matches, config, destinations, findings, mirror=mirror,
                     fault=step_fault or route.fault))
    return out


def _rule(
    route: Route,
    name: str,
    matches: tuple[RouteMatch, ...],
    config: Config,
    destinations: tuple[Destination, ...],
    findings: list[Finding] | None = None,
    *,
    mirror: Mirror | None = None,
    fault: FaultPolicy | None = None,
) -> Rule:
    timeout, retries = _upstream_policy(route, destinations, config, findings)
    return Rule(
        route=route.name,
        name=name,
        matches=matches,
        destinations=destinations,
        mirror=mirror,
        redirect=route.redirect,
        direct=route.direct_response,
        rewrite_prefix=route.rewrite_prefix,
        request_headers=route.request_headers,
        response_headers=route.response_headers,
        timeout=timeout,
        retries=retries,
        rewrite_regex=route.rewrite_regex,
        rewrite_authority=route.rewrite_authority,
        fault=fault if fault is not None else route.fault,
        cors=route.cors,
    )


def _upstream_policy(
    route: Route, destinations: tuple[Destination, ...], config: Config, findings: list[Finding] | None
) -> tuple[float | None, Retries | None]:
    """The route's timeout and retries; the facade takes them per chosen service, a target per rule."""
    if not destinations:
        return None, None
    # A subset ("catalog/v2") takes its service's timeouts and retries.
    specs = [s for s in (config.service(d.service.split("/", 1)[0]) for d in destinations) if s is not None]
    timeouts = {route.timeout if route.timeout is not None else s.timeouts.request for s in specs}
    retries = {route.retries or s.retries for s in specs}
    timeout = route.timeout if route.timeout is not None else specs[0].timeouts.request
    chosen = route.retries or specs[0].retries
    if findings is not None and (len(timeouts) > 1 or len(retries) > 1):
        names = ", ".join(d.service for d in destinations)
        findings.append(Finding(f"route {route.name!r}", (
            f"its services ({names}) have different request timeouts or retries; the target applies one per "
            f"rule: {specs[0].name}'s (set timeout/retries on the route to choose)")))
    unsafe_on = [x for x in chosen.retry_on if x != "connect-failure"]
    if findings is not None and chosen.attempts and unsafe_on:
        findings.append(Finding(f"route {route.name!r}", (
            f"retries on {', '.join(unsafe_on)}: the facade retries those only for idempotent methods, Envoy for "
            "every method (POST included)")))
    return timeout, chosen


def _with_header(m: RouteMatch, condition: tuple[str, StringMatch], route: Route) -> RouteMatch:
    name, sm = condition
    existing = dict(m.headers)
    if name in existing:
        if existing[name] == sm:
            return m
        raise ExportError(f"route {route.name!r}: the canary header {name!r} is also one of the route's own header "
                          "matches; a rule cannot test one header twice")
    return replace(m, headers=(*m.headers, condition))


def _with_methods(m: RouteMatch, methods: Sequence[str]) -> RouteMatch | None:
    """``m`` narrowed to ``methods``; None when it matches none of them."""
    kept = tuple(x for x in (m.methods or methods) if x in methods)
    return replace(m, methods=kept) if kept else None


def _cookie_regex(name: str, value: str) -> str:
    return rf"(.*;\s*)?{re.escape(name)}=\s*\"?{re.escape(value)}\"?\s*(;.*)?"


# -- host groups -----------------------------------------------------------------------------------


def host_covers(pattern: str, host: str) -> bool:
    """Whether a route host ``pattern`` (exact, ``*.suffix`` or ``*``) matches every request of group ``host``."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]
        if host.startswith("*."):
            return host == pattern or host.endswith(suffix)
        return host.endswith(suffix) and len(host) > len(suffix)
    return pattern == host


def host_groups(rules: Sequence[Rule]) -> list[HostGroup]:
    """One group per host the config names (plus ``*`` when some rule matches any host), each with
    every rule that applies to it, narrowed to the matches that apply: sorted, exact hosts first."""
    hosts: set[str] = set()
    any_host = False
    for rule in rules:
        for m in rule.matches:
            if not m.hosts or "*" in m.hosts:
                any_host = True
            else:
                hosts.update(m.hosts)
    keys = sorted(hosts, key=lambda h: (h.startswith("*."), h))
    if any_host:
        keys.append("*")
    groups: list[HostGroup] = []
    for key in keys:
        selected: list[Rule] = []
        for rule in rules:
            matches = tuple(
                replace(m, hosts=()) for m in rule.matches
                if not m.hosts or "*" in m.hosts or (key != "*" and any(host_covers(h, key) for h in m.hosts))
            )
            if matches:
                selected.append(replace(rule, matches=_dedupe(matches)))
        groups.append(HostGroup(key, tuple(selected)))
    return groups


def _dedupe(matches: tuple[RouteMatch, ...]) -> tuple[RouteMatch, ...]:
    out: list[RouteMatch] = []
    for m in matches:
        if m not in out:
            out.append(m)
    return tuple(out)


def path_variants(m: RouteMatch) -> list[tuple[Literal["exact", "prefix", "regex"], str]]:
    """The facade's per-segment prefix as string matches that mean exactly the same.

    A prefix ``P`` covers ``P`` itself and everything under ``P/``; a plain string prefix ``P``
    would also cover ``Pfoo``. So ``/catalog`` -> exact ``/catalog`` + prefix ``/catalog/``; a prefix
    that ends with "/" already is per segment.
    """
    if m.path_kind != "prefix" or m.path.endswith("/"):
        return [(m.path_kind, m.path)]
    return [("exact", m.path), ("prefix", m.path + "/")]


def object_name(*parts: str) -> str:
    """A Kubernetes object name (RFC 1123 subdomain) from parts like ("facade", "*.shop.local")."""
    text = "-".join(p for p in parts if p)
    text = text.replace("*.", "wildcard.").replace("*", "any").lower()
    text = re.sub(r"[^a-z0-9.-]+", "-", text).strip("-.")
    text = re.sub(r"-{2,}", "-", text)
    return text[:253].rstrip("-.") or "facade"


def step_findings(plan: Any, step: int) -> list[Finding]:
    """What the manifests of ``plan`` at ``step`` do not enforce: gates, holds, pauses (the GitOps
    pipeline or a progressive-delivery controller has to)."""
    if plan is None or step == 0:
        return []
    s = plan.steps[step - 1]
    subject = f"plan {plan.name!r} step {step} ({s.summary()})"
    out: list[Finding] = []
    if s.kind == "pause":
        reason = f" ({s.pause_reason})" if s.pause_reason else ""
        out.append(Finding(subject, f"pause{reason}: the approval is applying the next step's manifests"))
    if s.hold:
        out.append(Finding(subject, f"hold {s.hold:g}s is not enforced: wait at least that long before the next step"))
    if not s.gates.empty:
        diff = [g.metric for g in s.gates.checks if g.metric == "diff_rate"]
        note = " (diff_rate compares shadow responses: no mesh measures it; run `facade compare`)" if diff else ""
        out.append(Finding(subject, (
            f"gates ({s.gates.describe()}) are not enforced by the manifests: use Flagger/Argo Rollouts analysis "
            f"(metric checks, significance over a window) before applying the next step{note}")))
    return out
