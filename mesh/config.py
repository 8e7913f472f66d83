"""The ``mesh:`` section of ``facade.yaml``: trust domain, CA, PeerAuthentication-like modes, policies.

    mesh:
      trust_domain: shop.local
      ca: {state_dir: .facade, svid_ttl: 24h}     # both optional; the CA lives under the facade's state_dir
      mode: PERMISSIVE                            # STRICT | PERMISSIVE | DISABLE (Istio's default: PERMISSIVE)
      services:
        catalog: {mode: STRICT, identity: spiffe://shop.local/ns/shop/sa/catalog}
      policies: [...]                             # mesh.policy.parse_policies
      edge_identity: spiffe://shop.local/ns/edge/sa/facade

``parse_mesh`` is called by ``facade.config`` with the section's node; every problem is recorded
with its file:line:col and the parse never stops at the first one. The result is immutable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from facade.yamlfile import Node, Problems, read_duration, read_str

from .policy import AuthorizationPolicy, parse_policies, policies_for
from .spiffe import InvalidSpiffeId, SpiffeId
from .tls import MTLS_MODES, MtlsMode

__all__ = [
    "DEFAULT_MODE",
    "DEFAULT_NAMESPACE",
    "DEFAULT_SVID_TTL_S",
    "CaSpec",
    "MeshServiceSpec",
    "MeshSpec",
    "parse_mesh",
]

DEFAULT_MODE: MtlsMode = "PERMISSIVE"  # Istio's default PeerAuthentication mode
DEFAULT_NAMESPACE = "default"  # a service without an explicit identity is spiffe://<td>/ns/default/sa/<name>
DEFAULT_SVID_TTL_S = 24 * 3600.0
MIN_SVID_TTL_S = 2.0  # short TTLs exist for rotation tests; below this a cert would expire mid-handshake

_FIELDS = ("trust_domain", "ca", "mode", "services", "policies", "edge_identity")
_CA_FIELDS = ("state_dir", "svid_ttl")
_SERVICE_FIELDS = ("mode", "identity")


@dataclass(frozen=True, slots=True)
class CaSpec:
    state_dir: str | None = None  # None: the facade's state_dir
    svid_ttl: float = DEFAULT_SVID_TTL_S  # seconds; sidecars renew at ~50 %


@dataclass(frozen=True, slots=True)
class MeshServiceSpec:
    name: str
    mode: MtlsMode | None = None  # None: the mesh-wide mode
    identity: SpiffeId | None = None  # None: the service's own ``identity:``, else the default


@dataclass(frozen=True, slots=True)
class MeshSpec:
    """The validated ``mesh:`` section."""

    trust_domain: str
    ca: CaSpec = CaSpec()
    mode: MtlsMode = DEFAULT_MODE
    services: tuple[MeshServiceSpec, ...] = ()
    policies: tuple[AuthorizationPolicy, ...] = ()
    edge_identity: SpiffeId | None = None

    def service(self, name: str) -> MeshServiceSpec | None:
        for s in self.services:
            if s.name == name:
                return s
        return None

    def mode_for(self, name: str) -> MtlsMode:
        spec = self.service(name)
        return spec.mode if spec is not None and spec.mode is not None else self.mode

    def identity_for(self, name: str, declared: str | None = None) -> SpiffeId:
        """The SPIFFE ID of service ``name``: mesh.services, else the service's ``identity:``, else the default."""
        spec = self.service(name)
        if spec is not None and spec.identity is not None:
            return spec.identity
        if declared:
            return SpiffeId.parse_workload(declared)
        return SpiffeId.workload(self.trust_domain, DEFAULT_NAMESPACE, name)

    def edge(self) -> SpiffeId:
        return self.edge_identity or SpiffeId.workload(self.trust_domain, "edge", "facade")

    def policies_for(self, name: str) -> tuple[AuthorizationPolicy, ...]:
        return policies_for(self.policies, name)


def parse_mesh(
    node: Node, problems: Problems, *, services: list[str], resolve_path: Callable[[str], str]
) -> MeshSpec | None:
    """Validate the ``mesh:`` node. ``services`` are the declared service names (for references)."""
    before = len(problems.errors)
    f = node.fields(problems, _FIELDS, required=("trust_domain",))
    if not node.is_mapping:
        return None
    trust_domain = _trust_domain(f.get("trust_domain"), problems)
    ca = _read_ca(f.get("ca"), problems, resolve_path)
    mode = _read_mode(f.get("mode"), problems) or DEFAULT_MODE
    mesh_services = _read_services(f.get("services"), problems, services, trust_domain)
    policies = parse_policies(f.get("policies"), problems)
    _check_policy_services(f.get("policies"), policies, problems, services)
    edge = _spiffe(f.get("edge_identity"), problems, trust_domain)
    if len(problems.errors) != before or trust_domain is None:
        return None
    return MeshSpec(
        trust_domain=trust_domain,
        ca=ca,
        mode=mode,
        services=mesh_services,
        policies=policies,
        edge_identity=edge,
    )


def _trust_domain(node: Node | None, problems: Problems) -> str | None:
    value = read_str(node, problems)
    if value is None or node is None:
        return None
    try:
        SpiffeId(value)
    except InvalidSpiffeId as exc:
        problems.error(node, f"invalid trust domain {value!r}: {exc}")
        return None
    return value


def _read_ca(node: Node | None, problems: Problems, resolve_path: Callable[[str], str]) -> CaSpec:
    if node is None or node.is_null:
        return CaSpec()
    f = node.fields(problems, _CA_FIELDS)
    state_dir = read_str(f.get("state_dir"), problems)
    ttl = read_duration(f.get("svid_ttl"), problems, default=DEFAULT_SVID_TTL_S, min=MIN_SVID_TTL_S)
    return CaSpec(state_dir=resolve_path(state_dir) if state_dir else None, svid_ttl=ttl)


def _read_mode(node: Node | None, problems: Problems) -> MtlsMode | None:
    if node is None:
        return None
    value = read_str(node, problems, choices=MTLS_MODES)
    return cast(MtlsMode, value) if value is not None else None


def _spiffe(node: Node | None, problems: Problems, trust_domain: str | None) -> SpiffeId | None:
    value = read_str(node, problems)
    if value is None or node is None:
        return None
    try:
        sid = SpiffeId.parse_workload(value)
    except InvalidSpiffeId as exc:
        problems.error(node, f"not a SPIFFE ID: {exc}")
        return None
    if trust_domain is not None and sid.trust_domain != trust_domain:
        problems.error(node, f"{sid} is not in the mesh's trust domain {trust_domain!r}")
        return None
    return sid


def _read_services(
    node: Node | None, problems: Problems, declared: list[str], trust_domain: str | None
) -> tuple[MeshServiceSpec, ...]:
    if node is None or node.is_null:
        return ()
    if not node.is_mapping:
        problems.error(node, f"must be a mapping of service name -> {{mode, identity}}, got {node.kind}")
        return ()
    out: list[MeshServiceSpec] = []
    for name, body in node.items():
        if name not in declared:
            _unknown_service(node.key_node(name) or body, problems, name, declared, body.path)
            continue
        f = body.fields(problems, _SERVICE_FIELDS)
        out.append(
            MeshServiceSpec(
                name=name,
                mode=_read_mode(f.get("mode"), problems),
                identity=_spiffe(f.get("identity"), problems, trust_domain),
            )
        )
    return tuple(out)


def _check_policy_services(
    node: Node | None, policies: tuple[AuthorizationPolicy, ...], problems: Problems, declared: list[str]
) -> None:
    if node is None or not node.is_list:
        return
    by_name = {p.name: p for p in policies}
    for element in node.elements():
        name_node = element.get("name")
        policy = by_name.get(name_node.value) if name_node is not None and name_node.is_scalar else None
        services_node = element.get("services")
        if policy is None or services_node is None:
            continue
        targets = services_node.elements() or [services_node]
        for target in targets:
            value = target.value if target.is_scalar else None
            if isinstance(value, str) and value not in declared:
                _unknown_service(target, problems, value, declared, target.path)


def _unknown_service(node: Node, problems: Problems, name: str, declared: list[str], path: str) -> None:
    import difflib

    hint = difflib.get_close_matches(name, declared, n=1, cutoff=0.6)
    suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
    problems.error(node, f"unknown service {name!r}{suffix}; declared: {', '.join(declared) or 'none'}", path=path)
