"""``facade export``: the facade's routes, migration steps and mesh policy as Istio / Gateway API manifests.

``model`` turns a config at one routing state into target-neutral rules (pure); ``istio`` and
``gateway_api`` render them; ``manifests`` writes YAML; ``cli`` is the command. See docs/export.md.
"""

from .model import ExportError, ExportOptions, Finding, RoutingState, routing_state

__all__ = ["ExportError", "ExportOptions", "Finding", "RoutingState", "routing_state"]
