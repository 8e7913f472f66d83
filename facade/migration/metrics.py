"""Migration state as Prometheus series (pure): what ``/metrics`` adds for each plan.

    facade_migration_step{plan,route}                1-based step in force (0 before the first / after a rollback)
    facade_migration_steps{plan}                     steps in the plan
    facade_migration_state{plan,state}               1 for the plan's phase, 0 for the others
    facade_migration_gate{plan,gate,result}          the gate's measured value, labelled with its current result
    facade_migration_gate_threshold{plan,gate}       the limit the measured value is held to
    facade_migration_transitions_total{plan,action}  committed transitions since this process started
    facade_migration_weight{plan,route}              share of the route's traffic routed to the new backend (0..1)
    facade_migration_new_share{plan,route}           share of the route's requests the new backend answered,
                                                     measured over the shortest rolling window (0..1)

A gate without a measurement (no traffic yet) has the value NaN: the series exists, with its result
(``inconclusive``), so a dashboard can show why a step is waiting.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..telemetry.prometheus import escape_label_value
from .engine import Phase

__all__ = ["render_migration_metrics"]

_FAMILIES = (
    ("facade_migration_step", "gauge", "The 1-based migration step in force on the route (0: all traffic on from)."),
    ("facade_migration_steps", "gauge", "Steps in the migration plan."),
    ("facade_migration_state", "gauge", "1 for the migration's current state, 0 for the others."),
    ("facade_migration_gate", "gauge", "The current step's gate: measured value, labelled with its result."),
    ("facade_migration_gate_threshold", "gauge", "The limit the gate's measured value is held to."),
    ("facade_migration_transitions_total", "counter", "Migration transitions committed by this process."),
    ("facade_migration_weight", "gauge", "Share of the route's traffic routed to the new backend (0..1)."),
    ("facade_migration_new_share", "gauge",
     "Share of the route's requests answered by the new backend over the last rolling window (0..1)."),
)


def _labels(**pairs: str) -> str:
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs.items())


def _value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def render_migration_metrics(
    statuses: Iterable[Mapping[str, Any]],
    transitions: Mapping[tuple[str, str], int],
    new_share: Mapping[tuple[str, str], float | None],
) -> str:
    """The text of every family for ``statuses`` (``migration_status`` documents, gates evaluated).

    ``transitions``: (plan, action) -> count; ``new_share``: (plan, route) -> measured share or None.
    """
    rows: dict[str, list[str]] = {name: [] for name, _, _ in _FAMILIES}
    for status in sorted(statuses, key=lambda s: str(s["name"])):
        plan = str(status["name"])
        rows["facade_migration_steps"].append(f"{{{_labels(plan=plan)}}} {int(status['steps'])}")
        for phase in Phase:
            current = 1 if status["state"] == phase.value else 0
            rows["facade_migration_state"].append(f"{{{_labels(plan=plan, state=phase.value)}}} {current}")
        for route, routing in sorted(status.get("routing", {}).items()):
            rows["facade_migration_step"].append(f"{{{_labels(plan=plan, route=route)}}} {int(status['step'])}")
            rows["facade_migration_weight"].append(
                f"{{{_labels(plan=plan, route=route)}}} {_value(float(routing['to_percent']) / 100)}")
            rows["facade_migration_new_share"].append(
                f"{{{_labels(plan=plan, route=route)}}} {_value(new_share.get((plan, route)))}")
        for gate in (status.get("gates") or {}).get("results", ()):
            name = str(gate["name"])
            rows["facade_migration_gate"].append(
                f"{{{_labels(plan=plan, gate=name, result=str(gate['status']))}}} {_value(gate.get('value'))}")
            rows["facade_migration_gate_threshold"].append(
                f"{{{_labels(plan=plan, gate=name)}}} {_value(gate.get('threshold'))}")
    for (plan, action), count in sorted(transitions.items()):
        rows["facade_migration_transitions_total"].append(f"{{{_labels(plan=plan, action=action)}}} {count}")
    lines: list[str] = []
    for name, kind, help_text in _FAMILIES:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(name + row for row in rows[name])
    return "\n".join(lines) + "\n"
