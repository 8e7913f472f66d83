"""What the sidecars report about their inbound traffic, kept by the control plane (bounded, in memory).

A sidecar reports (``POST /mesh/report``) its inbound counters split by the document they were
counted under: ``{"epoch", "version", "mode", "plaintext_requests", "tls_requests",
"plaintext_refused"}`` per segment, cumulative within the segment. Keeping the largest value
seen per (sidecar instance, version) makes a repeated or reordered report harmless.

The ``mtls: strict`` migration step asks ``plaintext_seen(service, versions)``: how many
plaintext attempts (requests served in plaintext plus plaintext connections refused under
STRICT) that service's sidecars saw under the given document versions (those published since
the step started). A segment of another control-plane epoch counts only when that (epoch,
version) is one the control plane published (``known``: versions never repeat across restarts,
see ``mesh.state``); any other is ignored, its version number naming no document of ours.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_INSTANCES", "MAX_VERSIONS", "STALE_S", "InboundReports", "ReportError", "SegmentCounts", "parse_report"]

MAX_INSTANCES = 64  # sidecar processes remembered per service (the least recently heard is dropped)
MAX_VERSIONS = 16  # document versions remembered per instance
MAX_SEGMENTS_PER_REPORT = 32
STALE_S = 60.0  # a sidecar not heard from for this long no longer holds a verdict up
_COUNTS = ("plaintext_requests", "tls_requests", "plaintext_refused")
_MAX_COUNT = 2**53


class ReportError(ValueError):
    """A report that is not the shape a sidecar sends."""


@dataclass(frozen=True, slots=True)
class SegmentCounts:
    version: int
    mode: str
    plaintext_requests: int = 0
    tls_requests: int = 0
    plaintext_refused: int = 0

    @property
    def plaintext(self) -> int:
        """Plaintext attempts: served in plaintext, or refused because the mode was STRICT."""
        return self.plaintext_requests + self.plaintext_refused

    def merged(self, other: SegmentCounts) -> SegmentCounts:
        return SegmentCounts(
            self.version,
            other.mode,
            max(self.plaintext_requests, other.plaintext_requests),
            max(self.tls_requests, other.tls_requests),
            max(self.plaintext_refused, other.plaintext_refused),
        )


@dataclass(frozen=True, slots=True)
class Report:
    service: str
    instance: str
    segments: tuple[tuple[str, SegmentCounts], ...]  # (epoch, counts)


def parse_report(data: Any) -> Report:
    """The report a sidecar sent, validated (ReportError says what is wrong)."""
    if not isinstance(data, Mapping):
        raise ReportError("report must be a JSON object")
    service, instance, segments = data.get("service"), data.get("instance"), data.get("segments")
    if not isinstance(service, str) or not isinstance(instance, str) or not 0 < len(instance) <= 64:
        raise ReportError('report needs "service" and "instance" strings')
    if not isinstance(segments, list) or len(segments) > MAX_SEGMENTS_PER_REPORT:
        raise ReportError(f'"segments" must be a list of at most {MAX_SEGMENTS_PER_REPORT}')
    parsed = []
    for seg in segments:
        if not isinstance(seg, Mapping):
            raise ReportError("each segment must be an object")
        epoch, version, mode = seg.get("epoch"), seg.get("version"), seg.get("mode")
        counts = [seg.get(name) for name in _COUNTS]
        if not isinstance(epoch, str) or not isinstance(mode, str) or type(version) is not int:
            raise ReportError('each segment needs "epoch", "version" and "mode"')
        if not all(type(c) is int and 0 <= c < _MAX_COUNT for c in counts):
            raise ReportError(f"segment counts ({', '.join(_COUNTS)}) must be non-negative integers")
        parsed.append((epoch, SegmentCounts(version, mode[:16], *counts)))  # type: ignore[arg-type]
    return Report(service, instance, tuple(parsed))


@dataclass(slots=True)
class _Instance:
    heard_at: float
    versions: dict[int, SegmentCounts] = field(default_factory=dict)


class InboundReports:
    """The control plane's memory of sidecar reports for one epoch (a restart starts empty)."""

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self._services: dict[str, dict[str, _Instance]] = {}

    def restore(self, service: str, instance: str, heard_at: float, counts: SegmentCounts) -> None:
        """Put back one stored (instance, version) count (``mesh.state``), as on the first start."""
        instances = self._services.setdefault(service, {})
        entry = instances.setdefault(instance, _Instance(heard_at))
        entry.heard_at = max(entry.heard_at, heard_at)
        known = entry.versions.get(counts.version)
        entry.versions[counts.version] = counts if known is None else known.merged(counts)

    def record(self, report: Report, *, now: float, known: Mapping[int, str] | None = None) -> list[SegmentCounts]:
        """Keep the report's counts; returns the segments taken (those of this epoch or of ``known``
        versions: version -> the epoch that published it)."""
        taken: list[SegmentCounts] = []
        instances = self._services.setdefault(report.service, {})
        instance = instances.get(report.instance)
        if instance is None:
            if len(instances) >= MAX_INSTANCES:
                oldest = min(instances, key=lambda name: instances[name].heard_at)
                del instances[oldest]
            instance = instances[report.instance] = _Instance(now)
        instance.heard_at = now
        for epoch, counts in report.segments:
            if epoch != self.epoch and (known is None or known.get(counts.version) != epoch):
                continue
            previous = instance.versions.get(counts.version)
            instance.versions[counts.version] = counts if previous is None else previous.merged(counts)
            taken.append(counts)
        for version in sorted(instance.versions)[:-MAX_VERSIONS]:
            del instance.versions[version]
        return taken

    def plaintext_seen(self, service: str, versions: Collection[int], *, since: float, now: float) -> int | None:
        """Plaintext attempts at ``service`` under ``versions``; None when no sidecar reported any of them.

        None also when a sidecar heard from since ``since`` (and within ``STALE_S``) still reports
        only older documents: it has not applied the step's config yet, and its silence proves nothing.
        """
        wanted = set(versions)
        if not wanted:
            return None
        first = min(wanted)
        total = 0
        reported = False
        for instance in self._services.get(service, {}).values():
            mine = [counts for version, counts in instance.versions.items() if version in wanted]
            if mine:
                reported = True
                total += sum(c.plaintext for c in mine)
            elif instance.heard_at >= max(since, now - STALE_S) and max(instance.versions, default=0) < first:
                return None
        return total if reported else None

    def view(self, service: str) -> dict[str, Any]:
        """For /mesh/reports-style debugging and tests: instance -> version -> counts."""
        return {
            name: {
                str(v): {"mode": c.mode, **{k: getattr(c, k) for k in _COUNTS}}
                for v, c in sorted(inst.versions.items())
            }
            for name, inst in self._services.get(service, {}).items()
        }
