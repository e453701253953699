"""A rollout's golden set: rows a candidate must handle before it gets live traffic, read from CSV or NPZ.

A CSV feeds a model with one `[-1, F]` input: its feature columns are the version's `feature_names` (metadata.json)
when the header has them all, else every column but the label and group columns, in file order. An NPZ holds one
array per model input, named as the input, plus optional label and group arrays. Either way the inputs come out in
the model's dtypes, so the validator feeds them to the session as they are.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.protocol import DTYPES
from gateway.signature import Signature, TensorSpec


class GoldenSetError(ValueError):
    """A golden set that cannot be used; the message names the file and what is wrong with it."""


# eq=False: the fields are arrays, whose `==` is elementwise; two golden sets are never compared.
@dataclass(frozen=True, slots=True, eq=False)
class GoldenSet:
    source: Path
    inputs: dict[str, npt.NDArray[Any]]  # by model input name, in the model's dtype
    labels: npt.NDArray[Any] | None  # true labels (int64) or values (float64), when a label column is given
    groups: npt.NDArray[np.object_] | None  # each row's group (str), when a group column is given
    rows: int

    def head(self, rows: int) -> dict[str, npt.NDArray[Any]]:
        """The first `rows` rows of every input."""
        return {name: array[:rows] for name, array in self.inputs.items()}

    def row(self, index: int) -> dict[str, npt.NDArray[Any]]:
        """Row `index` of every input, keeping the batch dimension (a batch of one)."""
        return {name: array[index : index + 1] for name, array in self.inputs.items()}


def load_golden_set(
    path: Path,
    signature: Signature,
    *,
    label_column: str | None,
    group_column: str | None,
    feature_names: Sequence[str] | None = None,
) -> GoldenSet:
    """Read the golden set at `path` for a model with `signature`; GoldenSetError names the file and the fault."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            inputs, labels, groups = _read_csv(path, signature, label_column, group_column, feature_names)
        elif suffix == ".npz":
            inputs, labels, groups = _read_npz(path, signature, label_column, group_column)
        else:
            raise GoldenSetError(f"unsupported file type {suffix or '(none)'!r}; use .csv or .npz")
    except GoldenSetError as exc:
        raise GoldenSetError(f"golden set {path}: {exc}") from None
    except (OSError, UnicodeDecodeError, csv.Error, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise GoldenSetError(f"golden set {path}: unreadable: {exc}") from exc
    rows = len(next(iter(inputs.values())))
    if rows == 0:
        raise GoldenSetError(f"golden set {path}: has no rows")
    return GoldenSet(path, inputs, labels, groups, rows)


# ---- CSV --------------------------------------------------------------------------------------------------------


def _read_csv(
    path: Path,
    signature: Signature,
    label_column: str | None,
    group_column: str | None,
    feature_names: Sequence[str] | None,
) -> tuple[dict[str, npt.NDArray[Any]], npt.NDArray[Any] | None, npt.NDArray[np.object_] | None]:
    if len(signature.inputs) != 1 or len(signature.inputs[0].shape) != 2:
        described = ", ".join(f"'{s.name}' {s.describe()}" for s in signature.inputs)
        raise GoldenSetError(f"a CSV feeds a model with one [-1, F] input; this model has {described} (use an .npz)")
    spec = signature.inputs[0]
    _check_batch(spec)
    if spec.datatype not in _NUMERIC:
        raise GoldenSetError(f"a CSV holds numbers; input '{spec.name}' is {spec.datatype} (use an .npz)")
    # utf-8-sig: spreadsheet exports often start with a byte-order mark, which would otherwise join the first name.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        records = [row for row in csv.reader(handle) if row]  # blank lines (a trailing newline) carry nothing
    if not records:
        raise GoldenSetError("is empty; expected a header row and at least one data row")
    header, body = records[0], records[1:]
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise GoldenSetError(f"column {duplicated[0]!r} appears more than once in the header")
    for number, record in enumerate(body, start=1):
        if len(record) != len(header):
            raise GoldenSetError(f"row {number} has {len(record)} cells; the header has {len(header)}")
    index = {name: j for j, name in enumerate(header)}
    for role, column in (("label", label_column), ("group", group_column)):
        if column is not None and column not in index:
            raise GoldenSetError(f"no {role} column {column!r} (columns: {', '.join(header)})")
    if feature_names is not None and feature_names and all(name in index for name in feature_names):
        features = list(feature_names)
    else:
        features = [name for name in header if name not in (label_column, group_column)]
    width = spec.shape[1]
    if width not in (-1, len(features)):
        raise GoldenSetError(
            f"has {len(features)} feature columns; input '{spec.name}' takes {width}"
            f" (label column: {label_column or 'none'}, group column: {group_column or 'none'})"
        )
    table = _numbers(body, [index[name] for name in features], features)
    inputs = {spec.name: _cast(table, spec)}
    labels = None
    if label_column is not None:
        values = _numbers(body, [index[label_column]], [label_column], allow_missing=False)[:, 0]
        labels = _labels(values)
    groups = None
    if group_column is not None:
        j = index[group_column]
        groups = np.asarray([record[j] for record in body], dtype=object)
    return inputs, labels, groups


def _numbers(
    body: list[list[str]], columns: list[int], names: list[str], *, allow_missing: bool = True
) -> npt.NDArray[np.float64]:
    """The cells of `columns` as float64 [rows, len(columns)]; an empty cell or "nan" is NaN."""
    cells = [[record[j].strip() or "nan" for j in columns] for record in body]
    try:
        # numpy parses the strings itself, far faster than a float() per cell; a fault is located below.
        table = np.asarray(cells, dtype=np.float64).reshape(len(body), len(columns))
    except ValueError:
        for number, row in enumerate(cells, start=1):
            for cell, name in zip(row, names, strict=True):
                try:
                    float(cell)
                except ValueError:
                    raise GoldenSetError(f"row {number}, column {name!r}: {cell!r} is not a number") from None
        raise
    if not allow_missing and np.isnan(table).any():
        number = int(np.argwhere(np.isnan(table))[0][0]) + 1
        raise GoldenSetError(f"row {number}, column {names[0]!r}: the value is missing")
    return table


# ---- NPZ --------------------------------------------------------------------------------------------------------


def _read_npz(
    path: Path, signature: Signature, label_column: str | None, group_column: str | None
) -> tuple[dict[str, npt.NDArray[Any]], npt.NDArray[Any] | None, npt.NDArray[np.object_] | None]:
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy renamed: one array, no names to match inputs to
        raise GoldenSetError("is a single array, not an .npz archive of named arrays")
    with loaded as archive:
        names = list(archive.files)
        missing = [s.name for s in signature.inputs if s.name not in names]
        if missing:
            raise GoldenSetError(f"no array for model input(s) {', '.join(missing)} (arrays: {', '.join(names)})")
        for role, column in (("label", label_column), ("group", group_column)):
            if column is not None and column not in names:
                raise GoldenSetError(f"no {role} array {column!r} (arrays: {', '.join(names)})")
        inputs: dict[str, npt.NDArray[Any]] = {}
        for spec in signature.inputs:
            _check_batch(spec)
            inputs[spec.name] = _cast(archive[spec.name], spec)
        labels = None if label_column is None else np.asarray(archive[label_column])
        groups = None if group_column is None else np.asarray(archive[group_column])
    rows = {name: len(array) for name, array in inputs.items()}
    if len(set(rows.values())) > 1:
        counts = ", ".join(f"'{name}' {n}" for name, n in rows.items())
        raise GoldenSetError(f"the input arrays have different row counts: {counts}")
    count = next(iter(rows.values()))
    if labels is not None:
        labels = _labels(_column(labels, f"label array {label_column!r}", count, numeric=True))
    if groups is not None:
        flat = _column(groups, f"group array {group_column!r}", count, numeric=False)
        groups = np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in flat.tolist()], dtype=object)
    return inputs, labels, groups


def _column(array: npt.NDArray[Any], what: str, rows: int, *, numeric: bool) -> npt.NDArray[Any]:
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise GoldenSetError(f"{what} has shape {list(array.shape)}; expected one value per row ([{rows}])")
    if len(array) != rows:
        raise GoldenSetError(f"{what} has {len(array)} rows; the inputs have {rows}")
    if numeric:
        if array.dtype.kind not in "biuf":
            raise GoldenSetError(f"{what} holds {array.dtype}; expected numbers")
        values = np.asarray(array, dtype=np.float64)
        if np.isnan(values).any():
            raise GoldenSetError(f"{what}: row {int(np.argwhere(np.isnan(values))[0][0]) + 1} has no value")
        return values
    return array


# ---- shared -----------------------------------------------------------------------------------------------------

_NUMERIC = frozenset(DTYPES) - {"BYTES"}


def _check_batch(spec: TensorSpec) -> None:
    # Validation runs batches of rows and single rows; a fixed batch of 1 still allows running row by row.
    if not spec.shape or spec.shape[0] not in (-1, 1):
        raise GoldenSetError(
            f"input '{spec.name}' is {spec.describe()}; validation needs a batch dimension first (-1, or 1)"
        )


def _cast(array: npt.NDArray[Any], spec: TensorSpec) -> npt.NDArray[Any]:
    """`array` in the dtype `spec` asks for, checked against its shape past the batch dimension."""
    if array.ndim != len(spec.shape) or not all(
        d in (-1, n) for d, n in zip(spec.shape[1:], array.shape[1:], strict=True)
    ):
        raise GoldenSetError(
            f"input '{spec.name}' is {spec.describe()}; the data has shape {list(array.shape)} (-1 is any size)"
        )
    if spec.datatype == "BYTES":
        if array.dtype.kind not in "US":
            raise GoldenSetError(f"input '{spec.name}' is BYTES; the data holds {array.dtype}, not text")
        return np.asarray(array.astype(str), dtype=object)
    dtype = DTYPES[spec.datatype]
    if array.dtype.kind not in "biuf":
        raise GoldenSetError(f"input '{spec.name}' is {spec.datatype}; the data holds {array.dtype}, not numbers")
    if dtype.kind in "biu" and array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all() or not np.array_equal(array, np.round(array)):
            raise GoldenSetError(f"input '{spec.name}' is {spec.datatype}; the data has missing or fractional values")
    try:
        with np.errstate(over="raise", invalid="raise"):
            return np.asarray(array.astype(dtype))
    except FloatingPointError:
        raise GoldenSetError(f"input '{spec.name}': a value is out of range for {spec.datatype}") from None


def _labels(values: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
    """Integral labels are classes (int64); anything else is a regression target (float64)."""
    if np.isfinite(values).all() and np.array_equal(values, np.round(values)):
        return values.astype(np.int64)
    return values
