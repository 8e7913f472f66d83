"""YAML with positions: every value keeps its file:line:col so validators can point at it.

Config, migration plans and mesh policies are all read the same way:

    doc = YamlDocument.load(text, "facade.yaml")     # SafeLoader only; syntax errors -> ConfigError
    problems = Problems(doc.file)
    root = doc.root
    fields = root.fields(problems, {"listen", "routes"})  # unknown keys -> error with a did-you-mean
    listen = read_str(fields.get("listen"), problems, default="127.0.0.1:8080")
    problems.raise_if_errors()

A ``Node`` is a read-only view of one YAML node together with its field path
("routes[2].match.path") and its position.  Readers (``read_str``, ``read_duration``, ...)
never raise on bad input: they record a Problem and return the default, so one run of a
validator reports every error in the file, not just the first.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from .errors import ConfigError, Problem

__all__ = [
    "Node",
    "Problems",
    "YamlDocument",
    "parse_duration",
    "parse_size",
    "read_bool",
    "read_duration",
    "read_float",
    "read_int",
    "read_percent",
    "read_size",
    "read_str",
    "read_str_list",
]

T = TypeVar("T")

_MAP = "tag:yaml.org,2002:map"
# libyaml's parser when PyYAML was built with it (several times faster on large files); same
# SafeLoader semantics and node marks either way.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SEQ = "tag:yaml.org,2002:seq"


@dataclass
class Problems:
    """Collects problems for one file; ``raise_if_errors`` turns them into a ConfigError."""

    file: str
    items: list[Problem] = field(default_factory=list)

    def error(self, node: Node | None, message: str, *, path: str | None = None) -> None:
        self._add(node, message, "error", path)

    def warn(self, node: Node | None, message: str, *, path: str | None = None) -> None:
        self._add(node, message, "warning", path)

    def _add(self, node: Node | None, message: str, severity: str, path: str | None) -> None:
        line, col = (node.line, node.col) if node is not None else (1, 1)
        where = path if path is not None else (node.path if node is not None else "")
        self.items.append(Problem(self.file, line, col, where, message, severity))  # type: ignore[arg-type]

    def extend(self, problems: Iterable[Problem]) -> None:
        self.items.extend(problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "warning"]

    def sorted(self) -> list[Problem]:
        return sorted(self.items, key=lambda p: (p.file, p.line, p.col))

    def raise_if_errors(self) -> None:
        if self.errors:
            raise ConfigError(self.sorted())


class Node:
    """A YAML node with its field path and 1-based position."""

    __slots__ = ("_loader", "_node", "file", "path")

    def __init__(self, node: yaml.Node, loader: yaml.SafeLoader, path: str, file: str) -> None:
        self._node = node
        self._loader = loader
        self.path = path
        self.file = file

    def __repr__(self) -> str:
        return f"<Node {self.path or '<root>'} at {self.file}:{self.line}:{self.col} {self.kind}>"

    # -- position and kind -------------------------------------------------
    @property
    def line(self) -> int:
        return int(self._node.start_mark.line) + 1

    @property
    def col(self) -> int:
        return int(self._node.start_mark.column) + 1

    @property
    def kind(self) -> str:
        if isinstance(self._node, yaml.MappingNode):
            return "mapping"
        if isinstance(self._node, yaml.SequenceNode):
            return "list"
        if self._node.tag == "tag:yaml.org,2002:null":
            return "null"
        return "scalar"

    @property
    def is_mapping(self) -> bool:
        return isinstance(self._node, yaml.MappingNode)

    @property
    def is_list(self) -> bool:
        return isinstance(self._node, yaml.SequenceNode)

    @property
    def is_null(self) -> bool:
        return self.kind == "null"

    @property
    def is_scalar(self) -> bool:
        return isinstance(self._node, yaml.ScalarNode)

    # -- values --------------------------------------------------------------
    @property
    def value(self) -> Any:
        """The plain Python value (SafeLoader semantics), recursively."""
        return self._loader.construct_object(self._node, deep=True)

    def _child(self, node: yaml.Node, suffix: str) -> Node:
        return Node(node, self._loader, self.path + suffix, self.file)

    def items(self) -> list[tuple[str, Node]]:
        """Mapping entries in file order; keys are stringified."""
        if not self.is_mapping:
            return []
        out = []
        for key_node, value_node in self._node.value:
            key = str(self._loader.construct_object(key_node, deep=True))
            sep = "." if self.path else ""
            out.append((key, self._child(value_node, f"{sep}{key}")))
        return out

    def key_node(self, key: str) -> Node | None:
        """The node of a mapping *key* (for errors about the key itself)."""
        if not self.is_mapping:
            return None
        for key_node, _ in self._node.value:
            if str(self._loader.construct_object(key_node, deep=True)) == key:
                sep = "." if self.path else ""
                return self._child(key_node, f"{sep}{key}")
        return None

    def get(self, key: str) -> Node | None:
        for k, v in self.items():
            if k == key:
                return v
        return None

    def elements(self) -> list[Node]:
        if not self.is_list:
            return []
        return [self._child(n, f"[{i}]") for i, n in enumerate(self._node.value)]

    def fields(self, problems: Problems, allowed: Iterable[str], *, required: Iterable[str] = ()) -> dict[str, Node]:
        """Check that this node is a mapping with only ``allowed`` keys; return key -> node.

        Unknown keys are errors with a did-you-mean; duplicate keys are errors; missing
        ``required`` keys are errors pointing at the mapping.
        """
        allowed = list(allowed)
        if not self.is_mapping:
            problems.error(self, f"must be a mapping, got {self.kind}")
            return {}
        out: dict[str, Node] = {}
        for key, node in self.items():
            if key in out:
                problems.error(self.key_node(key) or node, "duplicate key", path=node.path)
                continue
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                msg = f"unknown field {key!r}"
                if hint:
                    msg += f"; did you mean {hint[0]!r}?"
                else:
                    msg += f" (expected one of: {', '.join(sorted(allowed))})"
                problems.error(self.key_node(key) or node, msg, path=node.path)
                continue
            out[key] = node
        for key in required:
            if key not in out and self.key_node(key) is None:
                sep = "." if self.path else ""
                problems.error(self, "is required", path=f"{self.path}{sep}{key}")
        return out

    def walk(self) -> Iterator[Node]:
        yield self
        for _key, child in self.items():  # noqa: PERF102 (a Node, not a dict: items() is its mapping view)
            yield from child.walk()
        for child in self.elements():
            yield from child.walk()


class YamlDocument:
    """One YAML document loaded with ``yaml.SafeLoader``, keeping node positions."""

    def __init__(self, root: Node, file: str, text: str) -> None:
        self.root = root
        self.file = file
        self.text = text

    @classmethod
    def load(cls, text: str, file: str) -> YamlDocument:
        loader = _SafeLoader(text)
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            message = f"invalid YAML: {exc.problem or exc.context}"
            if isinstance(exc, yaml.composer.ComposerError) and exc.problem == "but found another document":
                name = os.path.basename(file) or file
                message = (
                    f"{name} holds more than one YAML document (a second '---' at line {line}); "
                    "put everything in one document"
                )
            raise ConfigError([Problem(file, line, col, "", message)]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([Problem(file, 1, 1, "", f"invalid YAML: {exc}")]) from None
        if node is None:
            node = yaml.MappingNode(_MAP, [], start_mark=yaml.Mark(file, 0, 0, 0, None, None))
        try:
            _check_constructible(loader, node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            raise ConfigError([Problem(file, line, col, "", f"invalid YAML: {exc.problem}")]) from None
        return cls(Node(node, loader, "", file), file, text)

    @classmethod
    def read(cls, path: str) -> YamlDocument:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError([Problem(path, 1, 1, "", f"cannot read file: {exc.strerror or exc}")]) from None
        except UnicodeDecodeError as exc:
            raise ConfigError([Problem(path, 1, 1, "", f"file is not UTF-8: {exc.reason}")]) from None
        return cls.load(text, path)


def _check_constructible(loader: yaml.SafeLoader, node: yaml.Node) -> None:
    # Surface tag / anchor errors (e.g. !!python/object) at load time, with a position.
    loader.construct_object(node, deep=True)


# -- typed readers -------------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*(ms|us|µs|s|m|h))+\s*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|us|µs|s|m|h)")
_UNIT_SECONDS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# The longest duration any key takes. Without a bound "99999999999h" (or 400 digits, which is float
# infinity) passed validation and broke later: int(inf) for a Max-Age, exported manifests Kubernetes
# rejects. A year is beyond every sensible timeout, hold, interval and TTL.
MAX_DURATION = 365 * 24 * 3600.0
# The largest integer a count, limit or threshold may be: the range of Envoy's and Istio's uint32 /
# int32 fields (max_connections, max_pending_requests, tokens_per_fill...), so a value facade
# accepts also exports, and a typo of a few extra digits is caught.
MAX_INT = 2**31 - 1
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|K|M|G)?\s*$", re.IGNORECASE)
_SIZE_UNIT = {
    "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
}


def parse_duration(text: str) -> float:
    """``"1m30s"`` -> 90.0. Units: us, ms, s, m, h (a unit is required). Raises ValueError."""
    if not isinstance(text, str) or not _DURATION_RE.match(text):
        raise ValueError(f"invalid duration {text!r} (expected e.g. 250ms, 5s, 2m, 1h30m)")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
    if not seconds <= MAX_DURATION:  # also catches inf
        raise ValueError(f"duration {text!r} is too long: at most {MAX_DURATION / 3600:g}h (a year)")
    return seconds


def parse_size(value: str | int) -> int:
    """``"64KiB"`` -> 65536; plain integers are bytes. Raises ValueError."""
    if isinstance(value, bool):  # YAML's `yes`: a value error to the config reader, like any bad size
        raise ValueError(f"invalid size {value!r}")  # noqa: TRY004
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"invalid size {value!r} (expected e.g. 8192, 64KiB, 10MiB, 1GiB)")
    return int(float(m.group(1)) * _SIZE_UNIT[(m.group(2) or "b").lower()])


def read_str(node: Node | None, problems: Problems, *, default: T = None, choices: Iterable[str] | None = None) -> str | T:  # type: ignore[assignment]
    if node is None:
        return default
    value = node.value if node.is_scalar else None
    if not isinstance(value, str) or node.is_null:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and choices is None:
            return str(value)
        problems.error(node, f"must be a string, got {node.kind if not node.is_scalar else type(value).__name__}")
        return default
    if choices is not None:
        options = list(choices)
        if value not in options:
            hint = difflib.get_close_matches(value, options, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            problems.error(node, f"must be one of {', '.join(options)}, got {value!r}{extra}")
            return default
    return value


def read_bool(node: Node | None, problems: Problems, *, default: T = None) -> bool | T:  # type: ignore[assignment]
    if node is None:
        return default
    value = node.value if node.is_scalar else None
    if not isinstance(value, bool):
        problems.error(node, f"must be true or false, got {value!r}" if node.is_scalar else f"must be true or false, got {node.kind}")
        return default
    return value


def read_int(
    node: Node | None, problems: Problems, *, default: T = None, min: int | None = None, max: int | None = None  # type: ignore[assignment]
) -> int | T:
    if node is None:
        return default
    value = node.value if node.is_scalar else None
    if not isinstance(value, int) or isinstance(value, bool):
        problems.error(node, f"must be an integer, got {value!r}" if node.is_scalar else f"must be an integer, got {node.kind}")
        return default
    if (min is not None and value < min) or (max is not None and value > max):
        problems.error(node, _range_message(min, max, value))
        return default
    if not -MAX_INT <= value <= MAX_INT:
        problems.error(node, _range_message(-MAX_INT if value < 0 else None, MAX_INT if value > 0 else None, value))
        return default
    return value


def read_float(
    node: Node | None, problems: Problems, *, default: T = None, min: float | None = None, max: float | None = None  # type: ignore[assignment]
) -> float | T:
    if node is None:
        return default
    value = node.value if node.is_scalar else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        problems.error(node, f"must be a number, got {value!r}" if node.is_scalar else f"must be a number, got {node.kind}")
        return default
    if (min is not None and value < min) or (max is not None and value > max):
        problems.error(node, _range_message(min, max, value))
        return default
    return float(value)


def read_percent(node: Node | None, problems: Problems, *, default: T = None) -> float | T:  # type: ignore[assignment]
    """A percentage 0-100, written ``5``, ``0.5`` or ``"0.5%"``; returned as a number 0-100."""
    if node is None:
        return default
    value = node.value if node.is_scalar else None
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            value = float(value.strip()[:-1])
        except ValueError:
            problems.error(node, f"invalid percentage {node.value!r} (expected e.g. 5, 0.5%)")
            return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        problems.error(node, f"must be a percentage 0-100, got {node.value!r}" if node.is_scalar else f"must be a percentage, got {node.kind}")
        return default
    if not 0 <= value <= 100:
        problems.error(node, f"must be 0-100, got {value:g}")
        return default
    return float(value)


def read_duration(
    node: Node | None, problems: Problems, *, default: T = None, min: float | None = None  # type: ignore[assignment]
) -> float | T:
    """A duration string (``250ms``, ``5s``, ``2m``) -> seconds."""
    if node is None:
        return default
    value = node.value if node.is_scalar else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        problems.error(node, f"duration needs a unit, e.g. {value}s")
        return default
    try:
        seconds = parse_duration(value)  # type: ignore[arg-type]
    except ValueError as exc:
        problems.error(node, str(exc))
        return default
    if min is not None and seconds < min:
        problems.error(node, f"must be at least {min:g}s, got {value}")
        return default
    return seconds


def read_size(node: Node | None, problems: Problems, *, default: T = None) -> int | T:  # type: ignore[assignment]
    if node is None:
        return default
    value = node.value if node.is_scalar else None
    try:
        return parse_size(value)  # type: ignore[arg-type]
    except ValueError as exc:
        problems.error(node, str(exc))
        return default


def read_str_list(node: Node | None, problems: Problems, *, default: T = None, allow_scalar: bool = True) -> list[str] | T:  # type: ignore[assignment]
    """A list of strings; a single string is accepted as a one-element list when ``allow_scalar``."""
    if node is None:
        return default
    if node.is_scalar and allow_scalar and isinstance(node.value, str):
        return [node.value]
    if not node.is_list:
        problems.error(node, f"must be a list of strings, got {node.kind}")
        return default
    out = []
    for element in node.elements():
        s = read_str(element, problems)
        if s is not None:
            out.append(s)
    return out


def _range_message(lo: float | None, hi: float | None, value: float) -> str:
    if lo is None and hi == MAX_INT or lo == -MAX_INT and hi is None:
        return f"must be at most {MAX_INT} in size, got {value}"
    if lo is not None and hi is not None:
        return f"must be {lo:g}-{hi:g}, got {value:g}"
    if lo is not None:
        return f"must be at least {lo:g}, got {value:g}"
    return f"must be at most {hi:g}, got {value:g}"
