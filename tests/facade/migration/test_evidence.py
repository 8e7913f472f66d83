"""Gate evidence that adds up across replicas (pure): counts add, histograms add bucket by bucket."""

from __future__ import annotations

import json

from facade.migration.engine import MigrationState, Phase
from facade.migration.evidence import FleetWindow, SideEvidence, StepEvidence, epoch_key
from facade.telemetry.histogram import LogLinearHistogram


def _side(latencies: list[float], errors: int = 0) -> SideEvidence:
    return SideEvidence(len(latencies), errors, LogLinearHistogram.of(latencies).counts)


def test_the_sum_of_windows_has_the_percentiles_of_all_the_traffic() -> None:
    fast = [0.010 + i * 0.0001 for i in range(90)]  # one replica saw fast requests
    slow = [0.200 + i * 0.001 for i in range(10)]  # the other saw the slow tail
    a = StepEvidence(_side(fast), _side(fast[:50], errors=1), compared=30, differing=1)
    b = StepEvidence(_side(slow), _side(slow, errors=2), compared=10, differing=3)
    total = StepEvidence.total([a, b])
    everything = LogLinearHistogram.of(fast + slow)
    assert total.old.stats().p99_ms == round(everything.quantile(0.99) * 1000, 4)  # type: ignore[operator]
    assert total.old.stats().p50_ms == round(everything.quantile(0.50) * 1000, 4)  # type: ignore[operator]
    assert (total.new.requests, total.new.errors) == (60, 3)
    assert total.diffs().diff_rate == 4 / 40
    # Neither replica alone sees the p99 of all the traffic.
    assert {a.old.stats().p99_ms, b.old.stats().p99_ms} != {total.old.stats().p99_ms}


def test_evidence_survives_its_json_form() -> None:
    evidence = StepEvidence(_side([0.01, 0.02]), _side([0.5], errors=1), compared=3, differing=1)
    assert StepEvidence.from_json(json.loads(json.dumps(evidence.to_json()))) == evidence
    assert StepEvidence.total([]).empty and not evidence.empty


def test_a_window_is_named_by_when_its_step_began() -> None:
    running = MigrationState("shop", Phase.RUNNING, step=1, version=3, step_started_at=1000.5)
    paused = MigrationState("shop", Phase.PAUSED, step=1, version=4, step_started_at=1000.5)
    again = MigrationState("shop", Phase.RUNNING, step=1, version=7, step_started_at=2000.0)  # after a rollback
    assert epoch_key(running) == epoch_key(paused) != epoch_key(again)


def test_a_fleet_window_sums_the_live_local_part_and_the_others_as_published() -> None:
    mine = StepEvidence(SideEvidence(3, 1, {10: 3}), SideEvidence(4, 0, {12: 4}), compared=2, differing=1)
    stale_self = {**StepEvidence(SideEvidence(1), SideEvidence(1)).to_json(), "published_at": 90.0}
    other = {**StepEvidence(SideEvidence(5, 2, {10: 5}), SideEvidence(6, 1, {12: 6})).to_json(), "published_at": 98.5}
    unknown_age = StepEvidence(SideEvidence(1), SideEvidence(0)).to_json()
    fleet = FleetWindow.of("catalog", "monolith", "catalog", "shop step 1: weight 50", ("me", mine),
                           {"me": stale_self, "b": other, "c": unknown_age})
    assert (fleet.evidence.old.requests, fleet.evidence.new.requests) == (9, 10)  # me live (not 1+1) + b + c
    assert (fleet.evidence.old.errors, fleet.evidence.new.errors, fleet.evidence.compared) == (3, 1, 2)
    assert fleet.to_json(now=100.0) == {"scope": "fleet", "store_error": None, "instances": [
        {"instance": "me", "requests": 7, "compared": 2, "live": True, "age_s": 0.0},
        {"instance": "b", "requests": 11, "compared": 0, "live": False, "age_s": 1.5},
        {"instance": "c", "requests": 1, "compared": 0, "live": False, "age_s": None},
    ]}
