"""The ``facade`` command line. Each feature module contributes its subcommands through
``register(subparsers)``; handlers take the parsed args and return an exit code
(see ``facade.console`` for the conventions)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__

__all__ = ["build_parser", "main"]

# Modules that add subcommands. Each has ``register(subparsers) -> None``.
COMMAND_MODULES = (
    "facade.commands",  # serve, validate, routes, reload
    "facade.up",  # up
    "facade.migration.cli",  # migrate ...
    "facade.telemetry_cli",  # compare, diffs
    "mesh.cli",  # mesh ...
    "facade.loadtest",  # loadtest
    "facade.importers.cli",  # import nginx|istio
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facade",
        description="Carve microservices out of a monolith behind a routing facade.",
    )
    parser.add_argument("--version", action="version", version=f"facade {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):  # feature not in this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
