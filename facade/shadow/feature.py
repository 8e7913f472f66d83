"""``ShadowFeature``: attaches a sender to a runtime and serves ``GET /compare``, ``/diffs`` and ``/shadow``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..compare import compare
from ..feature import Feature

if TYPE_CHECKING:
    from ..config import Config
    from ..migration.evidence import FleetWindow
    from ..runtime import FacadeRuntime
    from ..snapshot import Snapshot
    from ..split import Split

logger = logging.getLogger("facade.shadow")

from .policy import parse_window
from .process import ProcessShadowSender
from .sender import ShadowSender, sender_options

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


def compare_view(runtime: FacadeRuntime, params: Mapping[str, str], fleet: FleetWindow | None = None) -> dict[str, Any]:
    """``GET /compare``: the route's old (primary) vs new (candidate) backend over a step or a window.

    With ``fleet`` (replicas sharing a migration store) a comparison of the route's current step and
    its migration's backends reports the sum over every replica (``scope: fleet``, with each replica's
    part and age); anything else (a window, a past step, other backends) is this instance's (``local``).
    """
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
    known = runtime.config.backend_names
    for side, name in (("old", old), ("new", new)):
        if name not in known:  # a typo compared nothing with nothing and answered "not enough traffic"
            raise _BadQuery(400, {"error": f"{side}: unknown service {name!r} (services: {', '.join(known)})"})
    telemetry = runtime.telemetry
    try:
        old_stats = telemetry.side_stats(route, old, step=step, window=window)
        new_stats = telemetry.side_stats(route, new, step=step, window=window)
        diffs = telemetry.diff_counts(route, step=step, window=window)
    except ValueError as exc:
        raise _BadQuery(400, {"error": str(exc)}) from None
    fleet_wide = fleet is not None and window is None and step in (None, fleet.step) and \
        (old, new) == (fleet.old_service, fleet.new_service)
    if fleet_wide:
        assert fleet is not None
        old_stats, new_stats = fleet.evidence.old.stats(), fleet.evidence.new.stats()
        diffs = fleet.evidence.diffs(diffs.noise_fields)
    comparison = compare(old_stats, new_stats, diffs)
    return {
        **(fleet.to_json(now=time.time()) if fleet is not None and fleet_wide else {"scope": "local"}),
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
        self._services = runtime.config.services

    def __repr__(self) -> str:
        return f"ShadowFeature({self.sender!r})"

    @classmethod
    def attach(cls, runtime: FacadeRuntime, *, sender: str | None = None, **options: Any) -> ShadowFeature:
        """Create a ``ShadowSender`` over the runtime's pools and telemetry and plug it in.

        The sender is sized by the config's ``shadow:`` section (``sender_options``); ``options`` override it.
        ``sender``: where copies leave from when the section does not say (``shadow.sender``): ``"process"``
        (a child process, ``facade.shadow.process``; what ``facade serve`` passes) or ``"inline"`` (this
        event loop; the default of a runtime built in-process).
        """
        mode = sender_mode(runtime, sender)
        options = sender_options(runtime.config.shadow) | options
        made: ShadowSender
        if mode == "process":
            made = ProcessShadowSender(services=lambda: runtime.config.services, mtls=runtime.upstreams.mtls,
                                       upstreams=runtime.upstreams, telemetry=runtime.telemetry, **options)
        else:
            made = ShadowSender(upstreams=runtime.upstreams, telemetry=runtime.telemetry, **options)
        feature = runtime.add_feature(cls(runtime, made))
        runtime.install_shadow(made)
        return feature

    async def start(self) -> None:
        # Another feature may have installed other pools after attach (the mesh's mTLS pools):
        # copies must go through the pools the proxy uses.
        self.sender.upstreams = self.runtime.upstreams
        await self.sender.start()

    async def stop(self) -> None:
        await self.sender.stop()

    def swapped(self, snapshot: Snapshot) -> None:
        services = snapshot.config.services
        if services != self._services:  # the child process builds its pools from them
            self._services = services
            if isinstance(self.sender, ProcessShadowSender):
                self.sender.services_changed()

    async def gather_telemetry(self) -> tuple[str, ...]:
        return await self.sender.flush()  # the child process's results not shipped yet

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
                fleet = None
                for feature in runtime.features:  # replicas: the migration controller sums their windows
                    fleet = fleet or await feature.fleet_window(params["route"])
                report = compare_view(runtime, params, fleet)
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


def sender_mode(runtime: FacadeRuntime, default: str | None) -> str:
    """``shadow.sender`` of the config, else ``default``, else ``inline``."""
    spec = runtime.config.shadow
    return (spec.sender if spec is not None else None) or default or "inline"


def _limit(text: str | None, maximum: int, default: int = 20) -> int:
    if text is None or text == "":
        return min(default, maximum)
    if not text.isdigit() or int(text) < 1:
        raise _BadQuery(400, {"error": f"limit must be a positive integer, got {text!r}"})
    return min(int(text), maximum)
