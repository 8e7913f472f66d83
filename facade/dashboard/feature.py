"""``DashboardFeature``: the ``/ui`` page on the admin listener (a runtime extension).

    GET /ui                       the page (server-rendered; the script refreshes it)
    GET /ui/static/{name}         dashboard.js, dashboard.css (no build step, no network)
    GET /ui/fragment/{part}       routes | migrations | carveout | diffs?route=NAME: HTML of one section
    GET /ui/series?route=NAME     the route's sampled history (old vs new) and its step changes
    GET /ui/carveout              the share served by carved services, per route and in total, over time

Reading is open like the rest of the admin API; the page's buttons call the migrations API
(``POST /migrations/{name}/{action}``) with the token the operator typed and the status
``version`` the card was rendered from, so a stale page gets a ``conflict`` instead of skipping
a step. Every answer carries a Content-Security-Policy that allows the page's own script and
stylesheet only (no inline script, no other origin).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..admin import route_view
from ..feature import Feature
from ..migration.controller import MigrationController
from .history import DEFAULT_INTERVAL, History, carve_out, sample
from .render import page, render_carve_out, render_diffs, render_migrations, render_routes, route_options

if TYPE_CHECKING:
    from ..runtime import FacadeRuntime

__all__ = ["SECURITY_HEADERS", "DashboardFeature"]

logger = logging.getLogger("facade.dashboard")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
_STATIC = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
_CARD_JOURNAL = 10  # journal entries on a card; the full journal is `facade migrate status`
_DIFF_SAMPLES = 5
_MARKS = 50  # step changes marked on a chart's time axis


class DashboardFeature(Feature):
    """Serves the dashboard and samples the telemetry every ``interval`` seconds for its charts."""

    def __init__(self, runtime: FacadeRuntime, *, interval: float = DEFAULT_INTERVAL, history: History | None = None
                 ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive seconds, got {interval!r}")
        self.runtime = runtime
        self.interval = interval
        self.history = history if history is not None else History()
        self._task: asyncio.Task[None] | None = None
        self._carve: tuple[tuple[int, int, frozenset[str]], dict[str, Any]] | None = None
        folder = Path(__file__).parent
        self._static = {name: (folder / name).read_bytes() for name in _STATIC}

    def __repr__(self) -> str:
        return f"DashboardFeature(interval={self.interval}, {self.history!r})"

    @classmethod
    def attach(cls, runtime: FacadeRuntime, **options: Any) -> DashboardFeature:
        return runtime.add_feature(cls(runtime, **options))

    # -- runtime extension hooks -------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._sample_loop(), name="dashboard-sampler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def config_changed(self, config: Any) -> None:
        self.history.keep(r.name for r in config.routes)

    def sample_now(self) -> None:
        """Take one sample of every route (the sampler's round, in one go; what a test calls)."""
        at = time.time()
        for route in self.runtime.config.routes:
            self.history.add(route.name, sample(self.runtime.telemetry, route.name, at=at, interval=self.interval))

    async def _sample_round(self) -> None:
        # The round runs on the proxy's event loop: yield between routes, so a config with many
        # routes adds a short pause per route to the requests in flight, not one long one per round.
        at = time.time()
        for route in self.runtime.config.routes:
            self.history.add(route.name, sample(self.runtime.telemetry, route.name, at=at, interval=self.interval))
            await asyncio.sleep(0)

    async def _sample_loop(self) -> None:
        while True:
            # Sample just before a telemetry second ends: the rolling window then covers `interval`
            # whole seconds (the last one 95 % done) and consecutive samples barely overlap.
            now = time.monotonic()
            target = math.floor(now / self.interval) * self.interval + self.interval - 0.05
            if target <= now:
                target += self.interval
            await asyncio.sleep(target - now)
            try:
                await self._sample_round()
            except Exception:  # keep sampling: one bad round must not end the charts
                logger.exception("dashboard: sampling failed")

    # -- what the page shows -----------------------------------------------------------------------

    def _controller(self) -> MigrationController | None:
        return self.runtime.feature(MigrationController)

    def _diff_ring(self) -> Any:
        from ..shadow import ShadowSender

        sender = self.runtime.shadow
        return sender.ring if isinstance(sender, ShadowSender) else None

    def carved_services(self) -> frozenset[str]:
        """Services carved out of the monolith: the ``to`` of every migration plan."""
        controller = self._controller()
        return frozenset(p.to_service for p in controller.plans.values()) if controller is not None else frozenset()

    def routes_html(self) -> str:
        return render_routes([route_view(self.runtime, r) for r in self.runtime.config.routes])

    async def statuses(self, journal: int = _CARD_JOURNAL) -> list[dict[str, Any]]:
        controller = self._controller()
        if controller is None:
            return []
        found = [await controller.status(name, journal=journal) for name in sorted(controller.plans)]
        return [s for s in found if s is not None]

    def carve_out(self) -> dict[str, Any]:
        """``history.carve_out``, computed once per sampling round however many pages ask."""
        key = (id(self.history), self.history.changes, self.carved_services())
        if self._carve is None or self._carve[0] != key:
            self._carve = (key, carve_out(self.history, key[2]))
        return self._carve[1]

    def _plan_of(self, route: str) -> Any:
        controller = self._controller()
        if controller is None:
            return None
        return next((p for p in controller.plans.values() if route in p.routes), None)

    async def series(self, route: str, since: float | None) -> dict[str, Any]:
        plan = self._plan_of(route)
        marks: list[dict[str, Any]] = []
        controller = self._controller()
        if plan is not None and controller is not None:
            status = await controller.status(plan.name, journal=_MARKS)
            for entry in (status or {}).get("journal", ()):
                marks.append({"at": entry["at"], "label": f"{entry['action']} → {entry['to_state']} "
                                                          f"step {entry['to_step']}"})
        return {
            "route": route,
            "interval": self.interval,
            "old": plan.from_service if plan is not None else None,
            "new": plan.to_service if plan is not None else None,
            "plan": plan.name if plan is not None else None,
            "points": [p.to_json() for p in self.history.series(route, since=since)],
            "marks": sorted(marks, key=lambda m: m["at"]),
        }

    # -- admin routes ------------------------------------------------------------------------------

    def admin_routes(self) -> list[BaseRoute]:
        runtime = self.runtime

        def page_answer(text: str) -> Response:
            return HTMLResponse(text, headers=SECURITY_HEADERS)

        def json_answer(doc: Any, status: int = 200) -> Response:
            return JSONResponse(doc, status_code=status, headers=SECURITY_HEADERS)

        def route_names() -> list[str]:
            return [r.name for r in runtime.config.routes]

        async def index(request: Request) -> Response:
            names = route_names()
            migrating = [r for s in await self.statuses(0) for r in s["routes"]]
            chosen = next((r for r in migrating if r in names), names[0] if names else None)
            return page_answer(page(
                routes_html=self.routes_html(),
                migrations_html=render_migrations(await self.statuses()),
                options_html=route_options(names, chosen),
                carve_html=render_carve_out(self.carve_out()),
                version=runtime.version,
            ))

        async def static(request: Request) -> Response:
            name = request.path_params["name"]
            if name not in _STATIC:
                return Response("not found", status_code=404, media_type="text/plain")
            return Response(self._static[name], media_type=_STATIC[name], headers=SECURITY_HEADERS)

        async def fragment(request: Request) -> Response:
            part = request.path_params["part"]
            if part == "routes":
                return page_answer(self.routes_html())
            if part == "migrations":
                return page_answer(render_migrations(await self.statuses()))
            if part == "carveout":
                return page_answer(render_carve_out(self.carve_out()))
            if part == "diffs":
                route = request.query_params.get("route", "")
                if route not in route_names():
                    return page_answer(f"<p>no route named {html.escape(repr(route), quote=True)}</p>")
                ring = self._diff_ring()
                return page_answer(render_diffs(ring.to_json(route, _DIFF_SAMPLES) if ring is not None else None))
            return Response("unknown part: routes, migrations, carveout or diffs", status_code=404,
                            media_type="text/plain", headers=SECURITY_HEADERS)

        async def series(request: Request) -> Response:
            route = request.query_params.get("route", "")
            if route not in route_names():
                return json_answer({"error": f"no route named {route!r}", "routes": route_names()}, 404)
            raw = request.query_params.get("since")
            try:
                since = float(raw) if raw else None
            except ValueError:
                return json_answer({"error": f"since must be a unix time in seconds, got {raw!r}"}, 400)
            return json_answer(await self.series(route, since))

        async def carve(request: Request) -> Response:
            return json_answer(self.carve_out())

        return [
            Route("/ui", index, methods=["GET"]),
            Route("/ui/static/{name}", static, methods=["GET"]),
            Route("/ui/fragment/{part}", fragment, methods=["GET"]),
            Route("/ui/series", series, methods=["GET"]),
            Route("/ui/carveout", carve, methods=["GET"]),
        ]
