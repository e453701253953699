"""What a model's outputs mean as predictions: a label per row (classifiers) or values per row (regressors).

Shadow comparison, the rollout's prediction-shift gate and validation all need to read two versions' outputs the
same way. `reader_for` decides once per version, from its signature (or the route's `compare:` settings), which
output holds the prediction; the reader then turns an outputs mapping into per-row arrays with numpy only.

Auto detection, in order:
- an integer output (a `label` from skl2onnx, a class index) -> classification, labels read from it; a float output
  of shape [-1, K >= 2] beside it gives scores (for ROC AUC);
- else a float output of shape [-1, K >= 2] -> classification by argmax, scores from the same output;
- else the first numeric output -> regression, values read from it ([-1] or [-1, k]).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from gateway.signature import Signature, TensorSpec

Task: TypeAlias = Literal["classification", "regression"]
TaskChoice: TypeAlias = Literal["auto", "classification", "regression"]

_INTEGER = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL"})
_FLOAT = frozenset({"FP16", "FP32", "FP64"})


class PredictionError(ValueError):
    """Outputs that cannot be read as predictions (a missing output, a shape without a batch dimension)."""


@dataclass(frozen=True, slots=True)
class PredictionReader:
    """How to read one version's outputs. `output` holds the labels (or, with `argmax`, the scores they come from)
    for classification and the values for regression; `score_output` holds [rows, K] class scores when known."""

    task: Task
    output: str
    argmax: bool = False
    score_output: str | None = None

    def labels(self, outputs: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[np.int64]:
        """One integer label per row."""
        array = _get(outputs, self.output)
        if self.argmax:
            if array.ndim != 2:
                raise PredictionError(f"output '{self.output}' has shape {list(array.shape)}; expected [rows, classes]")
            return np.asarray(np.argmax(array, axis=1), dtype=np.int64)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise PredictionError(f"output '{self.output}' has shape {list(array.shape)}; expected one label per row")
        return np.asarray(array, dtype=np.int64)

    def values(self, outputs: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
        """The predicted values as [rows, k] floats (k = 1 for a [rows] output)."""
        array = np.asarray(_get(outputs, self.output), dtype=np.float64)
        if array.ndim == 1:
            return array.reshape(-1, 1)
        if array.ndim == 0:
            raise PredictionError(f"output '{self.output}' has no batch dimension")
        return array.reshape(array.shape[0], -1)

    def scores(self, outputs: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[np.float64] | None:
        """Class scores [rows, K], when the model has them."""
        if self.score_output is None or self.score_output not in outputs:
            return None
        array = np.asarray(outputs[self.score_output], dtype=np.float64)
        return array if array.ndim == 2 else None

    def predictions(self, outputs: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[Any]:
        """What two versions are compared on: labels [rows] for classification, values [rows, k] for regression."""
        return self.labels(outputs) if self.task == "classification" else self.values(outputs)

    def describe(self) -> str:
        how = f"argmax of '{self.output}'" if self.argmax else f"'{self.output}'"
        return f"{self.task} from {how}"


def _get(outputs: Mapping[str, npt.NDArray[Any]], name: str) -> npt.NDArray[Any]:
    array = outputs.get(name)
    if array is None:
        raise PredictionError(f"the outputs have no '{name}' (have: {', '.join(outputs) or 'none'})")
    return array


def _is_score_matrix(spec: TensorSpec) -> bool:
    return spec.datatype in _FLOAT and len(spec.shape) == 2 and (spec.shape[1] == -1 or spec.shape[1] >= 2)


def reader_for(signature: Signature, task: TaskChoice = "auto", output: str | None = None) -> PredictionReader:
    """The reader for a version with this signature; `task` and `output` override the auto detection.

    Raises PredictionError when the named output does not exist or no output can be read as the task asks.
    """
    outputs = signature.outputs
    if output is not None:
        spec = signature.output(output)
        if spec is None:
            names = ", ".join(s.name for s in outputs)
            raise PredictionError(f"the model has no output '{output}' (outputs: {names})")
        chosen = _choose_task(spec) if task == "auto" else task
        score = next((s.name for s in outputs if _is_score_matrix(s)), None)
        if chosen == "classification":
            argmax = spec.datatype not in _INTEGER
            if argmax and not _is_score_matrix(spec):
                raise PredictionError(f"output '{output}' ({spec.describe()}) holds neither labels nor class scores")
            return PredictionReader("classification", output, argmax, spec.name if argmax else score)
        return PredictionReader("regression", output)
    labels = next((s for s in outputs if s.datatype in _INTEGER and len(s.shape) <= 2), None)
    scores = next((s for s in outputs if _is_score_matrix(s)), None)
    if task in ("auto", "classification"):
        if labels is not None:
            return PredictionReader("classification", labels.name, False, None if scores is None else scores.name)
        if scores is not None:
            return PredictionReader("classification", scores.name, True, scores.name)
        if task == "classification":
            raise PredictionError("no output holds labels (an integer tensor) or class scores (a [-1, K] float tensor)")
    numeric = next((s for s in outputs if s.datatype in _FLOAT or s.datatype in _INTEGER), None)
    if numeric is None:
        raise PredictionError("no numeric output to read predictions from")
    return PredictionReader("regression", numeric.name)


def _choose_task(spec: TensorSpec) -> Task:
    if spec.datatype in _INTEGER or _is_score_matrix(spec):
        return "classification"
    return "regression"
