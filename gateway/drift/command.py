"""`gateway profile`: build a model version's drift reference profile from a dataset file.

Reads the version's signature with onnxruntime, runs the model on the data to profile its outputs too, and writes
`profile.json` beside `model.onnx`. This is the only drift module that imports onnxruntime (lazily, in `run`).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from gateway.drift.profile import PROFILE_FILENAME, Profile, ProfileError, ProfileOptions, build_profile, save_profile
from gateway.signature import Signature, TensorSpec

ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int16)": "INT16",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
NUMPY_TYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT64": np.int64,
    "INT32": np.int32,
    "INT16": np.int16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
    "BYTES": np.object_,
}

DEFAULTS = ProfileOptions()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, type=Path, help="<repo>/<model>/<version>, holding model.onnx")
    parser.add_argument("--data", required=True, type=Path, help="reference data: .csv (with a header), .npy, .npz")
    parser.add_argument("--label-column", default=None, help="CSV column to leave out (the training target)")
    parser.add_argument("--bins", type=int, default=DEFAULTS.bins, help="quantile bins per numeric feature")
    parser.add_argument("--max-categories", type=int, default=DEFAULTS.max_categories)
    parser.add_argument(
        "--integer-max-distinct",
        "--categorical-max-distinct",  # its name before profile schema 2
        dest="integer_max_distinct",
        type=int,
        default=DEFAULTS.integer_max_distinct,
        help="integer-valued columns with at most this many distinct values get one bin per value (0: never)",
    )
    parser.add_argument(
        "--no-joint",
        dest="joint",
        action="store_false",
        help="leave out the joint monitor (PCA reconstruction error over the numeric inputs)",
    )
    parser.add_argument(
        "--created-at",
        default="",
        help="timestamp recorded in the profile (default: none, so rebuilding from the same data gives the same bytes)",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"default: <model-dir>/{PROFILE_FILENAME}")


def run(args: argparse.Namespace) -> int:
    try:
        profile, out = _build(args)
    except (ProfileError, OSError, ValueError) as exc:
        print(f"gateway profile: {exc}", file=sys.stderr)
        return 1
    save_profile(profile, out)
    print(_summary(profile, out))
    return 0


def _build(args: argparse.Namespace) -> tuple[Profile, Path]:
    import onnxruntime  # heavy, and only this command needs it

    model_dir: Path = args.model_dir
    model_path = model_dir / "model.onnx"
    if not model_path.is_file():
        raise ProfileError(f"{model_path}: no such model file")
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    signature = Signature(tuple(_spec(i) for i in session.get_inputs()), tuple(_spec(o) for o in session.get_outputs()))
    raw = args.data.read_bytes()
    names = _metadata_feature_names(model_dir)
    inputs, header = _read_data(args.data, raw, signature, args.label_column)
    if names is None and header is not None:
        names = header
    outputs = _run_model(session, signature, inputs)
    options = ProfileOptions(
        bins=args.bins,
        max_categories=args.max_categories,
        integer_max_distinct=args.integer_max_distinct,
        joint=args.joint,
    )
    profile = build_profile(
        signature,
        inputs,
        outputs,
        dataset_sha256=hashlib.sha256(raw).hexdigest(),
        options=options,
        feature_names=names if sum(len(s.shape) == 2 for s in signature.inputs) == 1 else None,
        created_at=args.created_at,
    )
    return profile, args.out or model_dir / PROFILE_FILENAME


def _spec(node: Any) -> TensorSpec:
    datatype = ORT_TYPES.get(node.type)
    if datatype is None:
        raise ProfileError(f"tensor '{node.name}' has unsupported type {node.type}")
    return TensorSpec(node.name, datatype, tuple(d if isinstance(d, int) else -1 for d in node.shape))


def _metadata_feature_names(model_dir: Path) -> list[str] | None:
    path = model_dir / "metadata.json"
    if not path.is_file():
        return None
    names = orjson.loads(path.read_bytes()).get("feature_names")
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ProfileError(f"{path}: feature_names must be a list of strings")
    return names


def _read_data(
    path: Path, raw: bytes, signature: Signature, label_column: str | None
) -> tuple[dict[str, npt.NDArray[Any]], list[str] | None]:
    """The dataset as one array per model input, plus the CSV header's feature names (None for NumPy files)."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            missing = [s.name for s in signature.inputs if s.name not in archive.files]
            if missing:
                raise ProfileError(f"{path}: no array for input(s) {', '.join(missing)}")
            return {s.name: _cast(archive[s.name], s) for s in signature.inputs}, None
    if len(signature.inputs) != 1:
        raise ProfileError(
            f"{path}: a {suffix} file feeds one input; the model has {len(signature.inputs)} "
            "(use an .npz with one array per input)"
        )
    spec = signature.inputs[0]
    if suffix == ".npy":
        return {spec.name: _cast(np.load(path, allow_pickle=False), spec)}, None
    if suffix != ".csv":
        raise ProfileError(f"{path}: unsupported data file (use .csv, .npy or .npz)")
    rows = list(csv.reader(raw.decode("utf-8").splitlines()))
    if len(rows) < 2:
        raise ProfileError(f"{path}: needs a header row and at least one data row")
    header, body = rows[0], rows[1:]
    keep = list(range(len(header)))
    if label_column is not None:
        if label_column not in header:
            raise ProfileError(f"{path}: no column named {label_column!r}")
        keep.remove(header.index(label_column))
    table = [[row[j] for j in keep] for row in body]
    if spec.datatype == "BYTES":
        array: npt.NDArray[Any] = np.asarray([[v.encode() for v in row] for row in table], dtype=object)
    else:
        array = np.asarray([[float(v) if v != "" else np.nan for v in row] for row in table], dtype=np.float64)
    if len(spec.shape) == 1:
        if array.shape[1] != 1:
            raise ProfileError(f"{path}: input '{spec.name}' is rank 1; the file has {array.shape[1]} columns")
        array = array[:, 0]
    return {spec.name: _cast(array, spec)}, [header[j] for j in keep]


def _cast(array: npt.NDArray[Any], spec: TensorSpec) -> npt.NDArray[Any]:
    if array.ndim != len(spec.shape):
        raise ProfileError(f"input '{spec.name}' is {spec.describe()}; the data has shape {list(array.shape)}")
    if array.ndim == 2 and spec.shape[1] not in (-1, array.shape[1]):
        raise ProfileError(
            f"input '{spec.name}' is {spec.describe()}; the data has {array.shape[1]} columns"
            " (leave the target out with --label-column)"
        )
    return array.astype(NUMPY_TYPES.get(spec.datatype, np.float64), copy=False)


def _run_model(session: Any, signature: Signature, inputs: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
    rows = len(next(iter(inputs.values())))
    names = [s.name for s in signature.outputs]
    parts: list[list[npt.NDArray[Any]]] = [[] for _ in names]
    for start in range(0, rows, 1024):
        feed = {name: a[start : start + 1024] for name, a in inputs.items()}
        try:
            results = session.run(names, feed)
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            raise ProfileError(f"the model failed on the reference data: {exc}") from exc
        for j, value in enumerate(results):
            parts[j].append(np.asarray(value))
    return {name: np.concatenate(p) for name, p in zip(names, parts, strict=True)}


def _summary(profile: Profile, out: Path) -> str:
    numeric = sum(f.kind == "numeric" for f in profile.features)
    lines = [
        f"wrote {out}",
        f"  dataset sha256 {profile.dataset_sha256}, {profile.rows} rows",
        f"  {len(profile.features)} features ({numeric} numeric, {len(profile.features) - numeric} categorical), "
        f"{profile.options.bins} quantile bins",
    ]
    for f in profile.features:
        if f.source == "output":
            detail = (
                f"{len(f.counts)} bins"
                if f.kind == "numeric"
                else "classes " + ", ".join(f"{c}: {n}" for c, n in zip(f.categories, f.counts, strict=False))
            )
            lines.append(f"  output {f.name}: {f.kind}, {detail}")
    joint = profile.joint
    if joint is not None:
        lines.append(
            f"  joint monitor: {len(joint.components)} of {len(joint.features)} principal components "
            f"({joint.explained:.0%} of the variance); reconstruction error in {len(joint.counts)} bins"
        )
    elif profile.options.joint:
        lines.append("  joint monitor: none (needs 2+ numeric inputs and 100+ rows, 10 per input)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway profile", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
