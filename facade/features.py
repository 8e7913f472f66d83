"""Plug the optional features (mesh control plane, shadow traffic, migrations) into a runtime.

Each is a ``facade.feature.Feature``: it may add admin routes, veto a config, react to a reload,
run background work and add to ``/metrics``, and it changes what the hot path reads only through
the runtime's swap and ``install_*`` methods. Telemetry is built into the runtime (``runtime.telemetry``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from .dashboard import DashboardFeature
from .migration.controller import MigrationController
from .shadow import ShadowFeature

if TYPE_CHECKING:
    from .runtime import FacadeRuntime

__all__ = ["attach_features"]


def _optional(module: str) -> ModuleType | None:
    """The module of an optional package, or None when this build does not have it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            return None
        raise


def attach_features(runtime: FacadeRuntime, *, shadow_sender: str | None = None) -> None:
    """Plug every feature present in this build into ``runtime`` (before ``runtime.start()``).

    Order matters: the mesh installs its mTLS upstream pools, so it goes first and the shadow
    sender, which sends over the runtime's pools, is built on the final ones. Migrations come
    last: their start swaps in the splits of the durable state. ``shadow_sender``: where shadow copies
    leave from when the config's ``shadow.sender`` does not say (``ShadowFeature.attach``).
    """
    mesh = _optional("facade.mesh.controlplane")
    if mesh is not None:
        mesh.MeshFeature.attach(runtime)
    ShadowFeature.attach(runtime, sender=shadow_sender)  # `facade serve`: "process" (docs/shadow.md)
    runtime.add_feature(MigrationController(runtime))
    # The /ui page over the APIs above (reads the migration controller and the shadow ring).
    runtime.add_feature(DashboardFeature(runtime))
