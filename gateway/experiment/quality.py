"""One version's live quality from its feedback: each metric cumulative (running sums) and over its last `window`
values, and accuracy per true class. Which metrics a feedback feeds follows from its kind: a label gives accuracy,
a value the absolute and squared errors (MAE, RMSE), a reward its mean and the conversion rate (reward > 0)."""

from __future__ import annotations

import math
from collections import deque

from gateway.experiment.sequential import Arm
from gateway.experiment.settings import Metric

MAX_CLASSES = 100  # per-class accuracy is kept for this many distinct classes (a label is not an unbounded id)


class Quality:
    __slots__ = ("_windows", "cumulative", "per_class", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.cumulative: dict[Metric, Arm] = {}
        self._windows: dict[Metric, deque[float]] = {}
        self.per_class: dict[str, tuple[int, int]] = {}  # true class -> (feedbacks, correct)

    def add(self, metric: Metric, value: float) -> None:
        self.cumulative[metric] = self.cumulative.get(metric, Arm()).add(value)
        values = self._windows.get(metric)
        if values is None:
            values = self._windows[metric] = deque(maxlen=self.window)
        values.append(value)

    def add_class(self, label: str, correct: float) -> None:
        seen = self.per_class.get(label)
        if seen is None and len(self.per_class) >= MAX_CLASSES:
            return
        n, right = seen or (0, 0)
        self.per_class[label] = (n + 1, right + int(correct))

    def samples(self, metric: Metric, *, windowed: bool = False) -> int:
        if windowed:
            return len(self._windows.get(metric, ()))
        return self.cumulative.get(metric, Arm()).n

    def value(self, metric: Metric, *, windowed: bool = False) -> float | None:
        """The metric (RMSE as the root of the mean squared error), or None without feedback for it."""
        if windowed:
            values = self._windows.get(metric)
            if not values:
                return None
            mean = math.fsum(values) / len(values)
        else:
            arm = self.cumulative.get(metric)
            if arm is None or arm.n == 0:
                return None
            mean = arm.mean
        return math.sqrt(mean) if metric == "rmse" else mean


def metric_values(kind: str, correct: float | None = None, error: float | None = None,
                  reward: float | None = None) -> list[tuple[Metric, float]]:  # fmt: skip
    """The (metric, per-sample value) pairs one scored row feeds."""
    if kind == "label" and correct is not None:
        return [("accuracy", correct)]
    if kind == "value" and error is not None:
        return [("mae", abs(error)), ("rmse", error * error)]
    if kind == "reward" and reward is not None:
        return [("reward", reward), ("conversion", 1.0 if reward > 0 else 0.0)]
    return []
