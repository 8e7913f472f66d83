"""Staged migrations: plans (YAML), gates, the engine state machine and its durable store."""

from __future__ import annotations

from .gates import GateReport, GateResult, GateStatus, evaluate_gates
from .plan import Gate, Gates, Plan, Step, load_plans, parse_plan, render_plan

__all__ = [
    "Gate",
    "GateReport",
    "GateResult",
    "GateStatus",
    "Gates",
    "Plan",
    "Step",
    "evaluate_gates",
    "load_plans",
    "parse_plan",
    "render_plan",
]
