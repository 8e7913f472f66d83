"""Shadow traffic: mirror a copy of a route's requests to the candidate and diff the two answers.

Envoy's ``request_mirror_policies`` for the sending, Twitter's Diffy for the comparing. Per mirrored
request, in order:

1. ``begin()`` (proxy, before forwarding): refuse unsafe methods the split does not allow, and refuse
   when the sender is at capacity (counted as a drop); else hand out a ticket, which reserves a slot;
2. the proxy forwards the primary request as usual, keeping bounded copies (``ticket.max_body``) of
   the request body and the primary response body;
3. ``submit()`` (proxy, after the client has its whole response) queues the copy, or ``cancel()``
   releases the slot when the primary failed;
4. a fixed pool of worker tasks sends the copy to the candidate (marker header ``x-facade-shadow: 1``,
   Host suffixed ``-shadow``) and, to learn noise, a second copy to the primary; both with a timeout,
   through the service's own HTTP/1.1 client (its connections and ``max_connections``; a copy that
   finds every connection busy is not sent: it never waits for, or takes, a connection the proxy needs);
5. the responses are diffed (ignore rules, learned noise), the comparison is counted in telemetry
   (the ``diff_rate`` gate reads it) and a differing one is kept, redacted, in a bounded ring.

Nothing here raises into the proxy, and nothing runs before the client has its answer: the primary
response is never changed and never waits. Memory is bounded by the slot count (``concurrency +
queue_size`` copies of at most ``max_body`` bytes each) and by ``max_queued_bytes``.

``ShadowFeature`` attaches a sender to a runtime and serves ``GET /compare``, ``GET /diffs`` and
``GET /shadow`` on the admin listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import weakref
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .compare import compare
from .diff import (
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
from .errors import ProxyError
from .feature import Feature
from .headers import filter_response_headers
from .telemetry import LogLinearHistogram
from .telemetry.prometheus import escape_label_value
from .upstream import Outcome
from .upstream.h1 import (
    ConnectFailed,
    PoolClosed,
    PoolExhausted,
    ReplayableBody,
    ResponseInvalid,
    UpstreamError,
    UpstreamResponse,
)
from .yamlfile import parse_duration

if TYPE_CHECKING:
    from .config import Config, ShadowSpec
    from .runtime import FacadeRuntime
    from .split import Split
    from .upstream import Upstreams

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_QUEUED_BYTES",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_TIMEOUT",
    "SAFE_METHODS",
    "SHADOW_HEADER",
    "ShadowFeature",
    "ShadowOptions",
    "ShadowSender",
    "ShadowTicket",
    "mirrorable",
    "mirrored_headers",
    "parse_window",
    "resolve_step",
    "sender_options",
    "shadow_host",
]

logger = logging.getLogger("facade.shadow")

SHADOW_HEADER = "x-facade-shadow"
# RFC 9110 safe methods. Anything else (POST, PUT, PATCH, DELETE, invented methods) may change state
# on the candidate, so it is mirrored only when the split says ``shadow_unsafe``.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Noise learning costs a second request to the old backend: by default only for GET (Diffy's use).
NOISE_METHODS = frozenset({"GET"})
DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_CONCURRENCY = 16
DEFAULT_QUEUE_SIZE = 256
DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_QUEUED_BYTES = 64 * 1024 * 1024
DEFAULT_RING_SIZE = 200
# RFC 9110 9.2.2, as the proxy's: a copy that met a dead keep-alive connection may go again only then.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# The copy's body is sent from bytes with its own Content-Length; the client's framing goes.
_REFRAMED = frozenset({"content-length", "transfer-encoding", SHADOW_HEADER})


# -- pure decisions ----------------------------------------------------------------------------------


def mirrorable(method: str, split: Split) -> bool:
    """Whether a request with ``method`` may be mirrored under ``split`` (safe methods, or the split allows all)."""
    return method in SAFE_METHODS or split.shadow_unsafe


def shadow_host(host: str) -> str:
    """Envoy's shadow authority: ``-shadow`` after the host name, before any port.

    ``shop.local`` -> ``shop.local-shadow``; ``shop.local:8080`` -> ``shop.local-shadow:8080``;
    ``[::1]:8080`` -> ``[::1]-shadow:8080``.
    """
    if host.startswith("["):
        end = host.find("]")
        if end > 0:
            return f"{host[: end + 1]}-shadow{host[end + 1 :]}"
    name, sep, port = host.rpartition(":")
    if sep and name and ":" not in name:
        return f"{name}-shadow:{port}"
    return f"{host}-shadow"


def mirrored_headers(headers: Iterable[tuple[str, str]], *, host_suffix: bool) -> list[tuple[str, str]]:
    """The headers of a mirrored copy: the primary's (already sanitized by the proxy), Host suffixed with
    ``-shadow`` when ``host_suffix``, the client's framing dropped, and the marker ``x-facade-shadow: 1``
    exactly once (a client cannot send its own)."""
    out: list[tuple[str, str]] = []
    for name, value in headers:
        lower = name.lower()
        if lower in _REFRAMED:
            continue
        if lower == "host" and host_suffix and value:
            value = shadow_host(value)
        out.append((name, value))
    out.append((SHADOW_HEADER, "1"))
    return out


def parse_window(text: str) -> float:
    """``"5m"`` / ``"90s"`` / ``"300"`` (plain seconds) -> seconds. Raises ValueError."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = parse_duration(text)
    if not seconds > 0:
        raise ValueError(f"window must be positive, got {text!r}")
    return seconds


def decoded(sample: ResponseSample, limit: int) -> ResponseSample:
    """``sample`` with a gzip / deflate body decoded (at most ``limit`` bytes), so that two backends that
    compress differently still compare by content. Anything else is returned as it is."""
    encoding = (sample.header("content-encoding") or "").strip().lower()
    if encoding not in ("gzip", "x-gzip", "deflate") or not sample.body:
        return sample
    attempts = (31,) if encoding != "deflate" else (15, -15)  # deflate: zlib-wrapped, or raw as some servers send
    for wbits in attempts:
        inflater = zlib.decompressobj(wbits)
        try:
            body = inflater.decompress(sample.body, limit)
        except zlib.error:
            continue
        truncated = sample.truncated or bool(inflater.unconsumed_tail) or not inflater.eof
        headers = [(k, v) for k, v in sample.headers if k not in ("content-encoding", "content-length")]
        return ResponseSample(sample.status, headers, body, truncated)
    return sample


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
DROP_REASONS = ("capacity", "bytes", "request_body_truncated", "stopped")


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
        self._in_flight = 0
        self._queued_bytes = 0
        self._stopped = False
        self.results: Counter[tuple[str, str]] = Counter()  # (route, result)
        self.dropped: Counter[tuple[str, str]] = Counter()  # (route, reason)
        self.skipped_unsafe: Counter[str] = Counter()  # route
        self.noise_copies: Counter[str] = Counter()  # route: second copies sent to the primary
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
        to_candidate = self._send(split.candidate, job, suffix=self.host_suffix, timed=(route, split.step_label))
        second: ResponseSample | _Failed | None = None
        if learn:
            # Diffy: a second copy to the old backend; what differs between two old answers is noise.
            self.noise_copies[route] += 1
            candidate, second = await asyncio.gather(to_candidate, self._send(split.primary, job, suffix=False))
        else:
            candidate = await to_candidate  # no gather: one task less per copy
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
        result = diff_responses(
            primary,
            candidate,
            ignore=options.ignore,
            compare_headers=options.compare_headers,
            noise=self.noise.paths(route),
        )
        self.results[(route, "compared")] += 1
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
        self, service: str, job: _Job, *, suffix: bool, timed: tuple[str, str] | None = None
    ) -> ResponseSample | _Failed:
        """One copy to ``service`` through its pool; never raises (a failure is a value). With ``timed``
        (route, step), the time to the whole (bounded) answer goes into ``self.latency``."""
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
        endpoint.begin()
        try:
            async with asyncio.timeout(self.timeout):
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
                              ("skipped_unsafe", self.skipped_unsafe), ("noise_copies", self.noise_copies)):
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
                                             "skipped_unsafe": self.skipped_unsafe, "noise_copies": self.noise_copies}
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


# -- the feature: admin endpoints ----------------------------------------------------------------------


class _BadQuery(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error"))
        self.status = status
        self.body = body


def _route_param(runtime: FacadeRuntime, request: Request) -> str:
    route = request.query_params.get("route", "").strip()
    names = [r.name for r in runtime.config.routes]
    if not route:
        raise _BadQuery(400, {"error": "give the route: ?route=NAME", "routes": names})
    if route not in names:
        raise _BadQuery(404, {"error": f"no route named {route!r}", "routes": names})
    return route


def compare_view(runtime: FacadeRuntime, params: Mapping[str, str]) -> dict[str, Any]:
    """``GET /compare``: the route's old (primary) vs new (candidate) backend over a step or a window."""
    route = params["route"]
    step = params.get("step") or None
    window_text = params.get("window") or None
    if step is not None and window_text is not None:
        raise _BadQuery(400, {"error": "give step= or window=, not both"})
    window = None
    if window_text is not None:
        try:
            window = parse_window(window_text)
        except ValueError as exc:
            raise _BadQuery(400, {"error": f"window: {exc}"}) from None
    split = runtime.holder.current.splits.get(route)
    if step is not None and step.isdigit():
        labels = _known_steps(runtime, route, split)
        try:
            step = resolve_step(step, labels)
        except ValueError as exc:
            raise _BadQuery(400, {"error": str(exc), "steps": sorted(set(labels))}) from None
    old = params.get("old") or (split.primary if split is not None else None)
    new = params.get("new") or (split.candidate if split is not None else None)
    if old is None or new is None:
        raise _BadQuery(400, {"error": f"route {route!r} has no migration in force: give old= and new= backends"})
    telemetry = runtime.telemetry
    try:
        old_stats = telemetry.side_stats(route, old, step=step, window=window)
        new_stats = telemetry.side_stats(route, new, step=step, window=window)
        diffs = telemetry.diff_counts(route, step=step, window=window)
    except ValueError as exc:
        raise _BadQuery(400, {"error": str(exc)}) from None
    comparison = compare(old_stats, new_stats, diffs)
    return {
        "route": route,
        "old_backend": old,
        "new_backend": new,
        "step": step if step is not None else (None if window is not None else telemetry.current_step(route)),
        "window_s": window,
        "migration_step": split.step_label if split is not None else None,
        **comparison.to_json(),
    }


def resolve_step(number: str, labels: Iterable[str]) -> str:
    """``--step 3`` -> the one known label of step 3 (``"extract-catalog step 3: weight 25%"``, or ``"3:..."``).
    Raises ValueError when no label or more than one matches."""
    matches = sorted({lab for lab in labels if f" step {number}:" in lab or lab.startswith(f"{number}:")})
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ValueError(f"no step {number} known on this route: give its label")
    raise ValueError(f"step {number} is ambiguous ({' / '.join(matches)}): give its label")


def _known_steps(runtime: FacadeRuntime, route: str, split: Split | None) -> list[str]:
    labels = [split.step_label] if split is not None and split.step_label else []
    # Telemetry may list every step it has windows for (past steps too); the split in force always counts.
    return labels + runtime.telemetry.steps(route)


class ShadowFeature(Feature):
    """Shadow mirroring as a runtime feature: the sender's lifecycle and its admin endpoints.

    ``ShadowFeature.attach(runtime)`` (before ``runtime.start()``) creates the sender, installs it
    (``runtime.install_shadow``: every later snapshot carries it) and adds ``GET /compare``,
    ``GET /diffs`` and ``GET /shadow`` to the admin listener and the sender's counters to ``/metrics``.
    """

    def __init__(self, runtime: FacadeRuntime, sender: ShadowSender) -> None:
        self.runtime = runtime
        self.sender = sender
        self._spec = runtime.config.shadow  # the shadow: section the sender was built from

    def __repr__(self) -> str:
        return f"ShadowFeature({self.sender!r})"

    @classmethod
    def attach(cls, runtime: FacadeRuntime, **options: Any) -> ShadowFeature:
        """Create a ``ShadowSender`` over the runtime's pools and telemetry and plug it in.

        The sender is sized by the config's ``shadow:`` section (``sender_options``); ``options`` override it.
        """
        options = sender_options(runtime.config.shadow) | options
        sender = ShadowSender(upstreams=runtime.upstreams, telemetry=runtime.telemetry, **options)
        feature = runtime.add_feature(cls(runtime, sender))
        runtime.install_shadow(sender)
        return feature

    async def start(self) -> None:
        # Another feature may have installed other pools after attach (the mesh's mTLS pools):
        # copies must go through the pools the proxy uses.
        self.sender.upstreams = self.runtime.upstreams
        await self.sender.start()

    async def stop(self) -> None:
        await self.sender.stop()

    async def config_changed(self, config: Config) -> None:
        if config.shadow != self._spec:
            # The sender's workers, queue and ring are sized at start: a changed section needs a restart.
            logger.warning("shadow: section changed; the new limits apply at the next start of the facade")

    def prometheus_text(self) -> str:
        return self.sender.prometheus_text()

    def admin_routes(self) -> list[BaseRoute]:
        runtime, sender = self.runtime, self.sender

        async def compare_endpoint(request: Request) -> Response:
            try:
                params = dict(request.query_params) | {"route": _route_param(runtime, request)}
                missing = await runtime.gather_telemetry()  # every worker's latest requests count
                report = compare_view(runtime, params)
                return JSONResponse(report | ({"partial": {"missing": list(missing)}} if missing else {}))
            except _BadQuery as bad:
                return JSONResponse(bad.body, status_code=bad.status)

        async def diffs_endpoint(request: Request) -> Response:
            try:
                route = _route_param(runtime, request)
                limit = _limit(request.query_params.get("limit"), sender.ring.maxlen)
            except _BadQuery as bad:
                return JSONResponse(bad.body, status_code=bad.status)
            await runtime.gather_telemetry()
            return JSONResponse(sender.ring.to_json(route, limit) | {"noise_paths": sorted(sender.noise.paths(route))})

        async def shadow_endpoint(request: Request) -> Response:
            await runtime.gather_telemetry()
            return JSONResponse(sender.stats())

        return [
            Route("/compare", compare_endpoint, methods=["GET"]),
            Route("/diffs", diffs_endpoint, methods=["GET"]),
            Route("/shadow", shadow_endpoint, methods=["GET"]),
        ]


def _limit(text: str | None, maximum: int, default: int = 20) -> int:
    if text is None or text == "":
        return min(default, maximum)
    if not text.isdigit() or int(text) < 1:
        raise _BadQuery(400, {"error": f"limit must be a positive integer, got {text!r}"})
    return min(int(text), maximum)
