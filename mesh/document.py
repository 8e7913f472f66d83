"""The config document a sidecar gets from the control plane, as an immutable value with a JSON form.

    doc = build_document(config, "catalog", bundle_pem=..., version=7)      # control plane (pure)
    SidecarDocument.from_json(doc.to_json())                                 # sidecar (round trip)

A document holds everything one sidecar enforces: its mode, its identity, the trust bundle, the
policies that apply to it, the path normalization flags (the same as the facade's, so policy and
router see the same bytes) and, for its outbound listener, every other mesh service's SPIFFE ID
and sidecar endpoints (the service's ``https://`` endpoints in ``facade.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from facade.config import Config, NormalizeSpec

from .policy import AuthorizationPolicy, Condition, Operation, Rule, Source
from .spiffe import SpiffeId
from .tls import MTLS_MODES, MtlsMode

__all__ = ["DocumentError", "PeerService", "SidecarDocument", "build_document", "policy_from_json", "policy_to_json"]


class DocumentError(ValueError):
    """A control-plane document is malformed (the sidecar keeps its last good one)."""


@dataclass(frozen=True, slots=True)
class PeerService:
    name: str
    identity: SpiffeId
    endpoints: tuple[str, ...]  # the peer's sidecar inbound URLs (https:// for mTLS)


@dataclass(frozen=True, slots=True)
class SidecarDocument:
    version: int
    service: str
    trust_domain: str
    mode: MtlsMode
    identity: SpiffeId
    bundle_pem: str
    policies: tuple[AuthorizationPolicy, ...] = ()
    normalize: NormalizeSpec = field(default_factory=NormalizeSpec)
    peers: tuple[PeerService, ...] = ()
    # The edge's request-head rules, applied by the sidecar's listeners alike (facade.request_head).
    headers_with_underscores: Literal["drop", "reject", "allow"] = "drop"
    max_request_headers_count: int = 100

    def peer(self, name: str) -> PeerService | None:
        for p in self.peers:
            if p.name == name:
                return p
        return None

    def same_content(self, other: SidecarDocument) -> bool:
        """Equal but for the version."""
        return self.to_json() | {"version": 0} == other.to_json() | {"version": 0}

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "service": self.service,
            "trust_domain": self.trust_domain,
            "mode": self.mode,
            "identity": str(self.identity),
            "bundle": self.bundle_pem,
            "policies": [policy_to_json(p) for p in self.policies],
            "normalize": {
                "merge_slashes": self.normalize.merge_slashes,
                "reject_encoded_slash": self.normalize.reject_encoded_slash,
                "semicolons": self.normalize.semicolons,
            },
            "peers": {p.name: {"identity": str(p.identity), "endpoints": list(p.endpoints)} for p in self.peers},
            "request_head": {
                "headers_with_underscores": self.headers_with_underscores,
                "max_request_headers_count": self.max_request_headers_count,
            },
        }

    @classmethod
    def from_json(cls, data: Any) -> SidecarDocument:
        try:
            mode = data["mode"]
            if mode not in MTLS_MODES:
                raise DocumentError(f"unknown mode {mode!r}")
            norm = data["normalize"]
            semicolons = norm["semicolons"]
            if semicolons not in ("reject", "keep"):
                raise DocumentError(f"unknown normalize.semicolons {semicolons!r}")
            head = data.get("request_head") or {}  # absent from an older control plane's documents
            underscores = head.get("headers_with_underscores", "drop")
            if underscores not in ("drop", "reject", "allow"):
                raise DocumentError(f"unknown request_head.headers_with_underscores {underscores!r}")
            max_count = int(head.get("max_request_headers_count", 100))
            if max_count < 1:
                raise DocumentError(f"request_head.max_request_headers_count must be >= 1, got {max_count}")
            return cls(
                version=int(data["version"]),
                service=str(data["service"]),
                trust_domain=str(data["trust_domain"]),
                mode=cast(MtlsMode, mode),
                identity=SpiffeId.parse_workload(data["identity"]),
                bundle_pem=str(data["bundle"]),
                policies=tuple(policy_from_json(p) for p in data["policies"]),
                normalize=NormalizeSpec(
                    merge_slashes=bool(norm["merge_slashes"]),
                    reject_encoded_slash=bool(norm["reject_encoded_slash"]),
                    semicolons=cast(Literal["reject", "keep"], semicolons),
                ),
                peers=tuple(
                    PeerService(name, SpiffeId.parse_workload(p["identity"]), tuple(str(e) for e in p["endpoints"]))
                    for name, p in sorted(data["peers"].items())
                ),
                headers_with_underscores=cast(Literal["drop", "reject", "allow"], underscores),
                max_request_headers_count=max_count,
            )
        except DocumentError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DocumentError(f"malformed sidecar config document: {exc!r}") from None


def mesh_services(config: Config) -> list[str]:
    """Services that are part of the mesh: named under ``mesh.services`` or with an ``identity:``."""
    mesh = config.mesh
    return [s.name for s in config.services if s.identity or (mesh is not None and mesh.service(s.name) is not None)]


def build_document(
    config: Config,
    service: str,
    *,
    bundle_pem: str,
    version: int,
    mode_overrides: Mapping[str, MtlsMode] | None = None,
) -> SidecarDocument:
    """The document for ``service``'s sidecar under ``config`` (which must have a ``mesh:`` section)."""
    mesh = config.mesh
    assert mesh is not None, "build_document needs a config with a mesh section"
    overrides = mode_overrides or {}
    spec = config.service(service)
    peers = []
    for name in mesh_services(config):
        if name == service:
            continue
        peer_spec = config.service(name)
        assert peer_spec is not None
        endpoints = tuple(e for g in peer_spec.groups for e in g.endpoints)
        peers.append(PeerService(name, mesh.identity_for(name, peer_spec.identity), endpoints))
    return SidecarDocument(
        version=version,
        service=service,
        trust_domain=mesh.trust_domain,
        mode=overrides.get(service, mesh.mode_for(service)),
        identity=mesh.identity_for(service, spec.identity if spec is not None else None),
        bundle_pem=bundle_pem,
        policies=mesh.policies_for(service),
        normalize=config.normalize,
        peers=tuple(peers),
        headers_with_underscores=config.headers_with_underscores,
        max_request_headers_count=config.limits.max_request_headers_count,
    )


# -- policies as JSON (the sidecar rebuilds the same frozen values) ------------------------------


def policy_to_json(policy: AuthorizationPolicy) -> dict[str, Any]:
    return {
        "name": policy.name,
        "action": policy.action,
        "services": list(policy.services),
        "rules": [
            {
                "from": [_fields(s, Source) for s in rule.from_],
                "to": [_fields(o, Operation) for o in rule.to],
                "when": [{"key": c.key, "values": list(c.values), "not_values": list(c.not_values)} for c in rule.when],
            }
            for rule in policy.rules
        ],
    }


def policy_from_json(data: Mapping[str, Any]) -> AuthorizationPolicy:
    return AuthorizationPolicy(
        name=str(data["name"]),
        action=data["action"],
        services=tuple(data.get("services", ())),
        rules=tuple(
            Rule(
                from_=tuple(Source(**_tuples(s)) for s in rule.get("from", ())),
                to=tuple(Operation(**_tuples(o)) for o in rule.get("to", ())),
                when=tuple(Condition(**_tuples(c)) for c in rule.get("when", ())),
            )
            for rule in data.get("rules", ())
        ),
    )


def _fields(value: Source | Operation, cls: type[Source | Operation]) -> dict[str, list[str]]:
    return {name: list(getattr(value, name)) for name in cls.__dataclass_fields__ if getattr(value, name)}


def _tuples(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
