"""Route.pick: decision order, split ratios within computed bounds, sticky stability and the monotonic ramp."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from scipy.stats import binom, chi2
from starlette.datastructures import Headers

from gateway.config import parse_config
from gateway.errors import ProtocolError, UnknownModelError, UnknownVersionError
from gateway.routing import BUCKETS, Decision, Route, RoutingTable, Target, apportion, sticky_bucket

# Every statistical test below accepts with a two-sided false-failure probability below ALPHA, i.e. a correct
# implementation fails at most once in a million runs with fresh randomness (the seeds/keys here are fixed, so each
# run is deterministic; the bound is what makes the fixed choice a fair one).
ALPHA = 1e-6
N = 20_000


def make_route(route: Mapping[str, Any], name: str = "fraud") -> Route:
    config = parse_config({"model_repository": "m", "routes": {name: dict(route)}}, source="test", base_dir=Path("."))
    return RoutingTable.from_config(config).route(name)


def split_route(weights: Mapping[str, float], *, versions: Mapping[str, int] | None = None, **split: Any) -> Route:
    versions = versions if versions is not None else {name: i + 1 for i, name in enumerate(weights)}
    return make_route({"versions": dict(versions), "split": {"weights": dict(weights), **split}})


CANARY: dict[str, Any] = {
    "versions": {"stable": 1, "canary": 2, "dark": 3},
    "split": {
        "weights": {"stable": 90, "canary": 10},
        "sticky": {"key": ["header:x-user-id", "cookie:uid"], "salt": "exp-1"},
        "overrides": [
            {"header": {"x-canary": "1"}, "to": "canary"},
            {"header": {"x-qa": "yes", "x-env": "stg"}, "to": "dark"},
        ],
    },
}


def binomial_interval(n: int, p: float) -> tuple[int, int]:
    """[lo, hi] with P(X < lo) + P(X > hi) < ALPHA for X ~ Binomial(n, p)."""
    return int(binom.ppf(ALPHA / 2, n, p)), int(binom.ppf(1 - ALPHA / 2, n, p))


def key_in(route: Route, version: str) -> str:
    """A user id whose sticky bucket belongs to `version`."""
    return next(f"u{i}" for i in range(100_000) if route.pick({"x-user-id": f"u{i}"}, None, 0.0).target.name == version)


# --- the decision order -----------------------------------------------------------------------------------------


def test_override_beats_pin_beats_sticky_beats_weighted() -> None:
    route = make_route(CANARY)
    stable_user = key_in(route, "stable")
    headers = {"x-canary": "1", "x-user-id": stable_user}
    assert route.pick(headers, "stable", 0.99) == Decision(Target("canary", "fraud", 2), "override")
    assert route.pick({"x-user-id": stable_user}, "dark", 0.99) == Decision(Target("dark", "fraud", 3), "pin")
    assert route.pick({"x-user-id": stable_user}, None, 0.01) == Decision(Target("stable", "fraud", 1), "sticky")
    assert route.pick({}, None, 0.01) == Decision(Target("canary", "fraud", 2), "weighted")
    assert route.pick({}, None, 0.5) == Decision(Target("stable", "fraud", 1), "weighted")


def test_pin_accepts_version_name_or_repository_number() -> None:
    route = make_route(CANARY)
    assert route.pick({}, "canary", 0.5) == route.pick({}, "2", 0.5) == Decision(Target("canary", "fraud", 2), "pin")
    assert route.target("3") == route.target("dark") == Target("dark", "fraud", 3)


def test_unknown_pin_names_the_valid_versions_even_when_an_override_matches() -> None:
    route = make_route(CANARY)
    for headers in ({}, {"x-canary": "1"}):
        with pytest.raises(UnknownVersionError) as info:
            route.pick(headers, "4", 0.5)
        assert str(info.value) == "model 'fraud' has no version '4' (stable (1), canary (2), dark (3))"


def test_override_needs_every_header_of_its_entry() -> None:
    route = make_route(CANARY)
    assert route.pick({"x-qa": "yes", "x-env": "stg"}, None, 0.5).reason == "override"
    assert route.pick({"x-qa": "yes", "x-env": "stg"}, None, 0.5).target.name == "dark"
    assert route.pick({"x-qa": "yes"}, None, 0.5).reason == "weighted"
    assert route.pick({"x-qa": "yes", "x-env": "prod"}, None, 0.5).reason == "weighted"
    assert route.pick({"x-canary": "1 "}, None, 0.5).reason == "weighted"  # values match exactly


def test_first_matching_override_wins() -> None:
    route = make_route(
        {
            "versions": {"a": 1, "b": 2},
            "split": {
                "weights": {"a": 1},
                "overrides": [{"header": {"x-t": "1"}, "to": "b"}, {"header": {"x-t": "1"}, "to": "a"}],
            },
        }
    )
    assert route.pick({"x-t": "1"}, None, 0.5).target.name == "b"


def test_header_names_in_config_ignore_case_and_starlette_headers_work() -> None:
    route = make_route(
        {
            "versions": {"a": 1, "b": 2},
            "split": {
                "weights": {"a": 1},
                "sticky": {"key": "header:X-User-Id"},
                "overrides": [{"header": {"X-Canary": "1"}, "to": "b"}],
            },
        }
    )
    assert route.pick(Headers({"X-CANARY": "1"}), None, 0.5).reason == "override"
    assert route.pick(Headers({"X-User-ID": "u1"}), None, 0.5).reason == "sticky"


def test_dark_version_is_reachable_only_by_pin_or_override() -> None:
    route = make_route(CANARY)
    rng = random.Random(7)
    seen = {route.pick({}, None, rng.random()).target.name for _ in range(2_000)}
    seen |= {route.pick({"x-user-id": f"k{i}"}, None, 0.5).target.name for i in range(2_000)}
    assert seen == {"stable", "canary"}
    assert route.bucket_range("dark") == range(1000, 1000)
    assert route.weights()["dark"] == 0.0


def test_pick_allocates_no_decisions() -> None:
    route = make_route(CANARY)
    assert route.pick({}, None, 0.5) is route.pick({}, None, 0.6)
    assert route.pick({}, "2", 0.5) is route.pick({}, "canary", 0.5)
    assert route.pick({"x-canary": "1"}, None, 0.5) is route.pick({"x-canary": "1"}, "1", 0.1)
    assert route.pick({"x-user-id": "a"}, None, 0.5) is route.pick({"x-user-id": "a"}, None, 0.1)


@pytest.mark.parametrize("draw", [-0.1, 1.0, float("nan")])
def test_draw_outside_unit_interval_is_a_caller_bug(draw: float) -> None:
    with pytest.raises(ValueError, match=r"draw must be in \[0, 1\)"):
        split_route({"a": 1, "b": 1}).pick({}, None, draw)


def test_weighted_boundaries_are_half_open() -> None:
    route = split_route({"b": 75, "a": 25}, versions={"a": 1, "b": 2}, baseline="b")
    # layout: non-baseline first, so a owns draws [0, 0.25) and b owns [0.25, 1)
    assert route.pick({}, None, 0.0).target.name == "a"
    assert route.pick({}, None, 0.2499999).target.name == "a"
    assert route.pick({}, None, 0.25).target.name == "b"
    assert route.pick({}, None, 0.9999999999).target.name == "b"


# --- sticky keys ------------------------------------------------------------------------------------------------


def test_sticky_key_maps_to_the_version_owning_its_bucket() -> None:
    route = make_route(CANARY)
    for i in range(2_000):
        key = f"user-{i}"
        bucket = sticky_bucket("exp-1", key)
        owner = next(t.name for t in route.targets if bucket in route.bucket_range(t.name))
        assert route.pick({"x-user-id": key}, None, 0.5).target.name == owner


def test_bucket_layout_puts_baseline_high_and_others_from_zero_in_declaration_order() -> None:
    route = make_route(
        {
            "versions": {"b": 1, "base": 2, "a": 3, "dark": 4},
            "split": {"weights": {"a": 30, "b": 20, "base": 50}, "baseline": "base"},
        }
    )
    assert route.bucket_range("b") == range(2_000)
    assert route.bucket_range("a") == range(2_000, 5_000)
    assert route.bucket_range("base") == range(5_000, 10_000)
    assert route.bucket_range("dark") == range(5_000, 5_000)
    assert route.weights() == {"b": 0.2, "base": 0.5, "a": 0.3, "dark": 0.0}
    assert [t.name for t in route.targets] == ["b", "base", "a", "dark"]
    assert route.baseline == Target("base", "fraud", 2)


def test_sticky_bucket_is_a_fixed_function() -> None:
    # Pinned values: replicas, restarts and offline analysis must all agree, so the formula may never drift.
    assert BUCKETS == 10_000
    assert [sticky_bucket("exp-1", key) for key in ("alice", "bob", "", "Ω-user")] == [9021, 1707, 7255, 3322]
    expected = int.from_bytes(hashlib.blake2b(b"exp-1\x00alice", digest_size=8).digest(), "big") % BUCKETS
    assert sticky_bucket("exp-1", "alice") == expected
    assert sticky_bucket("", "alice") != sticky_bucket("exp-1", "alice")


def test_cookie_key_is_used_when_the_header_is_absent() -> None:
    route = make_route(CANARY)
    for i in range(300):
        by_header = route.pick({"x-user-id": f"c{i}"}, None, 0.5)
        by_cookie = route.pick({"cookie": f"theme=dark; uid=c{i}; x=1"}, None, 0.5)
        quoted = route.pick({"cookie": f'uid="c{i}"'}, None, 0.5)
        assert by_header is by_cookie is quoted
        assert by_cookie.reason == "sticky"


def test_first_present_key_wins() -> None:
    route = make_route(CANARY)
    stable_user, canary_user = key_in(route, "stable"), key_in(route, "canary")
    both = {"x-user-id": stable_user, "cookie": f"uid={canary_user}"}
    assert route.pick(both, None, 0.5).target.name == "stable"
    # an empty header counts as absent, so the cookie decides
    assert route.pick({"x-user-id": "", "cookie": f"uid={canary_user}"}, None, 0.5).target.name == "canary"
    # a cookie header without the configured cookie counts as absent too
    assert route.pick({"cookie": f"sid={canary_user}"}, None, 0.01).reason == "weighted"


def test_cookie_names_are_case_sensitive() -> None:
    route = make_route(CANARY)
    assert route.pick({"cookie": "UID=abc"}, None, 0.5).reason == "weighted"


def test_on_missing_random_uses_the_draw() -> None:
    route = make_route(CANARY)
    assert route.pick({}, None, 0.05) == Decision(Target("canary", "fraud", 2), "weighted")
    assert route.pick({}, None, 0.95) == Decision(Target("stable", "fraud", 1), "weighted")


def test_on_missing_baseline_sends_keyless_requests_to_the_baseline() -> None:
    spec = {**CANARY, "split": {**CANARY["split"], "sticky": {"key": "header:x-user-id", "on_missing": "baseline"}}}
    route = make_route(spec)
    for draw in (0.0, 0.05, 0.5, 0.99):
        assert route.pick({}, None, draw) == Decision(Target("stable", "fraud", 1), "sticky")


def test_on_missing_reject_is_a_protocol_error_naming_the_keys() -> None:
    spec = {
        **CANARY,
        "split": {**CANARY["split"], "sticky": {"key": ["header:x-user-id", "cookie:uid"], "on_missing": "reject"}},
    }
    route = make_route(spec)
    with pytest.raises(ProtocolError) as info:
        route.pick({"cookie": "other=1"}, None, 0.5)
    assert str(info.value) == "model 'fraud' routes by a sticky key: send header x-user-id or cookie uid"
    # overrides and pins still work without a key
    assert route.pick({"x-canary": "1"}, None, 0.5).reason == "override"
    assert route.pick({}, "stable", 0.5).reason == "pin"


# --- split ratios -------------------------------------------------------------------------------------------------


def test_weighted_90_10_ratio_within_binomial_bounds() -> None:
    route = split_route({"stable": 90, "canary": 10})
    rng = random.Random(20_240_601)
    canary = sum(route.pick({}, None, rng.random()).target.name == "canary" for _ in range(N))
    lo, hi = binomial_interval(N, 0.1)  # [1_796, 2_211] around the mean 2_000 (sd 42)
    assert lo <= canary <= hi


def test_sticky_90_10_ratio_over_distinct_keys_within_binomial_bounds() -> None:
    # Hashing 20,000 distinct keys behaves like 20,000 independent draws when blake2b is a good hash, so the count
    # of keys landing in the canary's 1,000 of 10,000 buckets is Binomial(20_000, 0.1).
    route = split_route({"stable": 90, "canary": 10}, sticky={"key": "header:x-user-id", "salt": "ratio-test"})
    canary = sum(route.pick({"x-user-id": f"user-{i}"}, None, 0.0).target.name == "canary" for i in range(N))
    lo, hi = binomial_interval(N, 0.1)
    assert lo <= canary <= hi


def chi_square_ok(counts: Mapping[str, int], shares: Mapping[str, float], n: int) -> bool:
    """Pearson's chi-square goodness of fit at level ALPHA (df = categories - 1; every expected count >= 2_000)."""
    statistic = sum((counts.get(name, 0) - n * share) ** 2 / (n * share) for name, share in shares.items())
    return bool(statistic <= chi2.isf(ALPHA, len(shares) - 1))  # isf(1e-6, 2) is about 27.6


def test_three_way_weighted_split_passes_chi_square() -> None:
    route = split_route({"base": 60, "a": 30, "b": 10})
    rng = random.Random(99)
    counts = Counter(route.pick({}, None, rng.random()).target.name for _ in range(N))
    assert chi_square_ok(counts, {"base": 0.6, "a": 0.3, "b": 0.1}, N)


def test_three_way_sticky_split_passes_chi_square() -> None:
    route = split_route({"base": 60, "a": 30, "b": 10}, sticky={"key": "header:x-user-id", "salt": "three"})
    counts = Counter(route.pick({"x-user-id": f"id-{i}"}, None, 0.0).target.name for i in range(N))
    assert chi_square_ok(counts, {"base": 0.6, "a": 0.3, "b": 0.1}, N)


def test_weights_are_normalised_shares() -> None:
    route = split_route({"stable": 3, "canary": 1})
    assert route.weights() == {"stable": 0.75, "canary": 0.25}
    assert sum(split_route({"a": 1, "b": 1, "c": 1}).weights().values()) == pytest.approx(1.0)


# --- apportionment ------------------------------------------------------------------------------------------------


def test_apportion_uses_largest_remainders() -> None:
    assert apportion([1, 1, 1], 10_000) == (3_334, 3_333, 3_333)  # tie: the first laid out gets the spare bucket
    assert apportion([2, 1], 10_000) == (6_667, 3_333)
    assert apportion([0.1, 0.9], 10_000) == (1_000, 9_000)
    assert apportion([0, 5], 10_000) == (0, 10_000)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=8).filter(lambda ws: sum(ws) > 0))
def test_apportion_sums_to_total_and_stays_within_one_of_quota(weights: list[int]) -> None:
    counts = apportion(weights, BUCKETS)
    assert sum(counts) == BUCKETS
    for weight, count in zip(weights, counts, strict=True):
        quota = weight * BUCKETS / sum(weights)
        assert quota - 1 < count < quota + 1
        assert weight > 0 or count == 0


# --- stability across reloads --------------------------------------------------------------------------------------

KEYS = [f"user-{i}" for i in range(5_000)]


def assignments(route: Route) -> list[str]:
    return [route.pick({"x-user-id": key}, None, 0.0).target.name for key in KEYS]


BASE_SPEC: dict[str, Any] = {
    "versions": {"stable": 1, "canary": 2, "b": 3},
    "split": {
        "weights": {"stable": 70, "canary": 20, "b": 10},
        "baseline": "stable",
        "sticky": {"key": "header:x-user-id", "salt": "s1"},
    },
}


def variant(**changes: Any) -> dict[str, Any]:
    spec = {"versions": dict(BASE_SPEC["versions"]), "split": dict(BASE_SPEC["split"])}
    for key, value in changes.items():
        if key == "versions":
            spec["versions"] = value
        else:
            spec["split"][key] = value
    return spec


# Kept: everything that leaves salt, shares, baseline and the order of weighted non-baseline versions alone.
KEEPING = {
    "same file re-parsed": variant(),
    "overrides added": variant(overrides=[{"header": {"x-canary": "1"}, "to": "canary"}]),
    "dark version added first": variant(versions={"dark": 9, "stable": 1, "canary": 2, "b": 3}),
    "dark version added between": variant(versions={"stable": 1, "canary": 2, "dark": 9, "b": 3}),
    "weights scaled": variant(weights={"stable": 7, "canary": 2, "b": 1}),
    "weights listed in another order": variant(weights={"b": 10, "stable": 70, "canary": 20}),
    "repository versions renumbered": variant(versions={"stable": 4, "canary": 5, "b": 6}),
    "on_missing changed": variant(sticky={"key": "header:x-user-id", "salt": "s1", "on_missing": "reject"}),
    "a cookie key added after": variant(sticky={"key": ["header:x-user-id", "cookie:uid"], "salt": "s1"}),
}

# Moved: a new salt re-randomises on purpose; a new baseline or a reordering of weighted candidates changes the layout.
MOVING = {
    "salt changed": variant(sticky={"key": "header:x-user-id", "salt": "s2"}),
    "baseline changed": variant(baseline="canary"),
    "weighted candidates reordered": variant(versions={"stable": 1, "b": 3, "canary": 2}),
}


@pytest.mark.parametrize("name", list(KEEPING))
def test_sticky_assignments_survive_changes_that_leave_the_layout(name: str) -> None:
    assert assignments(make_route(KEEPING[name])) == assignments(make_route(BASE_SPEC))


@pytest.mark.parametrize("name", list(MOVING))
def test_sticky_assignments_move_when_salt_baseline_or_order_change(name: str) -> None:
    before, after = assignments(make_route(BASE_SPEC)), assignments(make_route(MOVING[name]))
    moved = sum(a != b for a, b in zip(before, after, strict=True))
    assert moved > 100


# --- the monotonic ramp --------------------------------------------------------------------------------------------


def ramp_route(candidate: float, baseline: float, salt: str = "ramp") -> Route:
    return make_route(
        {
            "versions": {"stable": 1, "canary": 2},
            "split": {
                "weights": {"stable": baseline, "canary": candidate},
                "baseline": "stable",
                "sticky": {"key": "header:x-user-id", "salt": salt},
            },
        }
    )


def test_ramp_over_100k_keys_never_moves_a_key_out_of_the_candidate() -> None:
    keys = [{"x-user-id": f"customer-{i}"} for i in range(100_000)]
    steps = [(1, 99), (5, 95), (25, 75), (50, 50), (100, 0)]
    in_candidate: set[int] = set()
    for candidate, baseline in steps:
        route = ramp_route(candidate, baseline)
        now = {i for i, headers in enumerate(keys) if route.pick(headers, None, 0.0).target.name == "canary"}
        assert in_candidate <= now  # nobody ever leaves the candidate
        # the candidate owns exactly candidate% of the buckets, so its key count is Binomial(100_000, candidate%)
        lo, hi = binomial_interval(len(keys), candidate / 100)
        assert lo <= len(now) <= hi
        in_candidate = now
    assert len(in_candidate) == len(keys)


def bucket_owners(route: Route) -> list[str]:
    owners = [""] * BUCKETS
    for target in route.targets:
        for bucket in route.bucket_range(target.name):
            owners[bucket] = target.name
    return owners


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=1_000, allow_nan=False), min_size=2, max_size=8),
    st.floats(min_value=1, max_value=1_000),
)
def test_any_two_version_ramp_is_monotonic(candidate_weights: list[float], total: float) -> None:
    # Checked on all 10,000 buckets, so it covers every possible key, not a sample.
    previous: list[str] | None = None
    for weight in sorted(min(w, total) for w in candidate_weights):
        owners = bucket_owners(ramp_route(weight, total - weight))
        if previous is not None:
            assert all(now == "canary" for before, now in zip(previous, owners, strict=True) if before == "canary")
        previous = owners


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=100), min_size=2, max_size=4), st.data())
def test_three_plus_versions_ramp_loses_at_most_rounding_buckets(others: list[int], data: st.DataObject) -> None:
    # The documented limit: raising v_j at the baseline's expense keeps v_j's keys except for rounding buckets
    # (each unchanged version's count moves by at most one bucket, so at most one per version laid out before v_j,
    # plus one at v_j's own upper end).
    names = [f"v{i}" for i in range(len(others))]
    j = data.draw(st.integers(min_value=0, max_value=len(names) - 1))
    start = data.draw(st.integers(min_value=0, max_value=500))
    step = data.draw(st.integers(min_value=1, max_value=500))
    versions = {name: i + 1 for i, name in enumerate([*names, "base"])}

    def route(weight_j: int) -> Route:
        weights = {name: w for name, w in zip(names, others, strict=True)}
        weights[names[j]] = weight_j
        weights["base"] = 1_000 - weight_j
        return make_route({"versions": versions, "split": {"weights": weights, "baseline": "base"}})

    before, after = bucket_owners(route(start)), bucket_owners(route(start + step))
    left = sum(b == names[j] and a != names[j] for b, a in zip(before, after, strict=True))
    assert left <= j + 1
    if j == len(names) - 1:  # the last declared candidate takes keys only from the baseline (up to rounding)
        taken = sum(b != "base" and b != names[j] and a == names[j] for b, a in zip(before, after, strict=True))
        assert taken <= j + 1


# --- the table ------------------------------------------------------------------------------------------------------


def test_routing_table_builds_every_route_and_rejects_unknown_models() -> None:
    config = parse_config(
        {"model_repository": "m", "routes": {"a": {"versions": {"v1": 1}}, "b": CANARY}}, source="t", base_dir=Path(".")
    )
    table = RoutingTable.from_config(config)
    assert set(table.routes) == {"a", "b"}
    assert table.route("a").pick({}, None, 0.3) == Decision(Target("v1", "a", 1), "weighted")
    assert table.route("b").targets[1] == Target("canary", "b", 2)
    with pytest.raises(UnknownModelError, match="unknown model 'c'"):
        table.route("c")


def test_route_model_folder_can_differ_from_route_name() -> None:
    route = make_route({"model": "fraud_xgb", "versions": {"v1": 7}}, name="fraud")
    assert route.pick({}, None, 0.0).target == Target("v1", "fraud_xgb", 7)
