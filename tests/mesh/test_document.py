"""The sidecar document: built purely from a Config, JSON round trip, policies identical after the trip."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

from facade.config import Config, parse_config
from facade.mesh.document import DocumentError, SidecarDocument, build_document, policy_from_json, policy_to_json
from facade.mesh.policy import RequestAttributes, evaluate
from facade.mesh.spiffe import SpiffeId
from facade.yamlfile import YamlDocument

TEXT = """\
services:
  web: {endpoints: ["https://127.0.0.1:15100"], identity: "spiffe://shop.local/ns/shop/sa/web"}
  catalog: {endpoints: ["https://127.0.0.1:15101", "https://127.0.0.1:15102"]}
  monolith: {endpoints: ["http://127.0.0.1:8001"]}
routes:
  - {name: all, match: {path: {prefix: /}}, backend: monolith}
normalize: {semicolons: keep}
mesh:
  trust_domain: shop.local
  services: {catalog: {mode: STRICT, identity: "spiffe://shop.local/ns/shop/sa/catalog"}}
  policies:
    - name: web-reads
      services: [catalog]
      rules:
        - from: [{source: {principals: ["shop.local/ns/shop/sa/web"], not_namespaces: [evil]}}]
          to: [{operation: {methods: [GET], paths: ["/catalog/*"], not_hosts: ["x.local"]}}]
          when: [{key: "request.headers[X-Canary]", not_values: ["0"]}]
    - {name: deny-admin, action: DENY, rules: [{to: [{operation: {paths: ["/%61dmin/*"]}}]}]}
"""


def config() -> Config:
    cfg, problems = parse_config(YamlDocument.load(textwrap.dedent(TEXT), "/cfg/facade.yaml"), env={})
    assert cfg is not None, problems
    return cfg


def test_document_for_a_service_has_its_mode_identity_policies_flags_and_peers() -> None:
    doc = build_document(config(), "catalog", bundle_pem="PEM", version=3)
    assert doc.mode == "STRICT"
    assert doc.identity == SpiffeId.parse("spiffe://shop.local/ns/shop/sa/catalog")
    assert [p.name for p in doc.policies] == ["web-reads", "deny-admin"]
    assert doc.normalize.semicolons == "keep"
    # Peers: the other mesh services (named under mesh.services or with identity:), with their endpoints.
    assert [(p.name, str(p.identity), p.endpoints) for p in doc.peers] == [
        ("web", "spiffe://shop.local/ns/shop/sa/web", ("https://127.0.0.1:15100",))
    ]
    web = build_document(config(), "web", bundle_pem="PEM", version=3)
    assert web.mode == "PERMISSIVE"
    assert [p.name for p in web.policies] == ["deny-admin"]
    assert web.peer("catalog") is not None and len(web.peer("catalog").endpoints) == 2  # type: ignore[union-attr]


def test_mode_overrides_win() -> None:
    doc = build_document(config(), "web", bundle_pem="PEM", version=1, mode_overrides={"web": "STRICT"})
    assert doc.mode == "STRICT"


def test_json_round_trip_is_exact_and_policies_decide_the_same() -> None:
    doc = build_document(config(), "catalog", bundle_pem="PEM", version=9)
    back = SidecarDocument.from_json(doc.to_json())
    assert back == doc
    assert back.same_content(doc)
    for policy in doc.policies:
        assert policy_from_json(policy_to_json(policy)) == policy
    web = SpiffeId.parse("spiffe://shop.local/ns/shop/sa/web")
    for path, principal, allowed in [("/catalog/x", web, True), ("/catalog/x", None, False), ("/admin/x", web, False)]:
        attrs = RequestAttributes.of(principal, path=path, method="GET", host="catalog", headers={"x-canary": "1"})
        assert evaluate(back.policies, attrs).allowed is allowed
        assert evaluate(doc.policies, attrs).allowed is allowed


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("identity"),
        lambda d: d.update(mode="LOOSE"),
        lambda d: d.update(identity="not a spiffe id"),
        lambda d: d["normalize"].update(semicolons="eat"),
        lambda d: d.update(policies=[{"name": "p", "action": "MAYBE"}]),
    ],
)
def test_malformed_documents_are_refused(mutate: object) -> None:
    data = build_document(config(), "catalog", bundle_pem="PEM", version=1).to_json()
    mutate(data)  # type: ignore[operator]
    with pytest.raises(DocumentError):
        SidecarDocument.from_json(data)


def test_the_document_carries_the_edge_request_head_rules() -> None:
    cfg = dataclasses.replace(
        config(),
        headers_with_underscores="reject",
        limits=dataclasses.replace(config().limits, max_request_headers_count=42),
    )
    doc = build_document(cfg, "catalog", bundle_pem="PEM", version=1)
    assert (doc.headers_with_underscores, doc.max_request_headers_count) == ("reject", 42)
    assert SidecarDocument.from_json(doc.to_json()) == doc
    # A document from a control plane that predates the rules gets the defaults.
    data = doc.to_json()
    del data["request_head"]
    old = SidecarDocument.from_json(data)
    assert (old.headers_with_underscores, old.max_request_headers_count) == ("drop", 100)
    for bad in ({"headers_with_underscores": "keep"}, {"max_request_headers_count": 0}):
        with pytest.raises(DocumentError):
            SidecarDocument.from_json(doc.to_json() | {"request_head": bad})
