from __future__ import annotations

import hashlib

import pytest

from facade.mesh.spiffe import SpiffeId
from facade.mesh.xfcc import parse_xfcc, xfcc_value

from .pki import TD

CATALOG = SpiffeId.workload(TD, "shop", "catalog")
WEB = SpiffeId.workload(TD, "shop", "web")


def test_value_names_the_sidecar_the_peer_and_the_certificate_hash() -> None:
    value = xfcc_value(by=CATALOG, peer=WEB, peer_der=b"der bytes")
    digest = hashlib.sha256(b"der bytes").hexdigest()
    assert value == f"By={CATALOG};Hash={digest};URI={WEB}"
    assert parse_xfcc(value) == [{"By": str(CATALOG), "Hash": digest, "URI": str(WEB)}]


def test_parse_handles_several_hops_and_quoted_values() -> None:
    header = 'By=spiffe://a/x;URI=spiffe://a/y,By=spiffe://a/z;Subject="CN=web,O=shop";URI=spiffe://a/w'
    assert parse_xfcc(header) == [
        {"By": "spiffe://a/x", "URI": "spiffe://a/y"},
        {"By": "spiffe://a/z", "Subject": "CN=web,O=shop", "URI": "spiffe://a/w"},
    ]


@pytest.mark.parametrize("bad", ['By="unterminated', "By=x;garbage"])
def test_parse_rejects_malformed_headers(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_xfcc(bad)
