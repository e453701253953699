"""The ONNX backend: signature read from the model, inline execution only within what the warm-up measured."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import models
import numpy as np
import pytest

from gateway.backends.onnx import INLINE_MAX_ROWS, OnnxOptions, load_onnx
from gateway.errors import ModelLoadError
from gateway.signature import TensorSpec


def test_signature_has_variable_dims_as_minus_one(tmp_path: Path) -> None:
    with ThreadPoolExecutor(1) as pool:
        backend = load_onnx(models.affine(tmp_path / "m.onnx"), OnnxOptions(), pool)
    assert backend.signature.inputs == (TensorSpec("X", "FP32", (-1, 4)),)


def test_inline_only_within_the_measured_rows(tmp_path: Path) -> None:
    with ThreadPoolExecutor(1) as pool:
        generous = load_onnx(models.affine(tmp_path / "m.onnx"), OnnxOptions(inline_below_us=1e6), pool)
        never = load_onnx(tmp_path / "m.onnx", OnnxOptions(inline_below_us=0), pool)
    small = {"X": np.zeros((1, 4), np.float32)}
    big = {"X": np.zeros((INLINE_MAX_ROWS + 1, 4), np.float32)}
    assert generous.runs_inline(small) and not generous.runs_inline(big)
    assert not never.runs_inline(small)


def test_a_file_that_is_not_onnx_is_a_load_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"garbage")
    with ThreadPoolExecutor(1) as pool, pytest.raises(ModelLoadError, match=str(path)):
        load_onnx(path, OnnxOptions(), pool)
