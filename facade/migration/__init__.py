"""Staged migrations: plans (YAML), gates, the engine state machine and its durable store.

    plans, problems = load_plans("migrations", routes=..., services=...)   # plan.py (pure)
    report = evaluate_gates(step.gates, old, new, diffs)                    # gates.py (pure)
    result = apply(state, Action("next", actor="ann"), plan=p, now=t, gate_report=report)  # engine.py (pure)
    store.commit(result) if isinstance(result, Transition) else ...         # store.py (SQLite, WAL)
    splits = effective_split(plan, store.state(name) or MigrationState.initial(name))

In a running facade, ``MigrationController`` (controller.py, attached by ``facade.features``) does all
of that on real traffic and serves the admin API of ``api.py``.
"""

from __future__ import annotations

from .controller import MigrationController
from .engine import (
    ACTIONS,
    Action,
    MigrationState,
    Phase,
    Refusal,
    Transition,
    apply,
    auto_tick,
    check_plan_edit,
    effective_split,
    migration_status,
)
from .gates import GateReport, GateResult, GateStatus, evaluate_gates
from .plan import Gate, Gates, Plan, Step, load_plans, parse_plan, render_plan
from .store import DEFAULT_STORE_FILE, JournalEntry, MigrationStore

__all__ = [
    "ACTIONS",
    "DEFAULT_STORE_FILE",
    "Action",
    "Gate",
    "GateReport",
    "GateResult",
    "GateStatus",
    "Gates",
    "JournalEntry",
    "MigrationController",
    "MigrationState",
    "MigrationStore",
    "Phase",
    "Plan",
    "Refusal",
    "Step",
    "Transition",
    "apply",
    "auto_tick",
    "check_plan_edit",
    "effective_split",
    "evaluate_gates",
    "load_plans",
    "migration_status",
    "parse_plan",
    "render_plan",
]
