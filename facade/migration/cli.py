"""``facade migrate ...``: list, status, plan (offline dry run) and the step actions.

Everything but ``plan`` talks to a running facade's admin API (``facade.cli.console.AdminClient``)::

    GET  /migrations                       -> {"migrations": [status, ...]}   (or a bare list)
    GET  /migrations/{name}                -> status        (see engine.migration_status)
    POST /migrations/{name}/{action}       body {force, reason, to, actor} -> status
         refusals: 404 {"error", "code": "not_found"}, 409 {"error", "code": "refused" | "conflict"},
                   409 {"error", "code": "gate_failed", "gates": {...}}  -> exit EXIT_GATE_FAILED
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any
from urllib.parse import quote

from ..cli.console import (
    EXIT_GATE_FAILED,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    AdminClient,
    AdminError,
    Progress,
    add_admin_options,
    add_config_option,
    add_json_option,
    elapsed,
    fail,
    find_config,
    print_json,
    render_table,
)
from ..errors import ConfigError, Problem
from ..yamlfile import YamlDocument
from .engine import display_step
from .plan import Plan, load_plans, parse_plan, render_plan

__all__ = ["register"]

# The admin API's refusal codes -> exit codes (the HTTP status alone cannot tell a gate from a refusal).
_CODE_EXIT = {"gate_failed": EXIT_GATE_FAILED, "not_found": EXIT_NOT_FOUND, "refused": EXIT_REFUSED,
              "conflict": EXIT_REFUSED, "unavailable": EXIT_REFUSED}
_ACTION_HELP = {
    "start": "start the plan at its first step",
    "next": "advance one step if the hold has elapsed and the gates pass (--force --reason overrides)",
    "pause": "stop progressing (routing stays as it is)",
    "resume": "continue after pause; on a pause step this is the approval that advances",
    "rollback": "go back one step, or --to N (0 = everything back on the old service)",
    "abort": "put everything back on the old service for good",
    "promote": "jump straight to 100%% on the new service (needs --force and --reason)",
    "auto": "let the controller advance after each hold and roll back on failing gates (--off: manual)",
}
# Actions whose checks --force overrides: next/resume (a step's hold and gates), promote (every remaining
# step). The engine ignores force elsewhere, so the other actions do not offer it.
_FORCEABLE = ("next", "resume", "promote")
_FINAL_STATES = ("completed", "rolled_back", "aborted")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("migrate", help="staged migrations: list, status, plan, start, next, ...",
                                   description="Drive staged migrations (plans in the migrations folder).")
    parser.set_defaults(func=lambda args: _usage(parser))
    sub = parser.add_subparsers(dest="migrate_command", metavar="ACTION")

    p = sub.add_parser("list", help="every plan with its state and current routing")
    add_admin_options(p)
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("status", help="state, routing, gate results and journal of one plan")
    p.add_argument("name")
    p.add_argument("--journal", type=int, default=10, metavar="N", help="show the last N transitions (default 10)")
    add_admin_options(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("plan", help="dry run: what each step routes where (offline; changes nothing)")
    p.add_argument("name", help="plan name, or the path of a plan file")
    p.add_argument("--plans", metavar="DIR", help="migrations folder (default: the config's migrations)")
    add_config_option(p)
    add_json_option(p)
    p.set_defaults(func=_cmd_plan)

    for action, text in _ACTION_HELP.items():
        p = sub.add_parser(action, help=text, description=text.replace("%%", "%"))
        p.add_argument("name")
        if action in _FORCEABLE:
            p.add_argument("--force", action="store_true", help="override hold and gates (needs --reason)")
        p.add_argument("--reason", default="", help="why; recorded in the journal")
        if action == "rollback":
            p.add_argument("--to", type=int, metavar="N", help="step number to go back to (0 = all on the old service)")
        if action == "auto":
            p.add_argument("--off", action="store_true", help="turn auto mode off (manual steps again)")
            p.add_argument("--wait", action="store_true",
                           help="follow the migration until it completes, rolls back or waits at a pause step")
        add_admin_options(p)
        p.set_defaults(func=_cmd_action, action=action)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_INVALID


def _actor() -> str:
    # Who did it, for the journal: an explicit $FACADE_ACTOR (CI jobs), else the login name.
    explicit = os.environ.get("FACADE_ACTOR")
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


# -- admin API commands ----------------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    try:
        body = AdminClient.from_args(args).get("/migrations")
    except AdminError as exc:
        return _fail(exc, args)
    items: list[dict[str, Any]] = body.get("migrations", []) if isinstance(body, dict) else list(body or [])
    if args.json:
        print_json({"migrations": items})
        return EXIT_OK
    rows = [(m.get("name"), m.get("state"), _step_text(m), _routing_text(m), "auto" if m.get("auto") else "manual")
            for m in items]
    print(render_table(["NAME", "STATE", "STEP", "ROUTING", "MODE"], rows))
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        body = AdminClient.from_args(args).get(f"/migrations/{quote(args.name, safe='')}")
    except AdminError as exc:
        return _fail(exc, args)
    if args.json:
        print_json(body)
        return EXIT_OK
    print(_render_status(body, journal=args.journal))
    return EXIT_OK


_ACTION_MARGIN = 10.0  # seconds an action may take beyond its checks' bound (the commit, a loaded machine)


def _cmd_action(args: argparse.Namespace) -> int:
    action = "manual" if args.action == "auto" and getattr(args, "off", False) else args.action
    force = bool(getattr(args, "force", False))
    if force and not args.reason.strip():
        return fail(args, "--force needs --reason: say why the checks are overridden", EXIT_INVALID)
    payload = {"force": force, "reason": args.reason, "to": getattr(args, "to", None), "actor": _actor()}
    try:
        client = AdminClient.from_args(args)
        path = f"/migrations/{quote(args.name, safe='')}"
        # Optimistic concurrency: act on the state this command saw. If someone else moved the plan
        # in between (a second `next` at the same moment), the facade refuses with a conflict
        # instead of advancing twice.
        seen = client.get(path)
        if isinstance(seen, dict) and isinstance(seen.get("version"), int):
            payload["version"] = seen["version"]
        # The facade answers once the step's checks (Prometheus, hooks) answered: wait as long as they may take.
        if not force and isinstance(seen, dict) and isinstance(seen.get("action_timeout"), int | float):
            client.timeout = max(client.timeout, float(seen["action_timeout"]) + _ACTION_MARGIN)
        body = client.post(f"{path}/{action}", payload)
    except AdminError as exc:
        return _fail(exc, args)
    if args.json:
        print_json(body)
        return EXIT_OK
    if isinstance(body, dict):
        for warning in body.get("warnings") or ():
            print(warning, file=sys.stderr)
    if isinstance(body, dict) and "state" in body:
        print(f"{body.get('name', args.name)}: {body.get('state')} at {_step_text(body)} -> {_routing_text(body)}")
        # The status's gates are the new step's; the transition's journal entry keeps the ones overridden.
        left = (body.get("journal") or [{}])[-1].get("gates") if force else None
        if isinstance(left, dict) and left.get("status") not in (None, "pass"):
            print(f"forced past gates that were {left['status']}: {args.reason}")
    else:
        print(f"{args.name}: {action} done")
    if action == "auto" and getattr(args, "wait", False):
        return _follow(client, path, args)
    return EXIT_OK


def _follow(client: AdminClient, path: str, args: argparse.Namespace, *, poll: float = 1.0) -> int:
    """``migrate auto --wait``: a progress line until the migration ends or needs a human.
    Exit 0 when completed, EXIT_GATE_FAILED when the controller rolled it back."""
    import time

    progress = Progress()
    since = time.monotonic()
    while True:
        status = client.get(path, journal=0)
        state = status.get("state")
        gates = status.get("gates") if isinstance(status.get("gates"), dict) else {}
        text = f"{args.name}: {state} at {_step_text(status)}"
        detail = f"gates {gates.get('status')} " if gates else ""
        if status.get("hold_left"):
            detail += f"hold {status['hold_left']:.0f}s left "
        progress.update(text, detail + elapsed(since))
        if state in _FINAL_STATES or not status.get("auto"):
            progress.done()
            if state == "completed":
                return EXIT_OK
            return fail(args, f"{state}{': ' + status['reason'] if status.get('reason') else ''}", EXIT_GATE_FAILED)
        if state == "paused" or status.get("step_kind") == "pause" or "pause" in str(status.get("step_summary")):
            progress.done()
            print(f"{args.name} waits for a human at step {status.get('step')}: "
                  f"`facade migrate resume {args.name}` approves it")  # fmt: skip
            return EXIT_OK
        time.sleep(poll)


def _fail(exc: AdminError, args: argparse.Namespace) -> int:
    body = exc.body if isinstance(exc.body, dict) else {}
    code = _CODE_EXIT.get(str(body.get("code")), exc.exit_code)
    if getattr(args, "json", False) and body:
        print_json(body)
    fail(args, str(exc), code)
    gates = body.get("gates")
    if isinstance(gates, dict) and gates.get("results") and not getattr(args, "json", False):
        print(_render_gates(gates), file=sys.stderr)
    return code


# -- rendering ----------------------------------------------------------------------------------------


def _step_text(status: dict[str, Any]) -> str:
    step, steps = status.get("step"), status.get("steps")
    if not step:
        return f"0/{steps}" if steps else "-"  # step 0: everything on the old service
    summary = status.get("step_summary")
    return f"{step}/{steps} {summary}" if summary else f"{step}/{steps}"


def _routing_text(status: dict[str, Any]) -> str:
    routing = status.get("routing") or {}
    new = status.get("to", "new")
    parts = []
    for route, r in routing.items():
        if r.get("canary"):
            text = f"{route}: canary {r['canary']} -> {new}"
        else:
            text = f"{route}: {r.get('to_percent', 0):g}% -> {new}"
        if r.get("shadow_percent"):
            text += f", shadow {r['shadow_percent']:g}%"
        parts.append(text)
    return "; ".join(parts) or "-"


def _render_gates(gates: dict[str, Any], *, step_summary: str = "") -> str:
    results = gates.get("results") or []
    if not results:
        if step_summary.startswith("pause"):
            return "gates:   none on a pause step: it waits for `facade migrate resume` (the human approval)"
        return f"gates:   {gates.get('status')} (this step has no gates)"
    rows = [(r.get("name"), r.get("status"), gate_value(r.get("name"), r.get("value")),
             gate_value(r.get("name"), r.get("threshold")), r.get("message")) for r in results]  # fmt: skip
    return f"gates: {gates.get('status')}\n" + render_table(["GATE", "STATUS", "VALUE", "LIMIT", "DETAIL"], rows)


# A gate's value is in its limit's unit (facade.migration.gates.GateResult): percent, ms, a ratio or a count.
_GATE_UNITS = {"max": "%", "max_delta": "%", "max_ms": "ms", "max_ratio": "x"}


def gate_value(name: Any, value: Any) -> str:
    """A gate value for people: rounded, with its unit (``error_rate.max_delta`` 0.1818 -> ``+0.18%``)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-" if value is None else str(value)
    metric, _, check = str(name).partition(".")
    if metric == "min_requests":
        return f"{value:.0f} req"
    if metric == "plaintext_requests":
        return f"{value:.0f}"
    if metric in ("prometheus", "webhook"):  # a query's value as is; a hook's HTTP status
        return f"{value:.4g}"
    unit = _GATE_UNITS.get(check, "")
    if unit == "%":
        sign = "+" if check == "max_delta" and value > 0 else ""
        return f"{sign}{value:.2f}%"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.4g}"


def _render_instances(status: dict[str, Any]) -> str:
    """The instances sharing the store (``state_store: postgresql://``) and the step each one routes."""
    steps = int(status.get("steps") or 0)
    rows = []
    for i in status.get("instances") or []:
        step = display_step(str(i.get("state")), int(i.get("step", 0)), steps) if i.get("state") else "-"
        current = "" if i.get("version") == status.get("version") else " (behind)"
        rows.append((i.get("instance"), i.get("admin"), f"{i.get('state')} {step}", f"{i.get('version')}{current}",
                     f"{float(i.get('seen_ago') or 0):.1f}s ago"))
    if not rows:
        return "instances: none has reported in the last seconds"
    return "instances:\n" + render_table(["INSTANCE", "ADMIN", "ROUTES", "VERSION", "SEEN"], rows)


def _render_status(status: dict[str, Any], *, journal: int) -> str:
    mode = "auto" if status.get("auto") else "manual"
    checks = f"{status.get('failures', 0)}/{status.get('threshold', '?')} failed checks"
    lines = [
        f"{status.get('name')}: {', '.join(status.get('routes', []))} from {status.get('from')} to {status.get('to')}",
        f"state:   {status.get('state')}  step {_step_text(status)}  ({mode}, {checks})",
        f"routing: {_routing_text(status)}",
    ]
    if status.get("hold_left"):
        lines.append(f"hold:    {status['hold_left']:.0f}s left")
    if status.get("reason"):
        lines.append(f"reason:  {status['reason']}")
    if status.get("store_error"):
        lines.append(f"store:   {status['store_error']}")
    if isinstance(status.get("instances"), list):
        lines.append(_render_instances(status))
    gates = status.get("gates")
    if isinstance(gates, dict):
        lines.append(_render_gates(gates, step_summary=str(status.get("step_summary") or "")))
    entries = (status.get("journal") or [])[-journal:] if journal > 0 else []
    if entries:
        lines.append("journal (steps counted as in `facade migrate plan`; 0 = all on the old service):")
        rows = [(e.get("version"), e.get("action"), e.get("actor"), f"{e.get('from_state')} {e.get('from_step')}",
                 f"{e.get('to_state')} {e.get('to_step')}", e.get("reason")) for e in entries]
        lines.append(render_table(["#", "ACTION", "ACTOR", "FROM", "TO", "REASON"], rows))
    return "\n".join(lines)


# -- offline: plan ------------------------------------------------------------------------------------


def _cmd_plan(args: argparse.Namespace) -> int:
    args.config = find_config(args.config)
    try:
        routes, services, plans_dir, mesh = _plan_context(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    plan, problems = _find_plan(args.name, args.plans or plans_dir, routes, services, mesh)
    for problem in problems:
        print(problem, file=sys.stderr)
    if plan is None:
        if any(p.severity == "error" for p in problems):
            return EXIT_INVALID
        return fail(args, f"no plan named {args.name!r} in {args.plans or plans_dir}", EXIT_NOT_FOUND)
    if args.json:
        print_json({**plan.to_json(), "source": plan.source, "content_hash": plan.content_hash,
                    "step_hashes": list(plan.step_hashes)})
    else:
        sys.stdout.write(render_plan(plan))
    return EXIT_OK


def _find_plan(
    name: str, plans_dir: str | None, routes: set[str], services: set[str], mesh: bool
) -> tuple[Plan | None, list[Problem]]:
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        try:
            doc = YamlDocument.read(name)
        except ConfigError as exc:
            return None, exc.problems
        return parse_plan(doc, routes=routes, services=services, mesh=mesh)
    if plans_dir is None:
        return None, [Problem("", 1, 1, "", "the config has no 'migrations' folder; pass --plans DIR")]
    plans, problems = load_plans(plans_dir, routes=routes, services=services, mesh=mesh)
    plan = plans.get(name)
    if plan is not None:  # only this plan's own problems matter for its dry run
        problems = [p for p in problems if p.file == plan.source]
    return plan, problems


def _plan_context(config_path: str) -> tuple[set[str], set[str], str | None, bool]:
    """Route names, service names, the migrations folder of a config file and whether it has a mesh.

    ``load_config`` already resolves ``migrations`` against the config file's folder.
    """
    from ..config import load_config

    config = load_config(config_path)
    plans_dir = os.path.abspath(config.migrations_dir) if config.migrations_dir is not None else None
    routes, services = {r.name for r in config.routes}, set(config.backend_names)
    return routes, services, plans_dir, config.mesh is not None
