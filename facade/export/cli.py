"""``facade export istio|gateway-api``: write the config (at a plan step) as Kubernetes manifests.

Everything is computed and checked before anything is written; then ``-o DIR`` is replaced in
one rename (``manifests.write_tree``), or the YAML goes to stdout. Exit codes: 0 written (warnings
on stderr), 2 bad usage / invalid config or plan / something with no safe translation, 1 I/O.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from ..cli.console import EXIT_FAILURE, EXIT_INVALID, EXIT_OK, CliError, add_config_option, find_config
from .model import (
    DEFAULT_GATEWAY,
    DEFAULT_NAMESPACE,
    ExportError,
    ExportOptions,
    Finding,
    routing_state,
    step_directory,
    step_findings,
)

__all__ = ["TARGETS", "export_documents", "register"]

Exporter = Callable[[Any, Any, ExportOptions], tuple[list[dict[str, Any]], list[Finding]]]


def _istio() -> Exporter:
    from .istio import export_istio

    return export_istio


def _gateway_api() -> Exporter:
    from .gateway_api import export_gateway_api

    return export_gateway_api


TARGETS: dict[str, Callable[[], Exporter]] = {"istio": _istio, "gateway-api": _gateway_api}
_HELP = {
    "istio": "VirtualService, DestinationRule, ServiceEntry, PeerAuthentication, AuthorizationPolicy",
    "gateway-api": "HTTPRoute (Kubernetes Gateway API)",
}


class _Usage(Exception):
    """Bad input: printed as ``facade export: message``, exit 2."""


def register(sub: Any) -> None:
    parser = sub.add_parser("export", help="write routes, migration steps and mesh policy as Istio / Gateway API "
                                           "manifests", description="Export the config as Kubernetes manifests.")
    parser.set_defaults(func=lambda args: _usage(parser))
    targets = parser.add_subparsers(dest="export_target", metavar="TARGET")
    for target, text in _HELP.items():
        p = targets.add_parser(target, help=text, description=f"Export {text}.")
        add_config_option(p)
        p.add_argument("--plan", metavar="NAME", help="the migration plan whose step to export")
        which = p.add_mutually_exclusive_group()
        which.add_argument("--step", type=int, metavar="N", help="step N of --plan (1-based; 0 = before it starts)")
        which.add_argument("--all-steps", action="store_true",
                           help="one directory per step (00-baseline, 01-..., in apply order); needs -o")
        p.add_argument("-o", "--output", metavar="DIR", help="write into DIR (replaced as a whole) instead of stdout")
        p.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="namespace of every object (default: default)")
        p.add_argument("--gateway", default=DEFAULT_GATEWAY, metavar="[NS/]NAME",
                       help="the ingress Gateway the routes attach to (default: facade)")
        p.add_argument("--service-host", action="append", default=[], metavar="SERVICE=HOST[:PORT]",
                       help="Kubernetes host (and Service port) of a facade service (default: the service name as "
                            "a short host, port 80 where a port is required)")
        p.set_defaults(func=_cmd_export, export_target=target)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_INVALID


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        files, stdout, findings = _build(args)
    except _Usage as exc:
        print(f"facade export: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except ExportError as exc:
        print(f"facade export: {args.export_target}: {exc}; nothing was written", file=sys.stderr)
        return EXIT_INVALID
    for finding in findings:
        print(f"facade export: warning: {finding}", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(stdout)
        return EXIT_OK
    try:
        from .manifests import write_tree

        write_tree(args.output, files)
    except OSError as exc:
        print(f"facade export: {exc}", file=sys.stderr)
        return EXIT_INVALID if isinstance(exc, FileExistsError) else EXIT_FAILURE
    print(f"facade export: wrote {len(files)} files to {args.output}", file=sys.stderr)
    return EXIT_OK


def _build(args: argparse.Namespace) -> tuple[dict[str, str], str, list[Finding]]:
    """Every file's text (and the stdout text), computed and validated before anything is written."""
    from ..config import load_config
    from ..errors import ConfigError

    if args.step is not None and args.plan is None:
        raise _Usage("--step needs --plan NAME")
    if args.all_steps and args.plan is None:
        raise _Usage("--all-steps needs --plan NAME")
    if args.all_steps and args.output is None:
        raise _Usage("--all-steps writes one directory per step: give -o DIR")
    if args.plan is not None and args.step is None and not args.all_steps:
        raise _Usage(f"--plan {args.plan} needs --step N or --all-steps")
    try:
        args.config = find_config(args.config)  # the one lookup order; without it a bare `export istio` crashed
        config = load_config(args.config)
    except CliError as exc:
        raise _Usage(str(exc)) from None
    except ConfigError as exc:
        raise _Usage("invalid config:\n" + "\n".join(f"  {p}" for p in exc.problems)) from None
    service_hosts: dict[str, str] = {}
    service_ports: dict[str, int] = {}
    names = [s.name for s in config.services]
    for item in args.service_host:
        service, sep, host = item.partition("=")
        host, colon, port = host.partition(":")
        if not sep or not host or (colon and not port.isdigit()):
            raise _Usage(f"--service-host {item!r}: expected SERVICE=HOST or SERVICE=HOST:PORT")
        if service not in names:
            raise _Usage(f"--service-host {item!r}: unknown service {service!r} (services: {', '.join(names)})")
        service_hosts[service] = host.lower()
        if colon:
            service_ports[service] = int(port)
    options = ExportOptions(namespace=args.namespace, gateway=args.gateway, service_hosts=service_hosts,
                            service_ports=service_ports)
    plan = _plan(config, args.plan) if args.plan is not None else None
    exporter = TARGETS[args.export_target]()
    source = os.path.basename(args.config)
    if not args.all_steps:
        step = args.step or 0
        docs, findings = exporter(config, routing_state(plan, step), options)
        findings = list(dict.fromkeys([*findings, *step_findings(plan, step)]))
        label = routing_state(plan, step).label
        text = _document(docs, args.export_target, source, plan, label)
        return {"manifests.yaml": text}, text, findings
    assert plan is not None  # --all-steps needs --plan (checked above)
    files: dict[str, str] = {}
    readme = [f"# {args.export_target} manifests for plan {plan.name} (from {source})", "",
              "Apply the directories in order; each is the whole routing state of one step.", ""]
    all_findings: list[Finding] = []
    for step in range(len(plan.steps) + 1):
        state = routing_state(plan, step)
        docs, findings = exporter(config, state, options)
        directory = step_directory(plan, step)
        files[f"{directory}/manifests.yaml"] = _document(docs, args.export_target, source, plan, state.label)
        notes = step_findings(plan, step)
        extra = "; ".join(f.message for f in notes)
        readme.append(f"- `{directory}/`: {state.label}" + (f" ({extra})" if extra else ""))
        for f in [*findings, *notes]:
            if f not in all_findings:
                all_findings.append(f)
    files["README.md"] = "\n".join(readme) + "\n"
    return files, "", all_findings


def _plan(config: Any, name: str) -> Any:
    from ..migration.plan import load_plans

    if not config.migrations_dir:
        raise _Usage(f"unknown plan {name!r}: the config names no migrations folder")
    plans, problems = load_plans(
        config.migrations_dir,
        routes=[r.name for r in config.routes],
        services=config.backend_names,
        mesh=config.mesh is not None,
    )
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise _Usage("invalid migration plans:\n" + "\n".join(f"  {p}" for p in errors))
    if name not in plans:
        known = ", ".join(sorted(plans)) or "none"
        raise _Usage(f"unknown plan {name!r} (plans in {config.migrations_dir}: {known})")
    return plans[name]


def _document(docs: list[dict[str, Any]], target: str, source: str, plan: Any, label: str) -> str:
    from .manifests import render_yaml

    where = f"plan {plan.name}, {label}" if plan is not None else "no plan (routes as configured)"
    return render_yaml(docs, header=f"facade export {target} from {source}: {where}")


def export_documents(target: str, config: Any, plan: Any, step: int, options: ExportOptions | None = None
                     ) -> tuple[list[dict[str, Any]], list[Finding]]:
    """The documents of ``target`` for ``config`` with ``plan`` on ``step`` (for tests and tools)."""
    exporter = TARGETS[target]()
    state = routing_state(plan, step)
    docs, findings = exporter(config, state, options or ExportOptions())
    return docs, list(dict.fromkeys([*findings, *step_findings(plan, step)]))
