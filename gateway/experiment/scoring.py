"""What one feedback says about the prediction it judges: per row, whether the class was right, the error, or the
reward. Classifiers are read as the argmax of a score vector, or the value of a label output."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.errors import ProtocolError


@dataclass(frozen=True, slots=True)
class Scores:
    """Per row: correct (0/1) and the true class for a label; the error (prediction - truth) for a value."""

    correct: tuple[float, ...] = ()
    classes: tuple[str, ...] = ()
    errors: tuple[float, ...] = ()


def predictions(outputs: Mapping[str, npt.NDArray[Any]], output: str | None) -> npt.NDArray[Any]:
    """The prediction per row: the named output (default: the first) as one value a row; a score vector's argmax."""
    if not outputs:
        raise ProtocolError("the prediction has no outputs to score")
    name = output if output is not None else next(iter(outputs))
    array = outputs.get(name)
    if array is None:
        raise ProtocolError(f"the prediction has no output '{name}' to score")
    array = np.asarray(array)
    if array.ndim == 0:
        return array.reshape(1)
    if array.shape[0] == 0:
        raise ProtocolError(f"the prediction's output '{name}' has no rows to score")
    rows = array.reshape(array.shape[0], -1)
    if rows.shape[1] == 1:
        return rows[:, 0]
    if array.dtype.kind not in "biuf":
        raise ProtocolError(
            f"output '{name}' has {rows.shape[1]} non-numeric values a row: not one class per row"
            " (name the output to score with experiment.output)"
        )
    return np.asarray(np.argmax(rows, axis=1))


def score_labels(predicted: npt.NDArray[Any], labels: Sequence[Any]) -> Scores:
    if len(labels) != len(predicted):
        raise ProtocolError(f"{len(labels)} labels for a prediction of {len(predicted)} rows")
    correct = tuple(1.0 if _same(p, t) else 0.0 for p, t in zip(predicted.tolist(), labels, strict=True))
    return Scores(correct=correct, classes=tuple(str(t) for t in labels))


def score_values(predicted: npt.NDArray[Any], values: Sequence[float]) -> Scores:
    if len(values) != len(predicted):
        raise ProtocolError(f"{len(values)} values for a prediction of {len(predicted)} rows")
    if predicted.dtype.kind not in "biuf":
        raise ProtocolError(f"a value needs a numeric prediction; the output is {predicted.dtype}")
    errors = tuple(float(p) - float(t) for p, t in zip(predicted.tolist(), values, strict=True))
    if not all(math.isfinite(error) for error in errors):
        raise ProtocolError("the prediction or the value is not finite, or their difference overflows")
    return Scores(errors=errors)


def _same(predicted: Any, truth: Any) -> bool:
    if isinstance(predicted, bytes):
        predicted = predicted.decode("utf-8", "replace")
    if isinstance(truth, str) or isinstance(predicted, str):
        return _text(predicted) == _text(truth)
    if predicted is None:
        return False
    return bool(float(predicted) == float(truth))


def _text(value: Any) -> str:
    """A class as text: a whole-valued float as its integer (a float label output's 3.0 is the class "3")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
