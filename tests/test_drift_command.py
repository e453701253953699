"""`gateway profile` on the demo model and data."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from gateway.drift import command
from gateway.drift.profile import load_profile
from gateway.signature import Signature, TensorSpec

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "config" / "models" / "breast_cancer" / "1"
TRAIN = ROOT / "config" / "data" / "breast_cancer_train.csv"
SIGNATURE = Signature(
    (TensorSpec("input", "FP32", (-1, 30)),),
    (TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 2))),
)

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "model.onnx").is_file() or not TRAIN.is_file(), reason="demo model or data not generated"
)


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(list(argv)))


def test_profile_from_csv_uses_metadata_names_and_profiles_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "profile.json"
    code = _run("--model-dir", str(MODEL_DIR), "--data", str(TRAIN), "--label-column", "target", "--out", str(out))
    assert code == 0
    assert "33 features" in capsys.readouterr().out
    profile = load_profile(out, SIGNATURE)
    assert profile.features[0].name == "mean radius" and profile.rows == 398
    label = profile.feature("label")
    assert label is not None and label.categories == (0.0, 1.0) and sum(label.counts) == 398
    metadata = (MODEL_DIR / "metadata.json").read_text()
    assert profile.dataset_sha256 in metadata  # the same sha256 the demo records for its training data


def test_profile_from_npy(tmp_path: Path) -> None:
    data = tmp_path / "train.npy"
    rng = np.random.default_rng(0)
    np.save(data, rng.normal(10.0, 2.0, size=(300, 30)).astype(np.float32))
    out = tmp_path / "p.json"
    assert _run("--model-dir", str(MODEL_DIR), "--data", str(data), "--bins", "10", "--out", str(out)) == 0
    profile = load_profile(out, SIGNATURE)
    assert len(profile.features[0].counts) == 10 and profile.options.bins == 10


def test_bad_inputs_exit_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("--model-dir", str(tmp_path), "--data", str(TRAIN)) == 1
    assert "no such model file" in capsys.readouterr().err
    assert (
        _run(
            "--model-dir",
            str(MODEL_DIR),
            "--data",
            str(TRAIN),
            "--label-column",
            "nope",
            "--out",
            str(tmp_path / "p.json"),
        )
        == 1
    )
    assert "no column named 'nope'" in capsys.readouterr().err
    # Without --label-column the CSV has 31 columns for a 30-column input.
    assert _run("--model-dir", str(MODEL_DIR), "--data", str(TRAIN), "--out", str(tmp_path / "p.json")) == 1
