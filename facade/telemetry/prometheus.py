"""Prometheus text exposition format 0.0.4 for the recorder's series.

Names follow the OpenTelemetry HTTP semantic conventions as Prometheus exports them
(``http.server.request.duration`` -> ``http_server_request_duration_seconds``). The duration
histograms expose a fixed coarse set of ``le`` boundaries derived from the fine log-linear buckets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

from .histogram import LogLinearHistogram
from .series import DiffSeries, RequestSeries

__all__ = ["CONTENT_TYPE", "escape_label_value", "render_exposition"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def escape_label_value(value: str) -> str:
    """Escape a label value as the text format requires: backslash, double quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs)


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return repr(value)


def _header(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")


def _histogram(
    lines: list[str], name: str, labels: tuple[tuple[str, str], ...], counts: dict[int, int], total: int, sum_s: float
) -> None:
    base = _labels(labels)
    for le, cumulative in LogLinearHistogram(counts).cumulative_buckets():
        le_text = "+Inf" if le == math.inf else repr(le)
        lines.append(f'{name}_bucket{{{base},le="{le_text}"}} {cumulative}')
    lines.append(f"{name}_sum{{{base}}} {_number(sum_s)}")
    lines.append(f"{name}_count{{{base}}} {total}")


def render_exposition(
    requests: Iterable[RequestSeries], diffs: Iterable[DiffSeries], faults: Mapping[tuple[str, str, str], int] | None = None
) -> str:
    """The whole ``/metrics`` body: request histograms and counters, then shadow comparison counters."""
    series = sorted(requests, key=lambda s: (s.route, s.backend, s.step, s.method, s.status_class))
    diff_series = sorted(diffs, key=lambda d: (d.route, d.step))
    lines: list[str] = []

    _header(lines, "http_server_request_duration_seconds", "histogram",
            "Duration of HTTP requests through the facade, from the first request byte to the last response byte.")
    for s in series:
        _histogram(lines, "http_server_request_duration_seconds", s.labels(), s.hist, s.count, s.duration_sum)

    _header(lines, "http_client_request_duration_seconds", "histogram",
            "Duration of the facade's requests to the backend, until the response headers arrived.")
    for s in series:
        if s.upstream_count:
            _histogram(lines, "http_client_request_duration_seconds", s.labels(), s.upstream_hist,
                       s.upstream_count, s.upstream_sum)

    counters: tuple[tuple[str, str, Callable[[RequestSeries], int]], ...] = (
        ("http_server_requests_total", "Requests through the facade.", lambda s: s.count),
        ("http_server_request_body_size_bytes_total", "Request body bytes received from clients.", lambda s: s.bytes_in),
        ("http_server_response_body_size_bytes_total", "Response body bytes sent to clients.", lambda s: s.bytes_out),
    )
    for name, help_text, value in counters:
        _header(lines, name, "counter", help_text)
        for s in series:
            lines.append(f"{name}{{{_labels(s.labels())}}} {value(s)}")

    shadow: tuple[tuple[str, str, Callable[[DiffSeries], int]], ...] = (
        ("facade_shadow_comparisons_total", "Shadow responses compared with the primary response.",
         lambda d: d.compared),
        ("facade_shadow_diffs_total",
         "Shadow responses that differed from the primary response (after ignore rules and noise).",
         lambda d: d.differing),
    )
    for name, help_text, value_of in shadow:
        _header(lines, name, "counter", help_text)
        for d in diff_series:
            lines.append(f"{name}{{{_labels((('route', d.route), ('step', d.step)))}}} {value_of(d)}")
    _header(lines, "facade_faults_injected_total", "counter",
            "Faults injected by a route's or a migration step's fault policy (kind: delay or abort).")
    for (route, backend, kind), count in sorted((faults or {}).items()):
        lines.append(f"facade_faults_injected_total{{{_labels((('route', route), ('backend', backend), ('kind', kind)))}}} "
                     f"{count}")
    return "\n".join(lines) + "\n"
