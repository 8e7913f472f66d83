"""Core subcommands: ``serve``, ``validate``, ``routes``, ``reload``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

from .console import (
    EXIT_FAILURE,
    EXIT_INVALID,
    EXIT_OK,
    AdminClient,
    AdminError,
    add_admin_options,
    add_config_option,
    add_json_option,
    fail,
    find_config,
    print_json,
    render_table,
)

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the facade (listener + admin) from a config file")
    add_config_option(p)
    p.add_argument("--listen", metavar="HOST:PORT", help="override the config's listen address")
    p.add_argument("--admin-listen", metavar="HOST:PORT", help="override the config's admin.listen address")
    p.add_argument("--state-dir", metavar="DIR", help="override the config's state_dir (durable migration state, CA)")
    p.add_argument("--no-watch", action="store_true", help="do not reload when the config file changes")
    p.add_argument("--workers", metavar="N", help="worker processes serving clients: 1..64 or 'auto' (one per core); "
                   "overrides the config's workers (default 1)")
    p.add_argument("--log-level", default="info", metavar="LEVEL", choices=["debug", "info", "warning", "error"],
                   help="debug, info (default), warning or error")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("validate", help="check a config file (and its migration plans); exit 2 when invalid")
    add_config_option(p)
    add_json_option(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("routes", help="show the running facade's effective route table")
    add_admin_options(p)
    p.set_defaults(func=cmd_routes)

    p = sub.add_parser("reload", help="ask the running facade to reload its config file")
    add_admin_options(p)
    p.set_defaults(func=cmd_reload)


def validate_all(config_path: str) -> tuple[Any, list[Any]]:
    """Config plus, when the migration feature is present, its plans. Returns (config or None, problems)."""
    from ..config import check_config

    config, problems = check_config(config_path)
    if config is not None:
        try:
            from ..migration.plan import load_plans, weighted_routes
        except ModuleNotFoundError:
            return config, problems
        if config.migrations_dir:
            _, plan_problems = load_plans(
                config.migrations_dir,
                routes=[r.name for r in config.routes],
                services=config.backend_names,
                mesh=config.mesh is not None,
                weighted=weighted_routes(config.routes),
            )
            problems = [*problems, *plan_problems]
    return config, problems


def cmd_validate(args: argparse.Namespace) -> int:
    args.config = find_config(args.config)
    config, problems = validate_all(args.config)
    errors = [p for p in problems if p.severity == "error"]
    if args.json:
        print_json({"valid": not errors, "problems": [p.to_json() | {"text": str(p)} for p in problems]})
    else:
        for p in sorted(problems, key=lambda p: (p.file, p.line, p.col)):
            print(str(p), file=sys.stderr if p.severity == "error" else sys.stdout)
        if not errors:
            assert config is not None
            print(f"{args.config}: valid ({len(config.services)} services, {len(config.routes)} routes)")
    return EXIT_INVALID if errors else EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..config import load_config
    from ..errors import ConfigError

    args.config = find_config(args.config)
    from ..config.reading import listen_problem

    for flag, value in (("--listen", args.listen), ("--admin-listen", args.admin_listen)):
        reason = listen_problem(value) if value else None
        if reason is not None:  # it was a ValueError / OverflowError traceback at bind time
            return fail(args, f"{flag}: {reason}", EXIT_INVALID)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for p in exc.problems:
            print(str(p), file=sys.stderr)
        return EXIT_INVALID
    for w in getattr(config, "warnings", ()):
        print(str(w), file=sys.stderr)

    def overrides(c: Any) -> Any:
        if args.state_dir:
            c = replace(c, state_dir=os.path.abspath(args.state_dir))
        if args.listen or args.admin_listen:
            c = replace(
                c,
                listen=args.listen or c.listen,
                admin=replace(c.admin, listen=args.admin_listen or c.admin.listen),
            )
        return c

    args.overrides = overrides
    from ..config import parse_workers

    try:
        args.worker_count = parse_workers(args.workers if args.workers is not None else config.workers)
    except ValueError as exc:
        return fail(args, f"--workers: {exc}" if args.workers is not None else f"{args.config}: {exc}", EXIT_INVALID)
    try:
        return _run(_serve(config, args))
    except OSError as exc:
        return fail(args, f"{exc.strerror or exc}", EXIT_FAILURE)


def _run(coro: Any) -> int:
    # uvloop when present (uvicorn[standard] brings it): the hot path is I/O-bound on the loop.
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return int(asyncio.run(coro))
    return int(uvloop.run(coro))


async def _serve(config: Any, args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..features import attach_features
    from ..runtime import FacadeRuntime

    runtime = FacadeRuntime(
        config, config_path=args.config, watch_interval=None if args.no_watch else 1.0, overrides=args.overrides
    )
    attach_features(runtime, shadow_sender="process")
    runtime.install_signal_handlers(asyncio.get_running_loop())
    start: dict[str, Any] = {}
    worker_count = getattr(args, "worker_count", 1)
    if worker_count > 1:
        from ..server import bind
        from ..workers import SOCKET_ENV, WorkerPool, reserve_port

        shared = os.environ.get(SOCKET_ENV) == "shared"
        listen_sock = bind(runtime.config.listen) if shared else reserve_port(runtime.config.listen)
        host, port = listen_sock.getsockname()[:2]
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # Added last: it starts after the migration controller put the durable splits in force.
        runtime.add_feature(WorkerPool(runtime, worker_count, address, log_level=args.log_level,
                                       listen_fd=listen_sock.fileno() if shared else None))
        start = {"listen_sock": listen_sock, "serve_clients": False}
    try:
        await runtime.start(**start)
    except ConfigError as exc:  # a feature (migration plans, mesh policy) refused the config at start
        for p in exc.problems:
            print(str(p), file=sys.stderr)
        await runtime.stop()
        return EXIT_INVALID
    except RuntimeError as exc:  # a worker of --workers N did not come up (facade.workers.WorkerStartError)
        print(f"facade serve: {exc}", file=sys.stderr)
        await runtime.stop()
        return EXIT_FAILURE
    workers = f" ({worker_count} workers)" if worker_count > 1 else ""
    print(f"facade ready: listening on {runtime.url}{workers}, admin on {runtime.admin_url}", flush=True)
    await runtime.wait_stopped()
    return EXIT_OK


def cmd_routes(args: argparse.Namespace) -> int:
    data = AdminClient.from_args(args).get("/routes")
    if args.json:
        print_json(data)
        return EXIT_OK
    rows = []
    for r in data["routes"]:
        match = "; ".join(_describe_match(m) for m in r["match"])
        if "backends" in r:
            action = ", ".join(f"{b['service']} {b['weight']:g}%" for b in r["backends"])
            health = ", ".join(_describe_pool(b) for b in r["backends"])
        else:
            action, health = json.dumps(r.get("action")), ""
        step = r.get("migration", {}).get("step", "")
        rows.append((r["name"], match, action, step, health))
    print(render_table(("ROUTE", "MATCH", "BACKENDS", "STEP", "ENDPOINTS"), rows))
    return EXIT_OK


def _describe_match(m: dict[str, Any]) -> str:
    parts = []
    if "hosts" in m:
        parts.append(",".join(m["hosts"]))
    kind, value = next(iter(m["path"].items()))
    parts.append(value + ("*" if kind == "prefix" else "" if kind == "exact" else " (regex)"))
    if "methods" in m:
        parts.append("[" + ",".join(m["methods"]) + "]")
    if "headers" in m:
        parts.append("headers:" + ",".join(m["headers"]))
    return " ".join(parts)


def _describe_pool(b: dict[str, Any]) -> str:
    pool = b.get("pool") or {}
    return f"{b['service']} {pool.get('available', 0)}/{pool.get('total', 0)} up"


def cmd_reload(args: argparse.Namespace) -> int:
    try:
        data = AdminClient.from_args(args).post("/reload")
    except AdminError as exc:
        if exc.status == 422 and isinstance(exc.body, dict):
            if args.json:
                print_json(exc.body)
            else:
                fail(args, "the new config was rejected; the running config is unchanged:", EXIT_INVALID)
                for p in exc.body.get("problems", []):
                    print("  " + p.get("text", str(p)), file=sys.stderr)
            return EXIT_INVALID
        raise
    if args.json:
        print_json(data)
    else:
        state = "applied" if data.get("changed", True) else "unchanged"
        print(f"reload {state}: config version {data.get('config_version', data['version'])}")
    return EXIT_OK
