from __future__ import annotations

from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from facade.normalize import (
    MAX_PATH_BYTES,
    HostRejected,
    PathRejected,
    canonical_route_path,
    normalize_host,
    normalize_path,
)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        (b"/", "/"),
        (b"/catalog/items", "/catalog/items"),
        (b"/a/./b", "/a/b"),
        (b"/a/../b", "/b"),
        (b"/a/%2e%2e/b", "/b"),
        (b"/a/%2E%2e/b", "/b"),
        (b"/a/.%2e/b", "/b"),
        (b"/%2e/", "/"),
        (b"/a//b", "/a/b"),
        (b"//a///b//", "/a/b/"),
        (b"/a//../b", "/a/b"),  # dot-segments first (the empty segment is a segment), then merge
        (b"/A/B", "/A/B"),
        (b"/%41", "/A"),
        (b"/%7e", "/~"),
        (b"/%7E%2d%5f", "/~-_"),
        # Double encoding decodes once only: "%25" stays an escape and "2e" stays literal data, so this
        # is the file name "%2e%2e" upstream, never a dot-segment.
        (b"/%252e%252e/", "/%252e%252e/"),
        (b"/a/%252E/b", "/a/%252E/b"),
        (b"/caf%c3%a9", "/caf%C3%A9"),
        ("/café".encode(), "/caf%C3%A9"),
        ("/日本".encode(), "/%E6%97%A5%E6%9C%AC"),
        (b"/a b", "/a%20b"),
        (b'/"<>`{}|^[]', "/%22%3C%3E%60%7B%7D%7C%5E%5B%5D"),
        (b"/%3a%40%21", "/%3A%40%21"),  # reserved escapes are not decoded, hex is upper-cased
        (b"/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
        (b"/a/..", "/"),
        (b"/a/.", "/a/"),
        (b"/a/b/", "/a/b/"),
        (b"/..", "/"),
        (b"/../../x", "/x"),
        (b"/a/../../../b", "/b"),
        (b"/.well-known/x", "/.well-known/x"),
        (b"/a/..b/.c", "/a/..b/.c"),
        (b"*", "*"),
        (b"http://shop.local:8080/a/../b", "/b"),
        (b"HTTPS://shop.local", "/"),
    ],
)
def test_canonical_form(raw: bytes, canonical: str) -> None:
    assert normalize_path(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"/a/%2F/b", "encoded slash in path"),
        (b"/a%2fb", "encoded slash in path"),
        (b"/a\\b", "backslash in path"),
        (b"/a%5cb", "encoded backslash in path"),
        (b"/a%5C..%5Cb", "encoded backslash in path"),
        (b"/a\x00", "NUL in path"),
        (b"/a%00", "encoded NUL in path"),
        (b"/a%zz", "invalid percent-encoding in path"),
        (b"/a%", "invalid percent-encoding in path"),
        (b"/a%4", "invalid percent-encoding in path"),
        (b"/a%%41", "invalid percent-encoding in path"),
        (b"/a;x=1/b", "semicolon in path"),
        (b"/a;jsessionid=1", "semicolon in path"),
        (b"/a#frag", "fragment in path"),
        (b"/a?q", "query string in path"),
        (b"/a\tb", "control character in path"),
        (b"/a\x7f", "control character in path"),
        (b"/a%0d%0aSet-Cookie:x", "encoded control character in path"),
        (b"a/b", "path must start with '/'"),
        (b"", "empty path"),
        (b"ftp://h/x", "path must start with '/'"),
        (b"/" + b"a" * MAX_PATH_BYTES, "path too long"),
        (b"/" + "é".encode() * (MAX_PATH_BYTES // 4), "path too long"),  # fits raw, not once encoded
    ],
)
def test_rejected(raw: bytes, reason: str) -> None:
    with pytest.raises(PathRejected) as info:
        normalize_path(raw)
    assert info.value.reason == reason
    assert str(info.value) == reason
    assert isinstance(info.value, ValueError)


def test_options_asterisk_and_the_8k_boundary() -> None:
    assert normalize_path(b"*") == "*"
    longest = b"/" + b"a" * (MAX_PATH_BYTES - 1)
    assert normalize_path(longest) == longest.decode()


def test_options_turn_rules_off() -> None:
    assert normalize_path(b"/a//b", merge_slashes=False) == "/a//b"
    assert normalize_path(b"/a//../b", merge_slashes=False) == "/a/b"
    assert normalize_path(b"/a/%2f/b", reject_encoded_slash=False) == "/a/%2F/b"
    assert normalize_path(b"/a;x=1/b", semicolons="keep") == "/a;x=1/b"
    # Backslash and NUL are never negotiable.
    with pytest.raises(PathRejected):
        normalize_path(b"/a%5cb", reject_encoded_slash=False)


@pytest.mark.parametrize("raw", [b"/a/..;x/b", b"/a/.;x/b", b"/a/%2e%2e;/b", b"/..;"])
def test_kept_semicolons_cannot_smuggle_a_dot_segment(raw: bytes) -> None:
    # Tomcat resolves "/a/..;x/b" to "/b" after stripping the path parameter; the router would not.
    with pytest.raises(PathRejected) as info:
        normalize_path(raw, semicolons="keep")
    assert info.value.reason == "dot-segment with parameters in path"


def test_canonical_route_path_matches_what_requests_normalize_to() -> None:
    assert canonical_route_path("/caté") == normalize_path("/caté".encode()) == "/cat%C3%A9"
    assert canonical_route_path("/cat%c3%a9") == "/cat%C3%A9"
    assert canonical_route_path("/%7Euser/./docs//") == normalize_path(b"/~user/docs/")
    assert canonical_route_path("/a b") == "/a%20b"
    # Config may name what a listener's settings reject in requests.
    assert canonical_route_path("/a;b") == "/a;b"
    assert canonical_route_path("/a%2fb") == "/a%2Fb"
    # Not a path: returned as is so the router reports it with the route's position.
    assert canonical_route_path("") == ""
    assert canonical_route_path("catalog") == "catalog"
    for bad in ("/a\\b", "/a#b", "/a?b", "/a\nb", "/a%zz", "/a%00"):
        with pytest.raises(PathRejected):
            canonical_route_path(bad)


# -- properties -------------------------------------------------------------------------------

_PATH_BYTES = st.lists(
    st.one_of(
        st.sampled_from([b"/", b"//", b".", b"..", b"/./", b"/../", b"%2e", b"%2E", b"%252e", b"%41", b"%7e",
                         b"%c3%a9", b"%2f", b"%5c", b"%00", b"%", b";", b"\\", b"?", b"#", b" ", b"~", b"a", b"Z"]),
        st.binary(min_size=1, max_size=3),
    ),
    max_size=24,
).map(lambda parts: b"/" + b"".join(parts))


def _accepted(raw: bytes, **options: object) -> str | None:
    try:
        return normalize_path(raw, **options)  # type: ignore[arg-type]
    except PathRejected:
        return None


@settings(max_examples=600, deadline=None)
@given(raw=_PATH_BYTES, merge=st.booleans(), keep=st.booleans())
@example(raw=b"/a/%2e%2e;/b", merge=True, keep=True)
@example(raw=b"/%2e%2e//..//", merge=False, keep=False)
def test_normalizing_twice_changes_nothing(raw: bytes, merge: bool, keep: bool) -> None:
    options = {"merge_slashes": merge, "semicolons": "keep" if keep else "reject"}
    once = _accepted(raw, **options)
    if once is not None:
        assert normalize_path(once.encode("ascii"), **options) == once  # type: ignore[arg-type]
        assert canonical_route_path(once, merge_slashes=merge) == once


@settings(max_examples=600, deadline=None)
@given(raw=_PATH_BYTES)
def test_output_is_ascii_without_dot_segments_or_forbidden_escapes(raw: bytes) -> None:
    out = _accepted(raw)
    if out is None:
        return
    assert out.isascii() and out.startswith("/")
    for bad in ("/./", "/../", "//", "%2F", "%5C", "%00", "%2E", "\\", ";", "#", "?", " "):
        assert bad not in out
    assert not out.endswith(("/.", "/.."))
    # Decoding the output once never reveals a dot-segment or a separator the output did not show.
    for segment in out.split("/")[1:]:
        decoded = unquote_to_bytes(segment)
        assert decoded not in (b".", b"..")
        assert b"/" not in decoded and b"\\" not in decoded


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\\#?%"), max_size=30))
def test_config_paths_and_request_paths_agree(text: str) -> None:
    path = "/" + text
    try:
        expected = normalize_path(path.encode("utf-8"), semicolons="keep", reject_encoded_slash=False)
    except PathRejected:
        with pytest.raises(PathRejected):
            canonical_route_path(path)
        return
    assert canonical_route_path(path) == expected


# -- host -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        (b"shop.local", "shop.local"),
        (b"Shop.LOCAL:8080", "shop.local"),
        ("Shop.Local", "shop.local"),
        (b"shop.local.", "shop.local"),
        (b"shop.local.:443", "shop.local"),
        (b"host_name-1", "host_name-1"),
        (b"127.0.0.1:80", "127.0.0.1"),
        (b"[::1]", "[::1]"),
        (b"[::1]:8443", "[::1]"),
        (b"[2001:DB8:0:0::1]", "[2001:db8::1]"),
        (b"shop.local:", "shop.local"),
        (b"", ""),
        ("", ""),
    ],
)
def test_host_canonical_form(raw: bytes | str, host: str) -> None:
    assert normalize_host(raw) == host


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"*", "invalid character in host"),
        (b"*.shop.local", "invalid character in host"),
        (b"shop local", "invalid character in host"),
        (b"shop/local", "invalid character in host"),
        (b"a:b:c", "invalid character in host"),
        (b"::1", "invalid character in host"),
        (b"user@shop.local", "invalid character in host"),
        ("café.local", "non-ASCII character in host"),
        ("café.local".encode(), "invalid character in host"),
        (b"shop.local:http", "invalid port in host"),
        (b"shop.local:99999", "invalid port in host"),
        (b"[::1", "unterminated IPv6 literal in host"),
        (b"[::1]x", "invalid port in host"),
        (b"[fe80::1%25eth0]", "invalid IPv6 literal in host"),
        (b"[1:2:3]", "invalid IPv6 literal in host"),
        (b"a..b", "empty label in host"),
        (b".a", "empty label in host"),
        (b"a..", "empty label in host"),
        (b"a" * 256, "host too long"),
        (b"a" * 300, "host too long"),
    ],
)
def test_host_rejected(raw: bytes | str, reason: str) -> None:
    with pytest.raises(HostRejected) as info:
        normalize_host(raw)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


def test_host_of_255_bytes_is_accepted() -> None:
    name = b".".join([b"a" * 63] * 4)[:255]
    assert normalize_host(name) == name.decode()


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=40))
def test_host_is_idempotent_and_plain(raw: bytes) -> None:
    try:
        host = normalize_host(raw)
    except HostRejected:
        return
    assert host == host.lower() and host.isascii() and not host.endswith(".")
    assert host.startswith("[") or ":" not in host
    assert normalize_host(host) == host
