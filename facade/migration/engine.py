"""The migration state machine (pure): ``apply(state, action) -> Transition | Refusal``.

States (Argo Rollouts / Flagger vocabulary)::

    pending ──start──▶ running(step i) ──next / resume on a pause step──▶ running(i+1) ... ──▶ completed
                        │  ▲                                                                  │
                  pause │  │ resume                                   rollback (one step) ◀───┘
                        ▼  │
                      paused(i)
    running / paused ──rollback (from step 1, or --to 0)──▶ rolled_back ──start──▶ running(0)
    pending / running / paused / rolled_back ──abort──▶ aborted (terminal)
    running / paused ──promote (force + reason)──▶ completed

``next`` advances only when the step's ``hold`` has elapsed and its gates PASS; ``force`` with
a reason overrides both.  On a ``pause`` step, ``next`` / ``resume`` are the human approval.
``auto`` turns on the controller (``auto_tick``): it advances once hold has elapsed and gates
pass, waits at pause steps, counts consecutive FAILs and rolls everything back to ``from``
when they reach the plan's ``threshold`` (Flagger).  ``manual`` turns auto mode off.

Nothing here does I/O: the caller supplies ``now`` and the gate report, commits the returned
``Transition`` through ``MigrationStore.commit`` and derives routing from ``effective_split``.
Step numbers shown to people (and ``Action.to``) are 1-based; ``MigrationState.step`` is 0-based.
Everything a person or script reads (the status document, its journal, messages, the CLI,
``facade migrate plan``) uses the people's numbering, ``display_step``: 1..N for the plan's steps,
0 for "everything on ``from``" (pending, rolled back, aborted), N once completed. Only the store
keeps the 0-based index.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Literal

from ..errors import Problem
from ..split import BUCKETS, Split
from .gates import GateReport, GateStatus
from .plan import Plan, Step

__all__ = [
    "ACTIONS",
    "Action",
    "MigrationState",
    "Phase",
    "Refusal",
    "Transition",
    "apply",
    "auto_tick",
    "check_plan_edit",
    "display_step",
    "effective_split",
    "frame_hash",
    "migration_status",
    "mirroring_step",
    "strict_services",
]

ActionName = Literal["start", "next", "pause", "resume", "rollback", "abort", "promote", "auto", "manual"]
ACTIONS: tuple[ActionName, ...] = ("start", "next", "pause", "resume", "rollback", "abort", "promote", "auto", "manual")
RefusalCode = Literal["refused", "gate_failed", "not_found", "conflict", "unavailable"]  # unavailable: store down


class Phase(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"

    def __str__(self) -> str:
        return self.value


_ACTIVE = (Phase.RUNNING, Phase.PAUSED)
_ALL_ON_FROM = (Phase.PENDING, Phase.ROLLED_BACK, Phase.ABORTED)


@dataclass(frozen=True, slots=True)
class MigrationState:
    """Where one plan stands. ``version`` grows by one per committed transition (optimistic locking)."""

    plan: str
    phase: Phase = Phase.PENDING
    step: int = 0  # 0-based index into plan.steps; len(steps) when completed
    version: int = 0
    auto: bool = False
    failures: int = 0  # consecutive FAILed gate checks in auto mode
    step_started_at: float | None = None  # when the current step was entered (hold counts from here)
    updated_at: float | None = None
    reason: str = ""  # why the last transition happened
    plan_hash: str = ""  # the plan content the last transition was made with
    step_hashes: tuple[str, ...] = ()
    frame_hash: str = ""  # routes / from / to / sticky at the last transition
    # The sticky salt the migration started with, kept until it is all on ``from`` again. "" in the state
    # of a migration started before salts existed: its users keep their buckets (docs/migrations.md).
    salt: str = ""

    @classmethod
    def initial(cls, plan: str) -> MigrationState:
        return cls(plan=plan)

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "phase": self.phase.value,
            "step": self.step,
            "version": self.version,
            "auto": self.auto,
            "failures": self.failures,
            "step_started_at": self.step_started_at,
            "updated_at": self.updated_at,
            "reason": self.reason,
            "plan_hash": self.plan_hash,
            "step_hashes": list(self.step_hashes),
            "frame_hash": self.frame_hash,
            "salt": self.salt,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MigrationState:
        return cls(
            plan=str(data["plan"]),
            phase=Phase(data["phase"]),
            step=int(data["step"]),
            version=int(data["version"]),
            auto=bool(data.get("auto", False)),
            failures=int(data.get("failures", 0)),
            step_started_at=data.get("step_started_at"),
            updated_at=data.get("updated_at"),
            reason=str(data.get("reason", "")),
            plan_hash=str(data.get("plan_hash", "")),
            step_hashes=tuple(data.get("step_hashes", ())),
            frame_hash=str(data.get("frame_hash", "")),
            salt=str(data.get("salt", "")),
        )


@dataclass(frozen=True, slots=True)
class Action:
    """A request to change a migration. ``to`` (rollback) is a 1-based step number; 0 = all on ``from``."""

    name: ActionName
    actor: str = "unknown"
    reason: str = ""
    force: bool = False
    to: int | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """One journal entry plus the state it leads to; committed as one transaction."""

    state: MigrationState  # the new state (version = expected_version + 1)
    expected_version: int  # the version the transition was computed from
    plan: str
    plan_hash: str
    from_step: int
    to_step: int
    from_phase: Phase
    to_phase: Phase
    action: str  # an ActionName, or "tick" / "advance" / "auto_rollback" from the auto controller
    actor: str
    reason: str
    gates_json: str  # the gate report at that moment ("null" when none)
    at: float
    # Telemetry of the step being left (per route: requests, errors, latencies per backend, diffs), as JSON;
    # the controller fills it in just before committing ("null" when none was taken).
    summary_json: str = "null"

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "plan_hash": self.plan_hash,
            "version": self.state.version,
            "from_step": self.from_step,
            "to_step": self.to_step,
            "from_state": self.from_phase.value,
            "to_state": self.to_phase.value,
            "action": self.action,
            "actor": self.actor,
            "reason": self.reason,
            "gates": json.loads(self.gates_json),
            "summary": json.loads(self.summary_json),
            "at": self.at,
        }


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an action was not applied. The admin API maps ``code`` to a status and the CLI to an exit code."""

    reason: str
    code: RefusalCode = "refused"
    gates: GateReport | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.reason, "code": self.code}
        if self.gates is not None:
            out["gates"] = self.gates.to_json()
        return out


def frame_hash(plan: Plan) -> str:
    """Hash of what every step's routing depends on besides the step itself."""
    frame = {k: v for k, v in plan.to_json().items() if k in ("routes", "from", "to", "sticky")}
    return hashlib.sha256(json.dumps(frame, sort_keys=True).encode()).hexdigest()


# -- actions --------------------------------------------------------------------------------------


def apply(
    state: MigrationState, action: Action, *, plan: Plan, now: float, gate_report: GateReport | None = None
) -> Transition | Refusal:
    """Apply a human (or API) action. Pure: returns the transition to commit, or why not."""
    assert state.plan == plan.name, f"state of {state.plan!r} applied to plan {plan.name!r}"
    if action.force and not action.reason.strip():
        return Refusal("--force needs --reason: say why the checks are overridden")
    if state.phase in _ACTIVE and state.step >= len(plan.steps):
        return Refusal(f"the plan no longer has step {state.step + 1}; roll back or restore the plan file")
    handler = _HANDLERS.get(action.name)
    if handler is None:
        return Refusal(f"unknown action {action.name!r} (expected one of: {', '.join(ACTIONS)})", "not_found")
    return handler(state, action, plan, now, gate_report)


def _start(state: MigrationState, action: Action, plan: Plan, now: float, report: GateReport | None) -> Transition | Refusal:
    if state.phase not in (Phase.PENDING, Phase.ROLLED_BACK):
        return _not_allowed(state, action)
    return _to(state, action, plan, now, Phase.RUNNING, 0, report, auto=False)


def _next(state: MigrationState, action: Action, plan: Plan, now: float, report: GateReport | None) -> Transition | Refusal:
    if state.phase is Phase.PAUSED:
        return Refusal(f"{plan.name} is paused at step {state.step + 1}; resume it first")
    if state.phase is not Phase.RUNNING:
        return _not_allowed(state, action)
    return _advance(state, action, plan, now, report)


def _pause(state: MigrationState, action: Action, plan: Plan, now: float, report: GateReport | None) -> Transition | Refusal:
    if state.phase is not Phase.RUNNING:
        return _not_allowed(state, action)
    return _to(state, action, plan, now, Phase.PAUSED, state.step, report, keep_clock=True)


def _resume(state: MigrationState, action: Action, plan: Plan, now: float, report: GateReport | None) -> Transition | Refusal:
    if state.phase is Phase.PAUSED:
        return _to(state, action, plan, now, Phase.RUNNING, state.step, report, keep_clock=True)
    if state.phase is Phase.RUNNING and plan.steps[state.step].kind == "pause":
        return _advance(state, action, plan, now, report)  # the human approval a pause step waits for
    return _not_allowed(state, action)


def _rollback(state: MigrationState, action: Action, plan: Plan, now: float, report: GateReport | None) -> Transition | Refusal:
    if state.phase not in (*_ACTIVE, Phase.COMPLETED):
        return _not_allowed(state, action)
    current = state.step + 1  # people count steps from 1; "step 0" is everything on `from`
    if state.phase is Phase.COMPLETED:
        current = len(plan.steps) + 1
    target = current - 1 if action.to is None else action.to
    if not 0 <= target < current:
        return Refusal(f"--to must be a step number from 0 to {current - 1} (below the current step {current})")
    # A rollback is a human taking control: auto mode stays off until asked for again.
    if target == 0:
        return _to(state, action, plan, now, Phase.ROLLED_BACK, 0, report, auto=False)
    return _to(state, action, plan, now, Phase.RUNNING, target - 1, report, auto=False)


def _abort(state: MigrationState, action: Action, plan: Plan, now: float, report: GateReport | None) -> Transition | Refusal:
    if state.phase in (Phase.COMPLETED, Phase.ABORTED):
        return _not_allowed(state, action)
    return _to(state, action, plan, now, Phase.ABORTED, 0, report, auto=False)


def _promote(state: MigrationState, action: Action, plan: Plan, now: float, report: GateReport | None) -> Transition | Refusal:
    if state.phase not in _ACTIVE:
        return _not_allowed(state, action)
    if not action.force:
        return Refusal("promote skips every remaining step and gate: it needs --force and --reason")
    return _to(state, action, plan, now, Phase.COMPLETED, len(plan.steps), report, auto=False)


def _auto(state: MigrationState, action: Action, plan: Plan, now: float, report: GateReport | None) -> Transition | Refusal:
    if state.phase not in (Phase.PENDING, *_ACTIVE):
        return _not_allowed(state, action)
    if state.auto:
        return Refusal(f"{plan.name} is already in auto mode")
    if state.phase is Phase.PENDING:  # like Flagger: auto mode on a fresh plan starts it
        return _to(state, action, plan, now, Phase.RUNNING, 0, report, auto=True)
    return _to(state, action, plan, now, state.phase, state.step, report, auto=True, keep_clock=True)


def _manual(state: MigrationState, action: Action, plan: Plan, now: float, report: GateReport | None) -> Transition | Refusal:
    if not state.auto:
        return Refusal(f"{plan.name} is not in auto mode")
    return _to(state, action, plan, now, state.phase, state.step, report, auto=False, keep_clock=True)


_HANDLERS = {
    "start": _start,
    "next": _next,
    "pause": _pause,
    "resume": _resume,
    "rollback": _rollback,
    "abort": _abort,
    "promote": _promote,
    "auto": _auto,
    "manual": _manual,
}


def _not_allowed(state: MigrationState, action: Action) -> Refusal:
    where = f"{state.phase.value} at step {state.step + 1}" if state.phase in _ACTIVE else state.phase.value
    return Refusal(f"cannot {action.name} {state.plan}: it is {where}")


def _advance(state: MigrationState, action: Action, plan: Plan, now: float, report: GateReport | None) -> Transition | Refusal:
    step = plan.steps[state.step]
    if not action.force:
        left = _hold_left(state, step.hold, now)
        if left > 0:
            return Refusal(
                f"step {state.step + 1} ({step.summary()}) holds for {step.hold:g}s; {left:.0f}s left "
                "(--force with --reason skips it)"
            )
        if not step.gates.empty:
            if report is None:
                return Refusal("no gate results are available for this step yet", "gate_failed")
            if report.status is not GateStatus.PASS:
                return Refusal(report.summary() + " (--force with --reason overrides)", "gate_failed", report)
    if state.step + 1 >= len(plan.steps):
        return _to(state, action, plan, now, Phase.COMPLETED, len(plan.steps), report)
    return _to(state, action, plan, now, Phase.RUNNING, state.step + 1, report)


def _hold_left(state: MigrationState, hold: float, now: float) -> float:
    started = state.step_started_at if state.step_started_at is not None else now
    return hold - (now - started)


def _to(
    state: MigrationState,
    action: Action,
    plan: Plan,
    now: float,
    phase: Phase,
    step: int,
    report: GateReport | None,
    *,
    auto: bool | None = None,
    keep_clock: bool = False,
    failures: int = 0,
    name: str | None = None,
    actor: str | None = None,
    reason: str | None = None,
) -> Transition:
    why = action.reason if reason is None else reason
    new = replace(
        state,
        phase=phase,
        step=step,
        version=state.version + 1,
        auto=state.auto if auto is None else auto,
        failures=failures,
        step_started_at=state.step_started_at if keep_clock else now,
        updated_at=now,
        reason=why,
        plan_hash=plan.content_hash,
        step_hashes=plan.step_hashes,
        frame_hash=frame_hash(plan),
        # A (re)start takes the plan's salt; while anyone is on ``to`` the salt never changes.
        salt=plan.sticky_salt if state.phase in _ALL_ON_FROM else state.salt,
    )
    return Transition(
        state=new,
        expected_version=state.version,
        plan=plan.name,
        plan_hash=plan.content_hash,
        from_step=state.step,
        to_step=step,
        from_phase=state.phase,
        to_phase=phase,
        action=name or action.name,
        actor=actor or action.actor,
        reason=why,
        gates_json=json.dumps(report.to_json() if report is not None else None, sort_keys=True),
        at=now,
    )


# -- the auto controller's decision ----------------------------------------------------------------


def auto_tick(state: MigrationState, *, plan: Plan, now: float, gate_report: GateReport) -> Transition | None:
    """One evaluation of auto mode (every ``plan.interval``); None when nothing changes.

    - a FAIL counts towards ``plan.threshold``; reaching it rolls everything back to ``from``;
    - a PASS after the step's hold advances (and resets the count);
    - INCONCLUSIVE waits without resetting the count (too little traffic proves nothing);
    - pause steps wait for a human.
    """
    if not state.auto or state.phase is not Phase.RUNNING or state.step >= len(plan.steps):
        return None
    step = plan.steps[state.step]
    action = Action("auto", actor="auto")
    label = f"step {state.step + 1} ({step.summary()})"
    if gate_report.status is GateStatus.FAIL:
        failures = state.failures + 1
        if failures >= plan.threshold:
            why = f"automatic rollback: {failures} failed checks in a row at {label}: {gate_report.summary()}"
            return _to(state, action, plan, now, Phase.ROLLED_BACK, 0, gate_report, auto=False, failures=failures,
                       name="auto_rollback", reason=why)
        why = f"check failed ({failures} of {plan.threshold}) at {label}: {gate_report.summary()}"
        return _to(state, action, plan, now, Phase.RUNNING, state.step, gate_report, keep_clock=True,
                   failures=failures, name="tick", reason=why)
    if step.kind == "pause":
        return None
    if gate_report.status is GateStatus.PASS:
        if _hold_left(state, step.hold, now) <= 0:
            advanced = _advance(state, action, plan, now, gate_report)
            assert isinstance(advanced, Transition)
            return replace(advanced, action="advance", reason=f"gates passed after hold at {label}",
                           state=replace(advanced.state, reason=f"gates passed after hold at {label}"))
        if state.failures:
            return _to(state, action, plan, now, Phase.RUNNING, state.step, gate_report, keep_clock=True,
                       name="tick", reason=f"check passed at {label}; failure count reset")
    return None


# -- routing and plan edits ------------------------------------------------------------------------


def effective_split(plan: Plan, state: MigrationState) -> dict[str, Split | None]:
    """What each of the plan's routes does now; None = everything on ``from`` (the route as configured)."""
    split: Split | None
    if state.phase in _ALL_ON_FROM:
        split = None
    elif state.phase is Phase.COMPLETED:
        split = Split(plan.from_service, plan.to_service, weight_bps=BUCKETS, step_label=f"{plan.name} completed",
                      baggage=plan.baggage)
    else:
        split = _step_split(plan, min(state.step, len(plan.steps) - 1), state.salt)
    return {route: split for route in plan.routes}


def _step_split(plan: Plan, index: int, salt: str = "") -> Split | None:
    # A pause or mtls step keeps the routing of the step before it.
    routing = index
    while routing >= 0 and plan.steps[routing].kind in ("pause", "mtls"):
        routing -= 1
    if routing < 0:
        return None
    step = plan.steps[routing]
    label = f"{plan.name} step {index + 1}: {plan.steps[index].summary()}"
    old, new = plan.from_service, plan.to_service
    unsafe = step.shadow is not None and step.shadow.unsafe_methods
    if step.kind == "shadow":
        return Split(old, new, shadow_percent=step.shadow_percent, step_label=label, shadow_unsafe=unsafe,
                     baggage=plan.baggage)
    if step.kind == "canary":
        return Split(old, new, canary=step.canary, step_label=label, baggage=plan.baggage, fault=step.fault)
    # Testers who send the canary header stay on ``to`` through the weight steps (Argo Rollouts' ask).
    canary = next((s.canary for s in reversed(plan.steps[:routing]) if s.kind == "canary"), None)
    return Split(old, new, weight_bps=step.weight * (BUCKETS // 100), sticky=plan.sticky, step_label=label,
                 shadow_percent=step.mirror_percent, shadow_unsafe=unsafe,
                 canary=canary if plan.canary_persist else None, salt=salt, baggage=plan.baggage, fault=step.fault)


def mirroring_step(plan: Plan, state: MigrationState) -> Step | None:
    """The step whose mirroring is in force now (a shadow step, or a weight step with ``mirror``), or None.

    A pause or mtls step keeps the routing, and so the mirroring, of the step before it.
    """
    if state.phase not in _ACTIVE or not plan.steps:
        return None
    routing = min(state.step, len(plan.steps) - 1)
    while routing >= 0 and plan.steps[routing].kind in ("pause", "mtls"):
        routing -= 1
    if routing < 0:
        return None
    step = plan.steps[routing]
    mirrors = step.kind == "shadow" or (step.kind == "weight" and step.mirror_percent > 0)
    return step if mirrors else None


def strict_services(plan: Plan, state: MigrationState) -> frozenset[str]:
    """Services whose sidecars this plan holds in STRICT mTLS now (``mtls`` steps).

    From entering an ``mtls`` step on, while running or paused on it or any later step, and once
    completed (completing keeps STRICT); leaving it backwards (rollback before it, rolled_back,
    aborted, pending) releases it, and the service goes back to its configured mode.
    """
    if state.phase is Phase.COMPLETED:
        reached = len(plan.steps)
    elif state.phase in _ACTIVE:
        reached = min(state.step, len(plan.steps) - 1) + 1
    else:
        return frozenset()
    return frozenset(s.mtls_service for s in plan.steps[:reached] if s.kind == "mtls")


def check_plan_edit(state: MigrationState, old_step_hashes: tuple[str, ...], new_plan: Plan) -> Problem | None:
    """A Problem when ``new_plan`` changes steps the migration has already applied, else None.

    Applied steps are every step up to and including the current one (the current step is live
    routing); later steps may change freely.  The routes / from / to / sticky frame may not
    change once anything was applied.
    """
    if state.phase in (Phase.RUNNING, Phase.PAUSED):
        applied = state.step + 1
    elif state.phase is Phase.COMPLETED:
        applied = len(old_step_hashes)
    else:
        return None
    where = new_plan.source or new_plan.name
    if state.frame_hash and state.frame_hash != frame_hash(new_plan):
        return Problem(where, 1, 1, "", f"plan {new_plan.name!r} is {state.phase.value}: its routes, from, to and "
                       "sticky cannot change; roll it back first")
    for index in range(min(applied, len(old_step_hashes))):
        if index >= len(new_plan.steps):
            where_now = (f"{state.phase.value} at step {display_step(state.phase, state.step, len(old_step_hashes))}"
                         if state.phase is not Phase.COMPLETED else state.phase.value)
            return Problem(where, 1, 1, "steps", f"plan {new_plan.name!r} is {where_now}: step {index + 1} was "
                           "already applied and cannot be removed; roll it back first (`facade migrate rollback "
                           f"{new_plan.name} --to 0`), or keep its state apart (another state_dir)")
        if new_plan.steps[index].hash != old_step_hashes[index]:
            step = new_plan.steps[index]
            return Problem(where, step.line or 1, step.col or 1, f"steps[{index}]",
                           f"plan {new_plan.name!r} is {state.phase.value}: step {index + 1} was already applied "
                           "and cannot change (only later steps may); roll back first to change it")
    return None


# -- the status document (admin API and CLI share it) ----------------------------------------------


def display_step(phase: Phase | str, index: int, steps: int) -> int:
    """The step number people see for a 0-based ``index`` in ``phase``: 1..N while running or paused,
    N once completed, 0 when everything is on ``from`` (pending, rolled back, aborted)."""
    phase = Phase(phase)
    if phase in _ACTIVE:
        return index + 1
    return steps if phase is Phase.COMPLETED else 0


def _journal_entry(entry: Mapping[str, Any], steps: int) -> dict[str, Any]:
    out = dict(entry)
    for side in ("from", "to"):
        state, step = out.get(f"{side}_state"), out.get(f"{side}_step")
        if isinstance(step, int) and state in {p.value for p in Phase}:
            out[f"{side}_step"] = display_step(str(state), step, steps)
    return out


def migration_status(
    plan: Plan,
    state: MigrationState,
    *,
    now: float | None = None,
    gate_report: GateReport | None = None,
    journal: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The JSON document ``GET /migrations/{name}`` returns and ``facade migrate status`` renders.

    ``step`` is the 1-based number people see (0 before the first step / after a rollback).
    """
    active = state.phase in _ACTIVE
    number = display_step(state.phase, state.step, len(plan.steps))
    step = plan.steps[state.step] if active and state.step < len(plan.steps) else None
    hold_left = None
    if step is not None and now is not None and state.phase is Phase.RUNNING:
        hold_left = max(0.0, _hold_left(state, step.hold, now))
    routing = {}
    for route, split in effective_split(plan, state).items():
        routing[route] = {
            "to_percent": split.weight_bps / 100 if split else 0.0,
            "shadow_percent": split.shadow_percent if split else 0.0,
            "canary": str(split.canary) if split and split.canary else None,
            "sticky": str(split.sticky) if split and split.sticky else None,
        }
    return {
        "name": plan.name,
        "routes": list(plan.routes),
        "from": plan.from_service,
        "to": plan.to_service,
        "state": state.phase.value,
        "step": number,
        "steps": len(plan.steps),
        "step_summary": step.summary() if step is not None else state.phase.value,
        "auto": state.auto,
        "failures": state.failures,
        "threshold": plan.threshold,
        "version": state.version,
        "reason": state.reason,
        "updated_at": state.updated_at,
        "step_started_at": state.step_started_at,
        "hold_left": hold_left,
        "plan_hash": plan.content_hash,
        "routing": routing,
        "gates": gate_report.to_json() if gate_report is not None else None,
        "journal": [_journal_entry(entry, len(plan.steps)) for entry in journal],
    }
