"""``facade compare`` and ``facade diffs``: old path vs new path, and the shadow responses that differed.

    facade compare catalog                      # the route's primary vs candidate, current step
    facade compare catalog --window 5m --json   # the last five minutes, for scripts
    facade compare catalog --old monolith --new catalog --step 0:shadow
    facade diffs catalog --limit 5              # recent differing shadow responses, field by field

Both read the running facade's admin API (``GET /compare``, ``GET /diffs``). The table and the
verdict are rebuilt locally from the report's numbers with ``facade.compare`` (pure), so the CLI and
the API can never disagree.
"""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

from ..compare import compare, render_table
from ..stats import DiffCounts, SideStats
from .console import (
    EXIT_FAILURE,
    EXIT_INVALID,
    EXIT_OK,
    AdminClient,
    AdminError,
    CliError,
    add_admin_options,
    fail,
    print_json,
)

__all__ = ["cmd_compare", "cmd_diffs", "format_diffs", "register", "render_compare"]


def register(sub: Any) -> None:
    """Add ``compare`` and ``diffs`` to the ``facade`` command line."""
    p = sub.add_parser("compare", help="old vs new path of a route: requests, errors, latency, diff rate, verdict")
    p.add_argument("route", help="route name (as in the config)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", metavar="N|LABEL",
                       help="a migration step: its number as in `facade migrate plan`, or its label; "
                            "default: the route's current step")  # fmt: skip
    which.add_argument("--window", metavar="D", help="a rolling window instead of a step: 1m or 5m (or seconds)")
    p.add_argument("--old", metavar="SERVICE",
                   help="old backend (default: the `from` service of the route's migration)")  # fmt: skip
    p.add_argument("--new", metavar="SERVICE",
                   help="new backend (default: the `to` service of the route's migration)")  # fmt: skip
    add_admin_options(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("diffs", help="recent shadow responses that differed from the primary, field by field")
    p.add_argument("route", help="route name (as in the config)")
    p.add_argument("--limit", type=int, default=10, metavar="N", help="newest N samples (default 10)")
    add_admin_options(p)
    p.set_defaults(func=cmd_diffs)


def cmd_compare(args: argparse.Namespace) -> int:
    client = AdminClient.from_args(args)
    params = {"route": args.route}
    for name in ("step", "window", "old", "new"):
        value = getattr(args, name, None)
        if value:
            params[name] = value
    if not (args.old and args.new):
        # After a rollback no split is in force, but the route's plan still says who is old and new.
        plan = _plan_of(client, args.route)
        if plan is not None:
            params.setdefault("old", str(plan.get("from")))
            params.setdefault("new", str(plan.get("to")))
    try:
        report = client.get("/compare", **params)
    except AdminError as exc:
        raise CliError(flag_names(str(exc)), exc.exit_code) from None
    if args.json:
        print_json(report)
        return EXIT_OK
    try:
        print(render_compare(report))
        if isinstance(report, dict) and report.get("partial"):  # a worker's latest batch did not arrive
            print(f"partial: the latest telemetry of {', '.join(report['partial']['missing'])} is missing")
    except (KeyError, TypeError, ValueError) as exc:
        return fail(args, f"unexpected report from the admin API: {exc!r}", EXIT_FAILURE)
    return EXIT_OK


def _plan_of(client: AdminClient, route: str) -> dict[str, Any] | None:
    """The migration that moves ``route`` (the running or latest one if several do), or None."""
    try:
        body = client.get("/migrations")
    except AdminError as exc:
        if exc.status == 404:  # a facade without the migration feature
            return None
        raise
    items = body.get("migrations", []) if isinstance(body, dict) else list(body or [])
    covering = [m for m in items if isinstance(m, dict) and route in (m.get("routes") or ())]
    active = [m for m in covering if m.get("state") in ("running", "paused")]
    chosen = active or sorted(covering, key=lambda m: float(m.get("updated_at") or 0.0), reverse=True)
    return chosen[0] if chosen else None


_API_PARAMS = re.compile(r"\b(old|new|step|window|limit)=")


def flag_names(message: str) -> str:
    """The admin API names its query parameters (``old=``); the CLI's user gave flags (``--old``)."""
    return _API_PARAMS.sub(lambda m: f"--{m.group(1)}", message).replace("?route=NAME", "ROUTE")


def cmd_diffs(args: argparse.Namespace) -> int:
    if args.limit < 1:
        return fail(args, "--limit must be at least 1", EXIT_INVALID)
    try:
        report = AdminClient.from_args(args).get("/diffs", route=args.route, limit=args.limit)
    except AdminError as exc:
        raise CliError(flag_names(str(exc)), exc.exit_code) from None
    if args.json:
        print_json(report)
    else:
        print(format_diffs(report))
    return EXIT_OK


def render_compare(report: dict[str, Any]) -> str:
    """The ``GET /compare`` JSON as a heading, the comparison table and the verdict."""

    def side(data: dict[str, Any]) -> SideStats:
        return SideStats(
            requests=int(data["requests"]),
            errors=int(data["errors"]),
            p50_ms=data.get("p50_ms"),
            p95_ms=data.get("p95_ms"),
            p99_ms=data.get("p99_ms"),
        )

    raw = report.get("diffs")
    diffs = None
    if raw is not None:
        diffs = DiffCounts(int(raw["compared"]), int(raw["differing"]), tuple(raw.get("noise_fields") or ()))
    comparison = compare(side(report["old"]), side(report["new"]), diffs, alpha=float(report.get("alpha", 0.05)))
    if report.get("window_s") is not None:
        scope = f"last {report['window_s']:g} s"
    elif report.get("step"):
        # "extract-catalog step 3: weight 5" -> "step 3 of extract-catalog (weight 5)"
        labelled = re.fullmatch(r"(.+) step (\d+): (.+)", str(report["step"]))
        scope = (f"step {labelled[2]} of {labelled[1]} ({labelled[3]})" if labelled
                 else f"step {report['step']}")  # fmt: skip
    else:
        scope = "all time"
    heading = f"route {report['route']}: {report['old_backend']} (old) vs {report['new_backend']} (new), {scope}"
    return f"{heading}{fleet_line(report)}\n\n{render_table(comparison)}"


def fleet_line(report: dict[str, Any]) -> str:
    """With replicas: which instances the numbers sum, and how old each one's part is ('' when local)."""
    if report.get("scope") != "fleet":
        return ""
    parts = [f"{i['instance']} {i['requests']} req " + ("(live)" if i.get("live") else
             f"({i['age_s']:.1f} s ago)" if i.get("age_s") is not None else "(age unknown)")
             for i in report.get("instances") or []]
    error = f"\n{report['store_error']}" if report.get("store_error") else ""
    return f"\nsummed over {len(parts)} instance(s): " + ", ".join(parts) + error


def format_diffs(report: dict[str, Any]) -> str:
    """The ``GET /diffs`` JSON as readable field-level differences, newest first."""
    route = report["route"]
    samples = report.get("samples") or []
    lines = [f"route {route}: {report.get('kept', 0)} differing responses kept ({report.get('seen', 0)} seen)"]
    noise = report.get("noise_paths") or []
    if noise:
        lines.append("learned noise (ignored): " + ", ".join(noise))
    if not samples:
        lines.append("no differing shadow responses")
        return "\n".join(lines)
    for sample in samples:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(sample.get("at", 0))))
        status = sample.get("status") or {}
        lines.append("")
        lines.append(
            f"{at}  step {sample.get('step') or '-'}  {sample.get('request')}  "
            f"status {status.get('primary')} (old) / {status.get('candidate')} (new)"
        )
        for diff in sample.get("differences") or []:
            lines.append(f"  {diff.get('text') or diff.get('path')}")
        if sample.get("omitted"):
            lines.append(f"  ... and {sample['omitted']} more")
        if sample.get("noise_suppressed"):
            lines.append("  noise ignored: " + ", ".join(sample["noise_suppressed"]))
    return "\n".join(lines)
