"""Checking a configured regex before it meets client input: it compiles, is not empty, and cannot backtrack
exponentially.

Envoy matches with RE2, which runs in linear time whatever the pattern; facade matches with Python's ``re``,
a backtracking engine. There ``(a+)+$`` against ``/aaaa...aaa!`` takes 2^n steps: one request with a 40-byte
path would hold the event loop (every connection of the process) for hours. Client input reaches every
route regex (path, header and query matchers, ``rewrite.regex``, CORS origins), so the patterns RE2's
guarantee would cover are refused here instead: a repeated group whose body can match the same text in
more than one way because it is made only of repeats (``(a+)+``, ``(\\w+\\s?)*``, ``(x*y*)+``). A body with a
mandatory piece between its repeats (``(/[a-z]+)*``, ``(,\\d+)+``) is unambiguous and stays allowed.
Overlapping alternatives under a repeat (``(a|ab)*``) are not detected; docs/routing.md says so.
"""

from __future__ import annotations

import re

# re's parser is the only one that knows exactly how re reads a pattern (the public API compiles only).
# It is stable within a minor Python version; tests/facade/test_config_hostile.py pins its behaviour.
from re import _constants as _c  # type: ignore[attr-defined]
from re import _parser  # type: ignore[attr-defined]
from typing import Any

__all__ = ["regex_problem"]

_REPEATS = (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT)


def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be a route regex, or None when it can."""
    if pattern == "":
        return "must not be empty (an empty regex matches nothing as a full match and everywhere as a search)"
    try:
        parsed = _parser.parse(pattern)
    except re.error as exc:
        return f"invalid regex {pattern!r}: {exc}"
    nested = _nested_repeat(list(parsed))
    if nested is not None:
        return (
            f"regex {pattern!r} can backtrack catastrophically on a hostile request (RE2, which Envoy uses, cannot; "
            f"Python's re can): a repeated group ({nested}) is made only of repeats; put a required character "
            "between them (e.g. (/[a-z]+)*) or drop the outer repeat"
        )
    return None


def _nested_repeat(items: list[tuple[Any, Any]]) -> str | None:
    """The first repeat (written back as text) whose body is only repeats, one of them unbounded-ish; else None."""
    for op, av in items:
        children: list[list[tuple[Any, Any]]] = []
        if op in _REPEATS:
            _low, high, body = av
            if high > 1 and _ambiguous(list(body)):
                return _show(op, av)
            children.append(list(body))
        elif op == _c.SUBPATTERN:
            children.append(list(av[-1]))
        elif op == _c.BRANCH:
            children.extend(list(b) for b in av[1])
        elif op in (_c.ASSERT, _c.ASSERT_NOT):
            children.append(list(av[1]))
        elif op == _c.ATOMIC_GROUP:
            children.append(list(av))
        elif op == _c.GROUPREF_EXISTS:
            children.extend(list(b) for b in av[1:] if b is not None)
        for child in children:
            found = _nested_repeat(child)
            if found is not None:
                return found
    return None


def _ambiguous(body: list[tuple[Any, Any]]) -> bool:
    """A repeated body is ambiguous when it holds a repeat (more than once) and nothing it must match exactly once.

    An alternation counts as such a repeat when one of its alternatives is ambiguous itself: ``(a|b+)+``.
    """
    has_repeat = required = False
    for op, av in _flatten(body):
        if op in _REPEATS:
            has_repeat = has_repeat or av[1] > 1
            required = required or (av[0] >= 1 and av[1] == 1)
        elif op == _c.BRANCH and any(_ambiguous(list(alternative)) for alternative in av[1]):
            has_repeat = True
        elif op != _c.AT:
            required = True
    return has_repeat and not required


def _flatten(items: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    # A plain group is transparent: (?:(a+))+ is (a+)+.
    out: list[tuple[Any, Any]] = []
    for op, av in items:
        if op == _c.SUBPATTERN:
            out.extend(_flatten(list(av[-1])))
        else:
            out.append((op, av))
    return out


def _show(op: Any, av: Any) -> str:
    low, high, _ = av
    if (low, high) == (0, _c.MAXREPEAT):
        return "...*"
    if (low, high) == (1, _c.MAXREPEAT):
        return "...+"
    return f"...{{{low},{'' if high == _c.MAXREPEAT else high}}}"
