"""Old path vs new path: per-metric differences, whether they are significant, and a verdict in plain words.

Pure: takes the ``SideStats`` / ``DiffCounts`` telemetry produced and returns a ``Comparison``
that ``facade compare``, ``GET /compare`` and the migration journal print or serialize.

Significance rules (each is what keeps a small sample from looking like a disaster):

- error rate: a two-sided Fisher exact test when any expected cell count is below 5, else a pooled
  two-proportion z-test; significant when ``p < alpha`` AND either both sides have ``min_requests``
  or the worse side has at least ``min_events`` errors (a p-value resting on one or two failures is
  fragile: 1 failure in 40 vs 0 in 1000 gives p = 0.038, but one more success would change the story);
- latency quantile q: significant when the ratio new/old is off by at least ``latency_tolerance`` and
  both sides have ``max(min_requests, 10 / (1 - q))`` samples, i.e. ten samples in the tail
  (100 for p50, 200 for p95, 1000 for p99);
- diff rate: any differing shadow response (after ignore rules and noise) is significant: it is an
  observed difference, not a sampled estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .cli.console import render_table as _render_table
from .stats import DiffCounts, SideStats

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_LATENCY_TOLERANCE",
    "DEFAULT_MIN_EVENTS",
    "DEFAULT_MIN_REQUESTS",
    "Comparison",
    "MetricRow",
    "Outcome",
    "compare",
    "error_rate_p_value",
    "render_table",
]

DEFAULT_ALPHA = 0.05
DEFAULT_MIN_REQUESTS = 100
DEFAULT_MIN_EVENTS = 5
DEFAULT_LATENCY_TOLERANCE = 0.10

Outcome = Literal["same", "better", "worse", "insufficient"]
Direction = Literal["higher", "lower", "same"]
# Row name, quantile, and the side's value of it.
_QUANTILES: tuple[tuple[str, float, Callable[[SideStats], float | None]], ...] = (
    ("p50_ms", 0.50, lambda side: side.p50_ms),
    ("p95_ms", 0.95, lambda side: side.p95_ms),
    ("p99_ms", 0.99, lambda side: side.p99_ms),
)


@dataclass(frozen=True, slots=True)
class MetricRow:
    """One line of the report. ``abs_diff`` is new - old; ``rel_diff`` is (new - old) / old; ``ratio`` is
    new / old for latencies (what a ``latency_p99: {max_ratio: 1.25}`` gate reads)."""

    metric: str  # requests | error_rate | p50_ms | p95_ms | p99_ms | diff_rate
    old: float | None
    new: float | None
    abs_diff: float | None = None
    rel_diff: float | None = None
    p_value: float | None = None
    significant: bool = False
    direction: Direction | None = None
    note: str = ""
    ratio: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "old": self.old,
            "new": self.new,
            "abs_diff": self.abs_diff,
            "rel_diff": self.rel_diff,
            "ratio": self.ratio,
            "p_value": self.p_value,
            "significant": self.significant,
            "direction": self.direction,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Comparison:
    """The whole report: inputs, rows, an outcome for scripts and a verdict for people."""

    old: SideStats
    new: SideStats
    diffs: DiffCounts | None
    rows: tuple[MetricRow, ...]
    outcome: Outcome
    verdict: str
    alpha: float

    def row(self, metric: str) -> MetricRow:
        for row in self.rows:
            if row.metric == metric:
                return row
        raise KeyError(metric)

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "verdict": self.verdict,
            "alpha": self.alpha,
            "old": _side_json(self.old),
            "new": _side_json(self.new),
            "diffs": None if self.diffs is None else {
                "compared": self.diffs.compared,
                "differing": self.diffs.differing,
                "diff_rate": self.diffs.diff_rate,
                "noise_fields": list(self.diffs.noise_fields),
            },
            "rows": [row.to_json() for row in self.rows],
        }


def compare(
    old: SideStats,
    new: SideStats,
    diffs: DiffCounts | None = None,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_requests: int = DEFAULT_MIN_REQUESTS,
    min_events: int = DEFAULT_MIN_EVENTS,
    latency_tolerance: float = DEFAULT_LATENCY_TOLERANCE,
) -> Comparison:
    """Compare the old path with the new one; see the module docstring for the significance rules."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    rows = [
        _requests_row(old, new),
        _error_row(old, new, alpha=alpha, min_requests=min_requests, min_events=min_events),
    ]
    rows += [_latency_row(name, q, value(old), value(new), old, new, min_requests=min_requests,
                          tolerance=latency_tolerance)
             for name, q, value in _QUANTILES]
    if diffs is not None:
        rows.append(_diff_row(diffs))
    outcome, verdict = _verdict(old, new, diffs, rows, min_requests=min_requests)
    return Comparison(old=old, new=new, diffs=diffs, rows=tuple(rows), outcome=outcome, verdict=verdict, alpha=alpha)


# -- statistics --------------------------------------------------------------------------------


def error_rate_p_value(errors_a: int, requests_a: int, errors_b: int, requests_b: int) -> float | None:
    """Two-sided p-value that two error rates differ (Fisher exact for small counts, else z-test)."""
    if requests_a <= 0 or requests_b <= 0:
        return None
    if not (0 <= errors_a <= requests_a and 0 <= errors_b <= requests_b):
        raise ValueError("errors must be between 0 and the number of requests")
    total = requests_a + requests_b
    failures = errors_a + errors_b
    successes = total - failures
    smallest_expected = min(failures, successes) * min(requests_a, requests_b) / total
    if smallest_expected < 5:
        return _fisher_exact(errors_a, requests_a, errors_b, requests_b)
    pooled = failures / total
    se = math.sqrt(pooled * (1 - pooled) * (1 / requests_a + 1 / requests_b))
    z = (errors_a / requests_a - errors_b / requests_b) / se
    return math.erfc(abs(z) / math.sqrt(2))


def _fisher_exact(errors_a: int, requests_a: int, errors_b: int, requests_b: int) -> float:
    # Hypergeometric: with the margins fixed, P(x errors in group a); the two-sided p-value sums every
    # table at most as likely as the observed one (R's fisher.test convention).
    total = requests_a + requests_b
    failures = errors_a + errors_b

    def log_choose(n: int, k: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)

    denominator = log_choose(total, requests_a)

    def probability(x: int) -> float:
        return math.exp(log_choose(failures, x) + log_choose(total - failures, requests_a - x) - denominator)

    observed = probability(errors_a)
    low = max(0, requests_a - (total - failures))
    high = min(failures, requests_a)
    p = sum(pr for pr in (probability(x) for x in range(low, high + 1)) if pr <= observed * (1 + 1e-7))
    return min(1.0, p)


# -- rows --------------------------------------------------------------------------------------


def _differences(old: float | None, new: float | None) -> tuple[float | None, float | None]:
    if old is None or new is None:
        return None, None
    return new - old, ((new - old) / old if old else None)


def _direction(old: float | None, new: float | None) -> Direction | None:
    if old is None or new is None:
        return None
    return "higher" if new > old else "lower" if new < old else "same"


def _requests_row(old: SideStats, new: SideStats) -> MetricRow:
    abs_diff, rel_diff = _differences(old.requests, new.requests)
    return MetricRow("requests", old.requests, new.requests, abs_diff, rel_diff)


def _error_row(old: SideStats, new: SideStats, *, alpha: float, min_requests: int, min_events: int) -> MetricRow:
    abs_diff, rel_diff = _differences(old.error_rate, new.error_rate)
    direction = _direction(old.error_rate, new.error_rate)
    p = error_rate_p_value(old.errors, old.requests, new.errors, new.requests)
    if p is None:
        side = "old" if not old.requests else "new"
        return MetricRow("error_rate", old.error_rate, new.error_rate, note=f"no requests on {side}")
    worse_errors = new.errors if direction == "higher" else old.errors
    enough = min(old.requests, new.requests) >= min_requests or worse_errors >= min_events
    note = ""
    if p < alpha and not enough:
        note = f"p < {alpha:g} but too few requests ({min_requests} a side) or errors ({min_events}) to trust it"
    return MetricRow("error_rate", old.error_rate, new.error_rate, abs_diff, rel_diff, p,
                     significant=p < alpha and enough, direction=direction, note=note)


def _latency_row(name: str, q: float, old_v: float | None, new_v: float | None, old: SideStats, new: SideStats, *,
                 min_requests: int, tolerance: float) -> MetricRow:
    abs_diff, rel_diff = _differences(old_v, new_v)
    needed = max(min_requests, math.ceil(10 / (1 - q) - 1e-9))
    enough = min(old.requests, new.requests) >= needed
    material = rel_diff is not None and abs(rel_diff) >= tolerance
    note = "" if enough else f"needs {needed} requests a side"
    ratio = new_v / old_v if old_v and new_v is not None else None
    return MetricRow(name, old_v, new_v, abs_diff, rel_diff, None, significant=enough and material,
                     direction=_direction(old_v, new_v), note=note, ratio=ratio)


def _diff_row(diffs: DiffCounts) -> MetricRow:
    note = f"{diffs.differing} of {diffs.compared} shadowed responses differ" if diffs.compared else "no comparisons"
    if diffs.noise_fields:
        more = " ..." if len(diffs.noise_fields) > 5 else ""
        note += f"; noise ignored: {', '.join(diffs.noise_fields[:5])}{more}"
    return MetricRow("diff_rate", None, diffs.diff_rate, significant=diffs.differing > 0,
                     direction="higher" if diffs.differing else ("same" if diffs.compared else None), note=note)


# -- verdict -----------------------------------------------------------------------------------


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f} %"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _phrase(row: MetricRow, diffs: DiffCounts | None) -> str:
    word = row.direction or "different"
    if row.metric == "error_rate":
        return f"a significantly {word} error rate ({_pct(row.new)} vs {_pct(row.old)}, p={row.p_value:.2g})"
    if row.metric == "diff_rate":
        assert diffs is not None
        return f"different responses for {_pct(row.new)} of shadowed requests ({diffs.differing} of {diffs.compared})"
    ratio = row.ratio if row.ratio is not None else math.inf
    quantile = row.metric.removesuffix("_ms")
    return f"a {word} {quantile} latency ({_ms(row.new)} vs {_ms(row.old)}, x{ratio:.2f})"


def _verdict(old: SideStats, new: SideStats, diffs: DiffCounts | None, rows: list[MetricRow], *,
             min_requests: int) -> tuple[Outcome, str]:
    worse = [r for r in rows if r.significant and r.direction == "higher"]
    better = [r for r in rows if r.significant and r.direction == "lower"]
    if worse:
        return "worse", "new path has " + _join([_phrase(r, diffs) for r in worse])
    # A shadow step: the candidate only sees mirrored traffic, so the diffs are the evidence.
    shadow_only = not new.requests and diffs is not None and diffs.compared > 0
    if shadow_only:
        assert diffs is not None
        if diffs.compared < min_requests:
            return "insufficient", f"not enough shadow traffic to tell ({diffs.compared} compared, need {min_requests})"
        return "same", f"new path returns the same responses ({diffs.compared} shadowed requests, none differ)"
    for side, stats in (("new", new), ("old", old)):
        if stats.requests < min_requests:
            return "insufficient", (
                f"not enough traffic to tell ({stats.requests} requests on {side}, need {min_requests})"
            )
    if better:
        return "better", "new path looks the same or better: " + _join([_phrase(r, diffs) for r in better])
    return "same", "new path looks the same"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# -- rendering ---------------------------------------------------------------------------------


def _cell(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric == "requests":
        return f"{value:.0f}"
    if metric in ("error_rate", "diff_rate"):
        return f"{value * 100:.2f} %"
    return f"{value:.1f} ms"


def render_table(comparison: Comparison) -> str:
    """The report as a fixed-width table followed by the verdict, for ``facade compare``."""
    rows = []
    for row in comparison.rows:
        if row.abs_diff is None:
            diff = "-"
        elif row.metric in ("error_rate", "diff_rate"):
            diff = f"{row.abs_diff * 100:+.2f} pp"
        elif row.metric == "requests":
            diff = f"{row.abs_diff:+.0f}"
        else:
            diff = f"{row.abs_diff:+.1f} ms"
        relative = "-" if row.rel_diff is None else f"{row.rel_diff * 100:+.1f} %"
        p_value = "-" if row.p_value is None else f"{row.p_value:.3g}"
        significant = "yes" if row.significant else ("" if row.metric == "requests" else "no")
        rows.append([row.metric, _cell(row.metric, row.old), _cell(row.metric, row.new), diff, relative,
                     p_value, significant, row.note])
    table = _render_table(["metric", "old", "new", "diff", "relative", "p-value", "significant", "note"], rows)
    if comparison.diffs is not None and comparison.diffs.compared:
        # "requests new 0" next to "10 of 10 shadowed responses differ" reads like a contradiction.
        table += (f"\n\nnote: 'requests' counts what each side served to clients; the {comparison.diffs.compared} "
                  "shadow copies the new side answered were only compared with the old side's responses "
                  "(diff_rate), never served, so they are not counted there")
    return f"{table}\n\nverdict: {comparison.verdict}"


def _side_json(side: SideStats) -> dict[str, Any]:
    return {
        "requests": side.requests,
        "errors": side.errors,
        "error_rate": side.error_rate,
        "p50_ms": side.p50_ms,
        "p95_ms": side.p95_ms,
        "p99_ms": side.p99_ms,
    }
