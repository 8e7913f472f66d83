from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facade.mesh.spiffe import InvalidSpiffeId, SpiffeId

VALID = [
    ("spiffe://shop.local", "shop.local", ""),
    ("spiffe://shop.local/ns/shop/sa/catalog", "shop.local", "/ns/shop/sa/catalog"),
    ("spiffe://a-b_c.9/Path.With-Caps_1", "a-b_c.9", "/Path.With-Caps_1"),
    ("spiffe://td/..a/.b/c..", "td", "/..a/.b/c.."),  # dots inside a segment are fine
]

INVALID = [
    ("", "empty"),
    ("http://shop.local/x", "must start with 'spiffe://'"),
    ("SPIFFE://shop.local/x", "lower-case 'spiffe'"),
    ("Spiffe://shop.local/x", "lower-case 'spiffe'"),
    ("spiffe:/shop.local/x", "must start with"),
    ("spiffe://", "trust domain is empty"),
    ("spiffe:///ns/x", "trust domain is empty"),
    ("spiffe://Shop.local/x", "lower-case"),
    ("spiffe://shop.local:8443/x", "port"),
    ("spiffe://user@shop.local/x", "userinfo"),
    ("spiffe://shop%2elocal/x", "percent-encoded"),
    ("spiffe://shop local/x", "outside [a-z0-9.-_]"),
    ("spiffe://shop.local/", "empty segment"),
    ("spiffe://shop.local/ns//sa", "empty segment"),
    ("spiffe://shop.local/ns/x/", "empty segment"),
    ("spiffe://shop.local/./x", "'.' segment"),
    ("spiffe://shop.local/x/..", "'..' segment"),
    ("spiffe://shop.local/x/%2e%2e", "percent-encoded"),
    ("spiffe://shop.local/caf\u00e9", "outside [A-Za-z0-9.-_]"),
    ("spiffe://shop.local/a b", "outside"),
    ("spiffe://shop.local/a?b=1", "query"),
    ("spiffe://shop.local/a#frag", "fragment"),
    ("spiffe://shop.local/" + "a" * 2040, "longer than 2048"),
    ("spiffe://" + "a" * 256, "longer than 255"),
]


@pytest.mark.parametrize(("text", "trust_domain", "path"), VALID)
def test_valid_ids_parse_and_round_trip(text: str, trust_domain: str, path: str) -> None:
    sid = SpiffeId.parse(text)
    assert (sid.trust_domain, sid.path) == (trust_domain, path)
    assert str(sid) == text


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_invalid_ids_are_rejected_with_the_rule_they_break(text: str, message: str) -> None:
    with pytest.raises(InvalidSpiffeId) as excinfo:
        SpiffeId.parse(text)
    assert message in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


def test_exactly_2048_bytes_is_allowed() -> None:
    head = "spiffe://td/"
    assert len(str(SpiffeId.parse(head + "a" * (2048 - len(head))))) == 2048


def test_workload_builds_the_istio_form_and_exposes_namespace_and_service_account() -> None:
    sid = SpiffeId.workload("shop.local", "shop", "catalog")
    assert str(sid) == "spiffe://shop.local/ns/shop/sa/catalog"
    assert sid.namespace == "shop"
    assert sid.service_account == "catalog"
    assert SpiffeId.parse("spiffe://shop.local/workload/x").namespace is None
    assert SpiffeId.parse("spiffe://shop.local").namespace is None


def test_workload_validates_its_parts() -> None:
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.workload("shop.local", "..", "catalog")
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.workload("Shop", "shop", "catalog")


def test_ids_are_values() -> None:
    assert SpiffeId.parse("spiffe://td/a") == SpiffeId("td", "/a")
    assert len({SpiffeId.parse("spiffe://td/a"), SpiffeId("td", "/a")}) == 1


segment = st.text(alphabet="abcXYZ019.-_", min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))


@given(td=st.text(alphabet="abc019.-_", min_size=1, max_size=20), segments=st.lists(segment, max_size=5))
def test_every_valid_id_round_trips(td: str, segments: list[str]) -> None:
    text = "spiffe://" + td + "".join("/" + s for s in segments)
    assert str(SpiffeId.parse(text)) == text


@given(st.text(max_size=60))
def test_parse_never_raises_anything_but_invalid_spiffe_id(text: str) -> None:
    try:
        sid = SpiffeId.parse(text)
    except InvalidSpiffeId:
        return
    assert str(sid) == text  # whatever parses is already canonical
