"""The contract between the runtime and a feature (mesh control plane, shadow traffic, migrations, ...).

A feature subclasses ``Feature`` and overrides the hooks it needs; every hook has a no-op default,
so the runtime calls each of them on every feature without asking what it offers:

    class Dashboard(Feature):
        def admin_routes(self) -> list[BaseRoute]:
            return [Route("/dashboard", self.page)]

    runtime.add_feature(Dashboard(runtime))      # before runtime.start()
    runtime.feature(Dashboard)                   # -> the Dashboard plugged in, or None

When the runtime calls them:

- ``admin_routes()``: once, when the admin app is built at ``start()``;
- ``start()`` / ``stop()``: after the upstream pools start, in the order the features were added /
  when the facade drains, after the listeners stopped; ``start()`` may raise ``ConfigError``;
- ``check_config(config)``: on a reload, after the new config validated and compiled and before
  anything changed; raise ``ConfigError`` to refuse it (nothing is applied, in part or whole);
- ``config_changed(config)``: on a reload every feature accepted, just before the swap; a feature
  whose part of the snapshot follows the config stages it here (``runtime.stage(splits=...)``), so
  the new config and that part go in with one swap;
- ``reload_sources(trigger)``: on a reload whose config file did not change, to re-read the files
  the feature owns (migration plans); returns the problems found (errors mean nothing changed);
- ``prometheus_text()``: on every ``GET /metrics``, appended to the facade's own exposition;
- ``swapped(snapshot)``: after every swap once the runtime started (reloads, migration steps): the
  worker pool sends the new version to its workers here (``facade.workers``);
- ``settled()``: awaited after every admin mutation, before it answers: the worker pool returns when
  every live worker runs the current snapshot version;
- ``fleet_window(route)``: on ``GET /compare`` of a route's current step: the migration controller
  returns the window summed over every replica sharing its store (``FleetWindow``); None keeps the
  comparison local.
- ``gather_telemetry()``: awaited before anything judges or reports the telemetry (gates, ``/compare``,
  ``/metrics``, ``/diffs``, ``/errors``): a feature whose evidence is recorded in other processes fetches
  what they hold; it returns the names of those that did not answer in time (the verdict is partial);
- ``worker_state()``: what the worker processes of ``--workers N`` need of this feature's process-held
  state (picklable, e.g. the mesh's edge SVID); the worker pool sends it before a worker's first
  snapshot and again whenever it changed (looked at before every swap and every 0.5 s).

A feature never assigns to the runtime or its snapshot: it changes what the hot path reads only
through the runtime's methods (``swap``, ``stage``, ``install_upstreams``, ``install_shadow``,
``install_mesh``), each ending in the one swap (docs/architecture.md, "The snapshot swap").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from .config import Config
    from .errors import Problem
    from .migration.evidence import FleetWindow
    from .snapshot import Snapshot

__all__ = ["Feature", "MeshControl"]


class Feature:
    """A part of the facade with its own state, admin routes or background work (hooks: see the module)."""

    def admin_routes(self) -> list[BaseRoute]:
        return []

    def check_config(self, config: Config) -> None:
        return None

    async def config_changed(self, config: Config) -> None:
        return None

    async def reload_sources(self, trigger: str) -> list[Problem]:
        return []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def prometheus_text(self) -> str:
        return ""

    def swapped(self, snapshot: Snapshot) -> None:
        return None

    async def settled(self) -> None:
        return None

    async def fleet_window(self, route: str) -> FleetWindow | None:
        return None
    async def gather_telemetry(self) -> tuple[str, ...]:
        return ()

    def worker_state(self) -> dict[str, Any]:
        return {}


class MeshControl(Protocol):
    """What a migration's ``mtls`` step needs of the mesh control plane (``runtime.mesh``)."""

    def set_mode(self, service: str, mode: Literal["STRICT"] | None) -> int:
        """Hold ``service``'s sidecars in STRICT mTLS (None: back to the configured mode); the document version."""
        ...

    def plaintext_seen(self, service: str, *, since: float) -> int | None:
        """Plaintext attempts at ``service``'s sidecars under documents published since ``since`` (None: unknown)."""
        ...
