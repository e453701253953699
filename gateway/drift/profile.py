"""A model version's reference profile: per-feature bins or category tables built offline, saved beside the model.

A feature is one column of a rank-2 input `[-1, F]`, a whole rank-1 input, or one output (a label, or a score
column). Numeric features keep interior quantile edges and the reference counts in the bins they cut; categorical
features keep their top categories plus OTHER. Both keep a missing count, and numerics keep min/max so that values
beyond the reference range can be tested on their own. The live side counts window values with `count_values`,
the very function that counted the reference, so both sides bin identically.

Schema versions: 2 adds the joint monitor (`joint`, see gateway/drift/joint.py) and profiles integer-valued inputs
with few distinct values as numeric with one bin per value (version 1 made them categories, so that a value the
reference happened not to hold was "unseen"). Version 1 files still load and are judged as they are; rebuilding
them with `gateway profile` adds the joint monitor.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson

from gateway.drift.bins import count_sorted, quantile_edges, value_edges
from gateway.drift.joint import JointProfile, build_joint, parse_joint
from gateway.errors import ModelLoadError
from gateway.signature import Signature, TensorSpec

SCHEMA_VERSION = 2
READABLE_VERSIONS = frozenset({1, 2})
UNSEEN_TRACKED = 256  # distinct OTHER values a window counts one by one, per feature
RARE_LEVELS = 5  # an integer value seen fewer times than this gets no bin of its own; rare_levels counts up to it
PROFILE_FILENAME = "profile.json"

Kind = Literal["numeric", "categorical"]
Source = Literal["input", "output"]
Category = str | float

FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL"})


class ProfileError(ModelLoadError):
    """A profile that cannot be built, read, or does not fit the model's signature; the message says which."""


@dataclass(frozen=True, slots=True)
class ProfileOptions:
    """Builder settings; they are stored in the profile so a rebuild can reproduce it."""

    bins: int = 20
    max_categories: int = 50
    # Integer-valued numeric columns with at most this many distinct values get one bin per value (0: never): an
    # ordered scale, so a count of 7 the reference did not hold is judged beside 6 and 8, not as "unseen".
    integer_max_distinct: int = 20
    # Float outputs of rank 2 (class scores): profile at most this many columns.
    max_score_columns: int = 8
    # Build the joint monitor (PCA reconstruction error over the numeric inputs) when the data allows it.
    joint: bool = True

    def __post_init__(self) -> None:
        if not 2 <= self.bins <= 200:
            raise ProfileError(f"bins must be between 2 and 200, got {self.bins}")
        if self.max_categories < 1:
            raise ProfileError(f"max_categories must be at least 1, got {self.max_categories}")


@dataclass(frozen=True, slots=True)
class SlotCounts:
    """Counts of some values in a feature's slots (bins, or categories then OTHER) plus the novelty counters."""

    slots: npt.NDArray[np.int64]
    missing: int
    below: int  # numeric only: under the reference minimum
    above: int  # numeric only: over the reference maximum
    # Categorical only: the values counted in OTHER, each with its count (at most UNSEEN_TRACKED distinct; the
    # rest of OTHER is in `untracked`). One new category at 5 % is a spike among them that a long tail is not.
    unseen: Mapping[object, int] | None = None
    untracked: int = 0


@dataclass(frozen=True, slots=True)
class FeatureProfile:
    name: str
    source: Source
    tensor: str
    column: int | None  # None: the whole rank-1 tensor
    kind: Kind
    counts: tuple[int, ...]  # reference counts per slot: len(edges) + 1 bins, or categories then OTHER
    missing: int
    edges: tuple[float, ...] = ()
    minimum: float = math.nan
    maximum: float = math.nan
    mean: float = math.nan
    std: float = math.nan
    categories: tuple[Category, ...] = ()
    by_value: bool = False  # numeric: one bin per distinct value (integers) rather than quantile bins
    # How many categories the reference held exactly 1, 2, ... RARE_LEVELS times, kept or in OTHER (None: a
    # version-1 profile, which did not record it). Good-Turing estimates from these how much of new data falls in
    # categories the reference never saw (singletons / rows; gateway/drift/evaluation.py).
    rare_levels: tuple[int, ...] | None = None
    _edges: npt.NDArray[np.float64] = field(init=False, repr=False, compare=False)
    _codes: Mapping[object, int] = field(init=False, repr=False, compare=False)
    _numeric_categories: npt.NDArray[np.float64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Lookup structures built once here so that counting a window allocates nothing per feature.
        object.__setattr__(self, "_edges", np.asarray(self.edges, dtype=np.float64))
        codes: dict[object, int] = {}
        for i, c in enumerate(self.categories):
            codes[c] = i
            if isinstance(c, str):
                codes[c.encode()] = i  # BYTES tensors hold bytes: look them up without decoding each value
        codes[None] = len(self.categories) + 1  # the missing slot, dropped after counting
        object.__setattr__(self, "_codes", codes)
        numeric = [float(c) for c in self.categories if not isinstance(c, str)]
        object.__setattr__(self, "_numeric_categories", np.asarray(numeric, dtype=np.float64))

    @property
    def reference(self) -> SlotCounts:
        return SlotCounts(np.asarray(self.counts, dtype=np.int64), self.missing, 0, 0)

    @property
    def rows(self) -> int:
        return sum(self.counts) + self.missing

    def count_values(self, values: npt.NDArray[Any]) -> SlotCounts:
        """Count a 1-D array of this feature's values into its slots (NaN and None are missing)."""
        if self.kind == "numeric":
            return self._count_numeric(values)
        if self._numeric_categories.size or (values.dtype.kind in "fiub" and not self.categories):
            return self._count_numeric_categories(values)
        return self._count_labels(values)

    def _count_numeric(self, values: npt.NDArray[Any]) -> SlotCounts:
        x = np.asarray(values, dtype=np.float64)
        return _count_sorted(np.sort(x[~np.isnan(x)]), len(x), self._edges, self.minimum, self.maximum)

    def _count_numeric_categories(self, values: npt.NDArray[Any]) -> SlotCounts:
        x = np.asarray(values, dtype=np.float64)
        present = x[~np.isnan(x)]
        cats = self._numeric_categories  # sorted at build time
        other = len(cats)
        if other:
            idx = np.minimum(np.searchsorted(cats, present), other - 1)
            idx = np.where(cats[idx] == present, idx, other)
        else:
            idx = np.full(len(present), other, dtype=np.int64)
        slots = np.bincount(idx, minlength=other + 1).astype(np.int64)
        unseen, untracked = _tally(present[idx == other].tolist()) if slots[other] else ({}, 0)
        return SlotCounts(slots, len(x) - len(present), 0, 0, unseen, untracked)

    def _count_labels(self, values: npt.NDArray[Any]) -> SlotCounts:
        get = self._codes.get
        other = len(self.categories)
        # One dict lookup per value (about 50 ns); anything unknown, including unhashable junk, is OTHER.
        items = values.tolist()
        try:
            codes = [get(v, other) for v in items]
        except TypeError:  # an unhashable value: OTHER too
            codes = [get(v, other) if isinstance(v, str | bytes | None) else other for v in items]
        both = np.bincount(np.asarray(codes, dtype=np.int64), minlength=other + 2).astype(np.int64)
        unseen: dict[object, int] = {}
        untracked = 0
        if both[other]:
            strays = [v for v, c in zip(items, codes, strict=True) if c == other]
            unseen, untracked = _tally([v if isinstance(v, str | bytes) else repr(v) for v in strays])
        return SlotCounts(both[: other + 1].copy(), int(both[other + 1]), 0, 0, unseen, untracked)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "tensor": self.tensor,
            "column": self.column,
            "kind": self.kind,
            "counts": list(self.counts),
            "missing": self.missing,
        }
        if self.kind == "numeric":
            data.update(edges=list(self.edges), min=self.minimum, max=self.maximum, mean=self.mean, std=self.std)
            data["binning"] = "value" if self.by_value else "quantile"
        else:
            data["categories"] = list(self.categories)
            data["rare_levels"] = None if self.rare_levels is None else list(self.rare_levels)
        return data


def _tally(values: list[Any]) -> tuple[dict[object, int], int]:
    """Counts of the distinct `values`, at most UNSEEN_TRACKED of them (the most frequent), and how many values
    were left out."""
    tally = Counter(values)
    if len(tally) <= UNSEEN_TRACKED:
        return dict(tally), 0
    kept = dict(tally.most_common(UNSEEN_TRACKED))
    return kept, len(values) - sum(kept.values())


def _count_sorted(
    present: npt.NDArray[np.float64], rows: int, edges: npt.NDArray[np.float64], minimum: float, maximum: float
) -> SlotCounts:
    slots = count_sorted(present, edges)
    below = int(np.searchsorted(present, minimum, side="left"))
    above = len(present) - int(np.searchsorted(present, maximum, side="right"))
    return SlotCounts(slots, rows - len(present), below, above)


def _label(value: object) -> Category:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    return str(value)


@dataclass(frozen=True, slots=True)
class Profile:
    features: tuple[FeatureProfile, ...]
    rows: int
    dataset_sha256: str
    options: ProfileOptions
    tensors: Mapping[str, TensorSpec]  # the signature entries the profile was built against
    created_at: str = ""
    joint: JointProfile | None = None  # None: a version-1 profile, or data too small or narrow for it
    version: int = SCHEMA_VERSION  # the schema the file was written in

    def feature(self, name: str) -> FeatureProfile | None:
        return next((f for f in self.features if f.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "created_at": self.created_at,
            "dataset": {"sha256": self.dataset_sha256, "rows": self.rows},
            "builder": {
                "bins": self.options.bins,
                "max_categories": self.options.max_categories,
                "integer_max_distinct": self.options.integer_max_distinct,
                "max_score_columns": self.options.max_score_columns,
                "joint": self.options.joint,
            },
            "tensors": {
                name: {"datatype": spec.datatype, "shape": list(spec.shape)} for name, spec in self.tensors.items()
            },
            "features": [f.to_json() for f in self.features],
            "joint": None if self.joint is None else self.joint.to_json(),
        }


# ---- building ---------------------------------------------------------------------------------------------------


def build_profile(
    signature: Signature,
    inputs: Mapping[str, npt.NDArray[Any]],
    outputs: Mapping[str, npt.NDArray[Any]] | None = None,
    *,
    dataset_sha256: str,
    options: ProfileOptions | None = None,
    feature_names: Sequence[str] | None = None,
    created_at: str = "",
) -> Profile:
    """Profile every rank-1/rank-2 input and output of `signature` from reference data (one row per sample).

    `feature_names` names the columns of the one rank-2 input; without it columns are `input[0]`, `input[1]`...
    Outputs are profiled only if given (the builder does not run the model).
    """
    opts = options or ProfileOptions()
    features: list[FeatureProfile] = []
    tensors: dict[str, TensorSpec] = {}
    rank2_inputs = [s for s in signature.inputs if len(s.shape) == 2]
    if feature_names is not None and len(rank2_inputs) != 1:
        raise ProfileError("feature_names needs exactly one rank-2 input to name the columns of")
    rows = -1
    for source, specs, data in (("input", signature.inputs, inputs), ("output", signature.outputs, outputs)):
        if data is None:
            continue
        for spec in specs:
            if len(spec.shape) not in (1, 2):
                continue  # images and other high-rank tensors have no per-column meaning
            if spec.name not in data:
                raise ProfileError(f"no data for {source} '{spec.name}'")
            array = np.asarray(data[spec.name])
            if array.ndim != len(spec.shape):
                raise ProfileError(
                    f"{source} '{spec.name}': data has rank {array.ndim}, the model says {spec.describe()}"
                )
            if rows not in (-1, len(array)):
                raise ProfileError(f"{source} '{spec.name}' has {len(array)} rows, other tensors have {rows}")
            rows = len(array)
            tensors[spec.name] = spec
            features.extend(_tensor_features(source, spec, array, opts, feature_names))  # type: ignore[arg-type]
    if rows <= 0:
        raise ProfileError("the reference data has no rows")
    names = [f.name for f in features]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ProfileError(f"feature names are not unique: {', '.join(duplicates)}")
    joint = None
    if opts.joint:
        numeric = [f for f in features if f.source == "input" and f.kind == "numeric"]
        columns = [_column(inputs[f.tensor], f.column) for f in numeric]
        joint = build_joint(tuple(f.name for f in numeric), columns, opts.bins)
    return Profile(tuple(features), rows, dataset_sha256, opts, tensors, created_at, joint)


def _column(array: npt.NDArray[Any], column: int | None) -> npt.NDArray[np.float64]:
    values = np.asarray(array)
    return np.asarray(values if column is None else values[:, column], dtype=np.float64)


def _tensor_features(
    source: Source, spec: TensorSpec, array: npt.NDArray[Any], opts: ProfileOptions, names: Sequence[str] | None
) -> list[FeatureProfile]:
    if array.ndim == 1:
        return [_feature(spec.name, source, spec, None, array, opts)]
    width = array.shape[1]
    if spec.shape[1] not in (-1, width):
        raise ProfileError(f"{source} '{spec.name}': data has {width} columns, the model says {spec.describe()}")
    columns = range(width)
    if source == "output":
        if spec.datatype not in FLOAT_TYPES:
            return []  # an integer matrix output has no obvious per-column meaning; leave it out
        columns = range(min(width, opts.max_score_columns))
    if source == "input" and names is not None:
        if len(names) != width:
            raise ProfileError(f"{len(names)} feature names for {width} columns of input '{spec.name}'")
        labels = list(names)
    else:
        labels = [f"{spec.name}[{j}]" for j in range(width)]
    return [_feature(labels[j], source, spec, j, array[:, j], opts) for j in columns]


def _feature(
    name: str, source: Source, spec: TensorSpec, column: int | None, values: npt.NDArray[Any], opts: ProfileOptions
) -> FeatureProfile:
    if spec.datatype == "BYTES":
        return _categorical(name, source, spec, column, values, opts, labels=True)
    x = np.asarray(values, dtype=np.float64)
    if source == "output" and spec.datatype in INT_TYPES:
        return _categorical(name, source, spec, column, x, opts, labels=False)
    present = x[~np.isnan(x)]
    by_value = False
    if opts.integer_max_distinct > 0 and present.size and np.all(present == np.round(present)):
        _, frequency = np.unique(present, return_counts=True)
        # A bin per value only when every value is established: a value seen once would make a bin whose
        # reference share is inflated by having been seen at all (quantile bins over the ties serve then).
        by_value = len(frequency) <= opts.integer_max_distinct and int(frequency.min()) >= RARE_LEVELS
    return _numeric(name, source, spec, column, x, opts, by_value=by_value)


def _numeric(
    name: str,
    source: Source,
    spec: TensorSpec,
    column: int | None,
    x: npt.NDArray[np.float64],
    opts: ProfileOptions,
    *,
    by_value: bool = False,
) -> FeatureProfile:
    present = np.sort(x[~np.isnan(x)])
    if present.size == 0:
        raise ProfileError(f"feature '{name}' has no non-missing reference values")
    if not np.isfinite(present[0]) or not np.isfinite(present[-1]):
        raise ProfileError(f"feature '{name}' has infinite reference values")
    edges = value_edges(present) if by_value else quantile_edges(present, opts.bins)
    minimum, maximum = float(present[0]), float(present[-1])
    counted = _count_sorted(present, len(x), edges, minimum, maximum)
    return FeatureProfile(
        name,
        source,
        spec.name,
        column,
        "numeric",
        tuple(int(c) for c in counted.slots),
        counted.missing,
        tuple(float(e) for e in edges),
        minimum,
        maximum,
        float(present.mean()),
        float(present.std()),
        by_value=by_value,
    )


def _categorical(
    name: str,
    source: Source,
    spec: TensorSpec,
    column: int | None,
    values: npt.NDArray[Any],
    opts: ProfileOptions,
    *,
    labels: bool,
) -> FeatureProfile:
    tally: Counter[Category] = Counter()
    if labels:
        for value, count in Counter(v for v in values.tolist() if v is not None).items():
            tally[_label(value)] += count
    else:
        x = np.asarray(values, dtype=np.float64)
        uniques, freq = np.unique(x[~np.isnan(x)], return_counts=True)
        tally.update({float(u): int(c) for u, c in zip(uniques, freq, strict=True)})
    # Most frequent first; ties broken by value so that a rebuild gives the same profile.
    ranked = sorted(tally.items(), key=lambda item: (-item[1], str(item[0])))[: opts.max_categories]
    kept: list[Category] = [value for value, _ in ranked]
    if not labels:
        kept.sort(key=float)  # numeric categories are looked up with searchsorted
    bare = FeatureProfile(name, source, spec.name, column, "categorical", (), 0, categories=tuple(kept))
    counted = bare.count_values(np.asarray(values))
    return FeatureProfile(
        name,
        source,
        spec.name,
        column,
        "categorical",
        tuple(int(c) for c in counted.slots),
        counted.missing,
        categories=bare.categories,
        rare_levels=tuple(sum(1 for count in tally.values() if count == k) for k in range(1, RARE_LEVELS + 1)),
    )


# ---- saving, loading, checking ----------------------------------------------------------------------------------


def save_profile(profile: Profile, path: Path) -> None:
    path.write_bytes(orjson.dumps(profile.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def load_profile(path: Path, signature: Signature) -> Profile:
    """Read `path` and check it against the model's signature; raise ProfileError naming the file and the misfit."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read the drift profile: {exc}") from exc
    try:
        profile = parse_profile(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"{path}: malformed drift profile: {exc!r}") from exc
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from exc
    try:
        check_profile(profile, signature)
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from exc
    return profile


def parse_profile(data: Any) -> Profile:
    version = data.get("schema_version")
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, sorted(READABLE_VERSIONS)))
        raise ProfileError(
            f"schema_version {version!r} is not one this gateway reads ({readable}); rebuild it with `gateway profile`"
        )
    builder = data["builder"]
    options = ProfileOptions(
        int(builder["bins"]),
        int(builder["max_categories"]),
        int(builder["integer_max_distinct" if version >= 2 else "categorical_max_distinct"]),
        int(builder["max_score_columns"]),
        bool(builder.get("joint", False)),
    )
    tensors = {
        name: TensorSpec(name, str(t["datatype"]), tuple(int(d) for d in t["shape"]))
        for name, t in data["tensors"].items()
    }
    features = []
    for f in data["features"]:
        kind = f["kind"]
        if kind not in ("numeric", "categorical") or f["source"] not in ("input", "output"):
            raise ProfileError(f"feature {f.get('name')!r}: bad kind or source")
        common = (
            str(f["name"]),
            f["source"],
            str(f["tensor"]),
            None if f["column"] is None else int(f["column"]),
            kind,
            tuple(int(c) for c in f["counts"]),
            int(f["missing"]),
        )
        if kind == "numeric":
            edges = tuple(float(e) for e in f["edges"])
            if len(f["counts"]) != len(edges) + 1 or list(edges) != sorted(set(edges)):
                raise ProfileError(f"feature {f['name']!r}: edges and counts do not match")
            binning = f.get("binning", "quantile")
            if binning not in ("quantile", "value"):
                raise ProfileError(f"feature {f['name']!r}: binning must be quantile or value")
            features.append(
                FeatureProfile(
                    *common,
                    edges,
                    float(f["min"]),
                    float(f["max"]),
                    float(f["mean"]),
                    float(f["std"]),
                    by_value=binning == "value",
                )
            )
        else:
            categories = tuple(c if isinstance(c, str) else float(c) for c in f["categories"])
            if len(f["counts"]) != len(categories) + 1:
                raise ProfileError(f"feature {f['name']!r}: categories and counts do not match")
            rare = f.get("rare_levels")
            features.append(
                FeatureProfile(
                    *common, categories=categories, rare_levels=None if rare is None else tuple(int(r) for r in rare)
                )
            )
    names = {f.name: f for f in features}
    joint = None if data.get("joint") is None else parse_joint(data["joint"])
    if joint is not None:
        for name in joint.features:
            if name not in names or names[name].kind != "numeric" or names[name].source != "input":
                raise ProfileError(f"the joint monitor reads {name!r}, which is not a numeric input feature")
    return Profile(
        tuple(features),
        int(data["dataset"]["rows"]),
        str(data["dataset"]["sha256"]),
        options,
        tensors,
        str(data.get("created_at", "")),
        joint,
        int(version),
    )


def check_profile(profile: Profile, signature: Signature) -> None:
    """Raise ProfileError unless every profiled tensor exists in `signature` with the same datatype and shape, and
    every column of every profiled rank-2 input is covered, in order."""
    for name, recorded in profile.tensors.items():
        spec = signature.input(name) or signature.output(name)
        if spec is None:
            raise ProfileError(f"profiled tensor '{name}' is not in the model's signature")
        if spec.datatype != recorded.datatype or len(spec.shape) != len(recorded.shape):
            raise ProfileError(
                f"tensor '{name}' was profiled as {recorded.describe()}, the model has {spec.describe()}"
            )
    for feature in profile.features:
        spec = profile.tensors.get(feature.tensor)
        expected = signature.input if feature.source == "input" else signature.output
        if spec is None or expected(feature.tensor) is None:
            raise ProfileError(f"feature '{feature.name}' refers to unknown {feature.source} '{feature.tensor}'")
        if (feature.column is None) != (len(spec.shape) == 1):
            raise ProfileError(f"feature '{feature.name}': column {feature.column} does not fit {spec.describe()}")
        if spec.datatype == "BYTES" and feature.kind != "categorical":
            raise ProfileError(f"feature '{feature.name}' is numeric but tensor '{spec.name}' is BYTES")
    for spec in signature.inputs:
        if len(spec.shape) != 2 or spec.name not in profile.tensors:
            continue
        columns = [f.column for f in profile.features if f.tensor == spec.name and f.source == "input"]
        width = spec.shape[1]
        if width != -1 and columns != list(range(width)):
            raise ProfileError(f"input '{spec.name}' has {width} columns; the profile covers {len(columns)}")
    if not any(f.source == "input" for f in profile.features) and any(len(s.shape) in (1, 2) for s in signature.inputs):
        raise ProfileError("the profile has no input features")
