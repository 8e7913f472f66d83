"""What an importer produces (``Imported``) and how it becomes ``facade.yaml`` text.

An importer never writes a file: it returns services and routes in the YAML form of
``facade.yaml`` (plain dicts, see docs/configuration.md) plus every finding located in the
source file. ``emit`` turns that into commented YAML, and ``check_emitted`` loads the text
with the facade's own config loader, so what an import writes is what ``facade validate``
accepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import ConfigError, Problem

__all__ = ["Finding", "Imported", "check_emitted", "emit", "format_finding", "unique_name"]

Finding = Problem  # severity "error" (the import fails) or "warning" (something is lost); col 0 = unknown

_NAME_BAD = re.compile(r"[^a-z0-9_-]+")


@dataclass
class Imported:
    """The result of reading one source: services and routes in facade.yaml form, in order."""

    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (comment, route mapping)
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def error(self, file: str, line: int, col: int, message: str, path: str = "") -> None:
        self.findings.append(Problem(file, line, col, path, message, "error"))

    def lost(self, file: str, line: int, col: int, message: str, path: str = "") -> None:
        self.findings.append(Problem(file, line, col, path, message, "warning"))


def format_finding(f: Finding) -> str:
    """``file:line:col: message`` (``file:line: message`` when the source gives no column)."""
    where = f"{f.file}:{f.line}" + (f":{f.col}" if f.col else "")
    what = f"{f.path}: {f.message}" if f.path else f.message
    return f"{where}: {f.severity}: {what}"


def unique_name(wanted: str, taken: set[str], *, fallback: str) -> str:
    """A facade name (``a-z0-9_-``, 1-63 chars, letter or digit at both ends) not in ``taken``; added to it."""
    base = _NAME_BAD.sub("-", wanted.lower()).strip("-_")[:55].strip("-_") or fallback
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def emit(imported: Imported, *, header: str) -> str:
    """``facade.yaml`` text: a header comment, ``services:`` and ``routes:`` (each route under a
    comment naming where it came from)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines.append("")
    if imported.services:
        lines.append(_dump({"services": imported.services}).rstrip())
    else:
        lines.append("services: {}")
    lines.append("")
    lines.append("routes:  # first match wins")
    for comment, route in imported.routes:
        lines.append(f"  # {comment}")
        block = _dump([route]).rstrip().splitlines()
        lines.extend("  " + line for line in block)
    return "\n".join(lines) + "\n"


# libyaml's emitter when PyYAML was built with it (the pure-Python one costs ~1 ms a route).
_BaseDumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Dumper(_BaseDumper):  # type: ignore[misc]
    """SafeDumper that writes a string with line breaks or tabs double-quoted (``"ok\\n"``) and never
    writes anchors: a value shared by two routes is written out twice (facade.yaml has no aliases)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: Any, value: str) -> yaml.ScalarNode:
    style = '"' if any(c in value for c in "\n\r\t") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(value: Any) -> str:
    # Flow style for the leaves (match, endpoints) keeps one route on a few lines.
    return str(
        yaml.dump(value, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=120, allow_unicode=False)
    )


def check_emitted(text: str, out_path: str) -> list[Problem]:
    """Load ``text`` as ``out_path`` with the facade's config loader; its problems (errors and warnings)."""
    from ..config import parse_config
    from ..yamlfile import YamlDocument

    try:
        doc = YamlDocument.load(text, out_path)
    except ConfigError as exc:
        return list(exc.problems)
    _, problems = parse_config(doc, env={})
    return problems
