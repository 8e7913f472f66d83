"""The ``facade`` command line: every subcommand, and the helpers they share.

``main`` (the ``facade`` entry point and ``python3 -m facade``) builds one argparse parser from
the modules that contribute subcommands: ``commands`` (serve, validate, routes, reload), ``up``,
``telemetry`` (compare, diffs), ``loadtest`` (with ``loadtest_facade``, the throwaway facade a
rehearsal runs), and the feature packages' own ``cli`` modules (``facade.migration.cli``,
``facade.export.cli``, ``facade.importers.cli``, ``mesh.cli``). ``console`` holds the conventions
they share: config lookup, admin calls, errors and exit codes.
"""

from .main import build_parser, iter_commands, main, render_reference, update_readme

__all__ = ["build_parser", "iter_commands", "main", "render_reference", "update_readme"]
