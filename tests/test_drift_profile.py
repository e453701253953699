"""Reference profiles: building, counting, saving/loading, and the check against a model signature."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from gateway.drift.profile import (
    ProfileError,
    ProfileOptions,
    build_profile,
    load_profile,
    save_profile,
)
from gateway.signature import Signature, TensorSpec

SIGNATURE = Signature(
    (TensorSpec("x", "FP32", (-1, 3)), TensorSpec("city", "BYTES", (-1,))),
    (TensorSpec("label", "INT64", (-1,)), TensorSpec("scores", "FP32", (-1, 2))),
)


def _data(rows: int = 1_000, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    x[:, 2] = rng.integers(0, 4, rows)  # few distinct integers: one bin per value
    x[:10, 0] = np.nan
    city = np.array([b"oslo", b"lima", b"pune", None], dtype=object)[rng.integers(0, 4, rows)]
    scores = rng.random((rows, 2)).astype(np.float32)
    return {"x": x, "city": city}, {"label": (scores[:, 1] > 0.5).astype(np.int64), "scores": scores}


def test_build_names_kinds_and_counts() -> None:
    inputs, outputs = _data()
    profile = build_profile(SIGNATURE, inputs, outputs, dataset_sha256="h", feature_names=["a", "b", "c"])
    assert [(f.name, f.kind, f.source) for f in profile.features] == [
        ("a", "numeric", "input"),
        ("b", "numeric", "input"),
        ("c", "numeric", "input"),
        ("city", "categorical", "input"),
        ("label", "categorical", "output"),
        ("scores[0]", "numeric", "output"),
        ("scores[1]", "numeric", "output"),
    ]
    a = profile.features[0]
    assert len(a.edges) == 19 and a.missing == 10 and sum(a.counts) == 990
    assert a.minimum == float(np.nanmin(inputs["x"][:, 0]))
    city = profile.features[3]
    assert sorted(str(c) for c in city.categories) == ["lima", "oslo", "pune"]
    assert city.counts[-1] == 0 and city.missing == int(sum(v is None for v in inputs["city"]))
    assert profile.features[2].edges == (0.5, 1.5, 2.5)  # halfway between the distinct values
    assert profile.rows == 1_000
    assert profile.joint is not None and profile.joint.features == ("a", "b", "c")


def test_counting_edges_out_of_range_unseen_and_missing() -> None:
    inputs, outputs = _data()
    profile = build_profile(SIGNATURE, inputs, outputs, dataset_sha256="h")
    a = profile.features[0]
    values = np.array([a.edges[0], a.edges[0] - 1e-6, np.nan, a.maximum + 1, a.minimum - 1, np.inf], dtype=np.float64)
    counted = a.count_values(values)
    assert counted.slots[0] == 2 and counted.slots[1] == 1  # a value equal to an edge lands in the upper bin
    assert counted.slots[-1] == 2 and (counted.missing, counted.below, counted.above) == (1, 1, 2)
    city = profile.features[3]
    counted = city.count_values(np.array([b"oslo", "oslo", b"rome", None, 3], dtype=object))
    assert counted.slots[city.categories.index("oslo")] == 2
    assert counted.slots[-1] == 2 and counted.missing == 1  # unseen bytes and a non-string are OTHER
    c = profile.features[2]  # integer-valued: a value the reference did not hold sits in its neighbour's bin
    counted = c.count_values(np.array([0.0, 3.0, 7.0, 1.4, np.nan]))
    assert counted.slots.tolist() == [1, 1, 0, 2] and counted.missing == 1
    assert (counted.below, counted.above) == (0, 1)  # 7 is beyond the reference maximum: novelty's business


def test_top_categories_are_kept_and_the_rest_is_other() -> None:
    signature = Signature((TensorSpec("w", "BYTES", (-1,)),), ())
    words = np.array([b"a"] * 50 + [b"b"] * 30 + [b"c"] * 5 + [b"d"] * 1, dtype=object)
    profile = build_profile(signature, {"w": words}, dataset_sha256="h", options=ProfileOptions(max_categories=2))
    feature = profile.features[0]
    assert feature.categories == ("a", "b") and feature.counts == (50, 30, 6)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    inputs, outputs = _data()
    profile = build_profile(SIGNATURE, inputs, outputs, dataset_sha256="h", created_at="2024-01-01T00:00:00Z")
    path = tmp_path / "profile.json"
    save_profile(profile, path)
    loaded = load_profile(path, SIGNATURE)
    assert loaded == profile
    rng = np.random.default_rng(9)
    window = rng.normal(size=500)
    assert (loaded.features[0].count_values(window).slots == profile.features[0].count_values(window).slots).all()


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        (Signature((TensorSpec("x", "FP64", (-1, 3)), SIGNATURE.inputs[1]), SIGNATURE.outputs), "was profiled as"),
        (Signature((TensorSpec("x", "FP32", (-1, 4)), SIGNATURE.inputs[1]), SIGNATURE.outputs), "has 4 columns"),
        (Signature((SIGNATURE.inputs[0],), SIGNATURE.outputs), "'city' is not in the model's signature"),
        (Signature(SIGNATURE.inputs, (SIGNATURE.outputs[0],)), "'scores' is not in the model's signature"),
    ],
)
def test_load_refuses_a_profile_that_does_not_fit_the_signature(
    tmp_path: Path, signature: Signature, message: str
) -> None:
    inputs, outputs = _data()
    path = tmp_path / "profile.json"
    save_profile(build_profile(SIGNATURE, inputs, outputs, dataset_sha256="h"), path)
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(path, signature)
    assert str(path) in str(info.value)


def test_load_refuses_unreadable_and_malformed_files(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(path, SIGNATURE)
    path.write_text('{"schema_version": 1, "builder": {}}')
    with pytest.raises(ProfileError, match="malformed"):
        load_profile(path, SIGNATURE)
    path.write_text('{"schema_version": 99}')
    with pytest.raises(ProfileError, match="schema_version"):
        load_profile(path, SIGNATURE)


def test_build_refuses_bad_data() -> None:
    inputs, outputs = _data()
    with pytest.raises(ProfileError, match="2 feature names for 3 columns"):
        build_profile(SIGNATURE, inputs, outputs, dataset_sha256="h", feature_names=["a", "b"])
    with pytest.raises(ProfileError, match="no data for input 'city'"):
        build_profile(SIGNATURE, {"x": inputs["x"]}, None, dataset_sha256="h")
    short = dict(inputs, city=inputs["city"][:5])
    with pytest.raises(ProfileError, match="rows"):
        build_profile(SIGNATURE, short, None, dataset_sha256="h")
    constant = Signature((TensorSpec("v", "FP32", (-1,)),), ())
    profile = build_profile(
        constant, {"v": np.full(100, 2.5)}, dataset_sha256="h", options=ProfileOptions(integer_max_distinct=0)
    )
    assert profile.features[0].edges == (2.5,) and not math.isnan(profile.features[0].std)


def test_round_trip_keeps_the_joint_monitor_and_the_rare_levels(tmp_path: Path) -> None:
    inputs, outputs = _data()
    profile = build_profile(SIGNATURE, inputs, outputs, dataset_sha256="h")
    path = tmp_path / "profile.json"
    save_profile(profile, path)
    loaded = load_profile(path, SIGNATURE)
    assert loaded.version == 2 and loaded.joint == profile.joint
    assert loaded.features == profile.features and loaded.features[3].rare_levels == (0, 0, 0, 0, 0)
    assert loaded.joint is not None
    rows = np.column_stack([inputs["x"][:5, j] for j in range(3)]).astype(np.float64)
    assert np.allclose(loaded.joint.errors(rows), profile.joint.errors(rows))  # type: ignore[union-attr]


def test_a_version_1_profile_still_loads_and_is_judged_without_the_joint_monitor(tmp_path: Path) -> None:
    # What schema 1 wrote: integer columns as categories, no rare_levels, no joint monitor.
    from gateway.drift.counting import WindowCounter
    from gateway.drift.evaluation import evaluate_window
    from gateway.drift.settings import DriftSettings

    inputs, outputs = _data()
    data = build_profile(SIGNATURE, inputs, outputs, dataset_sha256="h").to_json()
    data["schema_version"] = 1
    builder = data["builder"]
    builder["categorical_max_distinct"] = builder.pop("integer_max_distinct")
    del builder["joint"], data["joint"]
    codes = data["features"][2]
    codes.update(kind="categorical", categories=[0.0, 1.0, 2.0, 3.0], counts=[*codes["counts"], 0])
    for key in ("edges", "min", "max", "mean", "std"):
        del codes[key]
    for feature in data["features"]:
        feature.pop("rare_levels", None)
    path = tmp_path / "profile.json"
    path.write_bytes(__import__("orjson").dumps(data))
    profile = load_profile(path, SIGNATURE)
    assert profile.version == 1 and profile.joint is None and profile.features[2].kind == "categorical"
    counter = WindowCounter(profile, joint=True)  # asked for, but a version-1 profile has none: judged without
    assert counter.features == profile.features
    fresh, fresh_outputs = _data(seed=1)
    counts = [c for c in counter.count(fresh, fresh_outputs) if c is not None]
    result = evaluate_window(profile, counts, DriftSettings(), index=0, evaluated_at=0.0)
    assert len(result.features) == len(profile.features) and not result.drifted
