from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facade.config import HeaderOps
from facade.headers import (
    HOP_BY_HOP,
    ForwardContext,
    RequestIds,
    apply_header_ops,
    apply_header_ops_bytes,
    build_upstream_headers,
    filter_response_headers,
    is_identity_header,
    new_request_id,
    parse_traceparent,
)

CLIENT = ForwardContext(
    client_ip="203.0.113.7", client_port=51000, scheme="https", host_header="Shop.local:8443", trusted_peer=False
)
TRUSTED = ForwardContext(
    client_ip="10.0.0.2", client_port=40000, scheme="http", host_header="shop.local", trusted_peer=True
)
TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


def _build(
    headers: list[tuple[bytes, bytes]], ctx: ForwardContext = CLIENT, **kw: str
) -> tuple[dict[str, list[str]], list[tuple[str, str]], RequestIds]:
    out, ids = build_upstream_headers(headers, ctx, **kw)
    got: dict[str, list[str]] = {}
    for name, value in out:
        assert name == name.lower()
        got.setdefault(name, []).append(value)
    return got, out, ids


# -- hop-by-hop and Connection ----------------------------------------------------------------


def test_hop_by_hop_headers_are_removed() -> None:
    headers = [(name, b"x") for name in sorted(HOP_BY_HOP)] + [(b"accept", b"*/*")]
    got, _, _ = _build(headers)
    assert not HOP_BY_HOP & {name.encode() for name in got}
    assert got["accept"] == ["*/*"]


def test_headers_named_in_connection_are_removed_case_insensitively() -> None:
    got, _, _ = _build([(b"connection", b"Keep-Alive, X-Custom-Hop ,  x-other"), (b"connection", b"X-Third"),
                        (b"x-custom-hop", b"1"), (b"x-other", b"2"), (b"x-third", b"3"), (b"x-kept", b"4")])
    assert "x-custom-hop" not in got and "x-other" not in got and "x-third" not in got
    assert got["x-kept"] == ["4"]


def test_naming_forwarding_headers_in_connection_cannot_strip_the_facades_own() -> None:
    got, _, ids = _build(
        [
            (b"connection", b"keep-alive, x-forwarded-for, forwarded, x-request-id, x-forwarded-proto, traceparent"),
            (b"x-forwarded-for", b"6.6.6.6"),
            (b"forwarded", b"for=6.6.6.6"),
            (b"x-request-id", b"client-chosen-id"),
        ],
        TRUSTED,  # even a trusted peer's chain goes: it said this hop owns it
    )
    assert got["x-forwarded-for"] == ["10.0.0.2"]
    assert got["forwarded"] == ["for=10.0.0.2;host=shop.local;proto=http"]
    assert got["x-forwarded-proto"] == ["http"]
    assert got["x-request-id"] == [ids.request_id] and ids.request_id != "client-chosen-id"
    assert len(got["traceparent"]) == 1


def test_connection_cannot_drop_host_or_content_length() -> None:
    got, _, _ = _build([(b"host", b"Shop.local:8443"), (b"connection", b"host, content-length"),
                        (b"content-length", b"5")])
    assert got["host"] == ["Shop.local:8443"]
    assert got["content-length"] == ["5"]


# -- identity ---------------------------------------------------------------------------------


def test_identity_headers_are_always_stripped_even_from_trusted_peers() -> None:
    for ctx in (CLIENT, TRUSTED):
        got, _, _ = _build([(b"x-forwarded-client-cert", b"URI=spiffe://evil/ns/x/sa/admin"),
                            (b"x-facade-internal", b"1"), (b"x-facade-identity", b"admin"),
                            (b"x-facadeish", b"kept")], ctx)
        assert "x-forwarded-client-cert" not in got
        assert not [name for name in got if name.startswith("x-facade-")]
        assert got["x-facadeish"] == ["kept"]
    assert is_identity_header(b"x-facade-anything") and is_identity_header(b"x-forwarded-client-cert")
    assert not is_identity_header(b"x-forwarded-for")


# -- X-Forwarded-* and Forwarded --------------------------------------------------------------


def test_spoofed_forwarding_headers_from_an_untrusted_peer_are_replaced() -> None:
    got, _, _ = _build([(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"7.7.7.7"),
                        (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"admin.internal"),
                        (b"forwarded", b"for=6.6.6.6;proto=https"), (b"x-real-ip", b"6.6.6.6"),
                        (b"x-forwarded-port", b"1"), (b"x-forwarded-prefix", b"/admin")],
                       ForwardContext("203.0.113.7", 1, "http", "shop.local", False))
    assert got["x-forwarded-for"] == ["203.0.113.7"]
    assert got["x-forwarded-proto"] == ["http"]
    assert got["x-forwarded-host"] == ["shop.local"]
    assert got["forwarded"] == ["for=203.0.113.7;host=shop.local;proto=http"]
    assert "x-real-ip" not in got and "x-forwarded-port" not in got and "x-forwarded-prefix" not in got


def test_forwarding_headers_from_a_trusted_peer_are_kept_and_extended() -> None:
    got, _, _ = _build([(b"x-forwarded-for", b"198.51.100.1, 192.0.2.9"), (b"x-forwarded-for", b"192.0.2.10"),
                        (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"shop.example"),
                        (b"forwarded", b'for=198.51.100.1;proto=https'), (b"x-real-ip", b"198.51.100.1")],
                       TRUSTED)
    assert got["x-forwarded-for"] == ["198.51.100.1, 192.0.2.9, 192.0.2.10, 10.0.0.2"]
    assert got["x-forwarded-proto"] == ["https"]
    assert got["x-forwarded-host"] == ["shop.example"]
    assert got["forwarded"] == ["for=198.51.100.1;proto=https, for=10.0.0.2;host=shop.local;proto=http"]
    assert got["x-real-ip"] == ["198.51.100.1"]


def test_trusted_peer_without_forwarding_headers_starts_the_chain() -> None:
    got, _, _ = _build([], TRUSTED)
    assert got["x-forwarded-for"] == ["10.0.0.2"]
    assert got["x-forwarded-proto"] == ["http"]
    assert got["x-forwarded-host"] == ["shop.local"]


def test_forwarded_quotes_ipv6_and_non_token_values() -> None:
    ctx = ForwardContext("::1", 5000, "https", "shop.local:8443", False, listener_by="[::1]:8080")
    got, _, _ = _build([], ctx)
    assert got["forwarded"] == ['for="[::1]";by="[::1]:8080";host="shop.local:8443";proto=https']
    assert got["x-forwarded-for"] == ["::1"]
    got, _, _ = _build([], ForwardContext("", 0, "http", 'a"b', False))
    assert got["forwarded"] == ['for=unknown;host="a\\"b";proto=http']
    assert "x-forwarded-for" not in got  # a unix-socket peer has no address to add


# -- Host and ordering ------------------------------------------------------------------------


def test_host_is_the_original_header_once_and_repeated_headers_keep_their_order() -> None:
    got, out, _ = _build([(b"accept", b"a"), (b"host", b"Shop.local:8443"), (b"cookie", b"x=1"),
                          (b"host", b"evil.example"), (b"accept", b"b")])
    assert out[0] == ("host", "Shop.local:8443")
    assert got["host"] == ["Shop.local:8443"]  # the Host the request was routed on, never a second one
    assert [v for n, v in out if n in ("accept", "cookie")] == ["a", "x=1", "b"]
    got, _, _ = _build([], ForwardContext("1.2.3.4", 1, "http", "", False))
    assert "host" not in got and "x-forwarded-host" not in got  # HTTP/1.0 without Host


# -- X-Request-Id -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "A1.b_2:c-3", "0" * 128, "f47ac10b-58cc-4372-a567-0e02b2c3d479"])
def test_a_well_formed_client_request_id_is_kept(value: str) -> None:
    got, _, ids = _build([(b"x-request-id", value.encode())])
    assert got["x-request-id"] == [value] and ids.request_id == value


@pytest.mark.parametrize(
    "value",
    [b"", b"x" * 129, b"x" * 4096, b"abc\r\nSet-Cookie: a=b", b"abc def", b"<script>", b"caf\xe9", b"a/b", b"a,b"],
)
def test_a_hostile_request_id_is_replaced(value: bytes) -> None:
    got, _, ids = _build([(b"x-request-id", value)])
    assert got["x-request-id"] == [ids.request_id]
    assert ids.request_id != value.decode("latin-1")
    assert uuid.UUID(hex=ids.request_id).version == 4


def test_request_id_is_generated_or_taken_from_the_caller() -> None:
    got, _, ids = _build([])
    assert len(ids.request_id) == 32 and got["x-request-id"] == [ids.request_id]
    _, _, ids = _build([], request_id="from-the-listener")
    assert ids.request_id == "from-the-listener"
    _, _, ids = _build([(b"x-request-id", b"client-1")], request_id="from-the-listener")
    assert ids.request_id == "client-1"  # the client's well-formed id wins
    got, _, ids = _build([(b"x-request-id", b"first"), (b"x-request-id", b"second")])
    assert got["x-request-id"] == ["first"]


def test_new_request_ids_are_uuid4_hex_and_distinct() -> None:
    ids = {new_request_id() for _ in range(500)}
    assert len(ids) == 500
    for value in list(ids)[:50]:
        parsed = uuid.UUID(hex=value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and parsed.hex == value


# -- traceparent ------------------------------------------------------------------------------


def test_a_valid_traceparent_keeps_trace_and_flags_with_a_new_parent() -> None:
    got, _, ids = _build([(b"traceparent", TRACEPARENT.encode()), (b"tracestate", b"vendor=1"),
                          (b"tracestate", b"other=2")])
    (sent,) = got["traceparent"]
    trace_id, parent_id, flags = parse_traceparent(sent) or ("", "", "")
    assert sent.startswith("00-") and trace_id == TRACE and flags == "01"
    assert parent_id != PARENT
    assert ids == RequestIds(request_id=ids.request_id, traceparent=sent, trace_id=TRACE)
    assert got["tracestate"] == ["vendor=1", "other=2"]


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"garbage",
        f"00-{'0' * 32}-{PARENT}-01".encode(),  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01".encode(),  # all-zero parent id
        TRACEPARENT.upper().encode(),  # hex must be lower-case
        f"ff-{TRACE}-{PARENT}-01".encode(),  # version ff is forbidden
        (TRACEPARENT + "-extra").encode(),  # version 00 is exactly 55 characters
        f"00_{TRACE}_{PARENT}_01".encode(),
        f"00-{TRACE[:-1]}g-{PARENT}-01".encode(),
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace_and_drops_tracestate(value: bytes) -> None:
    got, _, ids = _build([(b"traceparent", value), (b"tracestate", b"vendor=1")])
    parsed = parse_traceparent(got["traceparent"][0])
    assert parsed is not None and parsed[0] == ids.trace_id != TRACE
    assert parsed[2] == "00"
    assert "tracestate" not in got


def test_two_traceparents_are_as_good_as_none() -> None:
    got, _, ids = _build([(b"traceparent", TRACEPARENT.encode()), (b"traceparent", TRACEPARENT.encode())])
    assert ids.trace_id != TRACE and len(got["traceparent"]) == 1


def test_absent_traceparent_starts_a_trace() -> None:
    got, _, ids = _build([(b"tracestate", b"orphan=1")])
    assert parse_traceparent(got["traceparent"][0]) is not None and ids.trace_id in got["traceparent"][0]
    assert "tracestate" not in got


def test_parse_traceparent_accepts_future_versions_and_bytes() -> None:
    assert parse_traceparent(TRACEPARENT) == (TRACE, PARENT, "01")
    assert parse_traceparent(TRACEPARENT.encode()) == (TRACE, PARENT, "01")
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-00-what-ever") == (TRACE, PARENT, "00")
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-00x") is None
    assert parse_traceparent(b"\xff" * 55) is None


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from([b"connection", b"x-forwarded-for", b"forwarded", b"x-request-id", b"traceparent",
                             b"x-facade-id", b"x-forwarded-client-cert", b"host", b"te", b"accept", b"x-a"]),
            st.binary(max_size=40),
        ),
        max_size=12,
    ),
    trusted=st.booleans(),
)
def test_whatever_the_client_sends_the_facades_headers_are_set_exactly_once(
    headers: list[tuple[bytes, bytes]], trusted: bool
) -> None:
    ctx = ForwardContext("192.0.2.1", 1, "http", "shop.local", trusted)
    got, _, ids = _build(headers, ctx)
    for name in ("x-forwarded-for", "x-forwarded-proto", "forwarded", "x-request-id", "traceparent", "host"):
        assert len(got[name]) == 1, name
    assert got["x-forwarded-for"][0].endswith("192.0.2.1")
    assert got["forwarded"][0].endswith("for=192.0.2.1;host=shop.local;proto=http")
    assert parse_traceparent(got["traceparent"][0]) is not None
    assert not [n for n in got if n.startswith("x-facade-") or n == "x-forwarded-client-cert" or n == "te"]
    if not trusted:
        assert got["x-forwarded-for"] == ["192.0.2.1"]
    assert ids.request_id == got["x-request-id"][0]


# -- responses --------------------------------------------------------------------------------


def test_response_hop_by_hop_and_connection_named_headers_are_removed() -> None:
    out = filter_response_headers(
        [
            (b"Content-Type", b"text/plain"),
            (b"Connection", b"close, X-Hop"),
            (b"X-Hop", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
            (b"Content-Length", b"5"),
        ]
    )
    assert out == [(b"content-type", b"text/plain"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
                   (b"content-length", b"5")]


def test_response_server_and_date_pass_through_exactly_once() -> None:
    out = filter_response_headers([(b"Server", b"monolith"), (b"Date", b"Thu, 26 Nov 2026 05:00:00 GMT"),
                                   (b"server", b"second"), (b"date", b"later")])
    assert out == [(b"server", b"monolith"), (b"date", b"Thu, 26 Nov 2026 05:00:00 GMT")]
    assert filter_response_headers([(b"x", b"1")]) == [(b"x", b"1")]  # none are added


# -- header operations from config ------------------------------------------------------------


def test_header_ops_remove_then_set_then_add() -> None:
    ops = HeaderOps(set=(("X-Env", "prod"),), add=(("x-tag", "a"), ("x-tag", "b")), remove=("Cookie", "x-tag"))
    headers = [("accept", "*/*"), ("cookie", "s=1"), ("x-env", "dev"), ("x-env", "qa"), ("x-tag", "old")]
    assert apply_header_ops(headers, ops) == [("accept", "*/*"), ("x-env", "prod"), ("x-tag", "a"), ("x-tag", "b")]
    assert headers[1] == ("cookie", "s=1")  # the input is not modified
    assert apply_header_ops(headers, HeaderOps()) == headers


def test_header_ops_on_response_bytes() -> None:
    ops = HeaderOps(set=(("cache-control", "no-store"),), add=(("x-served-by", "facade"),), remove=("server",))
    headers = [(b"server", b"monolith"), (b"cache-control", b"max-age=60"), (b"content-length", b"2")]
    assert apply_header_ops_bytes(headers, ops) == [
        (b"content-length", b"2"), (b"cache-control", b"no-store"), (b"x-served-by", b"facade")
    ]
