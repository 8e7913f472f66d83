"""mesh: SPIFFE identities, sidecars with mTLS and authorization policy."""
