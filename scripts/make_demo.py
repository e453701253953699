"""Build the bundled demo: three versions of a breast-cancer classifier plus the CSVs they were trained and tested on.

Run from anywhere: ``python scripts/make_demo.py``. It writes, relative to the repository root::

    config/data/breast_cancer_train.csv      30 feature columns then ``target`` (last), header row first
    config/data/breast_cancer_test.csv       same columns, the held-out 30 %
    config/data/breast_cancer_shifted.csv    the test rows with a seeded covariate shift (drift demo)
    config/models/breast_cancer/{1,2,3}/model.onnx      input ``input`` FP32 [-1, 30];
                                                        outputs ``label`` INT64 [-1], ``probabilities`` FP32 [-1, 2]
    config/models/breast_cancer/{1,2,3}/metadata.json   description, training-data sha256, test metrics, feature names
    config/models/breast_cancer/{1,2,3}/profile.json    drift reference profile of the training CSV, exactly as
                                                        ``gateway profile --model-dir <version dir>
                                                        --data config/data/breast_cancer_train.csv
                                                        --label-column target`` builds it

Version 3 is the demo's deliberately bad candidate: version 1's pipeline trained on corrupted labels (a seeded
"labelling bug" marks a share of the benign training rows malignant), so it has version 1's latency but clearly lower
accuracy and agreement with version 1 -- the case a progressive-delivery controller's gates must stop. The training
CSV itself stays clean (the corruption happens in memory) and every version's metrics are measured on the clean test
set.

Everything is seeded and every timestamp is fixed, so a rerun rewrites byte-identical files; the script checks the
ONNX exports against scikit-learn before writing anything and fails loudly if they disagree.

``target`` follows scikit-learn's encoding: 0 = malignant, 1 = benign.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from gateway.drift.command import main as gateway_profile

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "config" / "data"
MODEL_DIR = ROOT / "config" / "models" / "breast_cancer"

SPLIT_SEED = 0
MODEL_SEED = 0
SHIFT_SEED = 7
# Version 3's labelling bug: this share of the benign (1) training rows, drawn with this seed, is marked malignant (0).
# One-sided on purpose: symmetric random flips barely move a logistic regression's decision boundary, this shifts it.
CORRUPTION_SEED = 3
CORRUPTED_BENIGN_SHARE = 0.35
TEST_SIZE = 0.3
# Opset 17 / ai.onnx.ml 3 (IR version 8) loads on every onnxruntime the project supports (>= 1.17) and on 1.32.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
# A fixed creation date: a wall-clock timestamp would make every rerun produce different bytes.
CREATED = "2024-01-15T00:00:00Z"
N_SHIFTED_FEATURES = 4
SHIFT_SCALE = 1.3
SHIFT_OFFSET_SD = 0.5
PROBABILITY_TOLERANCE = 1e-5

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Split:
    feature_names: tuple[str, ...]
    x_train: FloatArray
    y_train: IntArray
    x_test: FloatArray
    y_test: IntArray


@dataclass(frozen=True, slots=True)
class Candidate:
    version: int
    description: str
    pipeline: Pipeline
    corrupt_labels: bool = False  # train on corrupt(y_train) instead of y_train (version 3)


@dataclass(frozen=True, slots=True)
class Metrics:
    accuracy: float
    roc_auc: float


def load_split() -> Split:
    bunch = load_breast_cancer()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED)
    return Split(
        feature_names=tuple(str(name) for name in bunch.feature_names),
        x_train=np.asarray(x_train, dtype=np.float64),
        y_train=np.asarray(y_train, dtype=np.int64),
        x_test=np.asarray(x_test, dtype=np.float64),
        y_test=np.asarray(y_test, dtype=np.int64),
    )


def csv_bytes(feature_names: tuple[str, ...], x: FloatArray, y: IntArray) -> bytes:
    # repr() is the shortest string that round-trips a float64, so reading the CSV back gives the exact same array.
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*feature_names, "target"])
    for row, target in zip(x.tolist(), y.tolist(), strict=True):
        writer.writerow([*(repr(float(value)) for value in row), str(int(target))])
    return buffer.getvalue().encode("utf-8")


def shift(x: FloatArray, reference: FloatArray) -> FloatArray:
    """Scale a few seeded features by SHIFT_SCALE and move them up by SHIFT_OFFSET_SD training standard deviations.

    This imitates a recalibrated measuring device: the affected columns grow and move together, the rest are unchanged.
    """
    rng = np.random.default_rng(SHIFT_SEED)
    columns = np.sort(rng.choice(x.shape[1], size=N_SHIFTED_FEATURES, replace=False))
    shifted = x.copy()
    sd = reference.std(axis=0)
    shifted[:, columns] = x[:, columns] * SHIFT_SCALE + SHIFT_OFFSET_SD * sd[columns]
    return shifted


def corrupt(y: IntArray) -> IntArray:
    """Version 3's labelling bug: CORRUPTED_BENIGN_SHARE of the benign rows, drawn by CORRUPTION_SEED, go malignant."""
    rng = np.random.default_rng(CORRUPTION_SEED)
    benign = np.flatnonzero(y == 1)
    flipped = rng.choice(benign, size=round(CORRUPTED_BENIGN_SHARE * len(benign)), replace=False)
    corrupted = y.copy()
    corrupted[flipped] = 0
    return corrupted


def logistic_regression() -> Pipeline:
    return Pipeline(
        [
            ("scaler", StandardScaler()),
            ("classifier", LogisticRegression(C=1.0, max_iter=1000, random_state=MODEL_SEED)),
        ]
    )


def candidates(y_train: IntArray) -> tuple[Candidate, ...]:
    n_benign = int(np.count_nonzero(y_train == 1))
    n_flipped = int(np.count_nonzero(corrupt(y_train) != y_train))
    return (
        Candidate(
            version=1,
            description="StandardScaler + LogisticRegression(C=1.0) on the scikit-learn breast-cancer data. "
            "Outputs: label (0 = malignant, 1 = benign) and probabilities [P(malignant), P(benign)].",
            pipeline=logistic_regression(),
        ),
        Candidate(
            version=2,
            description="StandardScaler + MLPClassifier(16 hidden units, alpha=1.0) on the scikit-learn "
            "breast-cancer data. Outputs: label (0 = malignant, 1 = benign) and probabilities "
            "[P(malignant), P(benign)].",
            pipeline=Pipeline(
                [
                    ("scaler", StandardScaler()),
                    (
                        "classifier",
                        MLPClassifier(hidden_layer_sizes=(16,), alpha=1.0, max_iter=2000, random_state=MODEL_SEED),
                    ),
                ]
            ),
        ),
        Candidate(
            version=3,
            description="DELIBERATELY BAD demo candidate (for progressive-delivery gates to reject): "
            "StandardScaler + LogisticRegression(C=1.0), the same model as version 1 (same latency), trained on "
            f"corrupted labels. A seeded labelling bug (numpy default_rng({CORRUPTION_SEED})) marked "
            f"{n_flipped} of the {n_benign} benign (1) training rows malignant (0); the features and the "
            "training file are unchanged. Its accuracy and agreement with version 1 are clearly lower; metrics are "
            "measured on the clean test set. "
            "Outputs: label (0 = malignant, 1 = benign) and probabilities [P(malignant), P(benign)].",
            pipeline=logistic_regression(),
            corrupt_labels=True,
        ),
    )


def export(pipeline: Pipeline, n_features: int) -> bytes:
    model: Any = convert_sklearn(
        pipeline,
        name="breast_cancer",
        initial_types=[("input", FloatTensorType([None, n_features]))],
        options={"zipmap": False},
        target_opset=TARGET_OPSET,
    )
    # skl2onnx output is already deterministic; pin the free-text fields anyway so a converter upgrade cannot
    # slip a timestamp or path into the bytes.
    model.doc_string = ""
    model.graph.doc_string = ""
    model.model_version = 0
    # skl2onnx may list the same domain twice (seen with LogisticRegression); keep one entry per domain.
    versions: dict[str, int] = {}
    for entry in model.opset_import:
        versions[entry.domain] = max(versions.get(entry.domain, 0), entry.version)
    del model.opset_import[:]
    for domain, version in sorted(versions.items()):
        model.opset_import.add(domain=domain, version=version)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def verify(onnx_bytes: bytes, pipeline: Pipeline, x_test: FloatArray) -> tuple[IntArray, NDArray[np.float32]]:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    label, probabilities = session.run(["label", "probabilities"], {"input": x_test.astype(np.float32)})
    expected_label = np.asarray(pipeline.predict(x_test), dtype=np.int64)
    expected_probabilities = np.asarray(pipeline.predict_proba(x_test), dtype=np.float64)
    if not np.array_equal(np.asarray(label, dtype=np.int64), expected_label):
        raise SystemExit("ONNX labels differ from scikit-learn's predict()")
    worst = float(np.max(np.abs(np.asarray(probabilities, dtype=np.float64) - expected_probabilities)))
    if worst > PROBABILITY_TOLERANCE:
        raise SystemExit(f"ONNX probabilities differ from predict_proba() by {worst:.2e} > {PROBABILITY_TOLERANCE}")
    print(f"onnxruntime matches scikit-learn: labels equal, max |probability difference| {worst:.2e}")
    return np.asarray(label, dtype=np.int64), np.asarray(probabilities, dtype=np.float32)


def evaluate(y_test: IntArray, label: IntArray, probabilities: NDArray[np.float32]) -> Metrics:
    return Metrics(
        accuracy=round(float(accuracy_score(y_test, label)), 6),
        roc_auc=round(float(roc_auc_score(y_test, probabilities[:, 1])), 6),
    )


def metadata_bytes(candidate: Candidate, split: Split, train_sha256: str, metrics: Metrics) -> bytes:
    document = {
        "description": candidate.description,
        "training_data_sha256": train_sha256,
        "metrics": {"accuracy": metrics.accuracy, "roc_auc": metrics.roc_auc},
        "created": CREATED,
        "feature_names": list(split.feature_names),
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    print(f"wrote {path.relative_to(ROOT)} ({len(content)} bytes, sha256 {hashlib.sha256(content).hexdigest()[:12]})")


def build_profile(version_dir: Path, train_csv: Path) -> None:
    """Exactly `gateway profile --model-dir <version_dir> --data <train_csv> --label-column target` (default options:
    20 bins, no timestamp, so the profile's bytes depend only on the model and the data)."""
    argv = ["--model-dir", str(version_dir), "--data", str(train_csv), "--label-column", "target"]
    if gateway_profile(argv) != 0:
        raise SystemExit(f"gateway profile failed for {version_dir.relative_to(ROOT)}")


def main() -> int:
    split = load_split()
    train_csv = csv_bytes(split.feature_names, split.x_train, split.y_train)
    test_csv = csv_bytes(split.feature_names, split.x_test, split.y_test)
    shifted_csv = csv_bytes(split.feature_names, shift(split.x_test, split.x_train), split.y_test)
    train_sha256 = hashlib.sha256(train_csv).hexdigest()

    outputs: dict[Path, bytes] = {
        DATA_DIR / "breast_cancer_train.csv": train_csv,
        DATA_DIR / "breast_cancer_test.csv": test_csv,
        DATA_DIR / "breast_cancer_shifted.csv": shifted_csv,
    }
    n_features = len(split.feature_names)
    version_dirs: list[Path] = []
    baseline: IntArray | None = None  # version 1's test labels
    for candidate in candidates(split.y_train):
        candidate.pipeline.fit(split.x_train, corrupt(split.y_train) if candidate.corrupt_labels else split.y_train)
        onnx_bytes = export(candidate.pipeline, n_features)
        # The metrics are those of the exported model as served (float32 input), which verify() ties to sklearn's.
        label, probabilities = verify(onnx_bytes, candidate.pipeline, split.x_test)
        metrics = evaluate(split.y_test, label, probabilities)
        baseline = label if baseline is None else baseline
        agreement = float(np.mean(label == baseline))
        print(
            f"version {candidate.version}: accuracy {metrics.accuracy:.4f}, roc_auc {metrics.roc_auc:.4f}, "
            f"label agreement with version 1 {agreement:.4f}"
        )
        version_dir = MODEL_DIR / str(candidate.version)
        version_dirs.append(version_dir)
        outputs[version_dir / "model.onnx"] = onnx_bytes
        outputs[version_dir / "metadata.json"] = metadata_bytes(candidate, split, train_sha256, metrics)

    for path, content in outputs.items():
        write(path, content)
    # `gateway profile` reads model.onnx and metadata.json from disk, so the profiles come after everything else.
    for version_dir in version_dirs:
        build_profile(version_dir, DATA_DIR / "breast_cancer_train.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
