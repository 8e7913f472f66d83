"""The ``mesh:`` section through ``facade.config``: the model, defaults, and every error with its position."""

from __future__ import annotations

import textwrap

import pytest

from facade.config import parse_config
from facade.mesh.config import DEFAULT_SVID_TTL_S, MeshSpec
from facade.mesh.spiffe import SpiffeId
from facade.yamlfile import YamlDocument

BASE = """\
services:
  catalog: {endpoints: ["https://127.0.0.1:15101"]}
  monolith: {endpoints: ["http://127.0.0.1:8001"]}
routes:
  - {name: all, match: {path: {prefix: /}}, backend: monolith}
"""


def parse(mesh: str) -> tuple[MeshSpec | None, list[str]]:
    text = BASE + "mesh:\n" + textwrap.indent(textwrap.dedent(mesh), "  ")
    config, problems = parse_config(YamlDocument.load(text, "/cfg/facade.yaml"), env={})
    errors = [str(p) for p in problems if p.severity == "error"]
    return (config.mesh if config is not None else None), errors


def test_a_full_section_builds_the_model() -> None:
    mesh, errors = parse("""
        trust_domain: shop.local
        ca: {state_dir: pki, svid_ttl: 1h}
        mode: STRICT
        services:
          catalog: {mode: PERMISSIVE, identity: spiffe://shop.local/ns/shop/sa/catalog}
        policies:
          - name: deny-admin
            action: DENY
            rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
        edge_identity: spiffe://shop.local/ns/edge/sa/gw
    """)
    assert errors == []
    assert mesh is not None
    assert mesh.ca.state_dir == "/cfg/pki" and mesh.ca.svid_ttl == 3600
    assert mesh.mode_for("catalog") == "PERMISSIVE" and mesh.mode_for("monolith") == "STRICT"
    assert mesh.identity_for("catalog") == SpiffeId.parse("spiffe://shop.local/ns/shop/sa/catalog")
    assert mesh.identity_for("monolith") == SpiffeId.parse("spiffe://shop.local/ns/default/sa/monolith")
    assert mesh.identity_for("monolith", "spiffe://shop.local/ns/legacy/sa/mono") == SpiffeId.parse(
        "spiffe://shop.local/ns/legacy/sa/mono"
    )
    assert mesh.edge() == SpiffeId.parse("spiffe://shop.local/ns/edge/sa/gw")
    assert [p.name for p in mesh.policies_for("catalog")] == ["deny-admin"]


def test_defaults_follow_istio() -> None:
    mesh, errors = parse("trust_domain: shop.local\n")
    assert errors == [] and mesh is not None
    assert mesh.mode == "PERMISSIVE"
    assert mesh.ca.svid_ttl == DEFAULT_SVID_TTL_S and mesh.ca.state_dir is None
    assert mesh.edge() == SpiffeId.parse("spiffe://shop.local/ns/edge/sa/facade")


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("mode: STRICT\n", "facade.yaml:7:3: mesh.trust_domain: is required"),
        ("trust_domain: Shop.Local\n", "facade.yaml:7:17: mesh.trust_domain: invalid trust domain"),
        ("trust_domain: shop.local\nmode: strictly\n", "facade.yaml:8:9: mesh.mode: must be one of"),
        ("trust_domain: shop.local\ntrust_domian: x\n", "did you mean 'trust_domain'"),
        ("trust_domain: shop.local\nca: {svid_ttl: 1s}\n", "facade.yaml:8:18: mesh.ca.svid_ttl: must be at least 2s"),
        ("trust_domain: shop.local\nca: {stat_dir: x}\n", "did you mean 'state_dir'"),
        (
            "trust_domain: shop.local\nservices: {catalgo: {mode: STRICT}}\n",
            "facade.yaml:8:14: mesh.services.catalgo: unknown service 'catalgo' (did you mean 'catalog'?)",
        ),
        (
            "trust_domain: shop.local\nservices: {catalog: {identity: spiffe://other.td/ns/a/sa/b}}\n",
            "mesh.services.catalog.identity: spiffe://other.td/ns/a/sa/b is not in the mesh's trust domain",
        ),
        ("trust_domain: shop.local\nedge_identity: https://x\n", "mesh.edge_identity: not a SPIFFE ID"),
        (
            "trust_domain: shop.local\npolicies: [{name: p, services: [catalgo], rules: [{}]}]\n",
            "unknown service 'catalgo' (did you mean 'catalog'?)",
        ),
        ("trust_domain: shop.local\npolicies: [{name: p, action: DENNY}]\n", "mesh.policies[0].action"),
    ],
)
def test_errors_name_file_line_column_and_field(section: str, expected: str) -> None:
    mesh, errors = parse(section)
    assert mesh is None
    assert any(expected in e for e in errors), errors
