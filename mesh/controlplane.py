"""The mesh control plane, as a facade feature on the admin listener (Citadel + Pilot, small).

    feature = MeshFeature.attach(runtime)     # before runtime.start(); see attach() for what it changes

Endpoints (admin listener):

    POST /mesh/ca/sign      {"token", "csr"} -> SVID + bundle        (the bootstrap token authorises)
    POST /mesh/ca/renew     {"csr"}                                   (signed request: the current SVID)
    GET  /mesh/config?service=X&version=N&wait=30s[&epoch=E]           (signed request by X's SVID, or admin token)
    POST /mesh/tokens       {"service", "ttl"?} -> bootstrap token     (admin bearer token)
    POST /mesh/report       {"report"}                                 (signed request: the SVID of the service)

"Signed request" is ``mesh.svid_auth``: ``Authorization: SVID ...``, the SVID's key over the
method, path, query, body hash, a timestamp (+-30 s) and a nonce that is refused when seen
again, so a captured request cannot be replayed. Nothing on these routes is readable without a
credential: documents hold the policies, the trust bundle and every peer's identity.

Every answer of ``/mesh/config`` carries ``x-mesh-epoch``, random per control-plane start: a
sidecar polling with another epoch gets the current document at once (versions count from 1
again after a restart, so a version number alone could hide a new document).

Reports: sidecars send their inbound counters per document (``mesh.reports``); the ``mtls:
strict`` migration step reads ``plaintext_seen(service, since=step_start)``. A report is
accepted only from the holder of a valid SVID of this CA, and only about its own service.

Config distribution: on start and after every accepted reload, the documents of every service
are rebuilt (pure: ``mesh.document.build_document``). When any changed, the version goes up by
one and long-polls waiting on the old version return the new document at once; otherwise a
long-poll answers 304 after ``wait``. A policy that fails validation never gets here: parsing
it is part of ``facade.config`` validation, so the reload is rejected and the running
documents stay. ``check_config`` additionally refuses a mesh that contradicts the CA on disk.

The CA lives under ``mesh.ca.state_dir`` (default: the facade's ``state_dir``), created on
first start with ``CertificateAuthority.init``. Its files are watched (every
``CA_WATCH_INTERVAL_S`` and on every reload): after ``facade mesh ca init --force`` the new CA
is loaded, the edge SVID re-issued and a new document version (with the new bundle, which
keeps the replaced root while ``previous.crt`` exists) is pushed to every sidecar, which
renews its SVID onto the new root at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import sqlite3
import ssl
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography import x509
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from facade.admin import require_token
from facade.config import Config, ServiceSpec
from facade.errors import ConfigError, Problem
from facade.feature import Feature
from facade.upstream import Upstreams, client_ssl_context
from facade.yamlfile import parse_duration

from .ca import CaError, CaNotFound, CertificateAuthority, CsrRejected
from .ca_http import MAX_SIGN_REQUEST_BYTES, ca_routes
from .config import MeshSpec
from .document import SidecarDocument, build_document
from .edge import EdgeIdentity, edge_credentials
from .reports import InboundReports, ReportError, parse_report
from .spiffe import SpiffeId
from .state import DEFAULT_STATE_FILE, MeshStateStore
from .svid_auth import ReplayGuard, SignedRequestRejected, verify_request
from .tls import MTLS_MODES, MtlsMode

if TYPE_CHECKING:
    from facade.runtime import FacadeRuntime

__all__ = ["CONFIG_PATH", "MAX_WAIT_S", "RENEW_PATH", "REPORT_PATH", "TOKENS_PATH", "MeshFeature"]

logger = logging.getLogger("mesh.controlplane")

CONFIG_PATH = "/mesh/config"
RENEW_PATH = "/mesh/ca/renew"
TOKENS_PATH = "/mesh/tokens"
REPORT_PATH = "/mesh/report"
MAX_PUBLISHED = 4096  # version -> publication time entries kept
MAX_WAIT_S = 60.0
DEFAULT_TOKEN_TTL_S = 3600.0
CA_WATCH_INTERVAL_S = 1.0  # how often the CA files are checked for a re-init


class _TtlAuthority:
    """The CA as ``ca_routes`` sees it, issuing SVIDs with the mesh's configured lifetime."""

    def __init__(self, ca: CertificateAuthority, ttl: float) -> None:
        self._ca = ca
        self._ttl = timedelta(seconds=ttl)

    def redeem(self, token: str, csr_pem: bytes) -> tuple[bytes, bytes]:
        return self._ca.redeem(token, csr_pem, ttl=self._ttl)


class MeshFeature(Feature):
    """CA + config distribution + the edge identity, plugged into a FacadeRuntime."""

    def __init__(self, runtime: FacadeRuntime) -> None:
        self.runtime = runtime
        self.ca: CertificateAuthority | None = None
        self.edge: EdgeIdentity | None = None
        self.version = 0
        self.documents: dict[str, SidecarDocument] = {}
        self.mode_overrides: dict[str, MtlsMode] = {}
        self.epoch = secrets.token_hex(8)
        self.reports = InboundReports(self.epoch)
        self._published: dict[int, float] = {}  # version -> wall-clock time it was published
        self._epochs: dict[int, str] = {}  # version -> the epoch (control-plane run) that published it
        self.state: MeshStateStore | None = None  # durable versions and reports (mesh.state)
        self.replay = ReplayGuard()  # nonces of signed requests (mesh.svid_auth)
        self._ca_fingerprint: tuple[Any, ...] = ()
        self._ca_problem: str | None = None
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._config: Config | None = None
        self._credentials: tuple[object, bytes, dict[str, Any]] | None = None  # (identity, bundle, edge_credentials)
        # A CA that cannot be loaded is reported by start(), inside the runtime's start-up error handling.
        self._startup_error: ConfigError | None = None
        if runtime.config.mesh is not None:
            try:
                self._prepare(runtime.config)
                self._publish(runtime.config)
            except ConfigError as exc:
                self._startup_error = exc

    def __repr__(self) -> str:
        return f"<MeshFeature v{self.version} services={sorted(self.documents)} edge={self.edge!r}>"

    @classmethod
    def attach(cls, runtime: FacadeRuntime) -> MeshFeature:
        """Create the feature and plug it into ``runtime`` (before ``runtime.start()``).

        Installs upstream pools built by ``ssl_context_factory`` (mesh mTLS to services with
        ``identity:``) and itself as the mesh that ``mtls`` migration steps switch.
        """
        feature = runtime.add_feature(cls(runtime))
        runtime.install_upstreams(
            Upstreams(runtime.config.services, ssl_context_factory=feature.ssl_context_factory)
        )
        runtime.install_mesh(feature)
        return feature

    # -- CA and edge identity ---------------------------------------------------------------

    def _prepare(self, config: Config) -> None:
        """Load (or create) the CA for ``config.mesh`` and issue the edge SVID. Raises ConfigError."""
        mesh = config.mesh
        assert mesh is not None, "a mesh is prepared only for a config with a mesh: section"
        state_dir = mesh.ca.state_dir or config.state_dir
        if self.state is None:
            self._open_state(config)
        if self.ca is None or self.ca.trust_domain != mesh.trust_domain:
            self._ca_fingerprint = CertificateAuthority.fingerprint(state_dir)
            try:
                try:
                    ca = CertificateAuthority.load(state_dir)
                except CaNotFound:
                    ca = CertificateAuthority.init(state_dir, mesh.trust_domain)
                    logger.info("mesh: created the CA for %s in %s", mesh.trust_domain, ca.directory)
                    self._ca_fingerprint = CertificateAuthority.fingerprint(state_dir)
            except CaError as exc:
                raise ConfigError([Problem(config.source, 1, 1, "mesh.ca", str(exc))]) from None
            if ca.trust_domain != mesh.trust_domain:
                raise ConfigError(
                    [
                        Problem(
                            config.source,
                            1,
                            1,
                            "mesh.trust_domain",
                            f"the CA in {ca.directory} is for trust domain {ca.trust_domain!r}, not "
                            f"{mesh.trust_domain!r}; use another mesh.ca.state_dir or re-init the CA",
                        )
                    ]
                )
            self.ca = ca
        assert self.ca is not None
        edge_id = mesh.edge()
        if self.edge is None or self.edge.spiffe_id != edge_id or self.edge.ca is not self.ca:
            # The same RotatingContext: pools already built on it present the new identity from now on.
            previous = self.edge.rotating if self.edge is not None else None
            self.edge = EdgeIdentity(self.ca, edge_id, ttl=mesh.ca.svid_ttl, rotating=previous)
        else:
            self.edge.ttl = mesh.ca.svid_ttl

    def _open_state(self, config: Config) -> None:
        """Read the durable versions and reports back: versions go on from the last one published,
        and an mtls step's counts survive a restart (``mesh.state``)."""
        path = os.path.join(config.state_dir, DEFAULT_STATE_FILE)
        try:
            store = MeshStateStore(path)
            published = store.published()
            stored = store.reports()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError([Problem(config.source, 1, 1, "state_dir", f"cannot open {path}: {exc}")]) from None
        self.state = store
        self.version = max(self.version, max(published, default=0))
        for version, (epoch, at) in published.items():
            self._published[version] = at
            self._epochs[version] = epoch
        for row in stored:
            self.reports.restore(row.service, row.instance, row.heard_at, row.counts)

    def ssl_context_factory(self, spec: ServiceSpec) -> ssl.SSLContext | None:
        """``Upstreams`` factory: mesh mTLS via the edge identity, else the service's own ``tls:``."""
        if self.edge is None:
            return client_ssl_context(spec.tls, service=spec.name) if spec.tls is not None else None
        return self.edge.ssl_context_factory(spec)

    # -- feature hooks ----------------------------------------------------------------------

    def worker_state(self) -> dict[str, Any]:
        """The edge SVID for the workers of ``--workers N`` (the CA and the rotation stay here; each new
        SVID or bundle reaches them within ~0.5 s, before it is needed: rotation is at half the lifetime)."""
        if self.edge is None or self.ca is None:
            return {}
        identity, bundle = self.edge.identity, self.ca.trust_bundle_pem
        if self._credentials is None or self._credentials[0] is not identity or self._credentials[1] != bundle:
            self._credentials = (identity, bundle, edge_credentials(self.edge))
        return {"mesh_edge": self._credentials[2]}

    def check_config(self, config: Config) -> None:
        """Veto a reload whose mesh cannot be served; prepares the CA/edge identity for it."""
        problems: list[Problem] = []
        mesh: MeshSpec | None = config.mesh
        if mesh is None:
            for s in config.services:
                if s.identity:
                    problems.append(
                        Problem(config.source, 1, 1, f"services.{s.name}.identity", "needs a mesh: section")
                    )
        else:
            for s in config.services:
                m = mesh.service(s.name)
                if s.identity and m is not None and m.identity is not None and str(m.identity) != s.identity:
                    problems.append(
                        Problem(
                            config.source,
                            1,
                            1,
                            f"mesh.services.{s.name}.identity",
                            f"{m.identity} contradicts services.{s.name}.identity {s.identity}",
                        )
                    )
        if problems:
            raise ConfigError(problems)
        if mesh is not None:
            self._prepare(config)

    async def config_changed(self, config: Config) -> None:
        if config.mesh is not None:
            self.refresh_ca(config)
            self._publish(config)

    async def start(self) -> None:
        if self._startup_error is not None:
            raise self._startup_error
        if self.edge is not None:
            self._tasks.append(asyncio.create_task(self._rotate_edge()))
            self._tasks.append(asyncio.create_task(self._watch_ca()))

    def refresh_ca(self, config: Config | None = None) -> bool:
        """Load the CA again when its files changed on disk (a re-init, a dropped previous root).

        On a change: the new CA, a new edge SVID from it, and new documents (their bundle changed),
        so every sidecar's long-poll returns at once. A CA that cannot be read yet (a re-init
        half-written) or is for another trust domain keeps the running one, logged once.
        True when the CA was replaced.
        """
        config = config or self._config
        if config is None or config.mesh is None or self.ca is None:
            return False
        state_dir = config.mesh.ca.state_dir or config.state_dir
        fingerprint = CertificateAuthority.fingerprint(state_dir)
        if fingerprint == self._ca_fingerprint:
            return False
        try:
            ca = CertificateAuthority.load(state_dir)
            if ca.trust_domain != config.mesh.trust_domain:
                raise CaError(f"the CA in {ca.directory} is now for trust domain {ca.trust_domain!r}")
        except CaError as exc:
            if str(exc) != self._ca_problem:
                logger.warning("mesh: keeping the running CA: %s", exc)
                self._ca_problem = str(exc)
            return False
        self._ca_problem = None
        self._ca_fingerprint = fingerprint
        if ca.trust_bundle_pem == self.ca.trust_bundle_pem and ca.certificate == self.ca.certificate:
            return False
        logger.warning("mesh: the CA in %s changed on disk; pushing the new trust bundle", ca.directory)
        self.ca = ca
        self._prepare(config)  # a new edge SVID from the new CA (same RotatingContext)
        self._publish(config)
        return True

    async def _watch_ca(self) -> None:
        while True:
            await asyncio.sleep(CA_WATCH_INTERVAL_S)
            try:
                self.refresh_ca()
            except Exception:
                logger.exception("mesh: checking the CA files failed")

    async def _rotate_edge(self) -> None:
        # The edge object may be replaced by a reload (new trust domain / edge_identity): follow it.
        while True:
            edge = self.edge
            if edge is None:
                return
            delay = (edge.rotate_at() - datetime.now(UTC)).total_seconds()
            await asyncio.sleep(max(delay, 0.05))
            if self.edge is edge:
                try:
                    edge.rotate()
                except Exception:
                    logger.exception("edge identity rotation failed; retrying in 1s")
                    await asyncio.sleep(1.0)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    # -- distribution -------------------------------------------------------------------------

    def set_mode(self, service: str, mode: MtlsMode | None) -> int:
        """Override ``service``'s mTLS mode (the ``mtls: strict`` migration step); None removes it.

        Returns the document version in force afterwards. Sidecars long-polling pick it up at once.
        Every call that sets a mode publishes a new version, even when no document changes: an
        mtls step's window is "documents published since the step started" (``plaintext_seen``).
        """
        if mode is not None and mode not in MTLS_MODES:
            raise ValueError(f"mode must be one of {', '.join(MTLS_MODES)}, got {mode!r}")
        if mode is None and service not in self.mode_overrides:
            return self.version
        if mode is None:
            self.mode_overrides.pop(service, None)
        else:
            self.mode_overrides[service] = mode
        if self._config is not None:
            # A new version even when no document changed (the config already said STRICT): the
            # step's window is "documents published since the step started", so it needs one.
            self._publish(self._config, force=True)
        return self.version

    def plaintext_seen(self, service: str, *, since: float) -> int | None:
        """Plaintext attempts at ``service``'s sidecars under documents published at or after ``since``.

        ``since`` is a wall-clock time (``time.time()``). None when no sidecar of the service has
        reported under such a document yet (or one still runs an older one): unknown, not zero.
        """
        versions = [v for v, at in self._published.items() if at >= since]
        return self.reports.plaintext_seen(service, versions, since=since, now=time.time())

    def _publish(self, config: Config, *, force: bool = False) -> None:
        """Rebuild every document; bump the version and wake long-polls when any changed."""
        assert self.ca is not None
        self._config = config
        bundle = self.ca.trust_bundle_pem.decode("ascii")
        fresh = {
            s.name: build_document(
                config, s.name, bundle_pem=bundle, version=self.version, mode_overrides=self.mode_overrides
            )
            for s in config.services
        }
        same = fresh.keys() == self.documents.keys() and all(
            fresh[name].same_content(self.documents[name]) for name in fresh
        )
        if same and self.version and not force:
            return
        self.version += 1
        self._published[self.version] = now = time.time()
        self._epochs[self.version] = self.epoch
        for old in sorted(self._published)[:-MAX_PUBLISHED]:
            del self._published[old]
            self._epochs.pop(old, None)
        if self.state is not None:
            try:
                self.state.publish(self.version, self.epoch, now)
            except (OSError, sqlite3.Error) as exc:
                # Serving the new document matters more; its window just will not survive a restart.
                logger.error("mesh: cannot record version %d in %s: %s", self.version, self.state.path, exc)
        # One assignment: a long-poll never sees half of a new version.
        self.documents = {name: replace(doc, version=self.version) for name, doc in fresh.items()}
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        logger.info("mesh: config version %d for %d services", self.version, len(fresh))

    def _svid_ttl(self) -> float:
        """The SVID lifetime of the mesh in force."""
        mesh = self._config.mesh if self._config is not None else None
        assert mesh is not None, "documents are published only for a config with a mesh: section"
        return mesh.ca.svid_ttl

    def issue_token(self, service: str, *, ttl: float = DEFAULT_TOKEN_TTL_S) -> tuple[str, SpiffeId]:
        """A bootstrap token for ``service``'s sidecar (used by ``facade up`` and tests)."""
        doc = self.documents.get(service)
        if doc is None or self.ca is None:
            raise KeyError(service)
        return self.ca.issue_bootstrap_token(doc.identity, ttl=timedelta(seconds=ttl)), doc.identity

    # -- HTTP ---------------------------------------------------------------------------------

    def admin_routes(self) -> list[BaseRoute]:
        async def sign(request: Request) -> Response:
            if self.ca is None or self._config is None:
                return _error(404, "no mesh: section in the config")
            inner = ca_routes(_TtlAuthority(self.ca, self._svid_ttl()))  # type: ignore[arg-type]
            return await inner[0].endpoint(request)  # type: ignore[no-any-return]

        async def renew(request: Request) -> Response:
            if self.ca is None or self._config is None:
                return _error(404, "no mesh: section in the config")
            raw = await _read_body(request)
            if isinstance(raw, Response):
                return raw
            holder = self._signed_by(request, raw)
            if isinstance(holder, Response):
                return holder
            body = _json_object(raw)
            if isinstance(body, Response):
                return body
            return self._renew(holder, body)

        async def config(request: Request) -> Response:
            if self.ca is None:
                return _error(404, "no mesh: section in the config")
            service = request.query_params.get("service", "")
            # Who asks comes first: without a credential nothing is said, not even which services exist.
            holder: SpiffeId | None = None
            if request.headers.get("authorization", "").lower().startswith("bearer"):
                denied = require_token(self.runtime, request)
                if denied is not None:
                    return denied
            else:
                signed = self._signed_by(request, b"")
                if isinstance(signed, Response):
                    return signed
                holder = signed
            try:
                known = int(request.query_params.get("version", "0"))
                wait = min(parse_duration(request.query_params.get("wait", "0s")), MAX_WAIT_S)
            except ValueError as exc:
                return _error(400, f"bad version or wait: {exc}")
            doc = self.documents.get(service)
            if doc is None:
                # Only to a credential: a mesh member knows its peers' names anyway.
                return _error(404, f"unknown service {service!r}")
            if holder is not None and doc.identity != holder:
                # A sidecar reads its own service's document only (Istio pushes each proxy its own).
                return _error(403, f"{holder} may not read the document of service {service!r}")
            if request.query_params.get("epoch", self.epoch) != self.epoch:
                known = -1  # a document of a previous control-plane run: answer with the current one
            if known == self.version and wait > 0:
                await self._wait_for_change(request, wait)
            doc = self.documents.get(service)
            if doc is None:
                return _error(404, f"service {service!r} is no longer configured")
            headers = {"x-mesh-version": str(doc.version), "x-mesh-epoch": self.epoch}
            if doc.version == known:
                return Response(status_code=304, headers=headers)
            return JSONResponse(doc.to_json(), headers=headers)

        async def report(request: Request) -> Response:
            if self.ca is None or self._config is None:
                return _error(404, "no mesh: section in the config")
            raw = await _read_body(request)
            if isinstance(raw, Response):
                return raw
            holder = self._signed_by(request, raw)
            if isinstance(holder, Response):
                return holder
            body = _json_object(raw)
            if isinstance(body, Response):
                return body
            text = body.get("report")
            if not isinstance(text, str):
                return _error(400, 'body must be {"report": JSON text}')
            try:
                parsed = parse_report(json.loads(text))
            except (ValueError, ReportError) as exc:
                return _error(400, f"bad report: {exc}")
            doc = self.documents.get(parsed.service)
            if doc is None or doc.identity != holder:
                # A sidecar speaks for its own service only: the signature proves which one it is.
                return _error(403, f"{holder} may not report for service {parsed.service!r}")
            now = time.time()
            taken = self.reports.record(parsed, now=now, known=self._epochs)
            if self.state is not None:
                try:
                    await asyncio.to_thread(self.state.save_report, parsed.service, parsed.instance, now, taken)
                except (OSError, sqlite3.Error) as exc:
                    logger.error("mesh: cannot store a report in %s: %s", self.state.path, exc)
            return Response(status_code=204)

        async def tokens(request: Request) -> Response:
            denied = require_token(self.runtime, request)
            if denied is not None:
                return denied
            body = await _read_json(request)
            if isinstance(body, Response):
                return body
            service = body.get("service")
            try:
                ttl = parse_duration(body.get("ttl", "1h"))
            except (ValueError, TypeError, AttributeError) as exc:
                return _error(400, f"bad ttl: {exc}")
            if not isinstance(service, str):
                return _error(400, 'body must be {"service": "<name>", "ttl": "1h"}')
            try:
                token, spiffe_id = self.issue_token(service, ttl=ttl)
            except KeyError:
                return _error(404, f"unknown service {service!r}")
            expires = datetime.now(UTC) + timedelta(seconds=ttl)
            return JSONResponse({"token": token, "spiffe_id": str(spiffe_id), "expires": expires.isoformat()})

        return [
            Route("/mesh/ca/sign", sign, methods=["POST"]),
            Route(RENEW_PATH, renew, methods=["POST"]),
            Route(CONFIG_PATH, config, methods=["GET"]),
            Route(TOKENS_PATH, tokens, methods=["POST"]),
            Route(REPORT_PATH, report, methods=["POST"]),
        ]

    async def _wait_for_change(self, request: Request, wait: float) -> None:
        """Until the version changes, ``wait`` passes, the sidecar hangs up or the facade drains."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        changed = asyncio.ensure_future(self._changed.wait())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            # Short slices so a draining facade answers its long-polls instead of holding shutdown up.
            while not (changed.done() or gone.done() or self.runtime.draining):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.wait({changed, gone}, timeout=min(remaining, 0.25), return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            gone.cancel()

    def _renew(self, holder: SpiffeId, body: dict[str, Any]) -> Response:
        """Sign a new CSR for the signer of the request: the signature proves it holds a valid SVID's key."""
        assert self.ca is not None and self._config is not None
        csr_pem = body.get("csr")
        if not isinstance(csr_pem, str):
            return _error(400, 'body must be {"csr": PEM}')
        if holder not in {doc.identity for doc in self.documents.values()}:
            # Taking a service out of the config ends its identity: it renews no more.
            return _error(403, f"no configured service has the identity {holder}; renewal refused")
        try:
            new_pem = self.ca.sign_csr(
                csr_pem.encode(),
                spiffe_id=holder,
                ttl=timedelta(seconds=self._svid_ttl()),
            )
        except CsrRejected as exc:
            return _error(422, str(exc))
        leaf = x509.load_pem_x509_certificate(new_pem)
        return JSONResponse(
            {
                "spiffe_id": str(holder),
                "certificate": new_pem.decode("ascii"),
                "bundle": self.ca.trust_bundle_pem.decode("ascii"),
                "expires": leaf.not_valid_after_utc.isoformat(),
            }
        )

    def _signed_by(self, request: Request, body: bytes) -> SpiffeId | Response:
        """The SPIFFE ID whose valid SVID signed this request (``mesh.svid_auth``), else the error response."""
        assert self.ca is not None
        try:
            holder, cert = verify_request(
                request.headers.get("authorization"),
                request.method,
                request.url.path,
                request.query_params.multi_items(),
                body,
                roots=self.ca.roots,
                trust_domain=self.ca.trust_domain,
                guard=self.replay,
            )
            if self.ca.is_revoked(cert):
                raise SignedRequestRejected(f"certificate {cert.serial_number:x} of {holder} has been revoked")
        except SignedRequestRejected as exc:
            headers = {"www-authenticate": 'SVID realm="mesh", Bearer'} if exc.status == 401 else None
            return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)
        return holder


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _read_body(request: Request) -> bytes | Response:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SIGN_REQUEST_BYTES:
            return _error(413, f"request body over {MAX_SIGN_REQUEST_BYTES} bytes")
    return body


async def _read_json(request: Request) -> dict[str, Any] | Response:
    body = await _read_body(request)
    if isinstance(body, Response):
        return body
    return _json_object(body)


def _json_object(body: bytes) -> dict[str, Any] | Response:
    try:
        payload = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return _error(400, "body must be JSON")
    if not isinstance(payload, dict):
        return _error(400, "body must be a JSON object")
    return payload


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
