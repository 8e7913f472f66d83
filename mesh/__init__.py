"""mesh: SPIFFE identities, sidecars with mTLS and authorization policy.

    spiffe      SpiffeId: parse/validate SPIFFE IDs (pure)
    ca          CertificateAuthority: ECDSA P-256 root, X.509-SVIDs from CSRs, bootstrap tokens
    ca_http     ca_routes(ca): POST /mesh/ca/sign for the admin listener
    identity    WorkloadIdentity: a workload's own key + SVID, CSR generation, rotation timing
    tls         server_context / client_context / verify_peer / RotatingContext (mTLS, hot rotation)
    policy      AuthorizationPolicy + evaluate(): Istio AuthorizationPolicy semantics (pure)
    xfcc        X-Forwarded-Client-Cert (Envoy format) from a verified peer
    svid_auth   requests signed with an SVID's key (sidecar -> control plane), replay-protected
    state       the control plane's durable document versions and sidecar reports (SQLite)
    cli         `facade mesh ca init|issue|show|revoke`
"""

from .ca import CertificateAuthority, CsrRejected, TokenRejected
from .identity import WorkloadIdentity
from .policy import AuthorizationPolicy, PolicyDecision, RequestAttributes, evaluate, parse_policies
from .spiffe import InvalidSpiffeId, SpiffeId
from .tls import PeerRejected, RotatingContext, client_context, server_context, verify_peer

__all__ = [
    "AuthorizationPolicy",
    "CertificateAuthority",
    "CsrRejected",
    "InvalidSpiffeId",
    "PeerRejected",
    "PolicyDecision",
    "RequestAttributes",
    "RotatingContext",
    "SpiffeId",
    "TokenRejected",
    "WorkloadIdentity",
    "client_context",
    "evaluate",
    "parse_policies",
    "server_context",
    "verify_peer",
]
