"""``MigrationController``: the migration feature of a running facade (a ``facade.feature.Feature``).

It connects the pure core to the running process:

- plans come from the config's ``migrations`` folder, validated against the config's routes and
  services; durable state comes from ``<state_dir>/migrations.sqlite3``;
- the routing in force is ``effective_split(plan, state)`` of every plan, swapped into the runtime
  as one snapshot (``runtime.swap(splits=...)``), so after ``kill -9`` and a restart the facade
  serves the same step;
- gates are evaluated from the runtime's telemetry over the current step's window;
- every transition is: evaluate gates, ``engine.apply``, one ``store.commit`` (with the telemetry
  summary of the step being left), a new telemetry window, then the swap;
- auto mode runs one background task per plan that calls ``engine.auto_tick`` every ``interval``;
- a config reload re-reads the plans and refuses one that rewrites steps already applied;
- mirroring steps (``shadow``, ``weight`` with ``mirror``): whenever the state in force or the plans
  change, each route's comparison options are set on the runtime's shadow sender
  (``runtime.shadow.configure_route(route, ShadowOptions | None)``); ``unsafe_methods`` rides on
  the split (``Split.shadow_unsafe``);
- ``mtls`` steps: whenever the state in force changes (and at start, from the durable state), the
  services ``strict_services`` names are put in STRICT through the runtime's mesh
  (``runtime.mesh.set_mode(service, "STRICT")``, a ``facade.feature.MeshControl``) and the ones no longer named get their configured mode back
  (``set_mode(service, None)``); the ``plaintext_requests`` gate reads
  ``mesh.plaintext_seen(service, since=step_started_at)``;
- pipelines (``facade.migration.callouts`` does the HTTP): ``prometheus`` gates are queried before
  each decision and status (their values cached per step for ``/metrics``); a move forward that the
  pure decision allows first asks the hooks (``rollout`` of the step left on a manual move,
  ``confirm`` and ``pre_step`` of the step entered, ``post_step`` of the step left) and is held or
  refused on their verdict; every ``interval`` a check task asks auto mode's ``rollout`` hooks and
  polls the ``rollback`` hooks (a 2xx rolls back, Flagger's semantics); after each commit the
  plan's ``notify`` targets and ``event`` hooks hear of it, in background tasks;
- the lock serialises commits only: Prometheus and hooks are awaited outside it, and a decision
  commits only if the plan is still at the version it was made on (``_commit_if_current``).

The admin API over this lives in ``facade.migration.api``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import httpx
from starlette.routing import BaseRoute

from ..errors import ConfigError, Problem
from ..feature import Feature
from ..shadow import ShadowOptions
from ..split import Split
from .api import admin_routes as migration_routes
from .callouts import call_bound, call_hook, event_payload, is_rollback, query_prometheus, send_notification
from .engine import (
    Action,
    MigrationState,
    Phase,
    Refusal,
    Transition,
    apply,
    auto_tick,
    check_plan_edit,
    display_step,
    effective_split,
    migration_status,
    mirroring_step,
    strict_services,
)
from .evidence import FleetWindow, SideEvidence, StepEvidence, epoch_key
from .gates import (
    GateReport,
    GateResult,
    GateStatus,
    HookOutcome,
    QueryResult,
    evaluate_gates,
    evaluate_hooks,
    evaluate_queries,
    partial_evidence,
    with_results,
    worst_status,
)
from .hooks import Webhook
from .plan import Plan, Step, load_plans, weighted_routes
from .store import DEFAULT_JOURNAL, EvidenceKey, StateStore, StoreUnavailable
from .stores import open_store, store_location

if TYPE_CHECKING:
    from ..config import Config
    from ..runtime import FacadeRuntime

__all__ = [
    "STABLE_STEP",
    "MigrationController",
    "action_bound",
    "check_plans",
    "check_transition",
    "combine_reports",
    "shadow_min_requests",
    "step_label",
]

logger = logging.getLogger("facade.migration")

STABLE_STEP = "stable"  # the step label the proxy records for a route without a split
FOLLOW_INTERVAL = 1.0  # seconds between re-reads of a shared store (the backstop of its notifications)
REPORT_INTERVAL = 2.0  # seconds between an instance's heartbeats in a shared store
INSTANCE_STALE = 15.0  # an instance whose last heartbeat is older is not listed in the status
_ACTIVE = (Phase.RUNNING, Phase.PAUSED)
_DRAIN_NOTIFICATIONS = 2.0  # seconds stop() waits for notifications in flight
_STATUS_QUERY_AGE = 1.0  # seconds a status read reuses the last Prometheus answers (the scrape interval's order)


def _moves_forward(transition: Transition) -> bool:
    """Whether a transition enters a later step (or completes): the moves hooks are asked about."""
    if transition.to_phase is Phase.COMPLETED:
        return transition.from_phase in _ACTIVE
    return transition.to_phase is Phase.RUNNING and (
        transition.from_phase not in _ACTIVE or transition.to_step > transition.from_step)


def check_transition(plan: Plan, state: MigrationState, *, actor: str, now: float) -> Transition:
    """What a hook asked about the current step (``rollout``, ``rollback``) is told: a ``check`` of the step,
    from the step to itself (pure; never committed)."""
    return Transition(state=state, expected_version=state.version, plan=plan.name, plan_hash=plan.content_hash,
                      from_step=state.step, to_step=state.step, from_phase=state.phase, to_phase=state.phase,
                      action="check", actor=actor, reason="", gates_json="null", at=now)


def action_bound(plan: Plan, state: MigrationState) -> float:
    """Seconds the slowest action on ``state`` may wait for Prometheus and hooks (pure): what the CLI waits.

    A ``next`` / ``resume`` from the current step queries its Prometheus gates, then asks, one kind
    after the other, its ``rollout`` hooks, ``confirm`` of the step entered, its ``post_step``, and
    ``pre_step`` of the step entered; hooks of one kind run together (the slowest counts). A
    ``start`` asks the first step's ``confirm`` / ``pre_step``.
    """
    steps = plan.steps
    active = state.phase in _ACTIVE and state.step < len(steps)
    current = steps[state.step] if active else None
    if active:
        entering = steps[state.step + 1] if state.step + 1 < len(steps) else None
    else:
        entering = steps[0] if state.phase in (Phase.PENDING, Phase.ROLLED_BACK) and steps else None
    total = max((g.timeout for g in current.gates.prometheus), default=0.0) if current is not None else 0.0
    for kind, step in (("rollout", current), ("confirm", entering), ("post_step", current), ("pre_step", entering)):
        if step is not None:
            total += max((call_bound(h.timeout, h.retries) for h in plan.hooks(kind, step)), default=0.0)
    return total


def step_label(split: Split | None) -> str:
    """The telemetry step label of requests routed by ``split`` (what the proxy records)."""
    return split.step_label if split is not None else STABLE_STEP


def combine_reports(reports: Sequence[tuple[str, GateReport]]) -> GateReport:
    """One report for a plan that moves several routes: each route's gates must pass on their own.

    With one route the report is that route's; with several, every result is prefixed with its
    route and the status is the worst (FAIL over INCONCLUSIVE over PASS).
    """
    if len(reports) == 1:
        return reports[0][1]
    results: list[GateResult] = []
    for route, report in reports:
        results.extend(replace(r, name=f"{route}:{r.name}", message=f"{route}: {r.message}") for r in report.results)
    return GateReport(worst_status({report.status for _, report in reports}), tuple(results))


def shadow_min_requests(report: GateReport, minimum: int, compared: int) -> GateReport:
    """Count ``min_requests`` of a shadow step in mirrored comparisons, not client requests.

    In a shadow step the candidate answers no client, so its request count stays 0 and the
    ``min_requests`` gate could never pass; the evidence there is the comparisons (what
    ``diff_rate`` reads). Every other gate's verdict is kept as evaluated.
    """
    status = GateStatus.PASS if compared >= minimum else GateStatus.INCONCLUSIVE
    counted = GateResult("min_requests", status, float(compared), float(minimum),
                         f"min_requests: {compared} of {minimum} shadow comparisons", new=float(compared))
    results = tuple(counted if r.name == "min_requests" else r for r in report.results)
    return GateReport(worst_status({r.status for r in results}), results)


def check_plans(
    plans: Mapping[str, Plan],
    states: Mapping[str, MigrationState],
    *,
    previous: Mapping[str, Plan],
    route_backends: Mapping[str, tuple[str, ...]],
    where: str,
) -> list[Problem]:
    """Problems that make a set of (individually valid) plans unsafe to apply over the durable state.

    - a plan whose applied steps (or routes / from / to / sticky) changed while it is running,
      paused or completed (``check_plan_edit``);
    - a running or paused plan whose file disappeared: its routes would silently fall back to
      ``from`` mid-migration;
    - a completed plan whose file disappeared while a route it moved is still configured on
      something other than its ``to`` service (known only for plans of the ``previous`` load):
      removing it would send that traffic back.
    """
    problems: list[Problem] = []
    for name, plan in plans.items():
        state = states.get(name)
        if state is not None:
            problem = check_plan_edit(state, state.step_hashes, plan)
            if problem is not None:
                problems.append(problem)
    for name, state in states.items():
        if name in plans:
            continue
        if state.phase in _ACTIVE:
            problems.append(Problem(where, 1, 1, "migrations", f"plan {name!r} is {state.phase.value} at step "
                                    f"{state.step + 1} but its file is gone; restore it, or roll it back first"))
        elif state.phase is Phase.COMPLETED and name in previous:
            old = previous[name]
            stuck = [r for r in old.routes if r in route_backends and route_backends[r] != (old.to_service,)]
            if stuck:
                problems.append(Problem(where, 1, 1, "migrations", f"plan {name!r} is completed but its file is "
                                        f"gone while route {stuck[0]!r} is still configured on "
                                        f"{', '.join(route_backends[stuck[0]])}: that would move its traffic "
                                        f"back; point the route at {old.to_service!r} first"))
    return problems


@dataclass(frozen=True, slots=True)
class _Loaded:
    """Plans and durable state read for one config, checked and ready to install."""

    sha256: str
    plans: dict[str, Plan]
    store: StateStore | None
    states: dict[str, MigrationState]


class MigrationController(Feature):
    """Runs migration plans on a ``FacadeRuntime`` (``runtime.add_feature`` it before ``start()``)."""

    def __init__(self, runtime: FacadeRuntime, *, clock: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self._clock = clock  # wall clock: step start times are persisted and compared across restarts
        self.plans: dict[str, Plan] = {}
        self.states: dict[str, MigrationState] = {}  # the committed state whose routing is in force
        self.store: StateStore | None = None
        self._follower: asyncio.Task[None] | None = None
        self._leading = False  # whether this instance led auto mode at its last check
        self._report_due = False
        # Other instances' gate evidence per (plan, route, epoch) window, as last read from a shared store.
        self._evidence: dict[EvidenceKey, dict[str, StepEvidence]] = {}
        self._published: dict[EvidenceKey, dict[str, Any]] = {}  # the same, as read (with published_at)
        self._lock = asyncio.Lock()  # one transition at a time in this process
        self._auto: dict[str, asyncio.Task[None]] = {}
        self._pending: _Loaded | None = None  # what check_config accepted, for config_changed to install
        self._watcher: asyncio.Task[None] | None = None
        self._strict: frozenset[str] = frozenset()  # services this controller holds in STRICT mTLS
        self.transitions: dict[tuple[str, str], int] = {}  # (plan, action) -> committed by this process
        # plan -> (step, step_started_at, results): the last answers of the live step's prometheus gates
        self._queries: dict[str, tuple[int, float | None, tuple[QueryResult, ...]]] = {}
        self._queried_at: dict[str, float] = {}  # plan -> monotonic time of those answers
        self._http: httpx.AsyncClient | None = None  # hooks, notifications, Prometheus (never the hot path)
        self._background: set[asyncio.Task[None]] = set()  # notifications and event hooks in flight

    def __repr__(self) -> str:
        return f"MigrationController(plans={sorted(self.plans)}, store={self.store!r})"

    @property
    def instance(self) -> str:
        """How a shared store names this facade: host:pid:admin-port (several facades may share a process)."""
        port = self.runtime.admin_url.rsplit(":", 1)[-1] if self.runtime.admin_url else "?"
        return f"{socket.gethostname()}:{os.getpid()}:{port}"

    # -- feature hooks -------------------------------------------------------------------

    def admin_routes(self) -> list[BaseRoute]:
        return migration_routes(self)

    async def start(self) -> None:
        """Load and check the plans, then serve each route at the step its durable state says.

        Raises ConfigError (every problem, with positions) when a plan is invalid or contradicts
        the durable state: the facade must not start on a routing nobody asked for.
        """
        loaded = await asyncio.to_thread(self._load, self.runtime.config, {})
        async with self._lock:
            self.plans, self.store, self.states = loaded.plans, loaded.store, loaded.states
            for plan in self.plans.values():
                for route, split in effective_split(plan, self._state(plan.name)).items():
                    if split is not None:
                        self.runtime.telemetry.begin_step(route, step_label(split))
            self.runtime.swap(splits=self._splits())
            self._sync_shadow()
            self._sync_mtls()  # after a restart: the step's STRICT mode comes back from the durable state
            self._sync_auto()
        if self.store is not None and self.store.shared:
            self._follower = asyncio.create_task(self._follow(), name="migration-store-follow")
        if self.runtime.watch_interval:
            self._watcher = asyncio.create_task(self._watch_plans(self._fingerprint()), name="migration-plans-watch")
        for name, state in self.states.items():
            if name in self.plans and state.phase is not Phase.PENDING:
                logger.info("migration %s: %s at step %d", name, state.phase.value, state.step + 1)

    async def stop(self) -> None:
        # Notifications already sent get a moment to arrive (each is bounded by its timeout anyway).
        if self._background:
            await asyncio.wait(list(self._background), timeout=_DRAIN_NOTIFICATIONS)
        tasks = list(self._auto.values()) + list(self._background)
        for background in (self._watcher, self._follower):
            if background is not None:
                tasks.append(background)
        self._watcher = self._follower = None
        self._auto.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self.store is not None:
            if self.store.shared:
                with contextlib.suppress(StoreUnavailable):
                    await asyncio.to_thread(self.store.forget_instance, self.instance)
            await self.store.close()  # a leader's close hands auto mode over at once

    def check_config(self, config: Config) -> None:
        """Veto a reload whose plans are invalid or rewrite applied steps (raises ConfigError)."""
        self._pending = self._load(config, self.plans)

    async def config_changed(self, config: Config) -> None:
        """Install the plans of the accepted config and stage their splits: the runtime's swap (with
        the new config) follows this hook and takes them."""
        loaded = self._pending if self._pending is not None and self._pending.sha256 == config.sha256 else None
        self._pending = None
        if loaded is None:
            loaded = self._load(config, self.plans)
        async with self._lock:
            states = await asyncio.to_thread(loaded.store.all_states) if loaded.store is not None else {}
            plans = dict(loaded.plans)
            # A transition may have committed between check_config and now: check again, and keep
            # the running version of a plan whose newly applied step the edit would change.
            for name, plan in list(plans.items()):
                state = states.get(name)
                problem = check_plan_edit(state, state.step_hashes, plan) if state is not None else None
                if problem is not None:
                    logger.error("reload: keeping the running version of plan %s: %s", name, problem)
                    if name in self.plans:
                        plans[name] = self.plans[name]
                    else:
                        del plans[name]
            states = {name: s for name, s in states.items() if name in plans}
            before = {name: self._state(name) for name in self.plans}
            old_plans, old_store = self.plans, self.store
            self.plans, self.store, self.states = plans, loaded.store, states
            if old_store is not None and old_store is not self.store:
                await old_store.close()  # the config names another store: let go of the old one's sessions
            if self.store is not None and self.store.shared and self._follower is None:
                self._follower = asyncio.create_task(self._follow(), name="migration-store-follow")
            for name, plan in plans.items():
                old_plan = old_plans.get(name)
                old_splits = effective_split(old_plan, before[name]) if old_plan is not None else {}
                for route, split in effective_split(plan, self._state(name)).items():
                    label = step_label(split)
                    if split is not None and step_label(old_splits.get(route)) != label:
                        self.runtime.telemetry.begin_step(route, label)
            self.runtime.stage(splits=self._splits())
            self._sync_shadow(old_plans)
            self._sync_mtls()
            self._sync_auto()

    async def reload_plans(self, trigger: str = "api") -> list[Problem]:
        """Re-read the plans of the running config (a plan file changed, the config did not).

        Returns [] when the plans were applied; else every problem, and nothing changed (the same
        checks as a config reload: an applied step cannot be rewritten).
        """
        config = self.runtime.config
        try:
            loaded = await asyncio.to_thread(self._load, config, self.plans)
        except ConfigError as exc:
            for problem in exc.errors:
                logger.error("plan reload (%s) rejected: %s", trigger, problem)
            return list(exc.problems)
        self._pending = loaded
        await self.config_changed(config)
        self.runtime.swap()  # the staged splits, on the running config
        logger.info("plan reload (%s): %d plan(s) in force", trigger, len(self.plans))
        return []

    async def reload_sources(self, trigger: str) -> list[Problem]:
        """Runtime hook: a reload whose config did not change re-reads the plans (SIGHUP, POST /reload)."""
        return await self.reload_plans(trigger)

    def _fingerprint(self) -> tuple[tuple[str, int, int], ...] | None:
        directory = self.runtime.config.migrations_dir
        if not directory:
            return None
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith((".yaml", ".yml")))
            stats = [(n, os.stat(os.path.join(directory, n))) for n in names]
        except OSError:
            return None
        return tuple((n, st.st_mtime_ns, st.st_size) for n, st in stats)

    async def _watch_plans(self, seen: tuple[tuple[str, int, int], ...] | None) -> None:
        """Reload the plans when a file of the migrations folder changes (the runtime watches only the config)."""
        while True:
            await asyncio.sleep(self.runtime.watch_interval or 1.0)
            now = await asyncio.to_thread(self._fingerprint)
            if now != seen:
                seen = now
                try:
                    await self.reload_plans("file-change")
                except Exception:  # keep watching: the next change may be loadable
                    logger.exception("plan reload failed")

    # -- reading -----------------------------------------------------------------------------------

    def gate_report(self, plan: Plan, state: MigrationState) -> GateReport | None:
        """The current step's gates evaluated now over the step's telemetry window (None if no step is live)."""
        if state.phase not in _ACTIVE or state.step >= len(plan.steps):
            return None
        step = plan.steps[state.step]
        telemetry = self.runtime.telemetry
        shared = self.store is not None and self.store.shared
        reports = []
        for route in plan.routes:
            diffs = telemetry.diff_counts(route)
            if shared:
                # Replicas: judge every instance's traffic, this one's now and the others' as last published.
                others = self._evidence.get((plan.name, route, epoch_key(state)), {})
                total = StepEvidence.total([self._local_evidence(plan, route), *others.values()])
                old, new, diffs = total.old.stats(), total.new.stats(), total.diffs(diffs.noise_fields)
            else:
                old, new = telemetry.side_stats(route, plan.from_service), telemetry.side_stats(route, plan.to_service)
            plaintext = self._plaintext_seen(step.mtls_service, state) if step.kind == "mtls" else None
            report = evaluate_gates(step.gates, old, new, diffs, plaintext=plaintext)
            if step.kind == "shadow" and step.gates.min_requests:
                report = shadow_min_requests(report, step.gates.min_requests, diffs.compared)
            reports.append((route, report))
        combined = combine_reports(reports)
        if step.gates.prometheus:  # once per step, not per route: a query is about the fleet
            cached = self._queries.get(plan.name)
            answers = cached[2] if cached is not None and cached[:2] == (state.step, state.step_started_at) else ()
            combined = with_results(combined, evaluate_queries(step.gates.prometheus, answers))
        return combined

    async def judged_report(
        self, plan: Plan, state: MigrationState, *, missing: tuple[str, ...] | None = None
    ) -> GateReport | None:
        """``gate_report`` over every process's evidence: the workers ship what they have not yet shipped
        first (``missing``: the caller gathered already); a worker that does not answer in time makes the
        report inconclusive, never a quiet pass."""
        if missing is None:
            missing = await self.runtime.gather_telemetry()
        report = self.gate_report(plan, state)
        return with_results(report, partial_evidence(missing)) if report is not None and missing else report

    async def status(
        self, name: str, *, journal: int = DEFAULT_JOURNAL, missing: tuple[str, ...] | None = None
    ) -> dict[str, Any] | None:
        """The ``GET /migrations/{name}`` document (gates evaluated now), or None for an unknown plan.
        ``missing``: what ``runtime.gather_telemetry()`` returned when the caller gathered already."""
        plan = self.plans.get(name)
        if plan is None:
            return None
        state = self._state(name)
        await self._refresh_queries(plan, state, max_age=_STATUS_QUERY_AGE)
        entries: list[dict[str, Any]] = []
        instances: list[dict[str, Any]] = []
        store_error = None
        now = self._clock()
        try:
            if journal > 0 and self.store is not None:
                entries = [e.to_json() for e in await asyncio.to_thread(self.store.journal, name, limit=journal)]
            if self.store is not None and self.store.shared:
                reports = await asyncio.to_thread(self.store.instances, name, since=now - INSTANCE_STALE)
                instances = [r.to_json(now=now) for r in reports]
        except StoreUnavailable as exc:  # the status still says what this instance routes
            store_error = f"the migration store is unreachable: {exc}"
        report = await self.judged_report(plan, state, missing=missing)
        status = migration_status(plan, state, now=now, gate_report=report, journal=entries)
        status["action_timeout"] = action_bound(plan, state)  # how long an action may wait for its checks
        if self.store is not None and self.store.shared:
            status["instance"] = self.instance
            status["instances"] = instances
            status["store_error"] = store_error
        return status

    def prometheus_text(self) -> str:
        """The ``facade_migration_*`` series of every plan (``facade.migration.metrics``), for ``/metrics``."""
        from .metrics import render_migration_metrics

        telemetry = self.runtime.telemetry
        window = min(telemetry.rolling)
        statuses, shares = [], {}
        for name, plan in sorted(self.plans.items()):
            state = self._state(name)
            statuses.append(migration_status(plan, state, now=self._clock(), gate_report=self.gate_report(plan, state)))
            for route in plan.routes:
                old = telemetry.side_stats(route, plan.from_service, window=window).requests
                new = telemetry.side_stats(route, plan.to_service, window=window).requests
                shares[(name, route)] = new / (old + new) if old + new else None
        return render_migration_metrics(statuses, self.transitions, shares)

    # -- changing ----------------------------------------------------------------------------------

    async def act(
        self, name: str, action: Action, *, expected_version: int | None = None
    ) -> MigrationState | Refusal:
        """Apply a human / API action to plan ``name``; the committed state, or why not.

        The action is computed from the state the caller saw: ``expected_version`` when given,
        else the state in force when it arrived. If another transition commits first, the store
        refuses it as a ``conflict`` (two simultaneous ``next`` advance one step, not two).
        """
        plan = self.plans.get(name)
        if plan is None:
            return Refusal(f"no migration named {name!r} (known: {', '.join(sorted(self.plans)) or 'none'})",
                           "not_found")
        seen = self._state(name)
        if expected_version is not None and expected_version != seen.version:
            return Refusal(f"{name} is at version {seen.version}, not {expected_version}; look at its status "
                           "and try again", "conflict")
        if self.store is None:
            return Refusal("migrations have no durable store (the config has no state_dir)")
        # Prometheus and the hooks are asked WITHOUT the lock: a confirm hook that takes its time must not
        # hold up a pause or a rollback. The commit below takes the lock and checks that the plan is
        # still at the version this decision was made on (optimistic); if something else committed
        # meanwhile, this action is a conflict and the other one stands.
        if action.name in ("next", "resume") and not action.force:
            # Only a move that gates decide waits for Prometheus: a pause or a rollback never does.
            await self._refresh_queries(plan, seen)
        report = await self.judged_report(plan, seen)
        now = self._clock()
        result = apply(seen, action, plan=plan, now=now, gate_report=report)
        if isinstance(result, Refusal):
            if result.gates is not None and result.gates.status is GateStatus.FAIL:
                self._announce_refusal(plan, seen, action, result.gates, now)
            return result
        if not action.force and _moves_forward(result):
            # The pure decision lets it move: now the hooks have their say (force skips them too).
            outcomes = await self._step_hooks(plan, result, report, now, rollout=True)
            if outcomes:
                merged = with_results(report, evaluate_hooks(outcomes))
                if merged.status is not GateStatus.PASS:
                    if merged.status is GateStatus.FAIL:
                        self._announce(plan, "gate_failed", result, merged, now)
                    return Refusal(merged.summary() + " (--force with --reason overrides)", "gate_failed", merged)
                result = replace(result, gates_json=json.dumps(merged.to_json(), sort_keys=True))
        async with self._lock:
            return await self._commit_if_current(plan, result)

    async def _commit_if_current(self, plan: Plan, transition: Transition) -> MigrationState | Refusal:
        """Commit ``transition`` if the plan is still the one, at the version, it was computed from.
        Call with ``self._lock`` held (the check and the commit are one step for this process)."""
        if self.plans.get(plan.name) is not plan:
            return Refusal(f"migration {plan.name!r} was reloaded or removed while its hooks were asked; "
                           "look at its status and try again", "conflict")
        now_at = self._state(plan.name)
        # Behind (a follower that has not caught up) is for the store's own version check to judge.
        if now_at.version > transition.expected_version:
            return Refusal(f"{plan.name} moved to version {now_at.version} ({now_at.phase.value}) while this action "
                           f"waited for its checks (it was decided at version {transition.expected_version}); look "
                           "at its status and try again", "conflict")
        return await self._commit(plan, transition)

    async def _commit(self, plan: Plan, transition: Transition) -> MigrationState | Refusal:
        """Commit one transition and put its routing in force. Call with ``self._lock`` held."""
        assert self.store is not None
        telemetry = self.runtime.telemetry
        # 1. The telemetry of the step being left goes into the same journal row as the transition.
        summary = {route: telemetry.step_summary(route) for route in plan.routes}
        transition = replace(transition, summary_json=json.dumps(summary, sort_keys=True, default=str))
        # 2. One durable transaction, checked against the version the transition was computed from.
        try:
            committed = await asyncio.to_thread(self.store.commit, transition)
            if isinstance(committed, Refusal):
                # Someone else moved this plan (another process, or auto mode): serve what is committed.
                fresh = await asyncio.to_thread(self.store.state, plan.name)
                if fresh is not None and fresh.version > self._state(plan.name).version:
                    self._route(plan, fresh)
                    self._sync_auto()
                return committed
        except StoreUnavailable as exc:
            # Nothing committed, nothing changes here: routing stays on the step in force.
            return Refusal(f"the migration store is unreachable ({exc}); {plan.name} stays at its current step, "
                           "try again when the store is back", "unavailable")
        key = (plan.name, transition.action)
        self.transitions[key] = self.transitions.get(key, 0) + 1
        # 3. Put the new routing in force: telemetry windows first, so no request routed by the
        #    new split is counted in the old step's window; then the one-reference swap.
        self._route(plan, committed)
        logger.info("migration %s: %s by %s: %s:%d -> %s:%d%s", plan.name, transition.action, transition.actor,
                    transition.from_phase.value, display_step(transition.from_phase, transition.from_step, len(plan.steps)),
                    transition.to_phase.value, display_step(transition.to_phase, transition.to_step, len(plan.steps)),
                    f" ({transition.reason})" if transition.reason else "")
        self._sync_auto()
        self._after_commit(plan, transition)
        self._report_soon()
        return committed

    def _route(self, plan: Plan, after: MigrationState) -> None:
        """Put ``after``'s routing in force (the cached state is the routing in force until now)."""
        before = self._state(plan.name)
        old = effective_split(plan, before)
        for route, split in effective_split(plan, after).items():
            label = step_label(split)
            if label != step_label(old[route]) or before.step != after.step:
                self.runtime.telemetry.begin_step(route, label)
        self.states[plan.name] = after
        self._sync_shadow()  # comparison options first: the first mirrored copy of the step uses them
        self.runtime.swap(splits=self._splits())
        entered: frozenset[str] = frozenset()
        on_mtls = after.phase in _ACTIVE and after.step < len(plan.steps) and plan.steps[after.step].kind == "mtls"
        if on_mtls and (before.step != after.step or before.phase not in _ACTIVE):
            entered = frozenset({plan.steps[after.step].mtls_service})
        self._sync_mtls(entered)

    # -- shadow options ----------------------------------------------------------------------------

    def _sync_shadow(self, previous: Mapping[str, Plan] | None = None) -> None:
        """Each migrated route compares mirrored answers as its mirroring step says (else the defaults)."""
        sender = self.runtime.shadow
        if sender is None:
            return
        # Routes of plans that a reload removed go back to the sender's defaults (first: a route may
        # have moved to another plan).
        for name, plan in (previous or {}).items():
            if name not in self.plans:
                for route in plan.routes:
                    sender.configure_route(route, None)
        for name, plan in self.plans.items():
            step = mirroring_step(plan, self._state(name))
            options = None
            if step is not None and step.shadow is not None and not step.shadow.compares_by_default:
                base = sender.options
                settings = step.shadow
                # Validated when the plan was read, so parsing cannot fail here.
                options = ShadowOptions.of(
                    ignore=(*base.ignore.texts, *settings.ignore),  # the facade's rules plus the plan's
                    compare_headers=settings.compare_headers if settings.compare_headers is not None
                    else base.compare_headers,
                    learn_noise=settings.learn_noise if settings.learn_noise is not None else base.learn_noise,
                )
            for route in plan.routes:
                sender.configure_route(route, options)

    # -- mtls steps --------------------------------------------------------------------------------

    def _sync_mtls(self, entered: frozenset[str] = frozenset()) -> None:
        """Hold in STRICT exactly the services the plans' states call for; release the others.

        ``entered``: services whose mtls step was just (re-)entered; they get a fresh document
        version even when already STRICT, so the step's window starts now.
        """
        wanted = frozenset().union(*(strict_services(plan, self._state(name)) for name, plan in self.plans.items()))
        if wanted == self._strict and not entered:
            return
        mesh = self.runtime.mesh
        if mesh is None:
            # Plan validation refuses mtls steps without a mesh section; nothing to switch here.
            logger.error("mtls steps want %s in STRICT but the facade runs no mesh", ", ".join(sorted(wanted)))
            return
        for service in sorted((wanted - self._strict) | (entered & wanted)):
            version = mesh.set_mode(service, "STRICT")
            logger.info("mtls: %s sidecars STRICT (mesh config v%d)", service, version)
        for service in sorted(self._strict - wanted):
            version = mesh.set_mode(service, None)
            logger.info("mtls: %s sidecars back to their configured mode (mesh config v%d)", service, version)
        self._strict = wanted

    def _plaintext_seen(self, service: str, state: MigrationState) -> int | None:
        mesh = self.runtime.mesh
        if mesh is None or state.step_started_at is None:
            return None
        return mesh.plaintext_seen(service, since=state.step_started_at)

    # -- auto mode ---------------------------------------------------------------------------------

    def _checked(self, name: str) -> bool:
        """Whether plan ``name`` needs a check every ``interval``: auto mode, or rollback hooks to poll."""
        state, plan = self.states.get(name), self.plans.get(name)
        if plan is None or state is None or state.phase not in _ACTIVE:
            return False
        return state.auto or bool(plan.hooks("rollback", plan.steps[state.step] if state.step < len(plan.steps)
                                             else None))

    def _sync_auto(self) -> None:
        """One check task per plan in auto mode or with rollback hooks to poll; none for the others."""
        current = asyncio.current_task()
        for name in list(self._auto):
            if not self._checked(name):
                task = self._auto.pop(name)
                if task is not current:  # an auto task that just turned auto off ends by itself
                    task.cancel()
        for name in self.plans:
            if self._checked(name) and name not in self._auto:
                self._auto[name] = asyncio.create_task(self._auto_loop(name), name=f"migration-auto-{name}")

    async def _auto_loop(self, name: str) -> None:
        me = asyncio.current_task()
        while self._auto.get(name) is me:
            plan = self.plans.get(name)
            if plan is None:
                return
            await asyncio.sleep(plan.interval)
            try:
                await self._auto_step(name, me)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:  # the follower logs the outage and the recovery
                logger.debug("migration %s: auto check skipped: %s", name, exc)
            except Exception:  # keep checking: the next interval may succeed (a locked or full disk)
                logger.exception("migration %s: auto check failed", name)

    async def _auto_step(self, name: str, me: asyncio.Task[Any] | None) -> None:
        """One check of plan ``name``: poll its rollback hooks, then (in auto mode) judge the step.

        The network (the store's leader lock and state, Prometheus, hooks) is awaited without the lock;
        the commit takes it and re-checks the version the decision was made on.
        """
        plan = self.plans.get(name)
        if plan is None or self.store is None or self._auto.get(name) is not me:
            return
        # Of the instances sharing a store, only the leader's checks act; another takes over
        # (from the durable state read below) when the leader is gone.
        leading = await self.store.lead()
        if leading != self._leading:
            self._leading = leading
            if self.store.shared:
                logger.info("auto mode: this instance (%s) %s", self.instance,
                            "leads now" if leading else "no longer leads")
        if not leading:
            return
        # Read the durable state, not the cache: a transition elsewhere must not be overwritten.
        state = await asyncio.to_thread(self.store.state, name)
        if state is None or state.phase not in _ACTIVE or state.step >= len(plan.steps):
            return
        now = self._clock()
        step = plan.steps[state.step]
        rollback = await self._poll_rollback(plan, state, step, now)
        if rollback is not None:
            async with self._lock:
                await self._commit_if_current(plan, rollback)
            return
        if not state.auto:
            return
        checks: tuple[HookOutcome, ...] = ()
        if state.phase is Phase.RUNNING:
            # Flagger's rollout hooks: asked at every check, before the gates; a failure counts like a gate's.
            checks = await self._call_hooks(plan, plan.hooks("rollout", step), state, now, report=None)
        await self._refresh_queries(plan, state)
        report = await self.judged_report(plan, state)
        if report is None:
            return
        if checks:
            report = with_results(report, evaluate_hooks(checks))
        transition = auto_tick(state, plan=plan, now=now, gate_report=report)
        if transition is not None and _moves_forward(transition):
            outcomes = await self._step_hooks(plan, transition, report, now)
            if outcomes:  # decide again with the hooks' verdicts: a confirm holds, a failing hook counts
                transition = auto_tick(state, plan=plan, now=now,
                                       gate_report=with_results(report, evaluate_hooks(outcomes)))
        if transition is None:
            return
        async with self._lock:
            if self._auto.get(name) is not me:  # auto mode was turned off (or the plan reloaded) meanwhile
                return
            await self._commit_if_current(plan, transition)

    async def _call_hooks(
        self, plan: Plan, hooks: tuple[Webhook, ...], state: MigrationState, now: float, *, report: GateReport | None
    ) -> tuple[HookOutcome, ...]:
        """Ask ``hooks`` (all at once) about the current step of ``state`` (a ``check`` transition)."""
        if not hooks:
            return ()
        asked = check_transition(plan, state, actor="auto", now=now)
        client = self._client()
        return tuple(await asyncio.gather(*(call_hook(client, hook, event_payload(
            plan, hook.kind, asked, report, now=now, hook=hook)) for hook in hooks)))

    async def _poll_rollback(
        self, plan: Plan, state: MigrationState, step: Step, now: float
    ) -> Transition | None:
        """Flagger's rollback hooks: polled at every check of a running or paused plan; the first 2xx
        rolls everything back to ``from`` (a manual rollback by the hook: auto mode ends). Any other
        answer, or none, changes nothing."""
        outcomes = await self._call_hooks(plan, plan.hooks("rollback", step), state, now, report=None)
        asked = next((o for o in outcomes if o.ok), None)
        if asked is None:
            return None
        reason = f"rollback hook {asked.hook.name} answered {asked.status}"
        result = apply(state, Action("rollback", actor=f"webhook:{asked.hook.name}", reason=reason, to=0),
                       plan=plan, now=now)
        if isinstance(result, Refusal):
            logger.warning("migration %s: %s, but the rollback was refused: %s", plan.name, reason, result.reason)
            return None
        logger.warning("migration %s: %s: rolling back to %s", plan.name, reason, plan.from_service)
        return result

    # -- pipelines: Prometheus gates, hooks, notifications -------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # trust_env off: a proxy from the environment must not see hook bodies or approvals.
            self._http = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        return self._http

    async def _refresh_queries(self, plan: Plan, state: MigrationState, *, max_age: float = 0.0) -> None:
        """Ask Prometheus for the live step's ``prometheus`` gates (all at once, each bounded by its timeout).

        ``max_age``: answers of the same step younger than this are kept (status reads, which the
        dashboard polls); decisions always ask afresh.
        """
        if state.phase not in _ACTIVE or state.step >= len(plan.steps):
            return
        gates = plan.steps[state.step].gates.prometheus
        if not gates:
            return
        key = (state.step, state.step_started_at)
        if max_age and self._queries.get(plan.name, (None, None, ()))[:2] == key and \
                time.monotonic() - self._queried_at.get(plan.name, -math.inf) < max_age:
            return
        client = self._client()
        answers = await asyncio.gather(*(query_prometheus(client, gate) for gate in gates))
        self._queries[plan.name] = (*key, tuple(answers))
        self._queried_at[plan.name] = time.monotonic()

    async def _step_hooks(
        self, plan: Plan, transition: Transition, report: GateReport | None, now: float, *, rollout: bool = False
    ) -> tuple[HookOutcome, ...]:
        """Call the hooks of a move forward, in order, stopping at the first kind that does not pass:
        (with ``rollout``: the ``rollout`` hooks of the step left, the check a manual move makes; auto mode
        asks them at every check instead) ``confirm`` of the step entered, ``post_step`` of the step left,
        ``pre_step`` of the step entered. Call without the lock: this waits for the network."""
        steps = plan.steps
        leaving = steps[transition.from_step] if transition.from_phase in _ACTIVE and transition.from_step < len(steps) \
            else None
        entering = steps[transition.to_step] if transition.to_phase is Phase.RUNNING else None
        sequence = []
        if rollout and leaving is not None:
            sequence.append(plan.hooks("rollout", leaving))
        if entering is not None:
            sequence.append(plan.hooks("confirm", entering))
        if leaving is not None:
            sequence.append(plan.hooks("post_step", leaving))
        if entering is not None:
            sequence.append(plan.hooks("pre_step", entering))
        outcomes: list[HookOutcome] = []
        client = self._client()
        for hooks in sequence:
            if not hooks:
                continue
            answers = await asyncio.gather(*(call_hook(client, hook, event_payload(
                plan, hook.kind, transition, report, now=now, hook=hook)) for hook in hooks))
            outcomes.extend(answers)
            if not all(answer.ok for answer in answers):
                break
        return tuple(outcomes)

    def _after_commit(self, plan: Plan, transition: Transition) -> None:
        """Tell the plan's notification targets and event hooks what was committed."""
        report = json.loads(transition.gates_json)  # the gate values as committed in the journal
        if is_rollback(transition):
            event = "rollback"
        elif transition.action == "tick" and report is not None and report.get("status") == GateStatus.FAIL.value:
            event = "gate_failed"
        else:
            event = "transition"
        self._announce(plan, event, transition, report, transition.at)

    def _announce_refusal(
        self, plan: Plan, state: MigrationState, action: Action, report: GateReport, now: float
    ) -> None:
        # A refused move has no transition: describe the one that was asked for (the engine's, forced).
        asked = apply(state, replace(action, force=True, reason=action.reason or "refused"), plan=plan, now=now)
        if isinstance(asked, Transition):
            self._announce(plan, "gate_failed", replace(asked, reason=report.summary()), report, now)

    def _announce(
        self, plan: Plan, event: str, transition: Transition, report: GateReport | dict[str, Any] | None, now: float
    ) -> None:
        payload = event_payload(plan, event, transition, report, now=now)
        for target in plan.notify:
            self._spawn(send_notification(self._client(), target, payload))
        # Flagger's event hooks: every event, signed, with the hook's metadata; the answer is only logged.
        for hook in self._event_hooks(plan, transition):
            self._spawn(self._notify_hook(hook, event_payload(plan, event, transition, report, now=now, hook=hook)))

    @staticmethod
    def _event_hooks(plan: Plan, transition: Transition) -> tuple[Webhook, ...]:
        """The plan's event hooks and those of the step the event leaves or enters (each once)."""
        steps = plan.steps
        around = [steps[i] for i, phase in ((transition.from_step, transition.from_phase),
                                            (transition.to_step, transition.to_phase))
                  if phase in _ACTIVE and i < len(steps)]
        hooks = [*plan.hooks("event", None)]
        for step in around:
            hooks.extend(h for h in step.webhooks if h.kind == "event" and h not in hooks)
        return tuple(hooks)

    async def _notify_hook(self, hook: Webhook, payload: dict[str, Any]) -> None:
        outcome = await call_hook(self._client(), hook, payload)
        if not outcome.ok:
            logger.warning("%s hook %s (%s): %s", hook.kind, hook.name, hook.url,
                           f"answered {outcome.status}" if outcome.status is not None else outcome.error)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task: asyncio.Task[Any] = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- a shared store: follow other instances' transitions -------------------------------------

    async def _follow(self) -> None:
        """Route what the shared store says within ``FOLLOW_INTERVAL``, heartbeat, and survive its outages.

        A notification wakes the loop at once; the periodic re-read is the backstop. While the store
        is unreachable the routing in force stays (never the config's initial state), and the loop
        keeps trying: the first read that succeeds again is the recovery.
        """
        outage: str | None = None
        reported = 0.0
        while True:
            store = self.store
            if store is None or not store.shared:
                await asyncio.sleep(FOLLOW_INTERVAL)
                continue
            try:
                await store.wait_for_change(FOLLOW_INTERVAL)
                states = await asyncio.to_thread(store.all_states)
                changed = await self._follow_states(states)
                due = changed or self._report_due or time.monotonic() - reported >= REPORT_INTERVAL
                if due and self.runtime.admin_url:  # named by its admin port: report once it is known
                    self._report_due = False
                    routed = {name: self._state(name) for name in self.plans}
                    await asyncio.to_thread(store.report_instance, self.instance, self.runtime.admin_url, routed,
                                            at=self._clock())
                    reported = time.monotonic()
                await self._share_evidence(store, publish=due and bool(self.runtime.admin_url))
                if outage is not None:
                    logger.warning("migration store %s is reachable again", store.location)
                    outage = None
            except StoreUnavailable as exc:
                if outage is None:
                    logger.error("migration store unreachable (%s): routing stays at the current step, "
                                 "transitions are refused until it is back", exc)
                outage = str(exc)
                await asyncio.sleep(FOLLOW_INTERVAL)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep following: one bad read must not freeze this instance's routing
                logger.exception("following the migration store failed")
                await asyncio.sleep(FOLLOW_INTERVAL)

    async def _follow_states(self, states: Mapping[str, MigrationState]) -> bool:
        """Put in force every committed state another instance moved to; True if any changed."""
        changed = False
        async with self._lock:
            for name, plan in self.plans.items():
                fresh = states.get(name)
                # Only forward: versions only grow, and a read that started before this instance's own
                # commit returns an older version that must not undo it.
                if fresh is None or fresh.version <= self._state(name).version:
                    continue
                logger.info("migration %s: following version %d (%s at step %d), committed elsewhere", name,
                            fresh.version, fresh.phase.value, display_step(fresh.phase, fresh.step, len(plan.steps)))
                self._route(plan, fresh)
                changed = True
            if changed:
                self._sync_auto()
        return changed

    def _local_evidence(self, plan: Plan, route: str) -> StepEvidence:
        """This instance's part of the current step's window on ``route``, in numbers that add up."""
        telemetry = self.runtime.telemetry
        sides = []
        for service in (plan.from_service, plan.to_service):
            requests, errors, latency = telemetry.step_window(route, service)
            sides.append(SideEvidence(requests, errors, latency.counts))
        diffs = telemetry.diff_counts(route)
        return StepEvidence(sides[0], sides[1], diffs.compared, diffs.differing)

    async def fleet_window(self, route: str) -> FleetWindow | None:
        """``GET /compare`` with replicas: ``route``'s current step summed over every instance sharing the
        store, read from the store now (this instance's part live); None without a shared store or a
        running / paused plan on the route (the comparison stays local)."""
        store = self.store
        if store is None or not store.shared:
            return None
        found = next(((name, plan) for name, plan in self.plans.items()
                      if route in plan.routes and self._state(name).phase in _ACTIVE), None)
        if found is None:
            return None
        name, plan = found
        state = self._state(name)
        key = (name, route, epoch_key(state))
        error = None
        try:
            published = (await asyncio.to_thread(store.evidence, [key])).get(key, {})
        except StoreUnavailable as exc:  # still an answer: the others' parts as the follower last read them
            error = f"the migration store is unreachable ({exc}): other instances' numbers are the last ones read"
            published = self._published.get(key, {})
        label = step_label(effective_split(plan, state)[route])
        return FleetWindow.of(route, plan.from_service, plan.to_service, label,
                              (self.instance, self._local_evidence(plan, route)), published, error)

    def _live_windows(self) -> dict[EvidenceKey, tuple[Plan, str]]:
        """The (plan, route, epoch) windows gates judge now: every route of a running or paused plan."""
        windows = {}
        for name, plan in self.plans.items():
            state = self._state(name)
            if state.phase in _ACTIVE:
                for route in plan.routes:
                    windows[(name, route, epoch_key(state))] = (plan, route)
        return windows

    async def _share_evidence(self, store: StateStore, *, publish: bool) -> None:
        """Publish this instance's windows (when ``publish``) and read the others' (every turn)."""
        windows = self._live_windows()
        if publish and windows:
            mine = {key: json.dumps(self._local_evidence(plan, route).to_json(), sort_keys=True)
                    for key, (plan, route) in windows.items()}
            await asyncio.to_thread(store.publish_evidence, self.instance, mine, at=self._clock())
        found = await asyncio.to_thread(store.evidence, list(windows))
        self._published = found
        me = self.instance
        self._evidence = {key: {who: StepEvidence.from_json(doc) for who, doc in parts.items() if who != me}
                          for key, parts in found.items()}

    def _report_soon(self) -> None:
        """Heartbeat at the follower's next turn (this instance just changed what it routes)."""
        self._report_due = True

    # -- internals ---------------------------------------------------------------------------------

    def _state(self, name: str) -> MigrationState:
        return self.states.get(name) or MigrationState.initial(name)

    def _splits(self) -> dict[str, Split]:
        splits: dict[str, Split] = {}
        for name, plan in self.plans.items():
            for route, split in effective_split(plan, self._state(name)).items():
                if split is not None:
                    splits[route] = split
        return splits

    def _load(self, config: Config, previous: Mapping[str, Plan]) -> _Loaded:
        """Read plans and durable state for ``config``; ConfigError with every problem if unsafe."""
        location = store_location(config)
        if not config.migrations_dir and config.state_store is None and not os.path.exists(location):
            return _Loaded(config.sha256, {}, None, {})
        problems: list[Problem] = []
        plans: dict[str, Plan] = {}
        if config.migrations_dir:
            plans, problems = load_plans(
                config.migrations_dir,
                routes=[r.name for r in config.routes],
                services=config.backend_names,
                mesh=config.mesh is not None,
                weighted=weighted_routes(config.routes),
            )
        if any(p.severity == "error" for p in problems):
            raise ConfigError(problems)
        store = self.store if self.store is not None and self.store.location == store_location(config) else None
        field = "state_store" if config.state_store else "state_dir"
        where = config.source if config.state_store else location
        try:
            store = store or open_store(config)
            states = store.all_states()
        except (OSError, sqlite3.Error, StoreUnavailable, ImportError) as exc:
            # An unreadable store is a config problem: say where. A shared store that is down refuses
            # the start (no routing nobody asked for) and a reload (the running table stays).
            problem = Problem(where, 1, 1, field, f"cannot open the migration store: {exc}")
            raise ConfigError([problem]) from None
        route_backends = {r.name: tuple(b.service for b in r.backends) for r in config.routes}
        unsafe = check_plans(plans, states, previous=previous, route_backends=route_backends,
                             where=config.migrations_dir or config.source)
        if unsafe:
            raise ConfigError([*problems, *unsafe])
        for problem in problems:
            logger.warning("%s", problem)
        return _Loaded(config.sha256, plans, store, {name: s for name, s in states.items() if name in plans})
