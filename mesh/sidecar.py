"""The sidecar: inbound mTLS + policy in front of the local app, outbound mTLS origination, admin, rotation.

    sidecar = Sidecar(SidecarOptions(service="catalog", control_plane="http://127.0.0.1:9901",
                                     bootstrap_token=token, inbound="127.0.0.1:15101", app="http://127.0.0.1:8002",
                                     outbound="127.0.0.1:15001", admin="127.0.0.1:15000"))
    await sidecar.start()        # bootstrap: config, key + CSR -> SVID, listeners, watch and rotation tasks
    ...
    await sidecar.stop()

Start-up, in order:

1. Fetch this service's document from the control plane (mode, identity, bundle, policies, peers).
2. Generate the private key here, send only a CSR with the bootstrap token (``POST /mesh/ca/sign``)
   and check the SVID names the identity the document gives.
3. Build the server and client TLS contexts (each behind a ``RotatingContext``) and the two Proxy
   snapshots: inbound (one service = the local app, one catch-all route) and outbound (one
   service per peer, routed by ``Host``, originating mTLS that checks the peer's SPIFFE ID).
4. Serve inbound (``mesh.listener``: TLS/plaintext per mode, peer verified), outbound (plain HTTP
   on loopback for the app) and admin (``/healthz``, ``/metrics``, ``/config``).
5. Watch the control plane (long-poll); rotate the SVID at ~50 % of its lifetime; report the
   inbound counters (below).

Config updates apply atomically: the outbound pools are brought in line first (the only await),
then the document, the gate state and both snapshots are swapped in one synchronous step. When
the control plane is unreachable the sidecar keeps serving its last good document, says so on
``/config`` and in ``/metrics``, logs it once per outage, and retries.

Rotation: a new key and CSR, authorised by a signature with the current key (``POST
/mesh/ca/renew``); the new contexts are built completely, then swapped. Connections open at the
swap finish on the old certificate (still valid for the other half of its lifetime).

Reports (for the ``mtls: strict`` migration step): every ``report_interval`` and right after a
new document applies, ``POST /mesh/report`` sends the inbound counters (plaintext requests, mTLS
requests, plaintext connections refused under STRICT) split by the document they were counted
under (control-plane epoch + version), signed with the SVID's key like a renewal. Counts are
cumulative per document, so a lost or repeated report is harmless; only the last
``MAX_SEGMENTS`` documents are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HttpRoute

from facade.config import (
    Config,
    EndpointGroup,
    NormalizeSpec,
    Route,
    RouteMatch,
    ServiceSpec,
    WeightedBackend,
)
from facade.error_log import RecentErrors
from facade.listener import HeadLimits, guarded_protocol
from facade.proxy import Proxy
from facade.server import Server, bind, server_config, socket_url
from facade.snapshot import SnapshotHolder, build_snapshot
from facade.upstream import Upstreams

from .document import DocumentError, SidecarDocument
from .gate import GateState, PolicyGate
from .identity import WorkloadIdentity
from .listener import InboundListener
from .metrics import CONTENT_TYPE, SidecarMetrics
from .origination import mesh_client_context
from .rotation import rotation_time
from .spiffe import SpiffeId
from .svid_auth import sign_request
from .tls import RotatingContext, client_context, server_context

__all__ = ["ControlPlaneError", "Sidecar", "SidecarOptions"]

logger = logging.getLogger("mesh.sidecar")
_T = TypeVar("_T")

DEFAULT_POLL_WAIT = 30.0
DEFAULT_RETRY_INTERVAL = 1.0
DEFAULT_BOOTSTRAP_TIMEOUT = 30.0
DEFAULT_REPORT_INTERVAL = 5.0
MAX_SEGMENTS = 8  # documents whose counts a report still carries
REPORT_PATH = "/mesh/report"
_REPORTED = ("plaintext_requests", "tls_requests", "plaintext_refused")


class ControlPlaneError(Exception):
    """The control plane refused or could not be reached; ``status`` is the HTTP status (0: unreachable)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class SidecarOptions:
    service: str
    control_plane: str  # the facade's admin URL
    bootstrap_token: str
    inbound: str | None = None  # HOST:PORT (needs ``app``)
    app: str | None = None  # the local app's URL
    outbound: str | None = None  # HOST:PORT for the app's calls to other services
    admin: str | None = None  # HOST:PORT
    poll_wait: float = DEFAULT_POLL_WAIT
    retry_interval: float = DEFAULT_RETRY_INTERVAL
    bootstrap_timeout: float = DEFAULT_BOOTSTRAP_TIMEOUT
    report_interval: float = DEFAULT_REPORT_INTERVAL

    def __post_init__(self) -> None:
        if (self.inbound is None) != (self.app is None):
            raise ValueError("--inbound and --app go together: the inbound listener forwards to the app")


class ControlPlaneClient:
    """The sidecar's calls to the control plane (httpx: latency does not matter here)."""

    def __init__(self, base_url: str, *, poll_wait: float) -> None:
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=httpx.Timeout(poll_wait + 10.0))
        self.epoch = ""  # the control plane's x-mesh-epoch of the last document received

    async def close(self) -> None:
        await self._client.aclose()

    async def document(
        self, service: str, identity: WorkloadIdentity, *, version: int, wait: float
    ) -> SidecarDocument | None:
        """The document when its version differs from ``version``; None when unchanged after ``wait``.

        The request is signed with ``identity`` (``mesh.svid_auth``): the control plane gives a
        service's document to the holder of that service's SVID only."""
        params = {"service": service, "version": str(version), "wait": f"{wait:g}s"}
        if self.epoch:
            # A restarted control plane counts versions from 1 again: a different epoch means
            # "send the document now", whatever its version number.
            params["epoch"] = self.epoch
        auth = sign_request(identity, "GET", "/mesh/config", params)
        resp = await self._call("GET", "/mesh/config", params=params, headers={"authorization": auth})
        if resp.status_code == 304:
            return None
        doc = SidecarDocument.from_json(resp.json())
        self.epoch = resp.headers.get("x-mesh-epoch", "")
        return doc

    async def sign(self, token: str, csr_pem: bytes) -> dict[str, Any]:
        return (await self._call("POST", "/mesh/ca/sign", json={"token": token, "csr": csr_pem.decode()})).json()  # type: ignore[no-any-return]

    async def renew(self, current: WorkloadIdentity, csr_pem: bytes) -> dict[str, Any]:
        """A new SVID for ``csr_pem``; the request is signed with the current SVID's key."""
        return (await self._signed_post(current, "/mesh/ca/renew", {"csr": csr_pem.decode()})).json()  # type: ignore[no-any-return]

    async def report(self, current: WorkloadIdentity, report: dict[str, Any]) -> None:
        """Send inbound counters, signed with the current SVID's key (the control plane checks both)."""
        text = json.dumps(report, sort_keys=True, separators=(",", ":"))
        await self._signed_post(current, REPORT_PATH, {"report": text})

    async def _signed_post(self, current: WorkloadIdentity, path: str, body: dict[str, Any]) -> httpx.Response:
        content = json.dumps(body).encode()
        headers = {
            "content-type": "application/json",
            "authorization": sign_request(current, "POST", path, {}, content),
        }
        return await self._call("POST", path, content=content, headers=headers)

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ControlPlaneError(f"control plane unreachable: {exc!r}") from None
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("error", resp.text)
            except ValueError:
                detail = resp.text
            raise ControlPlaneError(f"{method} {path}: {resp.status_code} {detail}", resp.status_code)
        return resp


class Sidecar:
    """One service's sidecar process (or task, in tests)."""

    def __init__(self, options: SidecarOptions) -> None:
        self.options = options
        self.service = options.service
        self.metrics = SidecarMetrics(options.service)
        self.cp = ControlPlaneClient(options.control_plane, poll_wait=options.poll_wait)
        self.doc: SidecarDocument | None = None
        self.identity: WorkloadIdentity | None = None
        self.identity_received_at = datetime.now(UTC)
        self.server_tls: RotatingContext | None = None
        self.client_tls: RotatingContext | None = None
        self.gate_state = GateState((), NormalizeSpec())
        self.control_plane_reachable = False
        self.last_error: str | None = None
        self.last_good_at: float | None = None
        self.rotations = 0
        self.inbound_url = ""
        self.outbound_url = ""
        self.admin_url = ""
        # Inbound and outbound share the edge's request-head rules and defaults (docs/security.md).
        self.head_limits = HeadLimits(max_head_bytes=60 * 1024, header_timeout=10.0)
        self.errors = RecentErrors()  # upstream failures' details (admin GET /errors); clients see none
        self._inbound: InboundListener | None = None
        self._in_holder: SnapshotHolder | None = None
        self._in_upstreams: Upstreams | None = None
        self._out_holder: SnapshotHolder | None = None
        self._out_upstreams: Upstreams | None = None
        self._servers: list[Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.instance = secrets.token_hex(8)  # tells this process's counters from a restarted one's
        self._segments: deque[_Segment] = deque(maxlen=MAX_SEGMENTS)
        self._report_now = asyncio.Event()
        self._rotate_now = asyncio.Event()
        self.reports_sent = 0

    def __repr__(self) -> str:
        version = self.doc.version if self.doc else None
        return (
            f"<Sidecar {self.service} v{version} inbound={self.inbound_url or '-'} outbound={self.outbound_url or '-'}>"
        )

    @property
    def spiffe_id(self) -> SpiffeId:
        assert self.identity is not None, "sidecar not started"
        return self.identity.spiffe_id

    # -- start / stop ------------------------------------------------------------------------

    async def start(
        self,
        *,
        inbound_sock: socket.socket | None = None,
        outbound_sock: socket.socket | None = None,
        admin_sock: socket.socket | None = None,
    ) -> None:
        opts = self.options
        deadline = time.monotonic() + opts.bootstrap_timeout
        await self._obtain_identity(deadline)
        doc = await self._bootstrap_document(deadline)
        assert self.identity is not None
        bundle = doc.bundle_pem.encode()
        # Always a CERT_REQUIRED context; the listener decides per connection whether to use it.
        server = server_context(self.identity, bundle, trust_domain=doc.trust_domain)
        assert server is not None  # mode STRICT (the default) always builds a context
        self.server_tls = RotatingContext(server)
        self.client_tls = RotatingContext(client_context(self.identity, bundle))
        self._install(doc, self._outbound_upstreams_for(doc))

        if opts.inbound is not None or inbound_sock is not None:
            assert opts.app is not None, "an inbound listener needs the app's URL"
            self._in_upstreams = Upstreams([_app_spec(self.service, opts.app)])
            self._in_holder = SnapshotHolder(
                build_snapshot(_inbound_config(self.service, opts.app, doc), self._in_upstreams, version=doc.version)
            )
            await self._in_upstreams.start()
            gate = PolicyGate(
                Proxy(self._in_holder, errors=self.errors),
                own_id=lambda: self.spiffe_id,
                state=lambda: self.gate_state,
                destination=self.service,
                metrics=self.metrics,
            )
            sock = inbound_sock or bind(opts.inbound or "")
            self._inbound = InboundListener(
                gate,
                sock=sock,
                mode=lambda: self._doc().mode,
                server_context=lambda: self._server_tls().current,
                trust_domain=lambda: self._doc().trust_domain,
                limits=self.head_limits,
                on_connection=lambda kind: self.metrics.connections.labels(kind).inc(),
            )
            await self._inbound.start()
            self.inbound_url = self._inbound.url
        if opts.outbound is not None or outbound_sock is not None:
            assert self._out_holder is not None
            sock = outbound_sock or bind(opts.outbound or "")
            await self._serve(_OutboundRecorder(Proxy(self._out_holder, errors=self.errors), self.metrics), sock, proxy=True)
            self.outbound_url = socket_url(sock)
        if self._out_upstreams is not None:
            await self._out_upstreams.start()
        if opts.admin is not None or admin_sock is not None:
            sock = admin_sock or bind(opts.admin or "")
            await self._serve(self._admin_app(), sock, proxy=False)
            self.admin_url = socket_url(sock)
        self._tasks.append(asyncio.create_task(self._watch()))
        self._tasks.append(asyncio.create_task(self._rotate_forever()))
        if self._inbound is not None:
            self._open_segment(doc)
            self._tasks.append(asyncio.create_task(self._report_forever()))
        logger.info(
            "sidecar %s (%s) up: inbound %s (%s), outbound %s, admin %s",
            self.service,
            self.spiffe_id,
            self.inbound_url or "-",
            doc.mode,
            self.outbound_url or "-",
            self.admin_url or "-",
        )

    async def stop(self) -> None:
        """Stop watching and rotating; stop accepting; let requests in flight finish; close the pools."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._inbound is not None:
            await self._inbound.stop()
        for server in self._servers:
            await server.stop()
        self._servers.clear()
        for ups in (self._in_upstreams, self._out_upstreams):
            if ups is not None:
                await ups.close()
        await self.cp.close()

    async def _serve(self, app: Any, sock: socket.socket, *, proxy: bool) -> None:
        protocol = guarded_protocol(self.head_limits) if proxy else None
        self._servers.append(await Server.start(server_config(app, protocol=protocol, passthrough=proxy), sock))

    # -- bootstrap -----------------------------------------------------------------------------

    async def _until_answered(self, what: str, call: Callable[[], Awaitable[_T]], deadline: float) -> _T:
        """``call()`` until the control plane answers; a refusal (4xx) or the deadline ends it."""
        while True:
            try:
                result = await call()
            except (ControlPlaneError, DocumentError) as exc:
                status = getattr(exc, "status", 0)
                if 400 <= status < 500 or time.monotonic() >= deadline:
                    raise ControlPlaneError(f"sidecar {self.service}: {what}: {exc}", status) from None
                self._unreachable(str(exc))
                await asyncio.sleep(self.options.retry_interval)
                continue
            self._reachable()
            return result

    async def _obtain_identity(self, deadline: float) -> None:
        """Redeem the bootstrap token: the key is made here, the CSR names nothing (the token names the ID).

        First, because every other call to the control plane is signed with the SVID."""
        key, csr = WorkloadIdentity.new_csr(None)
        token = self.options.bootstrap_token
        answer = await self._until_answered(
            "no SVID for the bootstrap token", lambda: self.cp.sign(token, csr), deadline
        )
        self._set_identity(WorkloadIdentity.from_pem(key, answer["certificate"].encode()))

    async def _bootstrap_document(self, deadline: float) -> SidecarDocument:
        identity = self.identity
        assert identity is not None

        async def fetch() -> SidecarDocument | None:
            return await self.cp.document(self.service, identity, version=0, wait=0)

        try:
            doc = await self._until_answered("no config from the control plane", fetch, deadline)
        except ControlPlaneError as exc:
            if exc.status == 403:
                raise ControlPlaneError(
                    f"sidecar {self.service}: the bootstrap token is for {identity.spiffe_id}, which is not "
                    f"service {self.service}'s identity: {exc}",
                    exc.status,
                ) from None
            raise
        assert doc is not None
        if identity.spiffe_id != doc.identity:
            raise ControlPlaneError(
                f"the bootstrap token is for {identity.spiffe_id}, but service {self.service} is {doc.identity}"
            )
        return doc

    def _set_identity(self, identity: WorkloadIdentity) -> None:
        self.identity = identity
        self.identity_received_at = datetime.now(UTC)
        self.metrics.cert_expiry.set(identity.not_after.timestamp())

    # -- config --------------------------------------------------------------------------------

    def _doc(self) -> SidecarDocument:
        assert self.doc is not None
        return self.doc

    def _server_tls(self) -> RotatingContext:
        assert self.server_tls is not None
        return self.server_tls

    def _outbound_upstreams_for(self, doc: SidecarDocument) -> list[ServiceSpec]:
        return [
            ServiceSpec(name=p.name, groups=(EndpointGroup("default", p.endpoints),), identity=str(p.identity))
            for p in doc.peers
            if p.endpoints
        ]

    def _outbound_ssl(self, spec: ServiceSpec) -> Any:
        assert self.client_tls is not None and self.doc is not None
        if spec.identity is None or not any(e.startswith("https://") for g in spec.groups for e in g.endpoints):
            return None
        return mesh_client_context(
            self.client_tls, expected=SpiffeId.parse(spec.identity), trust_domain=self.doc.trust_domain
        )

    def _install(self, doc: SidecarDocument, specs: list[ServiceSpec]) -> None:
        """First install: no await, nothing to keep in line yet."""
        self.doc = doc
        self._apply_head_rules(doc)
        self.gate_state = GateState(doc.policies, doc.normalize)
        self._out_upstreams = Upstreams(specs, ssl_context_factory=self._outbound_ssl)
        self._out_holder = SnapshotHolder(
            build_snapshot(_outbound_config(self.service, doc, specs), self._out_upstreams, version=doc.version)
        )
        self.metrics.config_version.set(doc.version)
        self.last_good_at = time.time()

    async def apply(self, doc: SidecarDocument) -> None:
        """Make ``doc`` the config in force, atomically; a document for another identity is refused."""
        current = self._doc()
        if doc.service != self.service or doc.identity != current.identity or doc.trust_domain != current.trust_domain:
            raise DocumentError(
                f"document v{doc.version} is for {doc.service} ({doc.identity}); this sidecar is "
                f"{self.service} ({current.identity}): keeping v{current.version}"
            )
        specs = self._outbound_upstreams_for(doc)
        # 1. The only await: bring the outbound pools in line (unchanged peers keep their pools).
        assert self._out_upstreams is not None and self._out_holder is not None
        await self._out_upstreams.update(specs)
        # 2. Build both snapshots, then swap everything in one synchronous step.
        out_snapshot = build_snapshot(
            _outbound_config(self.service, doc, specs), self._out_upstreams, version=doc.version
        )
        in_snapshot = None
        if self._in_holder is not None and self.options.app is not None:
            assert self._in_upstreams is not None
            in_snapshot = build_snapshot(
                _inbound_config(self.service, self.options.app, doc), self._in_upstreams, version=doc.version
            )
        self.doc = doc
        self.gate_state = GateState(doc.policies, doc.normalize)
        self._apply_head_rules(doc)
        self._out_holder.current = out_snapshot
        if in_snapshot is not None and self._in_holder is not None:
            self._in_holder.current = in_snapshot
        self.last_good_at = time.time()
        self.metrics.config_version.set(doc.version)
        if doc.bundle_pem != current.bundle_pem:
            self._trust_new_bundle(doc)
        if self._inbound is not None:
            self._open_segment(doc)
            self._report_now.set()
        logger.info(
            "sidecar %s: config v%d applied (mode %s, %d policies)",
            self.service,
            doc.version,
            doc.mode,
            len(doc.policies),
        )

    def _trust_new_bundle(self, doc: SidecarDocument) -> None:
        """The CA changed (re-init): trust the new bundle for the next handshakes, then renew onto it.

        The current SVID is kept until the renewal lands (the bundle still holds the replaced root
        while the control plane keeps it), so peers on either root keep getting through."""
        assert self.identity is not None and self.server_tls is not None and self.client_tls is not None
        bundle = doc.bundle_pem.encode()
        server = server_context(self.identity, bundle, trust_domain=doc.trust_domain)
        assert server is not None
        client = client_context(self.identity, bundle)
        self.server_tls.swap(server)
        self.client_tls.swap(client)
        self._rotate_now.set()
        logger.warning("sidecar %s: trust bundle changed (v%d); renewing the SVID", self.service, doc.version)

    def _apply_head_rules(self, doc: SidecarDocument) -> None:
        # Both listeners read this holder per request head: the change applies to the next request.
        self.head_limits.underscores = doc.headers_with_underscores
        self.head_limits.max_headers_count = doc.max_request_headers_count

    async def _watch(self) -> None:
        """Long-poll the control plane forever; keep the last good document through outages."""
        while True:
            try:
                assert self.identity is not None
                doc = await self.cp.document(
                    self.service, self.identity, version=self._doc().version, wait=self.options.poll_wait
                )
                self._reachable()
                if doc is not None and doc.version != self._doc().version:
                    await self.apply(doc)
            except ControlPlaneError as exc:
                # An HTTP error (e.g. 404: this service was removed) means reachable but refusing.
                self._unreachable(str(exc), reachable=exc.status != 0)
                await asyncio.sleep(self.options.retry_interval)
            except DocumentError as exc:
                self._unreachable(str(exc), reachable=True)
                await asyncio.sleep(self.options.retry_interval)

    def _reachable(self) -> None:
        if not self.control_plane_reachable and self.last_error:
            logger.warning("sidecar %s: control plane reachable again", self.service)
        self.control_plane_reachable = True
        self.last_error = None
        self.metrics.control_plane_up.set(1)

    def _unreachable(self, error: str, *, reachable: bool = False) -> None:
        """Keep the last good config; log once per change of trouble, not once per retry."""
        if error != self.last_error:
            version = self.doc.version if self.doc else None
            logger.warning("sidecar %s: %s; keeping last good config v%s", self.service, error, version)
        self.control_plane_reachable = reachable
        self.last_error = error
        self.metrics.control_plane_up.set(1 if reachable else 0)

    # -- reports -------------------------------------------------------------------------------

    def _counts(self) -> dict[str, int]:
        assert self._inbound is not None
        counters = self._inbound.counters
        return {name: int(getattr(counters, name)) for name in _REPORTED}

    def _open_segment(self, doc: SidecarDocument) -> None:
        """From now on, inbound counts belong to ``doc`` (called in the same step that installs it)."""
        self._segments.append(_Segment(self.cp.epoch, doc.version, doc.mode, self._counts()))

    def report_body(self) -> dict[str, Any]:
        """Counts per document since it was installed (cumulative: a repeated report changes nothing)."""
        now = self._counts()
        segments = list(self._segments)
        out = []
        for index, segment in enumerate(segments):
            end = segments[index + 1].base if index + 1 < len(segments) else now
            counts = {name: end[name] - segment.base[name] for name in _REPORTED}
            out.append({"epoch": segment.epoch, "version": segment.version, "mode": segment.mode, **counts})
        return {"service": self.service, "instance": self.instance, "segments": out}

    async def _report_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.report_interval):
                    await self._report_now.wait()
            self._report_now.clear()
            assert self.identity is not None
            try:
                await self.cp.report(self.identity, self.report_body())
                self.reports_sent += 1
            except ControlPlaneError as exc:
                # The watch loop says whether the control plane is reachable; a report is retried
                # with the next one (counts are cumulative, nothing is lost by skipping one).
                logger.debug("sidecar %s: report not delivered: %s", self.service, exc)

    # -- rotation ------------------------------------------------------------------------------

    def rotate_at(self) -> datetime:
        assert self.identity is not None
        return rotation_time(self.identity, self.identity_received_at)

    async def rotate(self) -> None:
        """Renew the SVID with a new key; build the new contexts completely, then swap them in."""
        current = self.identity
        assert current is not None and self.server_tls is not None and self.client_tls is not None
        key, csr = WorkloadIdentity.new_csr(current.spiffe_id)
        answer = await self.cp.renew(current, csr)
        identity = WorkloadIdentity.from_pem(key, answer["certificate"].encode())
        bundle = self._doc().bundle_pem.encode()
        server = server_context(identity, bundle, trust_domain=self._doc().trust_domain)
        client = client_context(identity, bundle)
        assert server is not None
        self.server_tls.swap(server)
        self.client_tls.swap(client)
        self._set_identity(identity)
        self.rotations += 1
        self.metrics.rotations.inc()
        logger.info("sidecar %s: SVID rotated; expires %s", self.service, identity.not_after.isoformat())

    async def _rotate_forever(self) -> None:
        while True:
            delay = (self.rotate_at() - datetime.now(UTC)).total_seconds()
            # At the rotation time, or at once when a new trust bundle arrived (``_trust_new_bundle``).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(delay, 0.0)):
                    await self._rotate_now.wait()
            self._rotate_now.clear()
            try:
                await self.rotate()
            except (ControlPlaneError, ValueError) as exc:
                # The current SVID is still valid for the rest of its lifetime: retry, bounded by that.
                reachable = isinstance(exc, ControlPlaneError) and exc.status != 0
                self._unreachable(f"rotation failed: {exc}", reachable=reachable)
                await asyncio.sleep(self.options.retry_interval)

    # -- admin -------------------------------------------------------------------------------

    def config_view(self) -> dict[str, Any]:
        doc = self.doc
        identity = self.identity
        return {
            "service": self.service,
            "version": doc.version if doc else None,
            "mode": doc.mode if doc else None,
            "identity": str(identity.spiffe_id) if identity else None,
            "certificate_expires": identity.not_after.isoformat() if identity else None,
            "certificate_serial": format(identity.leaf.serial_number, "x") if identity else None,
            "rotations": self.rotations,
            "last_good_at": self.last_good_at,
            "control_plane": {
                "url": self.options.control_plane,
                "reachable": self.control_plane_reachable,
                "last_error": self.last_error,
            },
            "policies": [p.name for p in doc.policies] if doc else [],
            "peers": {p.name: str(p.identity) for p in doc.peers} if doc else {},
            "inbound": self.inbound_url or None,
            "outbound": self.outbound_url or None,
            "connections": self._inbound.counters.view() if self._inbound else None,
        }

    def _admin_app(self) -> Starlette:
        async def healthz(request: Request) -> Response:
            return JSONResponse({"status": "ok", "service": self.service})

        async def metrics(request: Request) -> Response:
            text = self.metrics.text() + self.head_limits.stats.prometheus_text("mesh_sidecar").encode()
            return Response(text, media_type=CONTENT_TYPE)

        async def errors(request: Request) -> Response:
            return JSONResponse({"errors": self.errors.view(request.query_params.get("request_id"))})

        async def config(request: Request) -> Response:
            return JSONResponse(self.config_view())

        return Starlette(
            routes=[HttpRoute("/healthz", healthz), HttpRoute("/metrics", metrics), HttpRoute("/config", config), HttpRoute("/errors", errors)]
        )


@dataclass(frozen=True, slots=True)
class _Segment:
    """The inbound counters' values when a document was installed."""

    epoch: str
    version: int
    mode: str
    base: dict[str, int]


class _OutboundRecorder:
    """ASGI wrapper recording outbound requests (destination = the Host the app asked for)."""

    def __init__(self, proxy: Proxy, metrics: SidecarMetrics) -> None:
        self._proxy = proxy
        self._metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._proxy(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def watch(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._proxy(scope, receive, watch)
        finally:
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            self._metrics.record(
                direction="outbound",
                principal=None,
                destination=host.rsplit(":", 1)[0][:64] or "-",
                status=status,
                decision="allow",
                duration_s=time.perf_counter() - started,
            )


# -- the Proxy's view of the sidecar (pure) ------------------------------------------------------


def _app_spec(service: str, app_url: str) -> ServiceSpec:
    return ServiceSpec(name=service, groups=(EndpointGroup("default", (app_url,)),))


def _inbound_config(service: str, app_url: str, doc: SidecarDocument) -> Config:
    """One service (the local app), one catch-all route, the document's normalization flags."""
    return Config(
        source=f"<sidecar {service} inbound>",
        sha256=f"v{doc.version}",
        services=(_app_spec(service, app_url),),
        routes=(Route(name="inbound", matches=(RouteMatch(),), backends=(WeightedBackend(service),)),),
        normalize=doc.normalize,
    )


def _outbound_config(service: str, doc: SidecarDocument, specs: list[ServiceSpec]) -> Config:
    """One service per peer; a request goes to the peer its Host names."""
    return Config(
        source=f"<sidecar {service} outbound>",
        sha256=f"v{doc.version}",
        services=tuple(specs),
        routes=tuple(
            Route(name=f"to-{s.name}", matches=(RouteMatch(hosts=(s.name,)),), backends=(WeightedBackend(s.name),))
            for s in specs
        ),
        normalize=doc.normalize,
    )
