"""``facade loadtest PLAN``: rehearse a cutover under load.

    facade loadtest extract-catalog                        # ~2 minutes, on a throwaway facade
    facade loadtest extract-catalog --quick                # under 30 s
    facade loadtest extract-catalog --gates                # advance only when hold and gates allow
    facade loadtest extract-catalog --rollback-at 4        # rehearse the emergency rollback too
    facade loadtest extract-catalog --live                 # drive the live facade; put back afterwards

In order:

0. before anything starts: with ``--gates``, a step whose hold outlasts the wait is refused; locust
   must import in the interpreter that will run it (else: ``pip install 'facade[load]'``);
1. by default a throwaway facade starts (``loadtest_facade``): the same config on its own loopback
   ports with its own temporary migration store, so the live migration is never touched however
   the rehearsal ends. ``--live`` drives the running facade instead, and puts the migration back
   where it found it at the end (a durable ``rollback`` whose journal reason starts with
   ``rehearsal restore``) unless ``--keep``;
2. the migration must be ``pending`` or ``rolled_back``;
3. locust starts headless in a subprocess (importing locust monkey-patches the standard library)
   with ``loadtests/locustfile.py``, its cutover shape ramping to ``--users``; the ramp is phase 0,
   the baseline with everything on the old backend;
4. the driver starts the migration and, every ``--step-duration``, advances it through the admin API:
   ``next --force --reason rehearsal`` by default, so holds and gates do not stop a rehearsal (a step
   forced past a FAILING gate is flagged in the table and the verdict, and the exit code is 5); with
   ``--gates`` it asks without force and waits for the hold and the gates, and a failing gate ends
   the rehearsal there. ``--rollback-at N`` rolls everything back to ``from`` when step N is due to
   advance, then keeps the load on for one more step;
5. each phase records the gate results the facade reported while it was on that step;
6. the driver tells the shape to stop, locust writes its CSV + HTML, and the per-step table is
   built from the locustfile's samples: requests, failures and p50/p95/p99 separately for the old and
   the new backend (from the facade's ``x-facade-backend`` mark on each response).

Output under ``--out``: ``steps.csv``, ``steps.json``, ``samples.jsonl``, ``locust.html``,
``locust_stats.csv`` (and locust's other CSVs), ``locust.log``, ``facade.log``. Exit 0 when every
request succeeded and no gate failed, 1 when a request failed (or locust or the facade broke, or a
``--live`` restore failed), 5 when a gate stopped a ``--gates`` rehearsal or a step was forced past
a failing gate, 4 when the migration is not in a state to start, 6 when the admin API is
unreachable, 130 when interrupted (SIGINT / SIGTERM).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self, TextIO

from .console import (
    EXIT_FAILURE,
    EXIT_GATE_FAILED,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    AdminClient,
    AdminError,
    add_admin_options,
    find_config,
    render_table,
)

__all__ = [
    "DEFAULT_SPAWN_RATE",
    "DEFAULT_STEP_DURATION",
    "DEFAULT_USERS",
    "QUICK",
    "LatencySummary",
    "Phase",
    "Sample",
    "StepRow",
    "aggregate",
    "find_locustfile",
    "parse_samples",
    "percentile",
    "register",
    "render_steps",
    "rows_to_csv",
]

DEFAULT_USERS = 20
DEFAULT_SPAWN_RATE = 10.0
DEFAULT_STEP_DURATION = 15.0  # seconds; 7 steps of the demo plans + ramp ~ 2 minutes
QUICK = {"users": 6, "spawn_rate": 30.0, "step_duration": 2.0}  # ~7 steps x 2 s + ramp: well under 30 s
RESTORE_PATIENCE = 15.0  # seconds a --live restore retries an unreachable admin API (a restarting facade)
LOCUST_STOP_GRACE = 20.0  # seconds for locust to stop users and write its reports after "stop"
POLL = 0.25
PERCENTILES = (0.50, 0.95, 0.99)


# -- values --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One line of ``samples.jsonl``: one second of requests for one (phase, backend, migrating)."""

    t: float
    phase: int
    backend: str
    migrating: bool  # the request went through a route the migration splits (x-facade-step != stable)
    group: str  # first path segment ("catalog"): which part of the shop, split or not
    requests: int
    failures: int
    latency_ms: Mapping[int, int]
    errors: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Phase:
    """A stretch of the rehearsal with one routing: the baseline (0), each step, a rollback, the end."""

    index: int
    label: str
    step: int  # the migration's step number during the phase (0: before start / rolled back)
    started: float
    ended: float | None = None
    gates: Mapping[str, Any] | None = None  # the facade's gate report on this step, last seen
    outcome: str = ""  # how the phase ended: advanced, forced, rolled back, gate failed, ...


@dataclass(frozen=True, slots=True)
class LatencySummary:
    requests: int = 0
    failures: int = 0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "failures": self.failures, "p50_ms": self.p50, "p95_ms": self.p95,
                "p99_ms": self.p99}  # fmt: skip


@dataclass(frozen=True, slots=True)
class StepRow:
    phase: Phase
    requests: int
    failures: int
    old: LatencySummary
    new: LatencySummary
    errors: Mapping[str, int] = field(default_factory=dict)

    @property
    def gate_status(self) -> str:
        return str(self.phase.gates.get("status", "")) if self.phase.gates else ""

    def to_json(self) -> dict[str, Any]:
        p = self.phase
        return {
            "phase": p.index, "label": p.label, "step": p.step, "started": p.started, "ended": p.ended,
            "outcome": p.outcome, "requests": self.requests, "failures": self.failures, "old": self.old.to_json(),
            "new": self.new.to_json(), "gates": dict(p.gates) if p.gates else None, "errors": dict(self.errors),
        }  # fmt: skip


# -- pure: samples -> per-step rows ----------------------------------------------------------------


def parse_samples(lines: Iterable[str]) -> list[Sample]:
    """``samples.jsonl`` lines -> samples; a torn last line (locust killed mid-write) is skipped."""
    samples = []
    for line in lines:
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            samples.append(
                Sample(
                    t=float(d["t"]),
                    phase=int(d["phase"]),
                    backend=str(d["backend"]),
                    migrating=bool(d["migrating"]),
                    group=str(d.get("group", "")),
                    requests=int(d["requests"]),
                    failures=int(d["failures"]),
                    latency_ms={int(k): int(v) for k, v in d["latency_ms"].items()},
                    errors={str(k): int(v) for k, v in d.get("errors", {}).items()},
                )
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return samples


def percentile(histogram: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0-1) of a latency histogram (ms -> count), nearest rank; None when empty."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, int(q * total + 0.999999))  # ceil without float surprises at exact ranks
    seen = 0
    for ms in sorted(histogram):
        seen += histogram[ms]
        if seen >= rank:
            return float(ms)
    return float(max(histogram))  # pragma: no cover - unreachable: seen ends at total


def _summary(samples: Sequence[Sample]) -> LatencySummary:
    hist: Counter[int] = Counter()
    for s in samples:
        hist.update(s.latency_ms)
    p50, p95, p99 = (percentile(hist, q) for q in PERCENTILES)
    return LatencySummary(sum(s.requests for s in samples), sum(s.failures for s in samples), p50, p95, p99)


def aggregate(samples: Sequence[Sample], phases: Sequence[Phase], *, old: str, new: str) -> list[StepRow]:
    """One row per phase: every request of the phase in the totals; old / new latency only from the
    requests on the migrated route(s), split by the backend that served them.

    A request is on a migrated route when the facade marked it with a migration step, or when its
    path group (``/catalog/...``) was marked in any phase: that keeps the baseline and the phase
    after a rollback, where no split marks anything, comparable with the steps."""
    migrated = {s.group for s in samples if s.migrating}

    def on_route(s: Sample) -> bool:
        return s.migrating or s.group in migrated

    rows = []
    for phase in phases:
        mine = [s for s in samples if s.phase == phase.index]
        errors: Counter[str] = Counter()
        for s in mine:
            errors.update(s.errors)
        rows.append(
            StepRow(
                phase=phase,
                requests=sum(s.requests for s in mine),
                failures=sum(s.failures for s in mine),
                old=_summary([s for s in mine if on_route(s) and s.backend == old]),
                new=_summary([s for s in mine if on_route(s) and s.backend == new]),
                errors=dict(errors),
            )
        )
    return rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _latency(summary: LatencySummary) -> str:
    if not summary.requests:
        return "-"
    return f"{summary.requests} @ {_ms(summary.p50)}/{_ms(summary.p95)}/{_ms(summary.p99)}"


def render_steps(rows: Sequence[StepRow], *, old: str, new: str) -> str:
    """The per-step table: old / new columns are ``requests @ p50/p95/p99`` in ms."""
    headers = ("PHASE", "STEP", "SECONDS", "REQUESTS", "FAILURES", f"OLD ({old}) p50/p95/p99",
               f"NEW ({new}) p50/p95/p99", "GATES", "OUTCOME")  # fmt: skip
    table = [
        (
            r.phase.index,
            r.phase.label,
            f"{(r.phase.ended or r.phase.started) - r.phase.started:.1f}",
            r.requests,
            r.failures,
            _latency(r.old),
            _latency(r.new),
            r.gate_status or "-",
            r.phase.outcome,
        )
        for r in rows
    ]
    return render_table(headers, table)


def rows_to_csv(rows: Sequence[StepRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["phase", "label", "step", "started", "ended", "outcome", "requests", "failures", "gates",
                     "old_requests", "old_p50_ms", "old_p95_ms", "old_p99_ms",
                     "new_requests", "new_p50_ms", "new_p95_ms", "new_p99_ms"])  # fmt: skip
    for r in rows:
        p = r.phase
        writer.writerow([p.index, p.label, p.step, f"{p.started:.3f}", "" if p.ended is None else f"{p.ended:.3f}",
                         p.outcome, r.requests, r.failures, r.gate_status,
                         r.old.requests, _ms(r.old.p50), _ms(r.old.p95), _ms(r.old.p99),
                         r.new.requests, _ms(r.new.p50), _ms(r.new.p95), _ms(r.new.p99)])  # fmt: skip
    return out.getvalue()


def failing_gates(gates: Mapping[str, Any] | None) -> str | None:
    """The failing gates of a gate report, as ``diff_rate.max: 100 % > 0.5 %`` (None unless it failed)."""
    if not gates or gates.get("status") != "fail":
        return None
    results = gates.get("results") or []
    bad = [str(r.get("message") or r.get("name")) for r in results if isinstance(r, dict) and r.get("status") == "fail"]
    return "; ".join(bad) or "gates failed"


def hold_problem(holds: Sequence[float], *, step_duration: float, gate_timeout: float, rollback_at: int | None,
                 quick: bool) -> str | None:  # fmt: skip
    """With ``--gates``, why the rehearsal could never advance (None when it can): a step whose hold
    outlasts the longest the driver waits on it (``step_duration`` + ``gate_timeout``) is refused
    until the driver gives up. Only the steps the driver tries to leave count: not the last one,
    not from ``rollback_at`` on."""
    last = len(holds) - 1 if rollback_at is None else min(rollback_at - 1, len(holds) - 1)
    wait = step_duration + gate_timeout
    for number, hold in enumerate(holds[:last], start=1):
        if hold > wait:
            where = " (--quick)" if quick else ""
            return (f"--gates: step {number} holds {hold:g} s, but the rehearsal waits at most {wait:g} s on a step "
                    f"(--step-duration {step_duration:g}s + --gate-timeout {gate_timeout:g}s{where}), so it could "
                    f"never advance; pass --gate-timeout {hold:g}s or more"
                    + (", or drop --quick" if quick else ""))  # fmt: skip
    return None


# -- the edge: the plan name, the locust process, the admin API -----------------------------------


class LoadtestError(Exception):
    """The rehearsal cannot run; ``exit_code`` follows the CLI conventions."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def plan_name(plan: str) -> str:
    """``PLAN`` is a migration name or a plan file; a file's ``name:`` is the migration's name."""
    if not (plan.endswith((".yaml", ".yml")) or os.sep in plan or os.path.isfile(plan)):
        return plan
    import yaml

    try:
        with open(plan, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise LoadtestError(f"cannot read plan file {plan}: {exc}", EXIT_INVALID) from None
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise LoadtestError(f"{plan}: no 'name' field: which migration is this?", EXIT_INVALID)
    return name


def find_locustfile() -> Path:
    """``loadtests/locustfile.py``: from the installed ``loadtests`` package, else next to ``facade``."""
    try:
        spec = importlib.util.find_spec("facade.loadtests")
    except (ImportError, ValueError):
        spec = None
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "locustfile.py" for p in spec.submodule_search_locations]
    candidates.append(Path(__file__).resolve().parent.parent / "loadtests" / "locustfile.py")
    for path in candidates:
        if path.is_file():
            return path
    raise LoadtestError("cannot find loadtests/locustfile.py (is the 'loadtests' package installed?)")


@dataclass(frozen=True, slots=True)
class Settings:
    name: str
    host: str
    users: int
    spawn_rate: float
    step_duration: float
    gates: bool
    gate_timeout: float
    rollback_at: int | None
    out: Path
    locustfile: Path
    reset: bool
    config: str = ""
    live: bool = False  # drive the running facade's migration instead of a throwaway copy
    live_state_dir: str | None = None  # mesh: where the throwaway facade finds the live CA
    keep: bool = False  # --live --keep: leave the live migration where the rehearsal ends
    quick: bool = False


class Rehearsal:
    """Runs locust and drives the migration; ``phases`` is the timeline for the report."""

    def __init__(
        self,
        settings: Settings,
        admin: AdminClient,
        *,
        err: TextIO | None = None,
        clock: Callable[[], float] = time.time,
        watch: Callable[[], str | None] | None = None,
    ) -> None:
        self.s = settings
        self.admin = admin
        self.err = err or sys.stderr
        self.clock = clock
        # Called while the load runs: why the rehearsal cannot go on (its facade died), or None.
        self.watch = watch
        self.phases: list[Phase] = []
        self.gate_failure: str | None = None
        # "step 1: forced past FAILING gate diff_rate.max: 100% > 0.5%", for each step forced past a failing gate
        self.forced_past: list[str] = []
        self.found: dict[str, Any] | None = None  # the migration's status before the rehearsal touched it
        self.locust: subprocess.Popen[bytes] | None = None
        self.locust_exit: int | None = None
        self.status: dict[str, Any] = {}
        self._samples_read = 0
        self._samples_offset = 0
        self._failures_seen = 0
        self._started = 0.0
        self._last_progress = 0.0

    @property
    def control_path(self) -> Path:
        return self.s.out / "control.json"

    @property
    def samples_path(self) -> Path:
        return self.s.out / "samples.jsonl"

    # -- the steps ---------------------------------------------------------------------------------

    def run(self) -> None:
        """The rehearsal; raises LoadtestError / AdminError. Locust is stopped whatever happens."""
        self.status = self._prepare()
        self.s.out.mkdir(parents=True, exist_ok=True)
        for stale in (self.samples_path, self.control_path):
            stale.unlink(missing_ok=True)
        self._control(phase=0, stop=False)
        self._started = self.clock()
        try:
            self._start_locust()
            self._phase("baseline (all on " + self.status["from"] + ")", step=0)
            ramp = min(self.s.users / max(self.s.spawn_rate, 0.1), 30.0) + 1.0
            self._dwell(max(ramp, self.s.step_duration / 2))
            self._close_phase("started")
            self.status = self._act("start")
            self._enter_step()
            self._drive()
        finally:
            self._close_phase("stopped early")  # an error or a signal cut the phase short
            self._stop_locust()

    def _prepare(self) -> dict[str, Any]:
        status: dict[str, Any] = self.admin.get(f"/migrations/{self.s.name}", journal=0)
        steps = int(status["steps"])
        if self.s.rollback_at is not None and not 1 <= self.s.rollback_at <= steps:
            raise LoadtestError(f"--rollback-at {self.s.rollback_at}: {self.s.name} has steps 1-{steps}", EXIT_INVALID)
        if status["state"] in ("pending", "rolled_back"):
            self.found = status
            return status
        if self.s.live and not self.s.keep:
            # Putting a running migration back on step N would replay its steps with force: refuse.
            raise LoadtestError(
                f"migration {self.s.name!r} is {status['state']} at step {status['step']}: a --live rehearsal puts "
                f"the migration back where it found it, which it can only do from the beginning; run the rehearsal "
                f"on a throwaway copy (without --live), or add --keep to reset and leave it where the rehearsal ends",
                EXIT_REFUSED,
            )
        if not self.s.reset:
            raise LoadtestError(
                f"migration {self.s.name!r} is {status['state']} at step {status['step']}: a rehearsal starts from "
                f"the beginning; use --reset to roll it back to {status['from']!r} first",
                EXIT_REFUSED,
            )
        if status["state"] == "aborted":
            raise LoadtestError(f"migration {self.s.name!r} was aborted (final); nothing to rehearse", EXIT_REFUSED)
        self._info(f"resetting {self.s.name}: rollback --to 0 (was {status['state']} at step {status['step']})")
        result: dict[str, Any] = self.admin.post(f"/migrations/{self.s.name}/rollback", self._body(to=0))
        return result

    def _drive(self) -> None:
        while self.status["state"] in ("running", "paused"):
            step = int(self.status["step"])
            self._dwell(self.s.step_duration)
            if self.s.rollback_at is not None and step == self.s.rollback_at:
                self._record_gates()
                self._close_phase("rolled back")
                self.status = self._act("rollback", to=0)
                self._phase(f"after rollback (all on {self.status['from']})", step=0)
                self._dwell(self.s.step_duration)
                self._close_phase("end")
                return
            if not self._advance(step):
                return
        # Completed: a short tail with everything on the new backend.
        self._phase(f"completed (all on {self.status['to']})", step=int(self.status["step"]))
        self._dwell(min(self.s.step_duration, 2.0))
        self._close_phase("end")

    def _advance(self, step: int) -> bool:
        """Leave ``step``: forced, or (``--gates``) once hold and gates allow. False: the rehearsal stops."""
        if not self.s.gates:
            self._record_gates()
            failing = failing_gates(self.phases[-1].gates if self.phases else None)
            if failing is None:
                self._close_phase("forced")
            else:
                self.forced_past.append(f"step {step}: forced past FAILING gate {failing}")
                self._close_phase(f"FORCED past FAILING gate {failing}")
                self._info(f"WARNING: {self.forced_past[-1]}")
            self.status = self._act("next", force=True)
            self._enter_step()
            return True
        deadline = self.clock() + self.s.gate_timeout
        while True:
            try:
                self.status = self.admin.post(f"/migrations/{self.s.name}/next", self._body())
            except AdminError as exc:
                body = exc.body if isinstance(exc.body, dict) else {}
                if exc.status != 409 or body.get("code") not in ("refused", "gate_failed"):
                    raise
                gates = body.get("gates")
                if gates:
                    self._set_gates(gates)
                if body.get("code") == "gate_failed" and isinstance(gates, dict) and gates.get("status") == "fail":
                    self.gate_failure = f"step {step}: {body.get('error')}"
                    self._close_phase("gate failed")
                    return False
                if self.clock() > deadline:
                    self.gate_failure = (
                        f"step {step}: still refused after {self.s.gate_timeout:g} s: {body.get('error')}"
                    )
                    self._close_phase("timed out")
                    return False
                self._dwell(1.0)
                continue
            # The status's own gates are the new step's (just entered: inconclusive); the journal entry of
            # this transition keeps the report that let the step be left.
            journal = self.status.get("journal") or []
            self._set_gates(journal[-1].get("gates") if journal else self.status.get("gates"))
            self._close_phase("advanced")
            self._enter_step()
            return True

    def restore(self, *, patience: float = RESTORE_PATIENCE) -> str:
        """``--live``: put the migration back where the rehearsal found it (pending or rolled back:
        step 0, everything on ``from``) with one durable transition whose journal reason says it is
        the rehearsal's restore. Returns what it did; raises AdminError when the admin API stays
        unreachable for ``patience`` seconds (the facade died or is restarting)."""
        found = self.found
        assert found is not None, "restore() before the rehearsal read the migration"
        deadline = time.monotonic() + patience
        while True:
            try:
                now: dict[str, Any] = self.admin.get(f"/migrations/{self.s.name}", journal=0)
                if now["state"] in ("pending", "rolled_back"):  # step 0, all on `from`: as found
                    self.status = now
                    return f"live migration {self.s.name} is {now['state']} (all on {now['from']}), as found"
                reason = (f"rehearsal restore: back to step 0 (all on {found['from']}), where the rehearsal found it "
                          f"({found['state']})")  # fmt: skip
                body = {"actor": "facade loadtest", "reason": reason, "to": 0}
                self.status = self.admin.post(f"/migrations/{self.s.name}/rollback", body)
                return (f"live migration {self.s.name} restored: {now['state']} at step {now['step']} -> "
                        f"{self.status['state']} (all on {found['from']}); journal reason {reason!r}")  # fmt: skip
            except AdminError as exc:
                if exc.exit_code != EXIT_UNREACHABLE or time.monotonic() > deadline:
                    raise
                time.sleep(POLL * 2)

    def _enter_step(self) -> None:
        if self.status["state"] not in ("running", "paused"):
            return
        self._phase(f"step {self.status['step']}/{self.status['steps']}: {self.status['step_summary']}",
                    step=int(self.status["step"]))  # fmt: skip

    def _record_gates(self) -> None:
        status = self.admin.get(f"/migrations/{self.s.name}", journal=0)
        self._set_gates(status.get("gates"))

    def _act(self, action: str, *, force: bool = False, to: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.admin.post(f"/migrations/{self.s.name}/{action}", self._body(force, to))
        return result

    def _body(self, force: bool = False, to: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"actor": "facade loadtest", "reason": "rehearsal"}
        if force:
            body["force"] = True
        if to is not None:
            body["to"] = to
        return body

    # -- the timeline ------------------------------------------------------------------------------

    def _phase(self, label: str, *, step: int) -> None:
        index = len(self.phases)
        self.phases.append(Phase(index=index, label=label, step=step, started=self.clock()))
        self._control(phase=index, stop=False)
        self._info(f"phase {index}: {label}")

    def _close_phase(self, outcome: str) -> None:
        if self.phases and self.phases[-1].ended is None:
            self.phases[-1] = replace(self.phases[-1], ended=self.clock(), outcome=outcome)

    def _set_gates(self, gates: Any) -> None:
        if self.phases and isinstance(gates, dict):
            self.phases[-1] = replace(self.phases[-1], gates=gates)

    def _control(self, *, phase: int, stop: bool) -> None:
        # Write then rename: the locust side never reads a half-written document.
        tmp = self.control_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"phase": phase, "stop": stop}))
        os.replace(tmp, self.control_path)

    # -- locust ------------------------------------------------------------------------------------

    def _start_locust(self) -> None:
        out = self.s.out
        argv = [
            *locust_command(sys.executable), "-f", str(self.s.locustfile), "--headless", "--host", self.s.host,
            "--csv", str(out / "locust"), "--html", str(out / "locust.html"), "--only-summary",
            "--loglevel", "WARNING", "--exit-code-on-error", "0", "--stop-timeout", "5",
        ]  # fmt: skip
        env = {
            **locust_environment(self.s.locustfile),
            "LOADTEST_USERS": str(self.s.users),
            "LOADTEST_SPAWN_RATE": str(self.s.spawn_rate),
            "LOADTEST_CONTROL": str(self.control_path),
            "LOADTEST_SAMPLES": str(self.samples_path),
            # A cap, should this process die without telling locust to stop.
            "LOADTEST_MAX_SECONDS": str(int(self._budget()) + 60),
            "LOADTEST_DRIVER_PID": str(os.getpid()),
        }
        with open(out / "locust.log", "wb") as log:
            self.locust = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def _budget(self) -> float:
        steps = int(self.status.get("steps", 10)) + 3
        per_step = self.s.step_duration + (self.s.gate_timeout if self.s.gates else 0.0)
        return steps * per_step + 60.0

    def _stop_locust(self) -> None:
        proc = self.locust
        if proc is None:
            return
        self._control(phase=len(self.phases) - 1 if self.phases else 0, stop=True)
        try:
            self.locust_exit = proc.wait(timeout=LOCUST_STOP_GRACE)
        except subprocess.TimeoutExpired:
            self._info("locust did not stop when told; interrupting it")
            _signal_group(proc.pid, signal.SIGINT)  # SIGINT: locust still writes its HTML report
            try:
                self.locust_exit = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                self.locust_exit = proc.wait()
        self._read_progress()

    def _dwell(self, seconds: float) -> None:
        """Keep the load on for ``seconds``, showing progress; locust dying ends the rehearsal."""
        end = self.clock() + seconds
        while True:
            self._read_progress()
            self._show_progress()
            if self.locust is not None and self.locust.poll() is not None:
                self.locust_exit = self.locust.returncode
                raise LoadtestError(f"locust exited early with code {self.locust_exit}; see {self.s.out}/locust.log")
            gone = self.watch() if self.watch is not None else None
            if gone is not None:
                raise LoadtestError(gone)
            left = end - self.clock()
            if left <= 0:
                return
            time.sleep(min(POLL, left))

    def _read_progress(self) -> None:
        try:
            with open(self.samples_path, encoding="utf-8") as fh:
                fh.seek(self._samples_offset)
                chunk = fh.read()
        except OSError:
            return
        complete = chunk[: chunk.rfind("\n") + 1]
        self._samples_offset += len(complete.encode("utf-8"))
        for s in parse_samples(complete.splitlines()):
            self._samples_read += s.requests
            self._failures_seen += s.failures

    def _show_progress(self) -> None:
        now = self.clock()
        tty = self.err.isatty()
        if not tty and now - self._last_progress < 5.0:
            return
        self._last_progress = now
        label = self.phases[-1].label if self.phases else "starting"
        line = (f"[{now - self._started:6.1f}s] {label} | {self._samples_read} requests | "
                f"{self._failures_seen} failures")  # fmt: skip
        if tty:
            self.err.write("\r\x1b[K" + line)
        else:
            self.err.write(line + "\n")
        self.err.flush()

    def _info(self, message: str) -> None:
        if self.err.isatty():
            self.err.write("\r\x1b[K")
        self.err.write(f"loadtest: {message}\n")
        self.err.flush()

    # -- the report --------------------------------------------------------------------------------

    def report(self) -> tuple[list[StepRow], dict[str, Any]]:
        try:
            lines = self.samples_path.read_text(encoding="utf-8").splitlines()
        except OSError:
            lines = []
        old, new = str(self.status.get("from", "")), str(self.status.get("to", ""))
        rows = aggregate(parse_samples(lines), self.phases, old=old, new=new)
        document = {
            "migration": self.s.name,
            "from": old,
            "to": new,
            "host": self.s.host,
            "users": self.s.users,
            "spawn_rate": self.s.spawn_rate,
            "step_duration": self.s.step_duration,
            "gates_mode": self.s.gates,
            "rollback_at": self.s.rollback_at,
            "final_state": self.status.get("state"),
            "final_step": self.status.get("step"),
            "requests": sum(r.requests for r in rows),
            "failures": sum(r.failures for r in rows),
            "gate_failure": self.gate_failure,
            "forced_past_failing": list(self.forced_past),
            "live": self.s.live,
            "locust_exit_code": self.locust_exit,
            "steps": [r.to_json() for r in rows],
        }
        return rows, document


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


# ``python -m locust`` with SIGINT handled: a process started with SIGINT ignored (a background
# job, a CI runner, nohup) passes SIG_IGN on to its children, and locust ignoring SIGINT would not
# write its HTML report when the driver interrupts it. On Linux locust also gets SIGTERM when the
# driver dies (even by kill -9), rather than loading a facade nobody reports on until its cap.
_LOCUST_MAIN = """\
import ctypes, os, runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.environ.get("LOADTEST_DRIVER_PID", str(os.getppid())) != str(os.getppid()):
    sys.exit(1)  # the driver died before the prctl
sys.argv[0] = "locust"
runpy.run_module("locust", run_name="__main__", alter_sys=True)
"""


def locust_command(python: str) -> list[str]:
    """The command line that runs locust (arguments follow) with SIGINT deliverable."""
    return [python, "-c", _LOCUST_MAIN]


def locust_environment(locustfile: Path) -> dict[str, str]:
    """The environment locust runs in: ours, with the locustfile's package (``loadtests``) importable."""
    pythonpath = os.pathsep.join(p for p in (str(locustfile.parent.parent), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": pythonpath}


def locust_problem(python: str, env: Mapping[str, str]) -> str | None:
    """Why ``python`` cannot run locust in ``env`` (None when it can). Checked in a child interpreter,
    the one locust will run in: importing locust here would monkey-patch this process."""
    try:
        proc = subprocess.run([python, "-c", "import locust"], env=dict(env), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot check for locust with {python}: {exc}"
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    if "No module named 'locust'" in last:
        return f"locust is not installed for {python}: pip install 'facade[load]' (or pip install locust)"
    return f"locust cannot be imported by {python} ({last}): pip install --force-reinstall 'facade[load]'"


# -- the command ---------------------------------------------------------------------------------


def register(sub: Any) -> None:
    p = sub.add_parser("loadtest", help="rehearse a migration's cutover under load (locust) and report per step")
    p.add_argument("plan", metavar="PLAN", help="migration name, or its plan file (the running facade must have it)")
    p.add_argument("--users", type=int, default=None, help=f"simulated shop users (default {DEFAULT_USERS})")
    p.add_argument("--spawn-rate", type=float, default=None, help=f"users started per second (default "
                   f"{DEFAULT_SPAWN_RATE:g})")  # fmt: skip
    p.add_argument("--step-duration", default=None, metavar="D",
                   help=f"time on each step, e.g. 15s or 1m (default {DEFAULT_STEP_DURATION:g}s)")  # fmt: skip
    p.add_argument("--rollback-at", type=int, default=None, metavar="STEP",
                   help="roll everything back to `from` when step STEP is due to advance")  # fmt: skip
    p.add_argument(
        "--gates",
        action="store_true",
        help="advance only when the step's hold and gates allow (default: force, reason 'rehearsal')",
    )
    p.add_argument(
        "--gate-timeout",
        default=None,
        metavar="D",
        help="with --gates: give up on a step refused this long (default 3 x step duration)",
    )
    p.add_argument("--live", action="store_true",
                   help="drive the running facade's own migration (default: a throwaway facade with its own state; "
                        "the live migration is never touched)")  # fmt: skip
    p.add_argument("--keep", action="store_true",
                   help="with --live: leave the migration where the rehearsal ends (default: put it back where it "
                        "was found)")  # fmt: skip
    p.add_argument("--live-state-dir", metavar="DIR", default=None,
                   help="with a mesh: the live facade's state directory, whose CA the throwaway facade copies "
                        "(default: the config's state_dir, else ./.facade-demo/facade/<config>-<hash>)")  # fmt: skip
    p.add_argument("--reset", action="store_true",
                   help="with --live --keep: roll a running or completed migration back to `from` first")  # fmt: skip
    p.add_argument("--out", default=None, metavar="DIR", help="reports directory (default ./loadtest-<name>-<time>)")
    p.add_argument("--quick", action="store_true", help=f"a short run for tests: {QUICK['users']} users, "
                   f"{QUICK['step_duration']:g}s steps (under 30 s)")  # fmt: skip
    p.add_argument("--host", default=None, metavar="URL",
                   help="with --live: the facade's URL (default: from the config's listen)")  # fmt: skip
    p.add_argument("--locustfile", default=None, help="another locustfile (default: the shipped shop users)")
    add_admin_options(p)  # -c/--config, --admin, --token, --json: the lookup every command shares
    p.set_defaults(func=cmd_loadtest)


def _config_path(arg: str | None) -> str:
    """The one lookup order of every command (``facade.cli.console.find_config``); raises CliError (exit 2)."""
    return find_config(arg)


def _host_from_config(path: str) -> str | None:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return None
    listen = data.get("listen", "127.0.0.1:8080") if isinstance(data, dict) else None
    if not isinstance(listen, str):
        return None
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _seconds(value: str | None, default: float, what: str) -> float:
    if value is None:
        return default
    from ..yamlfile import parse_duration

    try:
        seconds = float(parse_duration(value)) if not value.replace(".", "", 1).isdigit() else float(value)
    except (ValueError, TypeError) as exc:
        raise LoadtestError(
            f"{what}: expected a duration like 15s or 1m, got {value!r} ({exc})", EXIT_INVALID
        ) from None
    if seconds <= 0:
        raise LoadtestError(f"{what}: must be positive, got {value!r}", EXIT_INVALID)
    return seconds


def _live_only(args: argparse.Namespace) -> str | None:
    """Options that change the live migration make no sense on a throwaway copy: an error, rather
    than a rehearsal that does something else than asked."""
    if args.live:
        return None if args.keep or not args.reset else "--reset changes the live migration for good: add --keep"
    given = [flag for flag, value in (("--keep", args.keep), ("--reset", args.reset)) if value]
    if not given:
        return None
    return (
        f"{', '.join(given)}: only with --live. A rehearsal runs on a throwaway facade with its own state "
        f"(the live migration is never touched); add --live to drive the running facade's migration"
    )


def _unused_without_live(args: argparse.Namespace) -> str | None:
    """--host / --admin / --token name the live facade; a throwaway rehearsal does not talk to it.
    Harmless, so a note (``facade up`` prints a command line with them), not an error."""
    given = [flag for flag, value in (("--host", args.host), ("--admin", args.admin), ("--token", args.token))
             if value]  # fmt: skip
    if args.live or not given:
        return None
    return (f"loadtest: note: {', '.join(given)} not used: the rehearsal runs on a throwaway facade with its own "
            f"state (the live migration is not touched); add --live to drive the live facade")  # fmt: skip


def settings_from_args(args: argparse.Namespace) -> Settings:
    problem = _live_only(args)
    if problem:
        raise LoadtestError(problem, EXIT_INVALID)
    note = _unused_without_live(args)
    if note:
        print(note, file=sys.stderr)
    config = _config_path(args.config)
    args.config = config  # AdminClient.from_args reads admin.listen / admin.token from it
    name = plan_name(args.plan)
    host = args.host or _host_from_config(config)
    if args.live and not host:
        raise LoadtestError(f"no --host and no readable listen address in {config}", EXIT_INVALID)
    quick = args.quick
    users = args.users if args.users is not None else (QUICK["users"] if quick else DEFAULT_USERS)
    spawn = args.spawn_rate if args.spawn_rate is not None else (QUICK["spawn_rate"] if quick else DEFAULT_SPAWN_RATE)
    step = _seconds(args.step_duration, QUICK["step_duration"] if quick else DEFAULT_STEP_DURATION, "--step-duration")
    if users < 1 or spawn <= 0:
        raise LoadtestError("--users and --spawn-rate must be positive", EXIT_INVALID)
    out = Path(args.out or f"loadtest-{name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    locustfile = Path(args.locustfile).resolve() if args.locustfile else find_locustfile()
    return Settings(
        name=name, host=(host or "").rstrip("/"), users=int(users), spawn_rate=float(spawn), step_duration=step,
        gates=args.gates, gate_timeout=_seconds(args.gate_timeout, 3 * step, "--gate-timeout"),
        rollback_at=args.rollback_at, out=out, locustfile=locustfile, reset=args.reset, config=config,
        live=args.live, keep=args.keep, quick=quick, live_state_dir=args.live_state_dir,
    )  # fmt: skip


def plan_holds(config_path: str, name: str) -> list[float] | None:
    """The holds of plan ``name`` from the config's migrations folder; None when it cannot be read
    there (the running facade is asked later, and says what is wrong)."""
    try:
        from ..config import load_config
        from ..migration.plan import load_plans

        config = load_config(config_path)
        if not config.migrations_dir:
            return None
        plans, _ = load_plans(config.migrations_dir, routes=[r.name for r in config.routes],
                              services=config.backend_names, mesh=config.mesh is not None)  # fmt: skip
    except Exception:  # noqa: BLE001 - a best-effort early check; the facade validates for real
        return None
    plan = plans.get(name)
    return None if plan is None else [float(step.hold) for step in plan.steps]


def rehearsal_problem(config_path: str, name: str) -> LoadtestError | None:
    """Why a rehearsal of plan ``name`` cannot start, known offline, or None: the config or a plan is
    invalid (exit 2), or no plan has that name (exit 3, with a did-you-mean). Checked before the
    throwaway facade starts, so a typo is not a facade that fails (or starts for nothing) and a log
    folder left behind."""
    import difflib

    from .commands import validate_all

    config, problems = validate_all(config_path)
    errors = [str(p) for p in problems if p.severity == "error"]
    if config is None or errors:
        text = "\n".join(f"    {e}" for e in errors)
        return LoadtestError(f"invalid config or plans (nothing was started):\n{text}", EXIT_INVALID)
    if not config.migrations_dir:
        return LoadtestError(f"{config_path} has no 'migrations:' folder, so there is no plan {name!r} to rehearse",
                             EXIT_NOT_FOUND)
    try:
        from ..migration.plan import load_plans
    except ModuleNotFoundError:
        return None  # a build without migrations: the facade says what is missing
    plans, _ = load_plans(config.migrations_dir, routes=[r.name for r in config.routes],
                          services=config.backend_names, mesh=config.mesh is not None)  # fmt: skip
    if name in plans:
        return None
    hint = difflib.get_close_matches(name, list(plans), n=1)
    known = f"plans: {', '.join(sorted(plans))}" if plans else "it holds no plans"
    return LoadtestError(f"no migration named {name!r} in {config.migrations_dir} ({known})"
                         + (f"; did you mean {hint[0]!r}?" if hint else ""), EXIT_NOT_FOUND)


def check_before_start(settings: Settings) -> None:
    """What can be known to fail before anything starts: an invalid config or plan, an unknown plan
    (for a rehearsal; a --live run asks the running facade), a --gates run that could never pass a
    hold, and locust missing from the interpreter that would run it."""
    invalid = None if settings.live else rehearsal_problem(settings.config, settings.name)
    if invalid is not None:
        raise invalid
    if settings.gates:
        holds = plan_holds(settings.config, settings.name)
        problem = holds and hold_problem(holds, step_duration=settings.step_duration,
                                         gate_timeout=settings.gate_timeout, rollback_at=settings.rollback_at,
                                         quick=settings.quick)  # fmt: skip
        if problem:
            raise LoadtestError(problem, EXIT_INVALID)
    problem = locust_problem(sys.executable, locust_environment(settings.locustfile))
    if problem:
        raise LoadtestError(problem, EXIT_FAILURE)


class _InterruptOnce:
    """SIGTERM (and SIGINT, unless the launcher ignores it) raise KeyboardInterrupt once; the
    signals after that are only noted, so the clean-up (stop locust, stop the throwaway facade,
    restore the live migration) is not cut short by an impatient second Ctrl-C."""

    def __init__(self) -> None:
        self.fired = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        for signum in (signal.SIGINT, signal.SIGTERM):
            current = signal.getsignal(signum)
            if current is signal.SIG_IGN:  # a background job: stays deaf to Ctrl-C, as launched
                continue
            self.previous[signum] = signal.signal(signum, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.fired:
            return
        self.fired = True
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def cmd_loadtest(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        check_before_start(settings)
        admin = AdminClient.from_args(args) if settings.live else None
    except (LoadtestError, AdminError) as exc:
        print(f"facade loadtest: {exc}", file=sys.stderr)
        return exc.exit_code
    with _InterruptOnce() as interrupts:
        return _rehearse(args, settings, admin, interrupts)


def _rehearse(
    args: argparse.Namespace, settings: Settings, admin: AdminClient | None, interrupts: _InterruptOnce
) -> int:
    from ..errors import ConfigError
    from .loadtest_facade import NoLiveCa, ThrowawayFacade, start_throwaway_facade
    from .up import ChildFailed

    throwaway: ThrowawayFacade | None = None
    if admin is None:
        try:
            throwaway = start_throwaway_facade(settings.config, log_dir=settings.out,
                                               live_state_dir=settings.live_state_dir)  # fmt: skip
        except ConfigError as exc:
            print("\n".join(str(p) for p in exc.problems), file=sys.stderr)
            return EXIT_INVALID
        except NoLiveCa as exc:
            print(f"facade loadtest: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        except ChildFailed as exc:
            print(f"facade loadtest: the rehearsal's facade did not start: {exc.report()}", file=sys.stderr)
            return EXIT_FAILURE
        except KeyboardInterrupt:
            print("facade loadtest: interrupted", file=sys.stderr)
            return 130
        admin = AdminClient(base_url=throwaway.admin_url, token=throwaway.token)
        settings = replace(settings, host=throwaway.url)
        pid = throwaway.stack.pids.get("facade")
        print(f"loadtest: rehearsing on a throwaway facade at {throwaway.url} (pid {pid}, state {throwaway.state_dir}; "
              f"the live migration is not touched); log {settings.out / 'facade.log'}", file=sys.stderr)  # fmt: skip
    rehearsal = Rehearsal(settings, admin, watch=throwaway.exited if throwaway else None)
    failure: str | None = None
    code = EXIT_OK
    restored: str | None = None
    restore_failure: str | None = None
    try:
        try:
            rehearsal.run()
        except (LoadtestError, AdminError) as exc:
            failure, code = str(exc), exc.exit_code
        except KeyboardInterrupt:
            failure, code = "interrupted", 130
    finally:
        # From here on a signal is only noted: the clean-up and the restore must run to the end.
        interrupts.fired = True
        if rehearsal.locust is not None and rehearsal.locust.poll() is None:  # a signal cut its stop short
            _signal_group(rehearsal.locust.pid, signal.SIGKILL)
            rehearsal.locust.wait()
        if throwaway is not None:
            throwaway.stop()
        if settings.live and not settings.keep and rehearsal.found is not None:
            try:
                restored = rehearsal.restore()
            except AdminError as exc:
                restore_failure = (f"COULD NOT RESTORE the live migration {settings.name}: {exc}. It may still be "
                                   f"shifting traffic; when the facade answers, run: facade migrate rollback "
                                   f"{settings.name} --to 0 --reason 'rehearsal restore'")  # fmt: skip
    if rehearsal.locust is None:  # no load ran: nothing to report
        for line in (restored and f"loadtest: {restored}", restore_failure, failure):
            if line:
                print(line if line.startswith("loadtest:") else f"facade loadtest: {line}", file=sys.stderr)
        return EXIT_FAILURE if restore_failure else code
    rows, document = rehearsal.report()
    document["error"] = failure
    document["restore"] = {"done": restored, "failed": restore_failure} if settings.live and not settings.keep else None
    out = settings.out
    (out / "steps.csv").write_text(rows_to_csv(rows))
    (out / "steps.json").write_text(json.dumps(document, indent=2) + "\n")
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(render_steps(rows, old=document["from"], new=document["to"]))
        where = (f"live migration {settings.name} is" if settings.live
                 else f"the throwaway copy of {settings.name} ended")  # fmt: skip
        print(f"\n{document['requests']} requests, {document['failures']} failed; {where} "
              f"{document['final_state']} (step {document['final_step']}); reports in {out}")  # fmt: skip
        for row in rows:
            for error, count in sorted(row.errors.items(), key=lambda e: -e[1])[:5]:
                print(f"  phase {row.phase.index}: {count} x {error}")
        for line in verdict_lines(rehearsal, settings, restored):
            print(line)
    return _exit_code(rehearsal, document, failure, code, restore_failure)


def verdict_lines(rehearsal: Rehearsal, settings: Settings, restored: str | None) -> list[str]:
    """What the rehearsal means for the real cutover, loudest first."""
    lines = [f"WARNING: {f}" for f in rehearsal.forced_past]
    if rehearsal.forced_past:
        lines.append("verdict: this plan would NOT have passed its gates (the rehearsal forced every step)")
    if not settings.live:
        lines.append("the live migration was not touched (rehearsal on a throwaway facade; --live drives it)")
    elif restored:
        lines.append(restored)
    elif settings.keep:
        lines.append(f"--keep: the live migration {settings.name} stays where the rehearsal left it")
    return lines


def _exit_code(rehearsal: Rehearsal, document: Mapping[str, Any], failure: str | None, code: int,
               restore_failure: str | None) -> int:  # fmt: skip
    if restore_failure is not None:
        print(f"facade loadtest: {restore_failure}", file=sys.stderr)
        if failure is not None:
            print(f"facade loadtest: {failure}", file=sys.stderr)
        return EXIT_FAILURE
    if failure is not None:
        print(f"facade loadtest: {failure}", file=sys.stderr)
        return code
    if document["failures"]:
        print(f"facade loadtest: {document['failures']} requests failed", file=sys.stderr)
        return EXIT_FAILURE
    if rehearsal.gate_failure is not None:
        print(f"facade loadtest: gate stopped the rehearsal at {rehearsal.gate_failure}", file=sys.stderr)
        return EXIT_GATE_FAILED
    if rehearsal.forced_past:
        print(f"facade loadtest: {'; '.join(rehearsal.forced_past)}: the plan would not have passed", file=sys.stderr)
        return EXIT_GATE_FAILED
    return EXIT_OK
