"""The bundled demo models (built by scripts/make_demo.py) load, have the documented signature, and still work --
except version 3, the deliberately bad candidate, which must stay clearly worse than version 1."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "config" / "models" / "breast_cancer"
DATA_DIR = ROOT / "config" / "data"
VERSIONS = (1, 2, 3)
GOOD_VERSIONS = (1, 2)
BAD_VERSION = 3  # version 1's model trained on corrupted labels
N_FEATURES = 30


def load_csv(name: str) -> tuple[list[str], NDArray[np.float32], NDArray[np.int64]]:
    path = DATA_DIR / name
    with path.open(newline="") as handle:
        header = next(csv.reader(handle))
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    return header, table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64)


def session(version: int) -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL_DIR / str(version) / "model.onnx"), providers=["CPUExecutionProvider"])


Described = list[tuple[str, str, list[int | str | None]]]


def signature(version: int) -> tuple[Described, Described]:
    sess = session(version)
    inputs = [(arg.name, arg.type, arg.shape) for arg in sess.get_inputs()]
    outputs = [(arg.name, arg.type, arg.shape) for arg in sess.get_outputs()]
    return inputs, outputs


@pytest.mark.parametrize("version", VERSIONS)
def test_signature(version: int) -> None:
    inputs, outputs = signature(version)
    # onnxruntime reports a dynamic dimension without a symbolic name as None.
    assert inputs == [("input", "tensor(float)", [None, N_FEATURES])]
    assert outputs == [("label", "tensor(int64)", [None]), ("probabilities", "tensor(float)", [None, 2])]


def test_signature_of_bad_version_is_version_1s() -> None:
    # Same pipeline as version 1, so the same tensors: only the gates on quality can tell them apart.
    assert signature(BAD_VERSION) == signature(1)


def predict(version: int, x: NDArray[np.float32]) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    label, probabilities = session(version).run(["label", "probabilities"], {"input": x})
    return np.asarray(label, dtype=np.int64), np.asarray(probabilities, dtype=np.float32)


@pytest.mark.parametrize("version", VERSIONS)
def test_predictions_on_test_set(version: int) -> None:
    header, x, y = load_csv("breast_cancer_test.csv")
    assert header[-1] == "target"
    label, probabilities = predict(version, x)
    assert label.shape == (len(y),)
    assert probabilities.shape == (len(y), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(label, probabilities.argmax(axis=1))
    metadata = json.loads((MODEL_DIR / str(version) / "metadata.json").read_text())
    # metadata.json's metrics are those of the served model on the clean test set.
    assert metadata["metrics"]["accuracy"] == pytest.approx(float(np.mean(label == y)), abs=1e-6)


@pytest.mark.parametrize("version", GOOD_VERSIONS)
def test_good_versions_are_accurate(version: int) -> None:
    _, x, y = load_csv("breast_cancer_test.csv")
    assert float(np.mean(predict(version, x)[0] == y)) > 0.9


def test_bad_version_is_clearly_worse_than_version_1() -> None:
    _, x, y = load_csv("breast_cancer_test.csv")
    good, bad = predict(1, x)[0], predict(BAD_VERSION, x)[0]
    assert float(np.mean(bad == y)) <= float(np.mean(good == y)) - 0.08
    assert float(np.mean(bad == good)) <= 0.90
    # ... while the good candidate, version 2, agrees with version 1 almost everywhere.
    assert float(np.mean(predict(2, x)[0] == good)) >= 0.95


@pytest.mark.parametrize("version", VERSIONS)
def test_metadata_matches_data(version: int) -> None:
    metadata = json.loads((MODEL_DIR / str(version) / "metadata.json").read_text())
    header, _, _ = load_csv("breast_cancer_train.csv")
    assert metadata["feature_names"] == header[:-1]
    assert len(metadata["feature_names"]) == N_FEATURES
    train_bytes = (DATA_DIR / "breast_cancer_train.csv").read_bytes()
    # Version 3 too: its labels were corrupted in memory, the training file is the same.
    assert metadata["training_data_sha256"] == hashlib.sha256(train_bytes).hexdigest()
    assert (metadata["metrics"]["accuracy"] > 0.9) == (version in GOOD_VERSIONS)


@pytest.mark.parametrize("version", VERSIONS)
def test_profile_built_from_training_data(version: int) -> None:
    profile = json.loads((MODEL_DIR / str(version) / "profile.json").read_text())
    train_bytes = (DATA_DIR / "breast_cancer_train.csv").read_bytes()
    assert profile["dataset"]["sha256"] == hashlib.sha256(train_bytes).hexdigest()
    assert profile["created_at"] == ""
    # Every version's profile is built with the same options as version 1's.
    assert profile["builder"] == json.loads((MODEL_DIR / "1" / "profile.json").read_text())["builder"]


def test_data_files_share_columns() -> None:
    headers = [load_csv(name)[0] for name in ("breast_cancer_train.csv", "breast_cancer_test.csv")]
    shifted_header, shifted_x, shifted_y = load_csv("breast_cancer_shifted.csv")
    _, test_x, test_y = load_csv("breast_cancer_test.csv")
    assert headers[0] == headers[1] == shifted_header
    assert len(shifted_header) == N_FEATURES + 1
    np.testing.assert_array_equal(shifted_y, test_y)
    # The shift touches a few columns only; the rest stay identical so drift is attributable.
    changed = np.flatnonzero(np.any(shifted_x != test_x, axis=0))
    assert 0 < len(changed) < N_FEATURES
