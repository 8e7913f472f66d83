"""The request-head decisions (header names, header count, absolute-form targets) and the path rules of
issue 10, as pure functions without sockets. tests/facade/test_hostile_requests.py sends the same
cases through the real facade and the real sidecar."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from facade.exchange import is_loopback as _is_loopback
from facade.listener import HeadStats
from facade.normalize import PathRejected, canonical_route_path, normalize_path
from facade.request_head import HeadRejected, screen_headers, split_absolute_form, with_host

PLAIN = [(b"host", b"svc.local"), (b"accept", b"*/*"), (b"x-request-id", b"abc")]


# -- header names with underscores ------------------------------------------------------------------


def test_plain_headers_are_kept_as_they_are() -> None:
    screen = screen_headers(PLAIN, max_count=100, underscores="drop")
    assert screen.headers is None and screen.dropped == 0


@pytest.mark.parametrize(
    "name",
    [
        b"x_forwarded_client_cert",
        b"x_forwarded_for",
        b"x-forwarded_for",  # mixed separators
        b"x_real_ip",
        b"x_facade_backend",
        b"content_length",
        b"transfer_encoding",
        b"host_",
        b"_",
        b"my_header",
    ],
)
def test_every_name_with_an_underscore_is_dropped_by_default(name: bytes) -> None:
    headers = [*PLAIN, (name, b"6.6.6.6"), (b"after", b"1")]
    screen = screen_headers(headers, max_count=100, underscores="drop")
    assert screen.headers == [*PLAIN, (b"after", b"1")] and screen.dropped == 1


def test_reject_refuses_with_400() -> None:
    with pytest.raises(HeadRejected) as info:
        screen_headers([*PLAIN, (b"my_header", b"1")], max_count=100, underscores="reject")
    assert info.value.status == 400 and info.value.counter == "underscore_header"


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        (b"my_header", True),
        (b"x_custom_thing", True),
        (b"x_forwarded_client_cert", False),  # never an identity, whatever the setting
        (b"x_forwarded_for", False),
        (b"x_forwarded_proto", False),
        (b"forwarded", True),  # no underscore at all: the normal rules apply later
        (b"x_facade_step", False),
        (b"content_length", False),
        (b"x_request_id", False),
        (b"proxy_connection", False),
    ],
)
def test_allow_passes_underscores_except_names_that_alias_reserved_headers(name: bytes, kept: bool) -> None:
    screen = screen_headers([*PLAIN, (name, b"v")], max_count=100, underscores="allow")
    result = screen.headers if screen.headers is not None else [*PLAIN, (name, b"v")]
    assert ((name, b"v") in result) is kept


# -- header count -----------------------------------------------------------------------------------


def test_the_count_limit_is_inclusive_and_counts_repeated_names() -> None:
    at_limit = [(b"a", b"")] * 100
    assert screen_headers(at_limit, max_count=100, underscores="drop").headers is None
    with pytest.raises(HeadRejected) as info:
        screen_headers([*at_limit, (b"a", b"")], max_count=100, underscores="drop")
    assert info.value.status == 431 and info.value.counter == "too_many_headers"


def test_the_count_is_checked_before_underscores_are_dropped() -> None:
    # 101 fields of which one has "_": dropping it first would let 101 fields through the limit check.
    with pytest.raises(HeadRejected):
        screen_headers([(b"a", b"")] * 100 + [(b"a_b", b"")], max_count=100, underscores="drop")


# -- absolute-form targets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "authority", "origin"),
    [
        (b"http://admin.local/x", b"admin.local", b"/x"),
        (b"http://admin.local:8080/x?q=1", b"admin.local:8080", b"/x?q=1"),
        (b"HTTP://ADMIN.Local/x", b"ADMIN.Local", b"/x"),
        (b"https://admin.local/x", b"admin.local", b"/x"),
        (b"http://admin.local", b"admin.local", b"/"),
        (b"http://admin.local?q", b"admin.local", b"/?q"),
        (b"http://[::1]:8080/x", b"[::1]:8080", b"/x"),
    ],
)
def test_absolute_form_yields_its_authority_and_origin_form(target: bytes, authority: bytes, origin: bytes) -> None:
    assert split_absolute_form(target) == (authority, origin)


@pytest.mark.parametrize("target", [b"/x", b"*", b"x", b""])
def test_other_targets_are_not_absolute_form(target: bytes) -> None:
    assert split_absolute_form(target) is None


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (b"http://svc.local@admin.local/x", "userinfo in request target"),
        (b"http://user:pw@admin.local/", "userinfo in request target"),
        (b"http:///x", "empty authority in request target"),
        (b"ftp://admin.local/x", "unsupported scheme in request target"),
        (b"file://admin.local/etc/passwd", "unsupported scheme in request target"),
    ],
)
def test_absolute_form_refusals(target: bytes, reason: str) -> None:
    with pytest.raises(HeadRejected) as info:
        split_absolute_form(target)
    assert info.value.status == 400 and info.value.reason == reason


def test_the_authority_replaces_every_host() -> None:
    headers = [(b"host", b"svc.local"), (b"a", b"1"), (b"host", b"other")]
    assert with_host(headers, b"admin.local") == [(b"host", b"admin.local"), (b"a", b"1")]
    assert with_host([(b"a", b"1")], b"admin.local") == [(b"host", b"admin.local"), (b"a", b"1")]


# -- paths: UTF-8 after percent-decoding, %3B ----------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"/%c0%ae%c0%ae/admin",  # overlong "." "."
        b"/%C0%AF",  # overlong "/"
        b"/%e0%80%ae",  # 3-byte overlong
        b"/%ed%a0%80",  # UTF-16 surrogate
        b"/%e2%82",  # truncated sequence
        b"/%e2%82/x",
        b"/%80",  # stray continuation byte
        b"/caf%e9",  # latin-1, escaped
        b"/caf\xe9",  # latin-1, raw
        b"/\xc0\xae",  # raw overlong
        b"/%f4%90%80%80",  # beyond U+10FFFF
        b"/%fe%ff",
        b"/ok/%c3",  # truncated at the end
    ],
)
@pytest.mark.parametrize("semicolons", ["reject", "keep"])
def test_paths_that_are_not_utf8_after_decoding_are_rejected(raw: bytes, semicolons: str) -> None:
    with pytest.raises(PathRejected) as info:
        normalize_path(raw, semicolons=semicolons)  # type: ignore[arg-type]
    assert info.value.reason == "path is not valid UTF-8 after percent-decoding"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        (b"/caf%c3%a9", "/caf%C3%A9"),
        ("/café".encode(), "/caf%C3%A9"),
        (b"/%f0%9f%98%80", "/%F0%9F%98%80"),
        (b"/%25c0%25ae", "/%25c0%25ae"),  # an escaped "%": decoded once it is ASCII text, not a byte 0xC0
    ],
)
def test_valid_utf8_paths_are_kept(raw: bytes, canonical: str) -> None:
    assert normalize_path(raw) == canonical


@pytest.mark.parametrize("raw", [b"/a%3bb", b"/a%3Bb", b"/%3B/admin", b"/x/y%3b", b"/..%3B/admin"])
def test_an_encoded_semicolon_is_rejected_like_a_raw_one(raw: bytes) -> None:
    with pytest.raises(PathRejected) as info:
        normalize_path(raw)
    assert info.value.reason == "encoded semicolon in path"


def test_kept_encoded_semicolons_stay_encoded() -> None:
    assert normalize_path(b"/a%3bb/c", semicolons="keep") == "/a%3Bb/c"


@pytest.mark.parametrize("raw", [b"/public/..%3B/admin", b"/a/..%3bx/b", b"/a/.%3B/b", b"/a/%2e%2e%3B/b"])
def test_kept_encoded_semicolons_cannot_smuggle_a_dot_segment(raw: bytes) -> None:
    with pytest.raises(PathRejected) as info:
        normalize_path(raw, semicolons="keep")
    assert info.value.reason == "dot-segment with parameters in path"


def test_config_paths_with_invalid_utf8_escapes_are_config_errors() -> None:
    with pytest.raises(PathRejected):
        canonical_route_path("/%c0%ae")
    assert canonical_route_path("/a%3Bb") == "/a%3Bb"  # config may name what a listener setting rejects


# -- error details, counters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("192.168.1.127", False),
        ("", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_debug_details_are_only_for_loopback_clients(ip: str, loopback: bool) -> None:
    assert _is_loopback(ip) is loopback


def test_head_stats_exposition_parses_and_lists_every_reason() -> None:
    stats = HeadStats()
    stats.count_dropped("underscore", 2)
    stats.count_rejected("too_many_headers")
    families = {f.name: f for f in text_string_to_metric_families(stats.prometheus_text("mesh_sidecar"))}
    dropped = {s.labels["reason"]: s.value for s in families["mesh_sidecar_request_headers_dropped"].samples}
    rejected = {s.labels["reason"]: s.value for s in families["mesh_sidecar_requests_rejected"].samples}
    assert dropped == {"underscore": 2}
    assert rejected == {"too_many_headers": 1, "underscore_header": 0, "absolute_form": 0}
