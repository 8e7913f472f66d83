"""Response diffing: field-level JSON diffs, ignore rules, noise learning, hashing, redaction, the ring."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facade.diff import (
    MISSING,
    REDACTED,
    DiffRing,
    DiffSample,
    IgnoreRules,
    NoiseModel,
    Redaction,
    ResponseSample,
    describe,
    diff_responses,
    learn_noise,
    redact,
)

JSON_CT = {"content-type": "application/json"}


def j(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> ResponseSample:
    return ResponseSample(status, {**JSON_CT, **(headers or {})}, json.dumps(doc).encode())


PRODUCT = {"id": 7, "name": "Lamp", "price": "19.99", "generated_at": "2026-11-26T05:00:00Z",
           "items": [{"sku": "a", "etag": "x1"}, {"sku": "b", "etag": "x2"}]}


def test_identical_responses_do_not_differ() -> None:
    result = diff_responses(j(PRODUCT), j(PRODUCT), ignore=IgnoreRules())
    assert not result.differs
    assert result.differences == ()
    assert result.body_compared_as == "json"


def test_key_order_and_whitespace_do_not_matter() -> None:
    a = ResponseSample(200, JSON_CT, b'{"a": 1, "b": [1, 2]}')
    b = ResponseSample(200, JSON_CT, b'{"b":[1,2],"a":1.0}')  # 1 and 1.0 are the same JSON number
    assert not diff_responses(a, b).differs


def test_deliberately_different_field_is_detected_with_its_path() -> None:
    candidate = {**PRODUCT, "name": "Lampe"}
    result = diff_responses(j(PRODUCT), j(candidate), ignore=IgnoreRules())
    assert result.differs
    assert [str(d) for d in result.differences] == ['$.name: "Lamp" != "Lampe"']
    assert result.differences[0].kind == "changed"


def test_type_difference_is_detected() -> None:
    candidate = {**PRODUCT, "price": 19.99}
    result = diff_responses(j(PRODUCT), j(candidate))
    assert [str(d) for d in result.differences] == ['$.price: "19.99" != 19.99']
    assert result.differences[0].kind == "type"
    # true is not 1 in JSON, even though Python says True == 1
    assert diff_responses(j({"ok": True}), j({"ok": 1})).differences[0].kind == "type"


def test_added_removed_and_nested_array_paths() -> None:
    a = {"items": [{"sku": "a"}, {"sku": "b"}], "gone": 1}
    b = {"items": [{"sku": "a"}, {"sku": "B"}, {"sku": "c"}], "new": {"x": 1}}
    result = diff_responses(j(a), j(b))
    assert [(d.path, d.kind) for d in result.differences] == [
        ("$.items[1].sku", "changed"), ("$.items[2]", "added"), ("$.gone", "removed"), ("$.new", "added")]
    assert result.differences[2].candidate is MISSING
    assert str(result.differences[2]) == "$.gone: 1 != (missing)"


def test_ignored_fields_do_not_count() -> None:
    ignore = IgnoreRules.parse(["$.generated_at", "$.items[*].etag", "headers.date"])
    candidate: dict[str, Any] = {**PRODUCT, "generated_at": "2026-11-26T05:00:01Z",
                 "items": [{"sku": "a", "etag": "y1"}, {"sku": "b", "etag": "y2"}]}
    result = diff_responses(j(PRODUCT, headers={"date": "a"}), j(candidate, headers={"date": "b"}), ignore=ignore,
                            compare_headers=("content-type", "date"))
    assert not result.differs
    assert result.noise_suppressed == ()  # ignored silently, unlike noise
    # ...but a real difference next to ignored ones still shows
    candidate["items"][1]["sku"] = "c"
    result = diff_responses(j(PRODUCT), j(candidate), ignore=ignore)
    assert [d.path for d in result.differences] == ["$.items[1].sku"]


def test_rule_forms() -> None:
    doc_a = {"meta": {"trace": 1, "odd key": 1}, "deep": {"x": {"ts": 1}}, "list": [1, 2, 3]}
    doc_b = {"meta": {"trace": 2, "odd key": 2}, "deep": {"x": {"ts": 2}}, "list": [1, 2, 4]}
    cases = {
        "$.meta.*": {"$.deep.x.ts", "$.list[2]"},
        "$['meta']['odd key']": {"$.meta.trace", "$.deep.x.ts", "$.list[2]"},
        "$..ts": {"$.meta.trace", "$.meta['odd key']", "$.list[2]"},
        "$.list[2]": {"$.meta.trace", "$.meta['odd key']", "$.deep.x.ts"},
        "$": set(),
        "body": set(),
    }
    for rule, remaining in cases.items():
        result = diff_responses(j(doc_a), j(doc_b), ignore=IgnoreRules.parse([rule]))
        assert {d.path for d in result.differences} == remaining, rule


@pytest.mark.parametrize("rule", ["generated_at", "$.", "$..", "$..*", "$[x]", "$.a[", "headers.", "headers.a b",
                                  "$.a]", "$['a'x]", ""])
def test_bad_rules_raise_value_error_naming_the_rule(rule: str) -> None:
    with pytest.raises(ValueError, match="bad rule"):
        IgnoreRules.parse(["$.ok", rule])


def test_a_string_instead_of_a_list_is_rejected() -> None:
    with pytest.raises(TypeError, match="list of rules"):
        IgnoreRules.parse("$.a")


def test_status_and_selected_headers_are_compared() -> None:
    a = j({"a": 1}, status=200, headers={"x-version": "1", "server": "old"})
    b = j({"a": 1}, status=201, headers={"x-version": "2", "server": "new"})
    result = diff_responses(a, b, compare_headers=("Content-Type", "X-Version"))
    assert [str(d) for d in result.differences] == ["status: 200 != 201", 'headers.x-version: "1" != "2"']
    assert not diff_responses(a, b, ignore=IgnoreRules.parse(["status", "headers.x-version"]),
                              compare_headers=("x-version",)).differs


def test_non_json_bodies_compared_by_hash() -> None:
    a = ResponseSample(200, {"content-type": "text/html"}, b"<p>hello</p>")
    b = ResponseSample(200, {"content-type": "text/html"}, b"<p>hallo</p>")
    result = diff_responses(a, b)
    assert result.body_compared_as == "bytes"
    assert [d.path for d in result.differences] == ["body"]
    assert str(result.differences[0]).startswith("body: \"sha256:")
    assert not diff_responses(a, ResponseSample(200, [("Content-Type", "text/html")], b"<p>hello</p>")).differs
    # "123" and "123.0" are different text, even though both would parse as the same JSON number.
    assert diff_responses(ResponseSample(200, {"content-type": "text/plain"}, b"123"),
                          ResponseSample(200, {"content-type": "text/plain"}, b"123.0")).differs


def test_json_on_one_side_only_and_truncated_bodies_fall_back_to_bytes() -> None:
    assert diff_responses(j({"a": 1}), ResponseSample(200, JSON_CT, b"not json")).body_compared_as == "bytes"
    prefix = b'{"a": [1, 2, 3'
    same = diff_responses(ResponseSample(200, JSON_CT, prefix, truncated=True),
                          ResponseSample(200, JSON_CT, prefix, truncated=True))
    assert same.body_compared_as == "bytes" and not same.differs


def test_noise_learned_from_two_old_responses_and_suppressed() -> None:
    old_a = {**PRODUCT, "request_id": "r1", "items": [{"sku": "a", "etag": "e1"}, {"sku": "b", "etag": "e2"}]}
    old_b = {**PRODUCT, "request_id": "r2", "items": [{"sku": "a", "etag": "e3"}, {"sku": "b", "etag": "e4"}]}
    noise = learn_noise(j(old_a), j(old_b))
    assert noise == {"$.request_id", "$.items[*].etag"}
    model = NoiseModel()
    assert model.learn("catalog", j(old_a), j(old_b)) == noise
    new = {**PRODUCT, "request_id": "r9", "items": [{"sku": "a", "etag": "n1"}, {"sku": "b", "etag": "n2"}]}
    result = diff_responses(j(old_a), j(new), noise=model.paths("catalog"))
    assert not result.differs
    assert set(result.noise_suppressed) == {"$.request_id", "$.items[*].etag"}
    # A real difference is still caught next to the noise.
    new["name"] = "Lampe"
    result = diff_responses(j(old_a), j(new), noise=model.paths("catalog"))
    assert [d.path for d in result.differences] == ["$.name"]


def test_noise_model_is_bounded_and_validates() -> None:
    model = NoiseModel(max_paths=3, max_routes=1)
    assert model.add("catalog", [f"$.f{i}" for i in range(5)]) == {"$.f0", "$.f1", "$.f2"}
    assert model.dropped["catalog"] == 2
    assert model.add("orders", ["$.x"]) == frozenset()
    assert model.paths("orders") == frozenset()
    with pytest.raises(ValueError, match="bad rule"):
        model.add("catalog", ["nope"])
    assert model.to_json()["catalog"]["paths"] == ["$.f0", "$.f1", "$.f2"]


def test_differences_are_capped_but_differs_stays_true() -> None:
    a = {f"k{i}": i for i in range(500)}
    b = {f"k{i}": i + 1 for i in range(500)}
    result = diff_responses(j(a), j(b), max_differences=10)
    assert result.differs and len(result.differences) == 10 and result.omitted == 490
    assert describe(result)[-1] == "... and 490 more"


def test_deeply_nested_json_does_not_overflow_the_stack() -> None:
    # json.loads cannot parse this depth: the bodies fall back to a byte comparison and still differ.
    body_a = b'{"n":' * 5000 + b"1" + b"}" * 5000
    body_b = b'{"n":' * 5000 + b"2" + b"}" * 5000
    result = diff_responses(ResponseSample(200, JSON_CT, body_a), ResponseSample(200, JSON_CT, body_b))
    assert result.differs
    medium_a = b'{"n":' * 500 + b"1" + b"}" * 500
    medium_b = b'{"n":' * 500 + b"2" + b"}" * 500
    medium = diff_responses(ResponseSample(200, JSON_CT, medium_a), ResponseSample(200, JSON_CT, medium_b))
    assert medium.body_compared_as == "json" and medium.differences[0].path == "$" + ".n" * 500


def test_redaction_of_authorization_cookie_and_configured_fields() -> None:
    sample = ResponseSample(
        200,
        [("Authorization", "Bearer s3cret"), ("Cookie", "sid=abc"), ("Set-Cookie", "sid=def"), ("X-Ok", "1"),
         ("content-type", "application/json")],
        json.dumps({"user": {"name": "ann", "password": "hunter2", "tokens": [{"token": "t1"}]}}).encode(),
    )
    clean = redact(sample, fields=["password", "$.user.tokens[*].token"])
    assert dict(clean.headers) == {"authorization": REDACTED, "cookie": REDACTED, "set-cookie": REDACTED,
                                   "x-ok": "1", "content-type": "application/json"}
    body = json.loads(clean.body)
    assert body == {"user": {"name": "ann", "password": REDACTED, "tokens": [{"token": REDACTED}]}}
    assert b"hunter2" not in clean.body and b"s3cret" not in repr(clean).encode()


def test_diff_ring_redacts_differences_and_is_bounded() -> None:
    ring = DiffRing(maxlen=5, redaction=Redaction.of(fields=["password"]))
    a = j({"password": "old-secret", "name": "a", "profile": {"password": "p1"}}, headers={"set-cookie": "s=1"})
    b = j({"password": "new-secret", "name": "b", "profile": {"password": "p2", "extra": 1}},
          headers={"set-cookie": "s=2"})
    for i in range(12):
        result = diff_responses(a, b, compare_headers=("set-cookie",))
        ring.add(DiffSample(route="catalog", step="0:shadow", method="GET", target=f"/catalog/{i}?password=pw&q=1",
                            primary_status=200, candidate_status=200, result=result))
    assert len(ring) == 5
    view = ring.to_json("catalog", limit=3)
    assert view["kept"] == 5 and view["seen"] == 12 and len(view["samples"]) == 3
    assert view["samples"][0]["request"] == "GET /catalog/11?password=[redacted]&q=1"  # newest first
    text = json.dumps(view)
    assert "secret" not in text and "p1" not in text and "s=1" not in text and "=pw" not in text
    paths = [d["path"] for d in view["samples"][0]["differences"]]
    assert paths == ["headers.set-cookie", "$.password", "$.name", "$.profile.password", "$.profile.extra"]
    texts = [d["text"] for d in view["samples"][0]["differences"]]
    assert '$.name: "a" != "b"' in texts
    assert ring.to_json("nope")["samples"] == []


def test_diff_ring_bounds_routes() -> None:
    ring = DiffRing(maxlen=2, max_routes=3)
    result = diff_responses(j({"a": 1}), j({"a": 2}))
    for i in range(10):
        ring.add(DiffSample(route=f"r{i}", step="s", method="GET", target="/", primary_status=200,
                            candidate_status=200, result=result))
    assert ring.routes() == ["r7", "r8", "r9"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=15,
)


@given(json_values)
def test_a_document_never_differs_from_itself(doc: Any) -> None:
    assert not diff_responses(j(doc), j(doc)).differs


@pytest.mark.parametrize(
    ("a", "b", "mode"),
    [
        (j(PRODUCT), j(PRODUCT), "json"),
        (ResponseSample(200, {"content-type": "text/plain"}, b' {"a": 1}'),
         ResponseSample(200, {"content-type": "text/plain"}, b' {"a": 1}'), "json"),  # sniffed by the first byte
        (ResponseSample(200, JSON_CT, b"not json"), ResponseSample(200, JSON_CT, b"not json"), "bytes"),
        (ResponseSample(200, JSON_CT, b'{"a": 1', truncated=True), ResponseSample(200, JSON_CT, b'{"a": 1'), "bytes"),
        (ResponseSample(200, JSON_CT, b'{"a": NaN}'), ResponseSample(200, JSON_CT, b'{"a": NaN}'), "json"),
        (j({"a": 1}, status=500), j({"a": 1}), "json"),
    ],
)
def test_identical_bodies_give_what_the_full_comparison_gives(a: ResponseSample, b: ResponseSample, mode: str) -> None:
    """Byte-identical bodies skip the field walk (one parse names the mode); the result is the same."""
    result = diff_responses(a, b)
    assert result.body_compared_as == mode
    assert [d.path for d in result.differences] == (["status"] if a.status != b.status else [])
    with_noise = diff_responses(a, b, noise=("$.zzz",))  # noise paths take the full walk
    assert (with_noise.body_compared_as, with_noise.differences) == (result.body_compared_as, result.differences)


@given(json_values, json_values)
def test_diff_is_symmetric_in_its_paths(a: Any, b: Any) -> None:
    forward = {d.path for d in diff_responses(j(a), j(b)).differences}
    backward = {d.path for d in diff_responses(j(b), j(a)).differences}
    assert forward == backward
    assert bool(forward) == (json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True))


@given(st.lists(st.text(max_size=6) | st.integers(0, 20), min_size=1, max_size=4))
def test_every_reported_path_parses_back_as_a_rule_covering_it(parts: list[str | int]) -> None:
    # Learned noise paths are stored as rules, so any key a body can hold must survive the round trip.
    from facade.diff import format_location

    location = ("$", *parts)
    for generic in (False, True):
        rules = IgnoreRules.parse([format_location(location, generic=generic)])
        assert rules.covers(location)
        assert not rules.covers(("$", "\x00unrelated"))
