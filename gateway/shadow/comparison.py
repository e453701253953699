"""Row-by-row agreement between a primary answer and a shadow answer to the same request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.prediction import PredictionError, PredictionReader
from gateway.shadow.settings import CompareSettings

Outputs = Mapping[str, npt.NDArray[Any]]


@dataclass(frozen=True, slots=True)
class Agreement:
    rows: int
    agreed: int
    primary: npt.NDArray[Any] | None  # the predictions compared: labels [rows] or values [rows, k]
    shadow: npt.NDArray[Any] | None


@dataclass(frozen=True, slots=True)
class Comparator:
    """Classifiers agree on a row when the labels are equal; regressors when every value of the row is within
    `abs_tol + rel_tol * |primary|` (numpy.isclose). An answer that cannot be read as a prediction, or whose rows do
    not line up with the primary's, disagrees on every row."""

    reader: PredictionReader
    settings: CompareSettings

    def compare(self, primary: Outputs, shadow: Outputs) -> Agreement:
        mine = self.reader.predictions(primary)  # the primary's own answer: a failure here is a real fault
        rows = int(mine.shape[0])
        try:
            theirs = self.reader.predictions(shadow)
        except PredictionError:
            return Agreement(rows, 0, mine, None)
        if theirs.shape != mine.shape:
            return Agreement(rows, 0, mine, None)
        if self.reader.task == "classification":
            same = mine == theirs
        else:
            close = np.isclose(theirs, mine, rtol=self.settings.rel_tol, atol=self.settings.abs_tol)
            same = close.all(axis=1)
        return Agreement(rows, int(np.count_nonzero(same)), mine, theirs)
