"""The dependency list in pyproject.toml matches what the code imports: every third-party module the
installed packages import belongs to a declared distribution, and every declared distribution is
imported, or is listed below with the reason it is needed without an import."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = ("facade", "mesh", "sample_monolith", "loadtests")

# Declared without being imported by name, and why.
NEEDED_WITHOUT_IMPORT = {
    "sniffio": "httpcore (under httpx) tries `import sniffio` on every request when it is missing",
}


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _declared() -> dict[str, set[str]]:
    """Distribution name -> the groups declaring it ("" for the main dependencies, else the extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups: dict[str, set[str]] = {}
    for requirement in project["dependencies"]:
        groups.setdefault(_name(requirement), set()).add("")
    for extra, requirements in project.get("optional-dependencies", {}).items():
        for requirement in requirements:
            groups.setdefault(_name(requirement), set()).add(extra)
    return groups


@functools.cache  # both tests read it: every file of the packages is parsed once
def _imports() -> dict[str, set[str]]:
    """Top-level third-party module -> the files importing it (callers must not change it)."""
    found: dict[str, set[str]] = {}
    for package in FIRST_PARTY:
        for path in (ROOT / package).rglob("*.py"):
            siblings = {p.stem for p in path.parent.glob("*.py")}  # locustfiles import their neighbours
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in FIRST_PARTY or top in siblings:
                        continue
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_module_comes_from_a_declared_distribution() -> None:
    declared = _declared()
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, files in _imports().items():
        names = {_name(d) for d in distributions.get(module, [])}
        assert names, f"{module} (imported by {sorted(files)}) is not installed"
        if not names & declared.keys():
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_every_declared_runtime_dependency_is_imported_or_explained() -> None:
    distributions = importlib.metadata.packages_distributions()
    imported = {_name(d) for module in _imports() for d in distributions.get(module, [])}
    runtime = {name for name, groups in _declared().items() if groups - {"test"}}
    unused = runtime - imported - set(NEEDED_WITHOUT_IMPORT)
    assert not unused, f"declared in pyproject.toml but imported nowhere: {sorted(unused)}"
