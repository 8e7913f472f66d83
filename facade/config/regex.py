"""Checking a configured regex before it meets client input: it compiles, is not empty, and cannot backtrack
exponentially.

Envoy matches with RE2, which runs in linear time whatever the pattern; facade matches with Python's ``re``,
a backtracking engine. There ``(a+)+$`` against ``/aaaa...aaa!`` takes 2^n steps: one request with a 40-byte
path would hold the event loop (every connection of the process) for hours. Client input reaches every
route regex (path, header and query matchers, ``rewrite.regex``, CORS origins), so the patterns RE2's
guarantee would cover are refused here instead: a repeated group whose body can match the same text in
more than one way because it is made only of repeats (``(a+)+``, ``(\\w+\\s?)*``, ``(x*y*)+``), or because
its repeats can also match the characters it requires (``(/.*)*``, ``(a.*)+``). A body with a mandatory
piece its repeats cannot match (``(/[a-z]+)*``, ``(,\\d+)+``, ``(/[^/]*)*``) is unambiguous and stays allowed.
Overlapping alternatives under a repeat (``(a|ab)*``) are not detected; docs/routing.md says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable

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
            f"Python's re can): a repeated group ({nested}) can split the same text in many ways, being made only "
            "of repeats or of repeats that also match its other characters; separate them by a character the "
            "repeats cannot match (e.g. (/[a-z]+)*, (/[^/]*)*) or drop the outer repeat"
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
    """A repeated body is ambiguous when it holds a repeat (more than once) and nothing it must match exactly
    once, or when what it must match is single characters that one of its repeats can match too (``(/.*)*``:
    the ``.*`` eats the next ``/``, so the slashes of ``////...`` split between iterations in 2^n ways).

    An alternation counts as such a repeat when one of its alternatives is ambiguous itself: ``(a|b+)+``.
    """
    has_repeat = False
    required: list[tuple[Any, Any] | None] = []  # single-character items matched once; None: anything else
    absorbing: list[tuple[Any, Any]] = []  # single-character items a repeat matches many times
    for op, av in _flatten(body):
        if op in _REPEATS:
            low, high, inner = av
            if high > 1:
                has_repeat = True
                if len(inner) == 1 and inner[0][0] in _ONE_CHAR:
                    absorbing.append(inner[0])
            elif low >= 1:
                required.append(inner[0] if len(inner) == 1 and inner[0][0] in _ONE_CHAR else None)
        elif op == _c.BRANCH and any(_ambiguous(list(alternative)) for alternative in av[1]):
            has_repeat = True
        elif op != _c.AT:
            required.append((op, av) if op in _ONE_CHAR else None)
    if not has_repeat:
        return False
    if not required:
        return True
    return None not in required and any(
        all(_overlap(item, repeated) for item in required if item is not None) for repeated in absorbing
    )


_ONE_CHAR = (_c.LITERAL, _c.NOT_LITERAL, _c.ANY, _c.IN)
_SAMPLE = [chr(i) for i in range(256)]
_CATEGORIES: dict[Any, Callable[[str], bool]] = {
    _c.CATEGORY_DIGIT: str.isdigit, _c.CATEGORY_NOT_DIGIT: lambda c: not c.isdigit(),
    _c.CATEGORY_SPACE: str.isspace, _c.CATEGORY_NOT_SPACE: lambda c: not c.isspace(),
    _c.CATEGORY_WORD: lambda c: c.isalnum() or c == "_", _c.CATEGORY_NOT_WORD: lambda c: not (c.isalnum() or c == "_"),
}


def _accepts(item: tuple[Any, Any], char: str) -> bool:
    """Whether the single-character item matches ``char`` (case-sensitively; an unknown category: yes)."""
    op, av = item
    if op == _c.LITERAL:
        return char == chr(av)
    if op == _c.NOT_LITERAL:
        return char != chr(av)
    if op == _c.ANY:
        return True
    negate = False
    hit = False
    for sub, value in av:
        if sub == _c.NEGATE:
            negate = True
        elif sub == _c.LITERAL:
            hit = hit or char == chr(value)
        elif sub == _c.RANGE:
            hit = hit or value[0] <= ord(char) <= value[1]
        elif sub == _c.CATEGORY:
            test = _CATEGORIES.get(value)
            hit = hit or test is None or test(char)
        else:
            hit = True  # something this check does not model: assume it may match
    return hit != negate


def _overlap(a: tuple[Any, Any], b: tuple[Any, Any]) -> bool:
    return any(_accepts(a, c) and _accepts(b, c) for c in _SAMPLE)


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
