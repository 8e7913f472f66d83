"""The shadow sender: queue, worker tasks, copies to the candidate (and the primary, for noise), diffs, counters.

Nothing here raises into the proxy, and nothing runs before the client has its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ..diff import (
    DEFAULT_COMPARE_HEADERS,
    DEFAULT_REDACT_HEADERS,
    DiffRing,
    DiffSample,
    IgnoreRules,
    NoiseModel,
    Redaction,
    ResponseSample,
    diff_responses,
)
from ..errors import ProxyError
from ..headers import filter_response_headers
from ..telemetry import LogLinearHistogram
from ..telemetry.prometheus import escape_label_value
from ..upstream import Outcome
from ..upstream.h1 import (
    ConnectFailed,
    PoolClosed,
    PoolExhausted,
    ReplayableBody,
    ResponseInvalid,
    UpstreamError,
    UpstreamResponse,
)

if TYPE_CHECKING:
    from ..config import ShadowSpec
    from ..split import Split
    from ..upstream import Upstreams

logger = logging.getLogger("facade.shadow")

from .policy import (
    _IDEMPOTENT,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_RING_SIZE,
    DEFAULT_TIMEOUT,
    NOISE_METHODS,
    decoded,
    identical,
    mirrorable,
    mirrored_headers,
)

# -- options, tickets, counters ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShadowOptions:
    """How one route's responses are compared (a migration plan may set them per route)."""

    ignore: IgnoreRules = dataclasses.field(default_factory=IgnoreRules)
    compare_headers: tuple[str, ...] = DEFAULT_COMPARE_HEADERS
    learn_noise: bool = True

    @classmethod
    def of(
        cls,
        *,
        ignore: Iterable[str] = (),
        compare_headers: Iterable[str] = DEFAULT_COMPARE_HEADERS,
        learn_noise: bool = True,
    ) -> ShadowOptions:
        """Validate rule texts (``$.generated_at``, ``headers.date``); raises ValueError naming a bad one."""
        return cls(IgnoreRules.parse(list(ignore)), tuple(h.lower() for h in compare_headers), learn_noise)


def sender_options(spec: ShadowSpec | None) -> dict[str, Any]:
    """``ShadowSender`` keyword arguments from the config's ``shadow:`` section (a ``ShadowSpec``).

    Keys the section leaves out keep the sender's defaults; configured ``redact.headers`` are
    redacted in addition to the built-in ones (a config cannot un-redact Authorization).
    """
    options: dict[str, Any] = {}
    if spec is None:
        return options
    for name in ("concurrency", "queue_size", "max_body", "timeout", "max_queued_bytes", "host_suffix",
                 "learn_noise", "ring_size"):
        value = getattr(spec, name)
        if value is not None:
            options[name] = value
    if spec.redact_headers:
        options["redact_headers"] = tuple(dict.fromkeys((*DEFAULT_REDACT_HEADERS, *spec.redact_headers)))
    if spec.redact_fields:
        options["redact_fields"] = tuple(spec.redact_fields)
    return options


class ShadowTicket:
    """A reserved mirroring slot for one request; hand it back with ``submit()`` or ``cancel()``.

    A ticket the proxy drops without either (an aborted response) frees its slot when it is garbage
    collected: the sender tracks outstanding tickets weakly, so a slot can never leak.
    """

    __slots__ = ("__weakref__", "max_body", "method", "route", "split")

    def __init__(self, route: str, split: Split, method: str, max_body: int) -> None:
        self.route = route
        self.split = split
        self.method = method
        self.max_body = max_body

    def __repr__(self) -> str:
        return f"<ShadowTicket {self.method} route={self.route} -> {self.split.candidate}>"


class _Failed(NamedTuple):
    kind: str  # "timeout" | "error" | "unavailable"
    detail: str


@dataclass(slots=True)
class _Job:
    ticket: ShadowTicket
    target: str
    headers: list[tuple[str, str]]
    body: bytes | None
    primary: ResponseSample
    size: int


# Result labels of facade_shadow_requests_total, and reasons of facade_shadow_dropped_total.
RESULTS = ("compared", "timeout", "error", "unavailable")
# "lost": copies a sender process (``facade.shadow.process``) held when it died.
DROP_REASONS = ("capacity", "bytes", "request_body_truncated", "stopped", "lost")


# -- the sender ----------------------------------------------------------------------------------------


class ShadowSender:
    """Mirrors requests to a split's candidate from a bounded queue and diffs the responses.

    ``upstreams`` are the runtime's pools (the copy goes through the candidate's pool: its load
    balancing, TLS and outlier detection); ``telemetry`` receives ``record_diff`` per comparison.
    """

    def __init__(
        self,
        *,
        upstreams: Upstreams,
        telemetry: Any = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_body: int = DEFAULT_MAX_BODY,
        timeout: float = DEFAULT_TIMEOUT,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        host_suffix: bool = True,
        learn_noise: bool = True,
        ignore: Iterable[str] = (),
        compare_headers: Iterable[str] = DEFAULT_COMPARE_HEADERS,
        redact_headers: Iterable[str] = DEFAULT_REDACT_HEADERS,
        redact_fields: Iterable[str] = (),
        ring_size: int = DEFAULT_RING_SIZE,
    ) -> None:
        if concurrency < 1 or queue_size < 0 or max_body < 0 or timeout <= 0 or max_queued_bytes < 0:
            raise ValueError("shadow limits must be positive: concurrency >= 1, queue_size/max_body >= 0, timeout > 0")
        self.upstreams = upstreams
        self.telemetry = telemetry
        self.concurrency = concurrency
        self.queue_size = queue_size
        self.max_body = max_body
        self.timeout = timeout
        self.max_queued_bytes = max_queued_bytes
        self.host_suffix = host_suffix
        self.options = ShadowOptions.of(ignore=ignore, compare_headers=compare_headers, learn_noise=learn_noise)
        self.route_options: dict[str, ShadowOptions] = {}
        self.noise = NoiseModel()
        self.ring = DiffRing(ring_size, redaction=Redaction.of(headers=redact_headers, fields=redact_fields))
        self._pending: weakref.WeakSet[ShadowTicket] = weakref.WeakSet()
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        # Copies sent straight from a worker (no noise copy beside them): their worker task's deadline,
        # enforced by one watchdog task instead of a timer per copy (a timer costs ~6 us per copy).
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._in_flight = 0
        self._queued_bytes = 0
        self._stopped = False
        self.results: Counter[tuple[str, str]] = Counter()  # (route, result)
        self.dropped: Counter[tuple[str, str]] = Counter()  # (route, reason)
        self.skipped_unsafe: Counter[str] = Counter()  # route
        self.noise_copies: Counter[str] = Counter()  # route: second copies sent to the primary
        self.copies: Counter[str] = Counter()  # path ("inline" / "process"): copies queued here or handed over
        # (route, step) -> how long the candidate took to answer copies: in a shadow step the compare
        # report has no real traffic on the new side, so this is the only latency seen of it.
        self.latency: dict[tuple[str, str], LogLinearHistogram] = {}

    def __repr__(self) -> str:
        return (
            f"ShadowSender(concurrency={self.concurrency}, queue_size={self.queue_size}, "
            f"max_body={self.max_body}, timeout={self.timeout:g}, busy={self.reserved})"
        )

    # -- configuration -------------------------------------------------------------------------------

    def configure_route(self, route: str, options: ShadowOptions | None) -> None:
        """Use ``options`` for ``route`` from now on (``None``: back to the sender's defaults)."""
        if options is None:
            self.route_options.pop(route, None)
        else:
            self.route_options[route] = options

    def options_for(self, route: str) -> ShadowOptions:
        return self.route_options.get(route, self.options)

    @property
    def capacity(self) -> int:
        """Copies that may be outstanding at once: the workers' plus the queue's."""
        return self.concurrency + self.queue_size

    @property
    def reserved(self) -> int:
        """Slots in use: tickets the proxy holds, queued copies, copies being sent."""
        return len(self._pending) + self._queue.qsize() + self._in_flight

    # -- the proxy's side (never raises, never waits) ---------------------------------------------------

    def begin(self, *, route: str, split: Split, method: str) -> ShadowTicket | None:
        """A ticket when this request should be mirrored; ``None`` for an unsafe method the split does not
        allow, at capacity (a drop, counted per route) or once stopped."""
        if not mirrorable(method, split):
            self.skipped_unsafe[route] += 1
            return None
        if self._stopped:
            self.dropped[(route, "stopped")] += 1
            return None
        if self.reserved >= self.capacity:
            self.dropped[(route, "capacity")] += 1
            return None
        ticket = ShadowTicket(route, split, method, self.max_body)
        self._pending.add(ticket)
        return ticket

    def submit(
        self,
        ticket: ShadowTicket,
        *,
        target: str,
        headers: Sequence[tuple[str, str]],
        request_body: bytes | None,
        request_truncated: bool,
        primary_status: int,
        primary_headers: Sequence[tuple[bytes, bytes]],
        primary_body: bytes,
        primary_truncated: bool,
    ) -> None:
        """Queue the copy of a request whose primary response the client already has."""
        try:
            self._submit(
                ticket,
                target,
                headers,
                request_body,
                request_truncated,
                primary_status,
                primary_headers,
                primary_body,
                primary_truncated,
            )
        except Exception:  # the proxy must never see a shadow failure
            logger.exception("shadow: could not queue a copy for route %s", ticket.route)
            self._pending.discard(ticket)

    def cancel(self, ticket: ShadowTicket) -> None:
        """Release the slot of a request whose primary failed: there is nothing to compare with."""
        self._pending.discard(ticket)

    def _submit(
        self,
        ticket: ShadowTicket,
        target: str,
        headers: Sequence[tuple[str, str]],
        request_body: bytes | None,
        request_truncated: bool,
        primary_status: int,
        primary_headers: Sequence[tuple[bytes, bytes]],
        primary_body: bytes,
        primary_truncated: bool,
    ) -> None:
        if ticket not in self._pending:
            return  # cancelled or submitted already
        self._pending.discard(ticket)
        route = ticket.route
        if self._stopped:
            self.dropped[(route, "stopped")] += 1
            return
        if request_truncated:
            # Replaying a prefix of the body would send the candidate a different request.
            self.dropped[(route, "request_body_truncated")] += 1
            return
        size = len(request_body or b"") + len(primary_body)
        if self._queued_bytes + size > self.max_queued_bytes:
            self.dropped[(route, "bytes")] += 1
            return
        primary = ResponseSample(primary_status, primary_headers, primary_body, primary_truncated)
        job = _Job(ticket, target, list(headers), request_body, primary, size)
        self._queued_bytes += size
        self._ensure_workers()
        self._queue.put_nowait(job)
        self.copies["inline"] += 1

    def add_noise(self, route: str, paths: Iterable[str]) -> None:
        """Ignore ``paths`` of ``route`` as noise from now on (learned by another process)."""
        self.noise.add(route, paths)

    async def flush(self) -> tuple[str, ...]:
        """Results other processes hold for this sender are here (none: every copy is sent here); the
        names of those that did not answer in time (``ProcessShadowSender``: its child)."""
        return ()

    # -- workers ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker tasks (``submit`` also starts them on first use)."""
        self._stopped = False
        self._ensure_workers()

    async def stop(self) -> None:
        """Stop: no new tickets; cancel the workers (copies in flight are abandoned); drop what is queued."""
        self._stopped = True
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        self._deadlines.clear()
        self._expired.clear()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        while not self._queue.empty():
            job = self._queue.get_nowait()
            self._queued_bytes -= job.size
            self.dropped[(job.ticket.route, "stopped")] += 1
            self._queue.task_done()

    async def drain(self, timeout: float = 5.0) -> bool:
        """Wait (at most ``timeout`` s) until no ticket, queued copy or send is outstanding; True if idle."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.reserved:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def _ensure_workers(self) -> None:
        if self._stopped or self._workers:
            return
        self._workers = [asyncio.create_task(self._work(), name=f"shadow-worker-{i}") for i in range(self.concurrency)]
        self._workers.append(asyncio.create_task(self._watch(), name="shadow-watchdog"))

    async def _watch(self) -> None:
        """Cancel the sends past their deadline (``_send`` turns that into a ``timeout``): a copy times out
        between ``timeout`` and ``timeout`` plus a quarter of it (at most 0.25 s) after it started."""
        tick = min(self.timeout / 4, 0.25)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for task, deadline in list(self._deadlines.items()):
                if now >= deadline:
                    del self._deadlines[task]
                    self._expired.add(task)
                    task.cancel()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            self._in_flight += 1
            try:
                await self._process(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("shadow: comparing a copy on route %s failed", job.ticket.route)
                self.results[(job.ticket.route, "error")] += 1
            finally:
                self._in_flight -= 1
                self._queued_bytes -= job.size
                self._queue.task_done()

    async def _process(self, job: _Job) -> None:
        ticket = job.ticket
        route, split = ticket.route, ticket.split
        options = self.options_for(route)
        learn = options.learn_noise and ticket.method in NOISE_METHODS
        second: ResponseSample | _Failed | None = None
        candidate: ResponseSample | _Failed
        if learn:
            # Diffy: a second copy to the old backend; what differs between two old answers is noise.
            self.noise_copies[route] += 1
            to_candidate = self._send(split.candidate, job, suffix=self.host_suffix, timed=(route, split.step_label))
            candidate, second = await asyncio.gather(to_candidate, self._send(split.primary, job, suffix=False))
        else:
            candidate = await self._send(split.candidate, job, suffix=self.host_suffix, timed=(route, split.step_label),
                                         watched=True)  # no gather: one task less per copy
        if isinstance(candidate, _Failed):
            self.results[(route, candidate.kind)] += 1
            logger.debug("shadow copy to %s failed (%s): %s", split.candidate, candidate.kind, candidate.detail)
            return
        limit = max(ticket.max_body, 1)
        primary = decoded(job.primary, limit)
        candidate = decoded(candidate, limit)
        if isinstance(second, ResponseSample):
            second = decoded(second, limit)
            # A status flip between two old answers is a failure, not noise: learning "status" would
            # hide every status difference of the route from then on.
            if second.status == primary.status:
                self.noise.learn(route, primary, second, compare_headers=options.compare_headers)
        self.results[(route, "compared")] += 1
        if identical(primary, candidate, options.compare_headers):
            # The common case of a healthy migration: nothing can differ, so no parse and no walk.
            if self.telemetry is not None:
                self.telemetry.record_diff(route=route, step=split.step_label, differing=False)
            return
        result = diff_responses(
            primary,
            candidate,
            ignore=options.ignore,
            compare_headers=options.compare_headers,
            noise=self.noise.paths(route),
        )
        if self.telemetry is not None:
            self.telemetry.record_diff(
                route=route, step=split.step_label, differing=result.differs, noise_fields=result.noise_suppressed
            )
        if result.differs:
            self.ring.add(
                DiffSample(
                    route=route,
                    step=split.step_label,
                    method=ticket.method,
                    target=job.target,
                    primary_status=primary.status,
                    candidate_status=candidate.status,
                    result=result,
                )
            )

    async def _send(
        self, service: str, job: _Job, *, suffix: bool, timed: tuple[str, str] | None = None, watched: bool = False
    ) -> ResponseSample | _Failed:
        """One copy to ``service`` through its pool; never raises (a failure is a value). With ``timed``
        (route, step), the time to the whole (bounded) answer goes into ``self.latency``. ``watched``: the
        caller is a worker task awaiting this send alone, and ``_watch`` enforces the timeout."""
        pool = self.upstreams.get(service)
        if pool is None:
            return _Failed("unavailable", f"no service named {service!r}")
        try:
            endpoint = pool.pick()
            client = pool.h1
        except ProxyError as exc:
            return _Failed("unavailable", str(exc))
        if client.exhausted:
            # Waiting for a connection would hold one the proxy's next request needs: drop the copy.
            return _Failed("unavailable", f"every connection of service {service} is busy")
        headers = mirrored_headers(job.headers, host_suffix=suffix)
        method = job.ticket.method
        body: ReplayableBody | None = None
        if job.body:
            headers.append(("content-length", str(len(job.body))))
            body = ReplayableBody(_one_chunk(job.body))
        outcome: Outcome | None = Outcome.RESET
        started = time.perf_counter()
        task = asyncio.current_task() if watched else None
        endpoint.begin()
        try:
            if task is not None:
                self._deadlines[task] = asyncio.get_running_loop().time() + self.timeout
            async with contextlib.nullcontext() if task is not None else asyncio.timeout(self.timeout):
                resp = await client.request(
                    endpoint.address, method, endpoint.target_for(job.target), headers, body,
                    idempotent=method in _IDEMPOTENT,
                )
                try:
                    outcome = Outcome.from_status(resp.status)
                    data, truncated = await _read_bounded(resp, job.ticket.max_body)
                finally:
                    resp.release()  # back to the pool only when read whole; a truncated body closes it
                if timed is not None:
                    hist = self.latency.get(timed)
                    if hist is None:
                        hist = self.latency[timed] = LogLinearHistogram()
                    hist.record(time.perf_counter() - started)
                return ResponseSample(resp.status, filter_response_headers(resp.raw_headers), data, truncated)
        except (PoolExhausted, PoolClosed) as exc:
            outcome = None  # the service is saturated or was reconfigured: not this endpoint's failure
            return _Failed("unavailable", f"{service}: {exc}")
        except asyncio.CancelledError:
            if task is None or task not in self._expired or self._stopped:
                raise
            self._expired.discard(task)
            task.uncancel()  # the watchdog's cancel: this send timed out
            if client.exhausted:
                outcome = None
                return _Failed("unavailable", f"every connection of service {service} stayed busy")
            outcome = Outcome.TIMEOUT
            return _Failed("timeout", f"no answer from {endpoint.url} within {self.timeout:g}s")
        except TimeoutError:
            if client.exhausted:
                outcome = None
                return _Failed("unavailable", f"every connection of service {service} stayed busy")
            outcome = Outcome.TIMEOUT
            return _Failed("timeout", f"no answer from {endpoint.url} within {self.timeout:g}s")
        except ConnectFailed as exc:
            outcome = Outcome.CONNECT_FAILURE
            return _Failed("error", f"connect to {endpoint.url}: {exc}")
        except ResponseInvalid as exc:
            outcome = Outcome.GATEWAY_ERROR
            return _Failed("error", f"{endpoint.url}: {exc}")
        except ValueError as exc:
            outcome = None  # a header the client refuses to serialize: nothing was sent
            return _Failed("error", f"copy cannot be sent: {exc}")
        except (UpstreamError, OSError) as exc:
            return _Failed("error", f"{endpoint.url}: {exc!r}")
        finally:
            if task is not None:
                self._deadlines.pop(task, None)
            endpoint.end()
            if outcome is not None:
                pool.report(endpoint, outcome)

    # -- views -----------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Queue depth, sends, drops and errors, per route and in total (``GET /shadow``)."""
        routes = sorted({r for r, _ in self.results} | {r for r, _ in self.dropped} | set(self.skipped_unsafe))
        per_route = {
            route: {
                "results": {k: self.results[(route, k)] for k in RESULTS if self.results[(route, k)]},
                "dropped": {k: self.dropped[(route, k)] for k in DROP_REASONS if self.dropped[(route, k)]},
                "skipped_unsafe": self.skipped_unsafe[route],
                "noise_copies": self.noise_copies[route],
                "noise_paths": sorted(self.noise.paths(route)),
                "candidate_latency_ms": {
                    step: _quantiles_ms(hist) for (r, step), hist in sorted(self.latency.items()) if r == route
                },
            }
            for route in routes
        }
        return {
            "running": bool(self._workers) and not self._stopped,
            "concurrency": self.concurrency,
            "queue_size": self.queue_size,
            "queue_depth": self._queue.qsize(),
            "in_flight": self._in_flight,
            "pending": len(self._pending),
            "queued_bytes": self._queued_bytes,
            "max_body": self.max_body,
            "timeout_s": self.timeout,
            "host_suffix": self.host_suffix,
            "sender": "inline",
            "copies": {path: self.copies[path] for path in ("process", "inline")},
            "totals": {
                "mirrored": sum(self.results.values()),
                **{result: sum(v for (_, k), v in self.results.items() if k == result) for result in RESULTS},
                "dropped": sum(self.dropped.values()),
                "skipped_unsafe": sum(self.skipped_unsafe.values()),
            },
            "routes": per_route,
        }

    # -- several processes (facade serve --workers N) ------------------------------------------------

    def take_delta(self, shipped: dict[Any, Any]) -> dict[str, Any]:
        """The counters, candidate latencies and noise paths added since the last call (``shipped``: the
        caller's memory, updated here), as plain data a supervisor's sender ``absorb``s (docs/workers.md)."""
        counters: dict[str, list[tuple[Any, int]]] = {}
        for name, counter in (("results", self.results), ("dropped", self.dropped),
                              ("skipped_unsafe", self.skipped_unsafe), ("noise_copies", self.noise_copies),
                              ("copies", self.copies)):
            before = shipped.setdefault(("shadow", name), {})
            fresh = [(key, n - before.get(key, 0)) for key, n in counter.items() if n != before.get(key, 0)]
            before.update(counter)
            if fresh:
                counters[name] = fresh
        latency = []
        for key, hist in self.latency.items():
            before = shipped.setdefault(("shadow-latency", key), {})
            if hist.total != sum(before.values()):
                latency.append((key, hist.subtract(before).counts))
                shipped[("shadow-latency", key)] = dict(hist.counts)
        noise = {}
        for route in self.noise.to_json():
            known = shipped.setdefault(("shadow-noise", route), set())
            paths = self.noise.paths(route) - known
            if paths:
                noise[route] = sorted(paths)
                known.update(paths)
        return {"counters": counters, "latency": latency, "noise": noise}

    def absorb(self, delta: Mapping[str, Any]) -> dict[str, frozenset[str]]:
        """Add another process's ``take_delta``; returns the noise paths new to this sender, per route."""
        counters: dict[str, Counter[Any]] = {"results": self.results, "dropped": self.dropped,
                                             "skipped_unsafe": self.skipped_unsafe, "noise_copies": self.noise_copies,
                                             "copies": self.copies}
        for name, fresh in delta.get("counters", {}).items():
            counter = counters[name]
            for key, n in fresh:
                counter[key] += n
        for key, counts in delta.get("latency", ()):
            hist = self.latency.get(key)
            if hist is None:
                hist = self.latency[key] = LogLinearHistogram()
            hist.merge(counts)
        added = {route: self.noise.add(route, paths) for route, paths in delta.get("noise", {}).items()}
        return {route: paths for route, paths in added.items() if paths}

    def gauges(self) -> dict[str, int]:
        """What this process's sender holds now (a worker's; ``GET /workers`` shows each worker's)."""
        return {"queue_depth": self._queue.qsize(), "in_flight": self._in_flight, "pending": len(self._pending),
                "queued_bytes": self._queued_bytes}

    def prometheus_text(self) -> str:
        """The sender's counters and gauges in the Prometheus text format 0.0.4 (to append to ``/metrics``)."""
        lines: list[str] = []

        def header(name: str, kind: str, text: str) -> None:
            lines.extend((f"# HELP {name} {text}", f"# TYPE {name} {kind}"))

        def label(value: str) -> str:
            return escape_label_value(value)

        header("facade_shadow_requests_total", "counter", "Shadow copies sent to the candidate, by result.")
        for (route, result), n in sorted(self.results.items()):
            lines.append(f'facade_shadow_requests_total{{route="{label(route)}",result="{result}"}} {n}')
        header(
            "facade_shadow_dropped_total",
            "counter",
            "Requests that should have been mirrored but were not (capacity, byte budget, truncated body, stop).",
        )
        for (route, reason), n in sorted(self.dropped.items()):
            lines.append(f'facade_shadow_dropped_total{{route="{label(route)}",reason="{reason}"}} {n}')
        header(
            "facade_shadow_skipped_unsafe_total",
            "counter",
            "Requests not mirrored because their method is unsafe and the split does not allow it.",
        )
        for route, n in sorted(self.skipped_unsafe.items()):
            lines.append(f'facade_shadow_skipped_unsafe_total{{route="{label(route)}"}} {n}')
        header("facade_shadow_copies_total", "counter",
               "Shadow copies queued by path: inline (this process) or process (handed to the sender process).")
        for path in ("inline", "process"):
            lines.append(f'facade_shadow_copies_total{{path="{path}"}} {self.copies[path]}')
        header("facade_shadow_queue_depth", "gauge", "Shadow copies waiting for a worker.")
        lines.append(f"facade_shadow_queue_depth {self._queue.qsize()}")
        header("facade_shadow_in_flight", "gauge", "Shadow copies being sent or compared.")
        lines.append(f"facade_shadow_in_flight {self._in_flight}")
        return "\n".join(lines) + "\n"


def _quantiles_ms(hist: LogLinearHistogram) -> dict[str, float | int | None]:
    p50, p95, p99 = hist.quantiles((0.50, 0.95, 0.99))
    values = {"p50": p50, "p95": p95, "p99": p99}
    return {"count": hist.total} | {k: None if v is None else round(v * 1000, 3) for k, v in values.items()}


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _read_bounded(resp: UpstreamResponse, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the body, and whether there was more (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    while not resp.at_eof():
        chunk = await resp.readany()
        if not chunk:
            break
        room = limit - size
        if len(chunk) > room:
            chunks.append(chunk[:room])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


