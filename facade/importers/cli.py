"""``facade import nginx|istio``: another proxy's routing table as a starting ``facade.yaml``.

Exit 0 when the file was written (losses are printed as ``file:line:col: not imported: ...``),
2 on any error in the input, on a loss with ``--strict``, or on bad usage; then nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

from ..cli.console import EXIT_FAILURE, EXIT_INVALID, EXIT_OK
from .emit import Imported, check_emitted, emit, format_finding

__all__ = ["register", "run_import"]


def register(sub: Any) -> None:
    p = sub.add_parser("import", help="translate an nginx or Istio config into a facade.yaml")
    kinds = p.add_subparsers(dest="import_kind", metavar="KIND")

    n = kinds.add_parser("nginx", help="nginx.conf (with its includes) -> facade.yaml")
    n.add_argument("file", metavar="FILE", help="the nginx config file (nginx.conf or a site file)")
    _common(n)
    n.set_defaults(func=cmd_import_nginx)

    i = kinds.add_parser("istio", help="VirtualService / DestinationRule / ServiceEntry YAML -> facade.yaml")
    i.add_argument("files", metavar="FILE", nargs="+", help="multi-document YAML files, as kubectl writes them")
    _common(i)
    i.set_defaults(func=cmd_import_istio)

    p.set_defaults(func=lambda args: _usage(p))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: standard output)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--strict", action="store_true", help="treat anything that cannot be imported as an error")


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_usage(sys.stderr)
    print("facade import: say what to import: nginx FILE or istio FILE...", file=sys.stderr)
    return EXIT_INVALID


def cmd_import_nginx(args: argparse.Namespace) -> int:
    from .nginx import import_nginx

    return run_import(import_nginx(args.file), [args.file], "nginx", args)


def cmd_import_istio(args: argparse.Namespace) -> int:
    from .istio import import_istio

    return run_import(import_istio(args.files), args.files, "istio", args)


def run_import(imported: Imported, sources: list[str], kind: str, args: argparse.Namespace) -> int:
    """Report findings, check the result with the config loader, write it (atomically) or nothing."""
    out_path: str | None = args.output
    if out_path and os.path.exists(out_path) and not args.force:
        print(f"facade import: {out_path} exists (use --force to overwrite it)", file=sys.stderr)
        return EXIT_INVALID
    findings = sorted(imported.findings, key=lambda f: (f.file, f.line, f.col))
    for f in findings:
        print(format_finding(f), file=sys.stderr)
    failed = bool(imported.errors) or (args.strict and bool(imported.warnings))
    if failed:
        reason = "errors" if imported.errors else "losses (--strict)"
        print(f"facade import: {len(findings)} finding(s), stopped on {reason}: nothing written", file=sys.stderr)
        return EXIT_INVALID
    header = (
        f"Imported by `facade import {kind}` from {', '.join(sources)}.\n"
        f"{len(imported.warnings)} thing(s) could not be imported: see the command's output and docs/import.md."
    )
    text = emit(imported, header=header)
    problems = check_emitted(text, out_path or "<output>")
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        print(str(p), file=sys.stderr)
    if errors:
        # The importer produced something the facade refuses: a bug of the importer, never written.
        print("facade import: the translated config does not validate: nothing written", file=sys.stderr)
        return EXIT_INVALID
    if out_path is None:
        sys.stdout.write(text)
    else:
        try:
            _write_atomically(out_path, text)
        except OSError as exc:
            print(f"facade import: cannot write {out_path}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"{out_path}: {len(imported.services)} services, {len(imported.routes)} routes", file=sys.stderr)
    return EXIT_OK


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".facade-import-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
