"""Response diffing for shadow traffic: ignore rules, field-level JSON diffs, noise learning, redaction, a ring.

Pure and in-process; the shadow sender captures both responses and calls ``diff_responses``.

    ignore = IgnoreRules.parse(["$.generated_at", "$.items[*].etag", "headers.date"])
    result = diff_responses(primary, candidate, ignore=ignore, noise=noise_model.paths("catalog"))
    result.differs, [str(d) for d in result.differences]       # ['$.price: "19.99" != 19.99']

Rules (for ``ignore``, ``noise`` and redacted ``fields``) are a useful JSONPath subset, each naming a
subtree that is skipped: ``$`` (the whole JSON body), ``.key``, ``['key']``, ``.*`` (any key), ``[n]``,
``[*]`` (any index), ``..key`` (that key at any depth); plus ``headers.<name>``, ``status`` and ``body``.

Noise learning follows Twitter's Diffy: send the request to the old backend twice; whatever differs
between two old responses (timestamps, request ids, random order) is noise for that route, and is
excluded from primary-vs-candidate diffs and reported as suppressed instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import unquote_plus

__all__ = [
    "DEFAULT_COMPARE_HEADERS",
    "DEFAULT_REDACT_HEADERS",
    "MISSING",
    "REDACTED",
    "DiffResult",
    "DiffRing",
    "DiffSample",
    "FieldDiff",
    "IgnoreRules",
    "NoiseModel",
    "Redaction",
    "ResponseSample",
    "describe",
    "diff_responses",
    "format_location",
    "learn_noise",
    "redact",
]

DEFAULT_COMPARE_HEADERS = ("content-type",)
DEFAULT_REDACT_HEADERS = ("authorization", "cookie", "set-cookie", "proxy-authorization")
DEFAULT_MAX_DIFFERENCES = 100
REDACTED = "[redacted]"

# A location is a root ("$", "headers", "status", "body") followed by keys (str) and indices (int).
Location = tuple[str | int, ...]
Kind = Literal["changed", "type", "added", "removed"]


class _Missing:
    """The value of a field that one side does not have (one instance, ``MISSING``; compare with ``is``)."""

    def __repr__(self) -> str:
        return "(missing)"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


# -- samples -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseSample:
    """A captured response: status, headers (a mapping or (name, value) pairs; names are lower-cased),
    body (possibly only a prefix of it: ``truncated``)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    truncated: bool = False

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]] = (),
        body: bytes = b"",
        truncated: bool = False,
    ) -> None:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "headers", tuple((_text(k).lower(), _text(v)) for k, v in pairs))
        object.__setattr__(self, "body", bytes(body))
        object.__setattr__(self, "truncated", truncated)

    def header(self, name: str) -> str | None:
        """All values of a header joined with ", " (RFC 9110 field combination), or ``None``."""
        name = name.lower()
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


# -- rules -------------------------------------------------------------------------------------

# ("key", name) | ("anykey", None) | ("index", n) | ("anyindex", None) | ("descend", name)
_Segment = tuple[str, str | int | None]
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BARE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_DOT_KEY = re.compile(r"^[^\s\[\]'\".]+$")  # what ``.key`` accepts; anything else needs ['key']


@dataclass(frozen=True, slots=True)
class _Rule:
    text: str
    root: str  # "$" | "headers" | "status" | "body"
    segments: tuple[_Segment, ...]

    def covers(self, location: Location) -> bool:
        """True when ``location`` is this rule's node or inside its subtree."""
        root = location[0]
        if self.root == "body":
            return root in ("body", "$")
        if root != self.root:
            return False
        return _match_prefix(self.segments, 0, location, 1)


def _match_prefix(pattern: tuple[_Segment, ...], pi: int, location: Location, li: int) -> bool:
    if pi == len(pattern):
        return True
    if li == len(location):
        return False
    kind, value = pattern[pi]
    here = location[li]
    if kind == "descend":
        return any(
            isinstance(location[j], str) and location[j] == value and _match_prefix(pattern, pi + 1, location, j + 1)
            for j in range(li, len(location))
        )
    if kind == "key":
        ok = isinstance(here, str) and here == value
    elif kind == "anykey":
        ok = isinstance(here, str)
    elif kind == "index":
        ok = isinstance(here, int) and here == value
    else:  # anyindex
        ok = isinstance(here, int)
    return ok and _match_prefix(pattern, pi + 1, location, li + 1)


def _parse_rule(text: str) -> _Rule:
    def bad(reason: str) -> ValueError:
        return ValueError(f"bad rule {text!r}: {reason}")

    if not isinstance(text, str) or not text:
        raise ValueError(f"bad rule {text!r}: empty")
    if text in ("status", "body"):
        return _Rule(text, text, ())
    if text.startswith("headers."):
        name = text[len("headers."):]
        if not _HEADER_NAME.match(name):
            raise bad("expected headers.<header-name>")
        return _Rule(text, "headers", (("key", name.lower()),))
    if not text.startswith("$"):
        raise bad("expected a JSON path starting with '$' (e.g. $.generated_at), headers.<name>, status or body")
    segments: list[_Segment] = []
    i, n = 1, len(text)
    while i < n:
        if text.startswith("..", i):
            j = i + 2
            while j < n and text[j] not in ".[":
                j += 1
            name = text[i + 2:j]
            if not _DOT_KEY.match(name) or name == "*":
                raise bad(f"'..' needs a key name at column {i + 1}")
            segments.append(("descend", name))
            i = j
        elif text[i] == ".":
            j = i + 1
            while j < n and text[j] not in ".[":
                j += 1
            name = text[i + 1:j]
            if not _DOT_KEY.match(name):
                raise bad(f"expected a key after '.' at column {i + 1} (use ['...'] for unusual keys)")
            segments.append(("anykey", None) if name == "*" else ("key", name))
            i = j
        elif text[i] == "[":
            close = _bracket(text, i)
            if close < 0:
                raise bad(f"unclosed '[' at column {i + 1}")
            inner = text[i + 1:close]
            if inner == "*":
                segments.append(("anyindex", None))
            elif inner.isdigit():
                segments.append(("index", int(inner)))
            elif len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
                segments.append(("key", re.sub(r"\\(.)", r"\1", inner[1:-1], flags=re.DOTALL)))
            else:
                raise bad(f"expected [*], [n] or ['key'] at column {i + 1}, got [{inner}]")
            i = close + 1
        else:
            raise bad(f"unexpected {text[i]!r} at column {i + 1}")
    return _Rule(text, "$", tuple(segments))


def _bracket(text: str, start: int) -> int:
    """Index of the ``]`` closing the bracket at ``start`` (quotes may hold ``]``), or -1."""
    i = start + 1
    quote = text[i] if i < len(text) and text[i] in "'\"" else None
    if quote is None:
        return text.find("]", i)
    i += 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i + 1 if i + 1 < len(text) and text[i + 1] == "]" else -1
        i += 1
    return -1


@dataclass(frozen=True, slots=True)
class IgnoreRules:
    """Validated rules naming what a diff skips (or, as ``noise``, reports as suppressed)."""

    rules: tuple[_Rule, ...] = ()

    @classmethod
    def parse(cls, texts: Iterable[str]) -> IgnoreRules:
        """Parse rules; raises ``ValueError`` naming the first bad one."""
        if isinstance(texts, str):
            raise TypeError(f"expected a list of rules, got the string {texts!r}")
        return cls(tuple(_parse_rule(t) for t in texts))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __repr__(self) -> str:
        return f"IgnoreRules({[r.text for r in self.rules]!r})"

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(r.text for r in self.rules)

    def covers(self, location: Location) -> bool:
        return any(rule.covers(location) for rule in self.rules)


@functools.lru_cache(maxsize=256)
def _noise_rules(paths: frozenset[str]) -> IgnoreRules:
    return IgnoreRules.parse(sorted(paths))


# -- results -----------------------------------------------------------------------------------


def format_location(location: Location, *, generic: bool = False) -> str:
    """``$.items[0].etag`` (or ``$.items[*].etag`` when ``generic``), ``headers.date``, ``status``, ``body``."""
    root, rest = location[0], location[1:]
    if root == "headers":
        return f"headers.{rest[0]}"
    if root != "$":
        return str(root)
    out = ["$"]
    for part in rest:
        if isinstance(part, int):
            out.append("[*]" if generic else f"[{part}]")
        elif _BARE_KEY.match(part) and part != "*":
            out.append(f".{part}")
        else:
            escaped = part.replace("\\", "\\\\").replace("'", "\\'")
            out.append(f"['{escaped}']")
    return "".join(out)


def _show(value: Any, limit: int = 200) -> str:
    if value is MISSING:
        return "(missing)"
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class FieldDiff:
    """One difference: where, what each side had (``MISSING`` if absent), and what kind it is."""

    path: str
    primary: Any
    candidate: Any
    kind: Kind = "changed"
    location: Location = field(default=(), compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.path}: {_show(self.primary)} != {_show(self.candidate)}"

    @property
    def generic_path(self) -> str:
        """The path with array indices as ``[*]``: the form noise is learned and stored in."""
        return format_location(self.location, generic=True) if self.location else self.path

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "primary": None if self.primary is MISSING else self.primary,
            "candidate": None if self.candidate is MISSING else self.candidate,
            "text": str(self),
        }


@dataclass(frozen=True, slots=True)
class DiffResult:
    """``differs`` if anything outside ignore rules and noise differs; ``differences`` lists up to the limit
    (``omitted`` more); ``noise_suppressed`` names the noise paths that did differ and were excused."""

    differs: bool
    differences: tuple[FieldDiff, ...] = ()
    noise_suppressed: tuple[str, ...] = ()
    body_compared_as: Literal["json", "bytes", "ignored"] = "bytes"
    omitted: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "differs": self.differs,
            "differences": [d.to_json() for d in self.differences],
            "noise_suppressed": list(self.noise_suppressed),
            "body_compared_as": self.body_compared_as,
            "omitted": self.omitted,
        }


# -- diffing -----------------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"  # JSON has one number type: 1 and 1.0 are the same value
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _looks_like_json(sample: ResponseSample) -> bool:
    if sample.truncated:
        return False
    content_type = (sample.header("content-type") or "").lower()
    return "json" in content_type or sample.body.lstrip()[:1] in (b"{", b"[")


def _parse_json_body(sample: ResponseSample) -> tuple[bool, Any]:
    if not _looks_like_json(sample):
        return False, None
    try:
        return True, json.loads(sample.body)
    except (ValueError, RecursionError):
        return False, None


class _Collector:
    def __init__(self, ignore: IgnoreRules, noise: IgnoreRules, limit: int) -> None:
        self.ignore = ignore
        self.noise = noise
        self.limit = limit
        self.differences: list[FieldDiff] = []
        self.omitted = 0
        self.suppressed: dict[str, None] = {}  # ordered set

    def skip(self, location: Location) -> bool:
        """True (and noted, for noise) when the location is excused from comparison."""
        if self.ignore.covers(location):
            return True
        if self.noise and self.noise.covers(location):
            self.suppressed[format_location(location, generic=True)] = None
            return True
        return False

    def add(self, location: Location, primary: Any, candidate: Any, kind: Kind) -> None:
        if len(self.differences) >= self.limit:
            self.omitted += 1
            return
        self.differences.append(FieldDiff(format_location(location), primary, candidate, kind, location))


def _diff_json(primary: Any, candidate: Any, out: _Collector) -> None:
    # Iterative depth-first walk (JSON can nest deeper than Python's recursion limit), children pushed
    # in reverse so differences come out in document order.
    stack: list[tuple[Location, Any, Any]] = [(("$",), primary, candidate)]
    while stack:
        location, a, b = stack.pop()
        if out.skip(location):
            continue
        if a is MISSING or b is MISSING:
            out.add(location, a, b, "added" if a is MISSING else "removed")
            continue
        ta, tb = _json_type(a), _json_type(b)
        if ta != tb:
            out.add(location, a, b, "type")
        elif ta == "object":
            keys = list(a) + [k for k in b if k not in a]
            stack.extend((location + (k,), a.get(k, MISSING), b.get(k, MISSING)) for k in reversed(keys))
        elif ta == "array":
            length = max(len(a), len(b))
            stack.extend(
                (location + (i,), a[i] if i < len(a) else MISSING, b[i] if i < len(b) else MISSING)
                for i in reversed(range(length))
            )
        elif a != b and not (_is_nan(a) and _is_nan(b)):  # json.loads accepts NaN; it equals itself here
            out.add(location, a, b, "changed")


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _digest(body: bytes) -> str:
    return f"sha256:{hashlib.sha256(body).hexdigest()[:16]} ({len(body)} bytes)"


def diff_responses(
    primary: ResponseSample,
    candidate: ResponseSample,
    *,
    ignore: IgnoreRules = IgnoreRules(),
    compare_headers: Collection[str] = DEFAULT_COMPARE_HEADERS,
    noise: Collection[str] = (),
    max_differences: int = DEFAULT_MAX_DIFFERENCES,
) -> DiffResult:
    """Compare two responses: status, ``compare_headers``, and the body (JSON field by field when both
    parse, else by SHA-256). ``ignore`` paths are skipped silently; ``noise`` paths (learned) are skipped
    and reported in ``noise_suppressed`` when they differed."""
    out = _Collector(ignore, _noise_rules(frozenset(noise)) if noise else IgnoreRules(), max_differences)
    if primary.status != candidate.status and not out.skip(("status",)):
        out.add(("status",), primary.status, candidate.status, "changed")
    for name in dict.fromkeys(h.lower() for h in compare_headers):
        a, b = primary.header(name), candidate.header(name)
        if a != b and not out.skip(("headers", name)):
            kind: Kind = "added" if a is None else "removed" if b is None else "changed"
            out.add(("headers", name), MISSING if a is None else a, MISSING if b is None else b, kind)
    mode: Literal["json", "bytes", "ignored"]
    if ignore.covers(("body",)) or ignore.covers(("$",)):
        mode = "ignored"
    elif not noise and primary.body == candidate.body:
        # The common case of a healthy migration: the same bytes cannot differ field by field, so one
        # parse names the mode (without noise paths, skipping a location has no effect to report).
        both = _looks_like_json(primary) and _looks_like_json(candidate)
        mode = "json" if both and _parse_json_body(primary)[0] else "bytes"
    else:
        ok_a, doc_a = _parse_json_body(primary)
        ok_b, doc_b = _parse_json_body(candidate)
        if ok_a and ok_b:
            mode = "json"
            _diff_json(doc_a, doc_b, out)
        else:
            mode = "bytes"
            if primary.body != candidate.body and not out.skip(("body",)):
                out.add(("body",), _digest(primary.body), _digest(candidate.body), "changed")
    return DiffResult(
        differs=bool(out.differences),
        differences=tuple(out.differences),
        noise_suppressed=tuple(out.suppressed),
        body_compared_as=mode,
        omitted=out.omitted,
    )


# -- noise -------------------------------------------------------------------------------------


def learn_noise(
    primary_a: ResponseSample,
    primary_b: ResponseSample,
    *,
    compare_headers: Collection[str] = DEFAULT_COMPARE_HEADERS,
) -> set[str]:
    """The paths that differ between two responses of the OLD backend to the same request: noise.

    Array indices become ``[*]``: a timestamp in every item is noisy in every item.
    """
    result = diff_responses(primary_a, primary_b, compare_headers=compare_headers, max_differences=10_000)
    return {d.generic_path for d in result.differences}


class NoiseModel:
    """Learned noise paths per route, bounded (``max_paths`` a route, ``max_routes`` routes)."""

    def __init__(self, *, max_paths: int = 256, max_routes: int = 1024) -> None:
        self.max_paths = max_paths
        self.max_routes = max_routes
        self._paths: dict[str, set[str]] = {}
        self.dropped: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"NoiseModel(routes={len(self._paths)}, max_paths={self.max_paths})"

    def learn(self, route: str, primary_a: ResponseSample, primary_b: ResponseSample, *,
              compare_headers: Collection[str] = DEFAULT_COMPARE_HEADERS) -> frozenset[str]:
        """Add what differs between two old responses; returns the paths that were new."""
        return self.add(route, learn_noise(primary_a, primary_b, compare_headers=compare_headers))

    def add(self, route: str, paths: Iterable[str]) -> frozenset[str]:
        """Add noise paths (validated as rules); past the bound they are counted in ``dropped``."""
        wanted = [p for p in paths]
        IgnoreRules.parse(wanted)
        known = self._paths.get(route)
        if known is None:
            if len(self._paths) >= self.max_routes:
                self.dropped[route] = self.dropped.get(route, 0) + len(wanted)
                return frozenset()
            known = self._paths[route] = set()
        added = set()
        for path in wanted:
            if path in known:
                continue
            if len(known) >= self.max_paths:
                self.dropped[route] = self.dropped.get(route, 0) + 1
                continue
            known.add(path)
            added.add(path)
        return frozenset(added)

    def paths(self, route: str) -> frozenset[str]:
        return frozenset(self._paths.get(route, ()))

    def to_json(self) -> dict[str, Any]:
        return {route: {"paths": sorted(paths), "dropped": self.dropped.get(route, 0)}
                for route, paths in sorted(self._paths.items())}


# -- redaction ---------------------------------------------------------------------------------


def _field_rule(text: str) -> str:
    """A plain field name means that key anywhere in the body."""
    return text if text.startswith("$") else f"$..{text}"


def _redact_value(value: Any, location: Location, rules: IgnoreRules) -> Any:
    if rules.covers(location):
        return REDACTED
    if isinstance(value, dict):
        return {k: _redact_value(v, location + (k,), rules) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v, location + (i,), rules) for i, v in enumerate(value)]
    return value


@dataclass(frozen=True, slots=True)
class Redaction:
    """Which headers and JSON fields never leave the process in a stored sample."""

    headers: frozenset[str] = frozenset(DEFAULT_REDACT_HEADERS)
    fields: IgnoreRules = IgnoreRules()
    query_params: frozenset[str] = frozenset()  # plain field names also redact query parameters of that name

    @classmethod
    def of(cls, *, headers: Iterable[str] = DEFAULT_REDACT_HEADERS, fields: Iterable[str] = ()) -> Redaction:
        """``fields`` are JSON paths (``$.user.password``) or plain key names (``password``: at any depth in
        the body, and as a query parameter of the request target)."""
        names = list(fields)
        return cls(
            frozenset(h.lower() for h in headers),
            IgnoreRules.parse([_field_rule(f) for f in names]),
            frozenset(f for f in names if not f.startswith("$")),
        )

    def target(self, target: str) -> str:
        """The request target with the values of redacted query parameters replaced."""
        path, sep, query = target.partition("?")
        if not sep or not self.query_params:
            return target
        parts = []
        for pair in query.split("&"):
            name, eq, _ = pair.partition("=")
            parts.append(f"{name}={REDACTED}" if eq and unquote_plus(name) in self.query_params else pair)
        return f"{path}?{'&'.join(parts)}"

    def sample(self, sample: ResponseSample) -> ResponseSample:
        headers = [(k, REDACTED if k in self.headers else v) for k, v in sample.headers]
        body = sample.body
        if self.fields:
            ok, doc = _parse_json_body(sample)
            if ok:
                body = json.dumps(_redact_value(doc, ("$",), self.fields), ensure_ascii=False).encode()
        return ResponseSample(sample.status, headers, body, sample.truncated)

    def difference(self, diff: FieldDiff) -> FieldDiff:
        location = diff.location
        if not location:
            return diff
        if location[0] == "headers":
            if location[1] in self.headers:
                return replace(diff, primary=_mask(diff.primary), candidate=_mask(diff.candidate))
            return diff
        if location[0] == "$" and self.fields:
            return replace(
                diff,
                primary=_redact_value(diff.primary, location, self.fields) if diff.primary is not MISSING else MISSING,
                candidate=(_redact_value(diff.candidate, location, self.fields)
                           if diff.candidate is not MISSING else MISSING),
            )
        return diff

    def result(self, result: DiffResult) -> DiffResult:
        return replace(result, differences=tuple(self.difference(d) for d in result.differences))


def _mask(value: Any) -> Any:
    return MISSING if value is MISSING else REDACTED


def redact(
    sample: ResponseSample,
    *,
    headers: Iterable[str] = DEFAULT_REDACT_HEADERS,
    fields: Iterable[str] = (),
) -> ResponseSample:
    """A copy of ``sample`` with the given headers' values and JSON body fields replaced by ``[redacted]``.

    Non-JSON bodies are kept as they are: field names mean nothing there.
    """
    return Redaction.of(headers=headers, fields=fields).sample(sample)


# -- the ring of recent diffs ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiffSample:
    """One shadow comparison that differed, as kept for ``GET /diffs`` and ``facade diffs``."""

    route: str
    step: str
    method: str
    target: str  # path and query as sent (query values of redacted field names are masked in the ring)
    primary_status: int
    candidate_status: int
    result: DiffResult
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": round(self.at, 3),
            "route": self.route,
            "step": self.step,
            "request": f"{self.method} {self.target}",
            "status": {"primary": self.primary_status, "candidate": self.candidate_status},
            **self.result.to_json(),
        }


class DiffRing:
    """Recent diff samples per route, newest last, redacted on the way in; bounded in routes and samples."""

    def __init__(self, maxlen: int = 200, *, max_routes: int = 256, redaction: Redaction | None = None) -> None:
        if maxlen <= 0 or max_routes <= 0:
            raise ValueError("DiffRing bounds must be positive")
        self.maxlen = maxlen
        self.max_routes = max_routes
        self.redaction = redaction if redaction is not None else Redaction()
        self._rings: OrderedDict[str, deque[DiffSample]] = OrderedDict()
        self._seen: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"DiffRing(maxlen={self.maxlen}, routes={len(self._rings)})"

    def __len__(self) -> int:
        return sum(len(ring) for ring in self._rings.values())

    def add(self, sample: DiffSample) -> None:
        stored = replace(sample, target=self.redaction.target(sample.target),
                         result=self.redaction.result(sample.result))
        ring = self._rings.get(sample.route)
        if ring is None:
            if len(self._rings) >= self.max_routes:
                evicted, _ = self._rings.popitem(last=False)  # the route that went quiet longest
                self._seen.pop(evicted, None)
            ring = self._rings[sample.route] = deque(maxlen=self.maxlen)
        self._rings.move_to_end(sample.route)
        ring.append(stored)
        self._seen[sample.route] = self._seen.get(sample.route, 0) + 1

    def routes(self) -> list[str]:
        return sorted(self._rings)

    def samples(self, route: str, limit: int | None = None) -> list[DiffSample]:
        """Newest first."""
        ring = self._rings.get(route, ())
        newest: Iterator[DiffSample] = reversed(ring)
        out = list(newest)
        return out if limit is None else out[:limit]

    def to_json(self, route: str, limit: int = 50) -> dict[str, Any]:
        samples = self.samples(route, limit)
        return {
            "route": route,
            "kept": len(self._rings.get(route, ())),
            "seen": self._seen.get(route, 0),
            "samples": [s.to_json() for s in samples],
        }


def describe(result: DiffResult) -> Sequence[str]:
    """Readable lines for a result, as ``facade diffs`` prints them."""
    lines = [str(d) for d in result.differences]
    if result.omitted:
        lines.append(f"... and {result.omitted} more")
    if result.noise_suppressed:
        lines.append("noise ignored: " + ", ".join(result.noise_suppressed))
    return lines
