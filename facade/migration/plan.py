"""Migration plans: ``migrations/*.yaml`` -> frozen ``Plan`` values, and their dry-run rendering.

A plan moves one or more routes from a ``from`` service to a ``to`` service in ordered steps
(Argo Rollouts canary steps; Flagger's ``threshold`` / ``interval`` for auto mode)::

    name: extract-catalog
    route: catalog
    from: monolith
    to: catalog
    sticky: {cookie: session_id}
    shadow: {ignore: ["$.generated_at"], learn_noise: true}   # defaults of every step that mirrors
    steps:
      - shadow: {percent: 100, ignore: ["$.items[*].etag"], compare_headers: [content-type]}
        hold: 2m
        gates: {diff_rate: {max: 0.5%}, min_requests: 200}
      - canary: {header: {x-canary: "1"}}
      - weight: 5
        mirror: 100                  # the 95 % still served by ``from`` are mirrored to ``to`` too
      - pause: approve before full cutover
      - weight: 100
      - mtls: strict                 # the carved service's sidecars refuse plaintext from here on
        hold: 10m
        gates: {plaintext_requests: {max: 0}}     # the default gate of an mtls step

Validation collects every problem as ``file:line:col: field.path: message``; a plan with an
error is never returned.  Rates and percentages are kept in percent (0-100) as written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..config import FaultPolicy, Route
from ..config.policies import read_fault
from ..config.reading import header_value_problem, wire_name_problem
from ..diff import IgnoreRules
from ..errors import ConfigError, Problem
from ..split import CanarySpec, StickySpec
from ..yamlfile import (
    Node,
    Problems,
    YamlDocument,
    read_bool,
    read_duration,
    read_float,
    read_int,
    read_percent,
    read_str,
    read_str_list,
)
from .hooks import (
    Notification,
    PromGate,
    Webhook,
    read_notifications,
    read_prometheus_gates,
    read_webhooks,
)

__all__ = [
    "COUNT_METRICS",
    "DEFAULT_INTERVAL",
    "DEFAULT_THRESHOLD",
    "GATE_METRICS",
    "MTLS_GATE",
    "Gate",
    "Gates",
    "Plan",
    "ShadowSettings",
    "Step",
    "load_plans",
    "parse_plan",
    "render_plan",
]

DEFAULT_THRESHOLD = 5  # Flagger's usual analysis.threshold
DEFAULT_INTERVAL = 60.0  # Flagger's usual analysis.interval (1m)

StepKind = Literal["shadow", "canary", "weight", "pause", "mtls"]
GateCheck = Literal["max", "max_delta", "max_ms", "max_ratio"]

# metric -> the checks it supports. Rates in percent, latencies in ms, ratios new/old.
GATE_METRICS: dict[str, tuple[GateCheck, ...]] = {
    "error_rate": ("max", "max_delta"),
    "latency_p50": ("max_ms", "max_ratio"),
    "latency_p95": ("max_ms", "max_ratio"),
    "latency_p99": ("max_ms", "max_ratio"),
    "diff_rate": ("max",),
    "plaintext_requests": ("max",),  # a count (mtls steps only): plaintext attempts at the sidecars
}
COUNT_METRICS = frozenset({"plaintext_requests"})  # limits are counts, not percentages
MTLS_GATE = "plaintext_requests"
_STEP_KINDS: tuple[StepKind, ...] = ("shadow", "canary", "weight", "pause", "mtls")
_NAME_RE = re.compile(r"^[a-z0-9-]+$")


@dataclass(frozen=True, slots=True)
class Gate:
    """One check: ``metric`` (``error_rate``, ``latency_p99``, ...) compared by ``check`` against ``limit``.

    ``limit`` is in the metric's unit: percent for rates (``max``, ``max_delta``), milliseconds
    for ``max_ms``, a plain factor for ``max_ratio`` (new / old).
    """

    metric: str
    check: GateCheck
    limit: float

    @property
    def name(self) -> str:
        return f"{self.metric}.{self.check}"

    def describe(self) -> str:
        if self.metric in COUNT_METRICS:
            return f"{self.metric} <= {self.limit:g}"
        if self.check == "max":
            return f"{self.metric} <= {self.limit:g}%"
        if self.check == "max_delta":
            return f"{self.metric} <= old + {self.limit:g}%"
        if self.check == "max_ms":
            return f"{self.metric} <= {self.limit:g}ms"
        return f"{self.metric} <= {self.limit:g}x old"


@dataclass(frozen=True, slots=True)
class Gates:
    """The gates of one step; below ``min_requests`` a gate is inconclusive, never failed."""

    checks: tuple[Gate, ...] = ()
    min_requests: int = 0
    prometheus: tuple[PromGate, ...] = ()  # PromQL queries, evaluated by the controller's edge

    @property
    def empty(self) -> bool:
        return not self.checks and self.min_requests == 0 and not self.prometheus

    def describe(self) -> str:
        parts = [g.describe() for g in self.checks]
        parts.extend(g.describe() for g in self.prometheus)
        if self.min_requests:
            parts.append(f"min {self.min_requests} requests")
        return ", ".join(parts) if parts else "none"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "checks": [{"metric": g.metric, "check": g.check, "limit": g.limit} for g in self.checks],
            "min_requests": self.min_requests,
        }
        if self.prometheus:  # only when present: hashes of plans written before it stay the same
            out["prometheus"] = [g.to_json() for g in self.prometheus]
        return out


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    """How a mirroring step's copies are sent and compared (plan ``shadow:`` block + the step's own keys).

    ``unsafe_methods`` changes what reaches the candidate (POST/PUT/PATCH/DELETE are replayed);
    the others only change how answers are compared. ``compare_headers`` / ``learn_noise`` None:
    the facade's ``shadow:`` defaults.
    """

    unsafe_methods: bool = False
    ignore: tuple[str, ...] = ()
    compare_headers: tuple[str, ...] | None = None
    learn_noise: bool | None = None

    @property
    def compares_by_default(self) -> bool:
        return not self.ignore and self.compare_headers is None and self.learn_noise is None

    @property
    def is_default(self) -> bool:
        return not self.unsafe_methods and self.compares_by_default

    def to_json(self) -> dict[str, Any]:
        return {
            "unsafe_methods": self.unsafe_methods,
            "ignore": list(self.ignore),
            "compare_headers": list(self.compare_headers) if self.compare_headers is not None else None,
            "learn_noise": self.learn_noise,
        }

    def describe(self) -> str:
        parts = ["unsafe methods mirrored" if self.unsafe_methods else "safe methods only"]
        if self.ignore:
            parts.append("ignore " + ", ".join(self.ignore))
        if self.compare_headers is not None:
            parts.append("compare headers " + (", ".join(self.compare_headers) or "none"))
        if self.learn_noise is not None:
            parts.append("noise learning " + ("on" if self.learn_noise else "off"))
        return "; ".join(parts)


_COMPARISON_KEYS = ("ignore", "compare_headers", "learn_noise")


@dataclass(frozen=True, slots=True)
class Step:
    """One step; exactly one of shadow / canary / weight / pause / mtls (``kind``).

    An ``mtls`` step keeps the routing of the step before it and puts ``mtls_service``'s sidecars
    in STRICT mode (PeerAuthentication PERMISSIVE -> STRICT) while the plan is on it or past it.
    """

    kind: StepKind
    weight: int = 0  # weight steps: percent of traffic to ``to``
    shadow_percent: float = 0.0  # shadow steps
    canary: CanarySpec | None = None  # canary steps
    pause_reason: str = ""  # pause steps
    mtls_service: str = ""  # mtls steps: the service whose sidecars go STRICT
    mirror_percent: float = 0.0  # weight steps: share of the requests ``from`` serves also mirrored to ``to``
    shadow: ShadowSettings | None = None  # steps that mirror (shadow, weight with mirror): how
    hold: float = 0.0  # seconds; minimum time on the step
    gates: Gates = field(default_factory=Gates)
    rollback: bool = False  # explicitly allowed to move traffic back towards ``from``
    webhooks: tuple[Webhook, ...] = ()  # this step's hooks (the plan's apply to every step as well)
    fault: FaultPolicy | None = None  # weight / canary steps: injected into the candidate's share only
    line: int = 0  # position in the plan file (not part of the hash)
    col: int = 0

    def summary(self) -> str:
        if self.kind == "weight":
            return f"weight {self.weight}" + (f" + mirror {self.mirror_percent:g}%" if self.mirror_percent else "")
        if self.kind == "shadow":
            return f"shadow {self.shadow_percent:g}%"
        if self.kind == "canary":
            assert self.canary is not None
            return f"canary {self.canary}"
        if self.kind == "mtls":
            return f"mtls strict ({self.mtls_service})"
        return f"pause ({self.pause_reason})" if self.pause_reason else "pause"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "weight":
            out["weight"] = self.weight
            if self.mirror_percent:
                out["mirror"] = self.mirror_percent
        elif self.kind == "shadow":
            out["percent"] = self.shadow_percent
        elif self.kind == "canary":
            assert self.canary is not None
            out["canary"] = {"kind": self.canary.kind, "name": self.canary.name, "value": self.canary.value}
        elif self.kind == "mtls":
            out["mtls"] = "strict"
            out["service"] = self.mtls_service
        else:
            out["reason"] = self.pause_reason
        out["hold"] = self.hold
        out["gates"] = self.gates.to_json()
        out["rollback"] = self.rollback
        # Only present when set: the hashes of plans written before these keys existed stay the same.
        if self.shadow is not None and not self.shadow.is_default:
            out["shadow"] = self.shadow.to_json()
        if self.webhooks:
            out["webhooks"] = [h.to_json() for h in self.webhooks]
        if self.fault is not None:  # only when set, like shadow: older plans keep their hashes
            out["fault"] = _fault_json(self.fault)
        return out

    @property
    def hash(self) -> str:
        """What may not change once the step was applied: everything but how answers are compared
        (ignore rules, compared headers and noise learning may be tuned on a running shadow step)."""
        data = self.to_json()
        data.pop("webhooks", None)  # who is asked or told about a step does not change its routing
        if "shadow" in data:
            data["shadow"] = {k: v for k, v in data["shadow"].items() if k not in _COMPARISON_KEYS}
            if not data["shadow"]["unsafe_methods"]:
                del data["shadow"]
        return _sha256_json(data)


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated migration plan."""

    name: str
    routes: tuple[str, ...]
    from_service: str
    to_service: str
    steps: tuple[Step, ...]
    sticky: StickySpec | None = None
    threshold: int = DEFAULT_THRESHOLD
    interval: float = DEFAULT_INTERVAL
    webhooks: tuple[Webhook, ...] = ()  # hooks of every step
    notify: tuple[Notification, ...] = ()  # where transitions, gate failures and rollbacks are announced
    source: str = ""  # the file it was read from (not part of the hash)
    # Sticky salt: None = auto (the plan's name), or a string; ``salt_shared_with`` names another plan
    # whose salt this one uses (``shared_salt`` is that salt, filled in by ``load_plans``).
    salt: str | None = None
    salt_shared_with: str | None = None
    shared_salt: str | None = None
    canary_persist: bool = True  # weight steps keep the last canary step's canary (testers stay on ``to``)
    baggage: bool = True  # the cohort travels downstream as W3C baggage and is honoured on re-entry

    @property
    def sticky_salt(self) -> str:
        """The salt of this plan's sticky buckets (what a new start records in the migration's state)."""
        if self.salt is not None:
            return self.salt
        if self.salt_shared_with is not None:
            return self.shared_salt if self.shared_salt is not None else self.salt_shared_with
        return self.name
    # Positioned warnings found when it was read against the config (shown again by `migrate start`).
    warnings: tuple[Problem, ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "routes": list(self.routes),
            "from": self.from_service,
            "to": self.to_service,
            "sticky": self._sticky_json(),
            "threshold": self.threshold,
            "interval": self.interval,
            "steps": [s.to_json() for s in self.steps],
        }
        # Only when present: the hashes of plans written before these keys existed stay the same.
        if not self.canary_persist:
            out["canary"] = {"persist": False}
        if not self.baggage:
            out["cohort"] = {"baggage": False}
        if self.webhooks:
            out["webhooks"] = [h.to_json() for h in self.webhooks]
        if self.notify:
            out["notify"] = [n.to_json() for n in self.notify]
        return out

    def _sticky_json(self) -> dict[str, str] | None:
        if self.sticky is None:
            return None
        out = {"kind": self.sticky.kind, "name": self.sticky.name}
        # Only when written: a plan from before salts keeps its hash (and its frame, see engine.frame_hash).
        if self.salt is not None:
            out["salt"] = self.salt
        if self.salt_shared_with is not None:
            out["salt_shared_with"] = self.salt_shared_with
        return out

    def hooks(self, kind: str, step: Step | None) -> tuple[Webhook, ...]:
        """The hooks of ``kind`` that apply to ``step``: the plan's, then the step's own."""
        own = step.webhooks if step is not None else ()
        return tuple(h for h in (*self.webhooks, *own) if h.kind == kind)

    @property
    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the parsed plan: formatting and comments do not count."""
        return _sha256_json(self.to_json())

    @property
    def step_hashes(self) -> tuple[str, ...]:
        return tuple(s.hash for s in self.steps)


def _fault_json(fault: FaultPolicy) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if fault.delay is not None:
        out["delay"] = {"fixed": fault.delay.fixed, "percent": fault.delay.percent}
    if fault.abort is not None:
        out["abort"] = {"status": fault.abort.status, "percent": fault.abort.percent}
    return out


def _sha256_json(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


# -- parsing ---------------------------------------------------------------------------------

_PLAN_FIELDS = ("name", "route", "routes", "from", "to", "sticky", "threshold", "interval", "shadow", "steps",
                "webhooks", "notify", "canary", "cohort")
_STEP_FIELDS = (*_STEP_KINDS, "service", "mirror", "hold", "gates", "rollback", "webhooks", "fault")
_SHADOW_OPTION_FIELDS = ("unsafe_methods", "ignore", "compare_headers", "learn_noise")


def parse_plan(
    doc: YamlDocument,
    *,
    routes: Collection[str],
    services: Collection[str],
    mesh: bool | None = None,
    environ: Mapping[str, str] | None = None,
    weighted: Mapping[str, str] | None = None,
) -> tuple[Plan | None, list[Problem]]:
    """Validate one plan document against the config's route and service names.

    ``mesh`` says whether the config has a ``mesh:`` section (an ``mtls`` step needs one);
    None leaves that unchecked (a caller that does not know the config). ``environ`` (default
    ``os.environ``) is where the hooks' ``secret_env`` variables must be set. ``weighted``
    (``weighted_routes(config.routes)``) names the routes with weighted backends, which a plan replaces.
    Returns the plan (None when there is any error) and every problem found, warnings included.
    """
    problems = Problems(doc.file)
    root = doc.root
    fields = root.fields(problems, _PLAN_FIELDS, required=("name", "from", "to", "steps"))

    name: str | None = read_str(fields.get("name"), problems)
    if name is not None and not _NAME_RE.match(name):
        problems.error(fields["name"], f"must match [a-z0-9-]+ (lower-case letters, digits, dashes), got {name!r}")
        name = None

    route_names = _read_routes(root, fields, problems, routes)
    from_service = _read_service(fields.get("from"), problems, services)
    to_service = _read_service(fields.get("to"), problems, services)
    if from_service is not None and from_service == to_service:
        problems.error(fields["to"], f"must differ from 'from' ({from_service!r})")

    sticky, salt, shared_with = _read_sticky(fields.get("sticky"), problems)
    canary_persist = _read_flag(fields.get("canary"), "persist", problems)
    baggage = _read_flag(fields.get("cohort"), "baggage", problems)
    if shared_with is not None and shared_with == name:
        problems.error(fields["sticky"].get("salt") or fields["sticky"], "a plan cannot share the salt of itself")
    threshold = read_int(fields.get("threshold"), problems, default=DEFAULT_THRESHOLD, min=1)
    interval = read_duration(fields.get("interval"), problems, default=DEFAULT_INTERVAL, min=0.001)
    shadow_defaults = _read_shadow_options(fields.get("shadow"), problems)
    webhooks = read_webhooks(fields.get("webhooks"), problems, environ)
    notify = read_notifications(fields.get("notify"), problems, environ)
    context = _StepContext(services, to_service, mesh, shadow_defaults, environ)
    steps = _read_steps(fields.get("steps"), problems, context)

    if problems.errors or name is None or from_service is None or to_service is None or steps is None:
        return None, problems.sorted()
    plan = Plan(
        name=name,
        routes=tuple(route_names),
        from_service=from_service,
        to_service=to_service,
        steps=tuple(steps),
        sticky=sticky,
        threshold=threshold,
        interval=interval,
        webhooks=webhooks,
        notify=notify,
        source=doc.file,
        salt=salt,
        salt_shared_with=shared_with,
        canary_persist=canary_persist,
        baggage=baggage,
    )
    for problem in _weighted_route_warnings(root, fields, plan, weighted or {}):
        problems.warn(*problem)
    found = problems.sorted()
    return replace(plan, warnings=tuple(p for p in found if p.severity == "warning")), found


def weighted_routes(routes: Iterable[Route]) -> dict[str, str]:
    """Routes that split by weight between backends -> their weights, for the warning below."""
    return {r.name: ", ".join(f"{b.service} {b.weight}%" for b in r.backends) for r in routes if len(r.backends) > 1}


def _weighted_route_warnings(
    root: Node, fields: dict[str, Node], plan: Plan, weighted: Mapping[str, str]
) -> list[tuple[Node, str]]:
    """A plan on a route with weighted backends replaces those weights with its own steps: say so."""
    node = fields.get("route") or fields.get("routes") or root
    elements = node.elements() or [node]
    out: list[tuple[Node, str]] = []
    for element, route in zip(elements, plan.routes, strict=False):
        if route in weighted:
            out.append((element, (
                f"route {route!r} splits by weight ({weighted[route]}); while plan {plan.name!r} runs, its steps "
                f"replace those weights ({plan.from_service} -> {plan.to_service}), and a completed plan keeps "
                f"everything on {plan.to_service!r}"
            )))
    return out


def _read_routes(root: Node, fields: dict[str, Node], problems: Problems, known: Collection[str]) -> list[str]:
    single, many = fields.get("route"), fields.get("routes")
    if single is not None and many is not None:
        problems.error(many, "give either 'route' or 'routes', not both")
        return []
    node = single or many
    if node is None:
        problems.error(root, "is required ('route: NAME' or 'routes: [NAME, ...]')", path="routes")
        return []
    names = read_str_list(node, problems, default=[])
    if node.is_list and not node.elements():
        problems.error(node, "must name at least one route")
    seen: set[str] = set()
    elements = node.elements() or [node]
    for element, route in zip(elements, names, strict=False):
        if route in seen:
            problems.error(element, f"route {route!r} is listed twice")
        elif route not in known:
            problems.error(element, f"unknown route {route!r}{_did_you_mean(route, known)}")
        seen.add(route)
    return names


def _read_service(node: Node | None, problems: Problems, known: Collection[str]) -> str | None:
    service = read_str(node, problems)
    if service is None or node is None:
        return None
    if service not in known:
        problems.error(node, f"unknown service {service!r}{_did_you_mean(service, known)}")
        return None
    return service


def _did_you_mean(value: str, options: Collection[str]) -> str:
    import difflib

    hint = difflib.get_close_matches(value, list(options), n=1, cutoff=0.6)
    if hint:
        return f"; did you mean {hint[0]!r}?"
    if options:
        return f" (known: {', '.join(sorted(options))})"
    return ""


def _read_sticky(node: Node | None, problems: Problems) -> tuple[StickySpec | None, str | None, str | None]:
    """``{cookie: NAME}`` or ``{header: NAME}``, plus ``salt: auto | TEXT | {shared_with: PLAN}``.

    Returns the spec, the explicit salt (None = auto) and the plan whose salt is shared (or None).
    """
    if node is None or node.is_null:
        return None, None, None
    fields = node.fields(problems, ("cookie", "header", "salt"))
    salt_node = fields.pop("salt", None)
    salt, shared_with = _read_salt(salt_node, problems)
    if len(fields) > 1 or (node.is_mapping and not fields):
        problems.error(node, "needs exactly one of 'cookie: NAME' or 'header: NAME'")
    if len(fields) != 1:
        return None, salt, shared_with
    (kind, value_node), = fields.items()
    name = read_str(value_node, problems)
    if not name:
        if name == "":
            problems.error(value_node, "must not be empty")
        return None, salt, shared_with
    reason = wire_name_problem(name, f"{kind} name")
    if reason is not None:
        problems.error(value_node, reason)
        return None, salt, shared_with
    spec = StickySpec("cookie", name) if kind == "cookie" else StickySpec("header", name.lower())
    return spec, salt, shared_with


def _read_salt(node: Node | None, problems: Problems) -> tuple[str | None, str | None]:
    if node is None or node.is_null:
        return None, None
    if node.is_mapping:
        f = node.fields(problems, ("shared_with",), required=("shared_with",))
        other = read_str(f.get("shared_with"), problems)
        if other is not None and not _NAME_RE.match(other):
            problems.error(f["shared_with"], f"must be a plan name ([a-z0-9-]+), got {other!r}")
            return None, None
        return None, other
    text = read_str(node, problems)
    if text is None or text == "auto":
        return None, None
    if not text:
        problems.error(node, "must not be empty (auto, a string, or {shared_with: PLAN})")
        return None, None
    return text, None


def _read_flag(node: Node | None, key: str, problems: Problems) -> bool:
    """``{KEY: true|false}`` (default true)."""
    if node is None or node.is_null:
        return True
    f = node.fields(problems, (key,))
    return bool(read_bool(f.get(key), problems, default=True))


@dataclass(frozen=True, slots=True)
class _StepContext:
    """What a step is validated against besides itself."""

    services: Collection[str]
    to_service: str | None
    mesh: bool | None
    shadow: dict[str, Any]  # the plan's ``shadow:`` block: keys given -> values
    environ: Mapping[str, str] | None = None  # where hooks' secret_env variables are looked up


def _read_steps(node: Node | None, problems: Problems, context: _StepContext) -> list[Step] | None:
    if node is None:
        return None
    if not node.is_list:
        problems.error(node, f"must be a list of steps, got {node.kind}")
        return None
    elements = node.elements()
    if not elements:
        problems.error(node, "must have at least one step")
        return None
    steps: list[Step] = []
    share = 0.0  # the candidate's share of traffic after the previous step
    for element in elements:
        step = _read_step(element, problems, context)
        if step is None:
            continue
        new_share = _share(step, share)
        if new_share < share and not step.rollback:
            problems.error(
                element.get(step.kind) or element,
                f"{step.summary()} moves traffic back from {share:g}% to {new_share:g}% on the new service; "
                "add 'rollback: true' to this step if that is intended",
            )
        share = new_share
        steps.append(step)
    if steps and steps[-1].kind == "weight" and steps[-1].weight != 100:
        problems.warn(
            elements[-1],
            f"the last step routes {steps[-1].weight}% to the new service; completing the plan moves 100%",
        )
    return steps


def _share(step: Step, previous: float) -> float:
    # The percentage of ordinary traffic the candidate serves on this step (a canary is opt-in only).
    if step.kind == "weight":
        return float(step.weight)
    if step.kind in ("pause", "mtls"):
        return previous
    return 0.0


def _read_step(node: Node, problems: Problems, context: _StepContext) -> Step | None:
    fields = node.fields(problems, _STEP_FIELDS)
    if not node.is_mapping:
        return None
    kinds = [k for k in _STEP_KINDS if k in fields]
    if len(kinds) != 1:
        found = ", ".join(kinds) if kinds else "none"
        problems.error(node, f"needs exactly one of {', '.join(_STEP_KINDS)} (found: {found})")
        return None
    kind = kinds[0]
    value = fields[kind]
    if kind != "mtls" and "service" in fields:
        problems.error(fields["service"], "only an 'mtls' step names a service")
    fault = read_fault(fields.get("fault"), problems)
    if fault is not None and kind not in ("weight", "canary"):
        problems.error(
            node.key_node("fault") or fields["fault"],
            f"only a weight or canary step injects faults (into the share 'to' serves), not a {kind} step",
            path=fields["fault"].path,
        )
    if kind != "weight" and "mirror" in fields:
        problems.error(fields["mirror"], "only a 'weight' step mirrors (a shadow step has its own percent)")
    hold = read_duration(fields.get("hold"), problems, default=0.0, min=0.0)
    gates = _read_gates(fields.get("gates"), problems, mtls=kind == "mtls")
    rollback = read_bool(fields.get("rollback"), problems, default=False)
    webhooks = read_webhooks(fields.get("webhooks"), problems, context.environ)
    common: dict[str, Any] = {"hold": hold, "gates": gates, "rollback": rollback, "webhooks": webhooks,
                              "line": node.line, "col": node.col}
    if fault is not None:
        common["fault"] = fault
    if kind == "weight":
        weight = read_int(value, problems, min=0, max=100)
        mirror = read_percent(fields.get("mirror"), problems, default=0.0)
        if weight is None or mirror is None:
            return None
        if mirror and weight == 100:
            problems.warn(fields["mirror"], "weight 100 leaves no request on 'from' to mirror")
        settings = _shadow_settings(context.shadow, {}) if mirror else None
        return Step("weight", weight=weight, mirror_percent=mirror, shadow=settings, **common)
    if kind == "shadow":
        shadow_fields = value.fields(problems, ("percent", *_SHADOW_OPTION_FIELDS), required=("percent",))
        percent = read_percent(shadow_fields.get("percent"), problems)
        own = _read_shadow_options(value, problems, fields=shadow_fields)
        if percent is None:
            return None
        return Step("shadow", shadow_percent=percent, shadow=_shadow_settings(context.shadow, own), **common)
    if kind == "canary":
        canary = _read_canary(value, problems)
        return None if canary is None else Step("canary", canary=canary, **common)
    if kind == "mtls":
        service = _read_mtls(value, fields.get("service"), problems, context)
        if service is None:
            return None
        if gates.empty:  # the step's point: nobody is still talking plaintext to the service
            common["gates"] = Gates((Gate(MTLS_GATE, "max", 0.0),))
        return Step("mtls", mtls_service=service, **common)
    reason = read_str(value, problems, default="") if not value.is_null else ""
    return Step("pause", pause_reason=reason, **common)


def _read_shadow_options(
    node: Node | None, problems: Problems, *, fields: dict[str, Node] | None = None
) -> dict[str, Any]:
    """The shadow option keys given in ``node`` (a plan's ``shadow:`` block or a shadow step's mapping)."""
    if node is None or node.is_null:
        return {}
    if fields is None:
        fields = node.fields(problems, _SHADOW_OPTION_FIELDS)
    given: dict[str, Any] = {}
    for key in ("unsafe_methods", "learn_noise"):
        flag = read_bool(fields.get(key), problems)
        if flag is not None:
            given[key] = flag
    ignore_node = fields.get("ignore")
    if ignore_node is not None:
        if not ignore_node.is_list:
            problems.error(ignore_node, f"must be a list of rules like \"$.generated_at\", got {ignore_node.kind}")
        else:
            rules = []
            for element in ignore_node.elements():
                rule = read_str(element, problems)
                if rule is None:
                    continue
                try:
                    IgnoreRules.parse([rule])
                except ValueError as exc:  # the diff engine's own message, at the rule's position
                    problems.error(element, str(exc))
                    continue
                rules.append(rule)
            given["ignore"] = tuple(rules)
    headers_node = fields.get("compare_headers")
    if headers_node is not None:
        headers = read_str_list(headers_node, problems, default=None, allow_scalar=False)
        if headers is not None:
            given["compare_headers"] = tuple(h.lower() for h in headers)
    return given


def _shadow_settings(defaults: dict[str, Any], own: dict[str, Any]) -> ShadowSettings:
    # A step's own key replaces the plan's default for that key (ignore lists are not merged).
    return ShadowSettings(**(defaults | own))


def _read_mtls(value: Node, service_node: Node | None, problems: Problems, context: _StepContext) -> str | None:
    mode = read_str(value, problems)
    if mode is None:
        return None
    if mode != "strict":
        problems.error(value, f"must be 'strict' (PERMISSIVE -> STRICT is the migration step), got {mode!r}")
        return None
    if context.mesh is False:
        problems.error(value, "an mtls step needs a 'mesh:' section in the facade config (sidecars to switch)")
        return None
    if service_node is None:
        # None when 'to' is itself invalid (already reported); sidecars belong to a service, not a subset
        return context.to_service.split("/", 1)[0] if context.to_service else None
    service = _read_service(service_node, problems, context.services)
    if service is not None and "/" in service:
        problems.error(service_node, f"names a subset; sidecars belong to the service: {service.split('/')[0]!r}")
        return None
    return service


def _read_canary(node: Node, problems: Problems) -> CanarySpec | None:
    fields = node.fields(problems, ("header", "cookie"))
    if len(fields) > 1 or (node.is_mapping and not node.items()):
        problems.error(node, "needs exactly one of 'header: {NAME: VALUE}' or 'cookie: {NAME: VALUE}'")
    if len(fields) != 1:
        return None
    (kind, match), = fields.items()
    if not match.is_mapping or len(match.items()) != 1:
        problems.error(match, "must be a mapping with exactly one NAME: VALUE")
        return None
    (name, value_node), = match.items()
    if value_node.is_scalar and isinstance(value_node.value, bool):
        # YAML 1.1 reads on/off/yes/no as booleans; a header value is text.
        problems.error(value_node, "must be a string; quote it (e.g. \"on\", \"1\")")
        return None
    value = read_str(value_node, problems)
    if value is None:
        return None
    reason = wire_name_problem(name, f"{kind} name")
    if reason is not None:
        problems.error(match.key_node(name) or value_node, reason, path=value_node.path)
        return None
    reason = header_value_problem(value)
    if reason is not None:
        problems.error(value_node, reason)
        return None
    if kind == "header":
        return CanarySpec("header", name.lower(), value)
    return CanarySpec("cookie", name, value)


def _read_gates(node: Node | None, problems: Problems, *, mtls: bool = False) -> Gates:
    if node is None or node.is_null:
        return Gates()
    fields = node.fields(problems, (*GATE_METRICS, "min_requests", "prometheus"))
    if not mtls and MTLS_GATE in fields:
        problems.error(fields[MTLS_GATE], f"{MTLS_GATE} is measured on an 'mtls' step only")
        del fields[MTLS_GATE]
    min_requests = read_int(fields.get("min_requests"), problems, default=0, min=0)
    checks: list[Gate] = []
    for metric, allowed in GATE_METRICS.items():
        spec = fields.get(metric)
        if spec is None:
            continue
        spec_fields = spec.fields(problems, allowed)
        if spec.is_mapping and not spec.items():
            problems.error(spec, f"needs one of {', '.join(allowed)}")
        for check, limit_node in spec_fields.items():
            limit = _read_limit(metric, check, limit_node, problems)
            if limit is not None:
                checks.append(Gate(metric, check, limit))  # type: ignore[arg-type]
    return Gates(tuple(checks), min_requests, read_prometheus_gates(fields.get("prometheus"), problems))


def _read_limit(metric: str, check: str, node: Node, problems: Problems) -> float | None:
    if metric in COUNT_METRICS:
        count = read_int(node, problems, min=0)
        return None if count is None else float(count)
    if check in ("max", "max_delta"):
        return read_percent(node, problems)
    if check == "max_ms":
        return read_float(node, problems, min=0.0)
    value = read_float(node, problems, min=0.0)
    if value is not None and value < 1.0:
        problems.warn(node, f"a max_ratio below 1 ({value:g}) requires the new service to be faster than the old")
    return value


# -- loading a folder ------------------------------------------------------------------------


def load_plans(
    directory: str,
    *,
    routes: Collection[str],
    services: Collection[str],
    mesh: bool | None = None,
    environ: Mapping[str, str] | None = None,
    weighted: Mapping[str, str] | None = None,
) -> tuple[dict[str, Plan], list[Problem]]:
    """Every ``*.yaml`` / ``*.yml`` plan in ``directory`` (sorted by file name), and all problems.

    Invalid plans are left out; a second plan with an existing name, or one that migrates a route
    another plan already migrates, is an error.
    """
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        return {}, [Problem(directory, 1, 1, "", f"cannot read migrations folder: {exc.strerror or exc}")]
    plans: dict[str, Plan] = {}
    claimed: dict[str, Plan] = {}  # route -> the plan that migrates it
    salt_nodes: dict[str, Node | None] = {}  # plan -> its sticky: node, for a position in salt errors
    problems: list[Problem] = []
    for filename in names:
        if not filename.endswith((".yaml", ".yml")):
            continue
        path = os.path.join(directory, filename)
        try:
            doc = YamlDocument.read(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        plan, found = parse_plan(doc, routes=routes, services=services, mesh=mesh, environ=environ, weighted=weighted)
        problems.extend(found)
        if plan is None:
            continue
        if plan.name in plans:
            node = doc.root.get("name")
            line, col = (node.line, node.col) if node else (1, 1)
            problems.append(Problem(path, line, col, "name",
                                    f"plan name {plan.name!r} is already used by {plans[plan.name].source}"))
            continue
        taken = [route for route in plan.routes if route in claimed]
        if taken:
            # Two plans splitting one route would fight over its traffic: one owner per route.
            node = doc.root.get("route") or doc.root.get("routes")
            line, col = (node.line, node.col) if node else (1, 1)
            owner = claimed[taken[0]]
            problems.append(Problem(path, line, col, "routes", f"route {taken[0]!r} is already migrated by plan "
                                    f"{owner.name!r} ({owner.source}); one plan per route"))
            continue
        plans[plan.name] = plan
        salt_nodes[plan.name] = doc.root.get("sticky")
        claimed.update((route, plan) for route in plan.routes)
    return _share_salts(plans, salt_nodes, problems), problems


def _share_salts(plans: dict[str, Plan], nodes: dict[str, Node | None], problems: list[Problem]) -> dict[str, Plan]:
    """Fill in ``shared_salt`` of plans that share another plan's salt; an unknown plan is an error."""
    out = dict(plans)
    for name, plan in plans.items():
        other = plan.salt_shared_with
        if other is None:
            continue
        seen = {name}
        target = plans.get(other)
        while target is not None and target.salt_shared_with is not None and target.name not in seen:
            seen.add(target.name)  # a chain: share with whom the other plan shares
            target = plans.get(target.salt_shared_with)
        if target is None or target.name in seen:
            sticky = nodes.get(name)
            where = (sticky.get("salt") if sticky is not None and sticky.is_mapping else None) or sticky
            line, col = (where.line, where.col) if where is not None else (1, 1)
            why = f"unknown plan {other!r}" if other not in plans else f"plan {other!r} shares its salt in a cycle"
            problems.append(Problem(plan.source, line, col, "sticky.salt.shared_with",
                                    f"{why}{_did_you_mean(other, [p for p in plans if p != name])}"))
            del out[name]
            continue
        out[name] = replace(plan, shared_salt=target.sticky_salt)
    return out


# -- dry run ---------------------------------------------------------------------------------


def render_plan(plan: Plan) -> str:
    """What each step routes where, without changing anything (``facade migrate plan NAME``)."""
    routes = ", ".join(plan.routes)
    old, new = plan.from_service, plan.to_service
    lines = [
        f"plan {plan.name}: {routes} from {old} to {new}" + (f"  ({plan.source})" if plan.source else ""),
        f"auto mode: evaluate every {_duration(plan.interval)}, roll back after {plan.threshold} failed checks in a row",
        "",
        "step 0 (before start): 100 % -> " + old,
    ]
    share = 0.0
    for number, step in enumerate(plan.steps, start=1):
        lines.append(f"step {number} {step.summary()}: {_routing(plan, step, share)}")
        details = []
        if step.hold:
            details.append(f"hold {_duration(step.hold)}")
        if not step.gates.empty:
            details.append(f"gates: {step.gates.describe()}")
        if step.rollback:
            details.append("rollback step")
        hooks = [*plan.webhooks, *step.webhooks]
        if hooks:
            details.append("hooks: " + ", ".join(f"{h.kind} {h.name}" for h in hooks))
        if step.shadow is not None and not step.shadow.is_default:
            details.append(f"shadow: {step.shadow.describe()}")
        if details:
            lines.append("    " + "; ".join(details))
        share = _share(step, share)
    lines.append(f"completed: 100 % -> {new}")
    return "\n".join(lines) + "\n"


def _routing(plan: Plan, step: Step, previous: float) -> str:
    routes = ", ".join(plan.routes)
    old, new = plan.from_service, plan.to_service
    if step.kind == "shadow":
        return f"100 % of {routes} -> {old}; {step.shadow_percent:g} % mirrored to {new} (responses diffed, discarded)"
    if step.kind == "canary":
        assert step.canary is not None
        return f"requests with {step.canary} -> {new}; all other traffic -> {old}"
    if step.kind == "pause":
        return f"waits for a human 'next' or 'resume'; routing stays as before ({previous:g} % -> {new})"
    if step.kind == "mtls":
        return (f"{step.mtls_service}'s sidecars refuse plaintext (STRICT mTLS); routing stays as before "
                f"({previous:g} % -> {new})")
    sticky = f" (sticky by {plan.sticky})" if plan.sticky else " (per request)"
    mirror = f"; {step.mirror_percent:g} % of those mirrored to {new}" if step.mirror_percent else ""
    canary = _persisting_canary(plan, step) if step.weight is not None and step.weight < 100 else None
    testers = f"; requests with {canary} -> {new} (the canary persists)" if canary is not None else ""
    return f"{step.weight} % of {routes} -> {new}{sticky}, {100 - step.weight} % -> {old}{mirror}{testers}"


def _persisting_canary(plan: Plan, step: Step) -> CanarySpec | None:
    """The canary a weight step keeps (the last canary step before it), unless the plan turned that off."""
    if not plan.canary_persist:
        return None
    before = plan.steps[: plan.steps.index(step)]
    return next((s.canary for s in reversed(before) if s.kind == "canary"), None)


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    if seconds >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"
