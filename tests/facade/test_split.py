from __future__ import annotations

import math
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facade.split import (
    BUCKETS,
    CanarySpec,
    Split,
    StickySpec,
    WeightedChoice,
    bucket_of,
    choose_weighted,
    decide,
)

COOKIE = StickySpec("cookie", "session_id")
HEADER = StickySpec("header", "x-user-id")


def test_bucket_is_stable_across_processes() -> None:
    keys = ["alice", "bob", "0" * 32]
    code = f"from facade.split import bucket_of; print([bucket_of(k) for k in {keys!r}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=".")
    assert out.stdout.strip() == str([bucket_of(k) for k in keys])
    assert bucket_of("alice") == bucket_of(b"alice")
    assert all(0 <= bucket_of(k) < BUCKETS for k in keys)


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=20),
    weights=st.lists(st.integers(min_value=0, max_value=BUCKETS), min_size=2, max_size=8),
)
def test_sticky_users_who_moved_stay_moved_as_weight_grows(keys: list[str], weights: list[int]) -> None:
    weights = sorted(weights)
    for key in keys:
        headers = [(b"x-user-id", key.encode("utf-8", "surrogatepass"))]
        moved = False
        for w in weights:
            split = Split("monolith", "catalog", weight_bps=w, sticky=HEADER)
            d = decide(split, headers=headers, rand=random.random())
            on_candidate = d.backend == "catalog"
            assert not (moved and not on_candidate), f"{key!r} went back at weight {w}"
            moved = on_candidate


def test_sticky_same_user_same_side_regardless_of_rand() -> None:
    split = Split("monolith", "catalog", weight_bps=5000, sticky=COOKIE)
    headers = [(b"cookie", b"theme=dark; session_id=user-42")]
    sides = {decide(split, headers=headers, rand=r / 10).backend for r in range(10)}
    assert len(sides) == 1
    d = decide(split, headers=headers, rand=0.5)
    assert d.sticky_key == "user-42" and d.set_cookie is None


def test_sticky_cookie_newcomer_gets_a_cookie_that_decides_next_time() -> None:
    split = Split("monolith", "catalog", weight_bps=5000, sticky=COOKIE)
    first = decide(split, headers=[], rand=0.1)
    assert first.sticky_key is not None and first.set_cookie is not None
    cookie = first.set_cookie.decode()
    assert cookie.startswith(f"session_id={first.sticky_key}; Path=/;")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Max-Age=2592000" in cookie
    again = decide(split, headers=[(b"cookie", f"session_id={first.sticky_key}".encode())], rand=0.9)
    assert again.backend == first.backend and again.set_cookie is None


def test_sticky_header_newcomer_gets_no_cookie() -> None:
    split = Split("monolith", "catalog", weight_bps=5000, sticky=HEADER)
    d = decide(split, headers=[], rand=0.1)
    assert d.sticky_key is not None and d.set_cookie is None


def _within(observed: int, n: int, p: float) -> bool:
    # 5 standard deviations: a correct implementation fails about once in 3.5 million runs.
    sigma = math.sqrt(n * p * (1 - p))
    return abs(observed - n * p) <= 5 * sigma + 1


@pytest.mark.parametrize("percent", [0, 5, 25, 50, 100])
def test_unsticky_split_proportions(percent: int) -> None:
    rng = random.Random(percent)
    split = Split("monolith", "catalog", weight_bps=percent * 100)
    n = 20_000
    hits = sum(decide(split, headers=[], rand=rng.random()).backend == "catalog" for _ in range(n))
    assert _within(hits, n, percent / 100)
    if percent in (0, 100):
        assert hits == n * percent // 100


@pytest.mark.parametrize("percent", [5, 25, 50])
def test_sticky_split_proportions_over_users(percent: int) -> None:
    split = Split("monolith", "catalog", weight_bps=percent * 100, sticky=HEADER)
    n = 20_000
    hits = sum(
        decide(split, headers=[(b"x-user-id", f"user-{i}".encode())], rand=0.0).backend == "catalog"
        for i in range(n)
    )
    assert _within(hits, n, percent / 100)


def test_canary_header_only_matching_requests_go_to_candidate() -> None:
    split = Split("monolith", "catalog", weight_bps=0, canary=CanarySpec("header", "x-canary", "1"))
    assert decide(split, headers=[(b"x-canary", b"1")], rand=0.99).backend == "catalog"
    assert decide(split, headers=[(b"x-canary", b"0")], rand=0.0).backend == "monolith"
    assert decide(split, headers=[], rand=0.0).backend == "monolith"


def test_canary_cookie_across_several_cookie_headers() -> None:
    split = Split("monolith", "catalog", canary=CanarySpec("cookie", "beta", "1"))
    headers = [(b"cookie", b"a=b"), (b"cookie", b"x=y; beta=1")]
    assert decide(split, headers=headers, rand=0.5).backend == "catalog"
    assert decide(split, headers=[(b"cookie", b"beta=2; notbeta=1")], rand=0.5).backend == "monolith"


def test_shadow_mirrors_primary_requests_by_percent() -> None:
    rng = random.Random(7)
    split = Split("monolith", "catalog", shadow_percent=30.0)
    n = 10_000
    decisions = [decide(split, headers=[], rand=rng.random(), shadow_rand=rng.random()) for _ in range(n)]
    assert all(d.backend == "monolith" for d in decisions)
    assert _within(sum(d.shadow for d in decisions), n, 0.30)
    full = Split("monolith", "catalog", shadow_percent=100.0)
    assert all(decide(full, headers=[], rand=rng.random()).shadow for _ in range(100))
    assert not decide(Split("monolith", "catalog"), headers=[], rand=0.0).shadow


def test_shadow_derived_draw_is_roughly_independent() -> None:
    rng = random.Random(11)
    split = Split("monolith", "catalog", shadow_percent=50.0)
    n = 10_000
    hits = sum(decide(split, headers=[], rand=rng.random()).shadow for _ in range(n))
    assert _within(hits, n, 0.5)


def test_weighted_choice() -> None:
    choice = WeightedChoice.from_backends([("a", 90), ("zero", 0), ("b", 10)])
    assert choice.pick(0.0) == "a" and choice.pick(0.8999) == "a"
    assert choice.pick(0.9) == "b" and choice.pick(0.99999) == "b"
    rng = random.Random(3)
    n = 10_000
    picks = [choice.pick(rng.random()) for _ in range(n)]
    assert "zero" not in picks
    assert _within(picks.count("b"), n, 0.10)
    assert choose_weighted([("only", 1)], 0.5) == "only"
    with pytest.raises(ValueError, match="positive weight"):
        WeightedChoice.from_backends([("a", 0)])
    with pytest.raises(ValueError, match="negative"):
        WeightedChoice.from_backends([("a", -1)])
