"""A route's `rollout:` block parsed into a frozen RolloutSettings; every fault names its key path.

The shape (README, "Progressive delivery", has the annotated example):

```yaml
rollout:
  candidate: canary
  validate: {golden_set: ../data/test.csv, label_column: target, min_metric: {accuracy: 0.9}, ...}
  steps: [{shadow: 100, duration: 30s, min_requests: 500}, {weight: 5, duration: 60s, min_requests: 500}, ...]
  interval: 5s
  failure_limit: 2
  progress_deadline: 30m
  gates: {max_error_rate: 0.01, max_error_rate_increase: 0.005, max_p99_latency_ratio: 1.5, ...}
  state_file: state/breast_cancer.rollout.json
  webhook_url: null
```
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from gateway import fields
from gateway.errors import ConfigError

StepKind = Literal["shadow", "weight"]

HIGHER_IS_BETTER = ("accuracy", "roc_auc", "f1")
LOWER_IS_BETTER = ("mae", "rmse")

_KEYS = (
    "candidate", "validate", "steps", "interval", "failure_limit", "progress_deadline", "gates", "state_file",
    "webhook_url",
)  # fmt: skip
_STEP_KEYS = ("weight", "shadow", "duration", "min_requests")
_GATE_KEYS = (
    "max_error_rate", "max_error_rate_increase", "max_p99_latency_ratio", "min_shadow_agreement", "block_on_drift",
    "max_prediction_shift_js", "alpha", "pass_alpha", "min_samples", "block_on_feedback",
)  # fmt: skip
_VALIDATE_KEYS = (
    "golden_set", "label_column", "group_column", "min_metric", "max_metric", "max_metric_drop", "min_agreement",
    "max_group_gap", "max_p99_latency_ms", "max_latency_ratio", "check_drift",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Step:
    """One rung of the ladder. It holds until `duration` has passed and the candidate has served `min_requests`
    (in a shadow step: answered that many shadow copies), and every gate passes."""

    weight: float = 0.0  # the candidate's percent of the route's traffic
    shadow: float = 0.0  # percent of the other versions' traffic copied to the candidate
    duration: float = 60.0  # seconds
    min_requests: int = 0

    @property
    def kind(self) -> StepKind:
        return "weight" if self.weight > 0 else "shadow"

    def describe(self) -> str:
        parts = [f"weight {self.weight:g}%"] if self.weight > 0 else []
        if self.shadow > 0:
            parts.append(f"shadow {self.shadow:g}%")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Gates:
    """Candidate against baseline on the current step's traffic; None switches a gate off.

    Each noisy figure is judged by an always-valid test (gateway/rollout/statistics.py): a gate fails only on
    evidence at level `alpha` that its threshold is broken, passes only on evidence at level `pass_alpha` that it
    holds, and is inconclusive in between (the step waits, up to the progress deadline). See gates.py for why the
    two levels differ.
    """

    max_error_rate: float | None = 0.01
    max_error_rate_increase: float | None = 0.005
    max_p99_latency_ratio: float | None = 1.5
    min_shadow_agreement: float | None = 0.95
    block_on_drift: bool = True
    max_prediction_shift_js: float | None = 0.10
    alpha: float = 0.001
    pass_alpha: float = 0.05
    min_samples: int = 100  # per arm, before a gate may decide at all
    # With an experiment on the route comparing baseline and candidate: hold each live step until its always-valid
    # test says the candidate is not worse than the baseline by more than its margin, and fail when it is.
    block_on_feedback: bool = True


@dataclass(frozen=True, slots=True)
class Validation:
    """Checks run on the golden set before the candidate gets any live traffic."""

    golden_set: Path | None = None
    label_column: str | None = None
    group_column: str | None = None
    min_metric: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    max_metric: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    max_metric_drop: float | None = None
    min_agreement: float | None = None
    max_group_gap: float | None = None
    max_p99_latency_ms: float | None = None
    max_latency_ratio: float | None = None
    check_drift: bool = True  # the golden set must pass the candidate's drift profile (when it has one)


@dataclass(frozen=True, slots=True)
class RolloutSettings:
    candidate: str
    steps: tuple[Step, ...]
    validate: Validation | None = None
    interval: float = 5.0
    failure_limit: int = 2
    progress_deadline: float = 1800.0
    gates: Gates = Gates()
    state_file: Path | None = None
    webhook_url: str | None = None

    def step(self, index: int) -> Step:
        return self.steps[min(index, len(self.steps) - 1)]


DEFAULT_STEPS = (
    Step(shadow=100, duration=30, min_requests=500),
    Step(weight=5, duration=60, min_requests=500),
    Step(weight=25, duration=60, min_requests=1000),
    Step(weight=50, duration=60, min_requests=1000),
    Step(weight=100, duration=30),
)


def parse_rollout_settings(
    data: object, path: str, *, versions: Sequence[str], baseline: str, base_dir: Path | None, route: str
) -> RolloutSettings | None:
    """Untrusted `rollout:` value at `path` -> RolloutSettings (None when absent), or ConfigError naming the key.

    `versions` are the route's version names and `baseline` its configured baseline; relative paths resolve
    against `base_dir` (the config file's folder).
    """
    if data is None:
        return None
    block = fields.block(data, path, _KEYS, required=("candidate",))
    candidate = fields.string(block, "candidate", path)
    if candidate is None:
        raise ConfigError(f"{path}.candidate: must be a non-empty string, got null")
    if candidate not in versions:
        raise ConfigError(f"{path}.candidate: unknown version {candidate!r} (versions: {', '.join(versions)})")
    if candidate == baseline:
        raise ConfigError(f"{path}.candidate: {candidate!r} is the route's baseline; name the version to roll out")
    base = base_dir if base_dir is not None else Path.cwd()
    state = fields.string(block, "state_file", path, default=f"state/{route}.rollout.json")
    return RolloutSettings(
        candidate=candidate,
        steps=_parse_steps(block.get("steps"), f"{path}.steps"),
        validate=_parse_validation(block.get("validate"), f"{path}.validate", base),
        interval=fields.duration(block, "interval", 5.0, path, low=0.01),
        failure_limit=fields.integer(block, "failure_limit", 2, path, low=1, high=1000),
        progress_deadline=fields.duration(block, "progress_deadline", 1800.0, path, low=0.01),
        gates=_parse_gates(block.get("gates"), f"{path}.gates"),
        state_file=None if state is None else _path(base, state),
        webhook_url=fields.http_url(block, "webhook_url", path),
    )


def _path(base: Path, value: str) -> Path:
    return Path(os.path.abspath(base / Path(value).expanduser()))


def _parse_steps(data: object, path: str) -> tuple[Step, ...]:
    if data is None:
        return DEFAULT_STEPS
    if not isinstance(data, list | tuple) or not data:
        raise ConfigError(f"{path}: must be a non-empty list of steps such as {{weight: 5, duration: 60s}}")
    steps: list[Step] = []
    for i, item in enumerate(data):
        where = f"{path}[{i}]"
        step_block = fields.block(item, where, _STEP_KEYS)
        if "weight" not in step_block and "shadow" not in step_block:
            raise ConfigError(f"{where}: give a weight (percent of traffic) or a shadow (percent copied)")
        step = Step(
            weight=fields.number(step_block, "weight", 0.0, where, low=0.0, high=100.0),
            shadow=fields.number(step_block, "shadow", 0.0, where, low=0.0, high=100.0),
            duration=fields.duration(step_block, "duration", 60.0, where),
            min_requests=fields.integer(step_block, "min_requests", 0, where, low=0),
        )
        if step.weight == 0 and step.shadow == 0:
            raise ConfigError(f"{where}: a step with weight 0 must shadow some traffic (shadow > 0)")
        if step.weight >= 100 and step.shadow > 0:
            raise ConfigError(f"{where}.shadow: at weight 100 no other version serves traffic to copy; drop the shadow")
        if steps and step.weight < steps[-1].weight:
            raise ConfigError(
                f"{where}.weight: {step.weight:g} is below the previous step's {steps[-1].weight:g}; weights only rise"
                " (sticky users only ever move from the baseline to the candidate)"
            )
        steps.append(step)
    return tuple(steps)


def _parse_gates(data: object, path: str) -> Gates:
    if data is None:
        return Gates()
    block = fields.block(data, path, _GATE_KEYS)
    default = Gates()
    return Gates(
        max_error_rate=fields.optional_number(block, "max_error_rate", default.max_error_rate, path, low=0, high=1),
        max_error_rate_increase=fields.optional_number(
            block, "max_error_rate_increase", default.max_error_rate_increase, path, low=0, high=1
        ),
        max_p99_latency_ratio=fields.optional_number(
            block, "max_p99_latency_ratio", default.max_p99_latency_ratio, path, low=1.0, high=1000.0, open_low=True
        ),
        min_shadow_agreement=fields.optional_number(
            block, "min_shadow_agreement", default.min_shadow_agreement, path, low=0, high=1, open_low=True
        ),
        block_on_drift=fields.boolean(block, "block_on_drift", default.block_on_drift, path),
        max_prediction_shift_js=fields.optional_number(
            block, "max_prediction_shift_js", default.max_prediction_shift_js, path, low=0, high=1, open_low=True
        ),
        alpha=fields.number(block, "alpha", default.alpha, path, low=0.0, high=0.5, open_low=True),
        pass_alpha=fields.number(block, "pass_alpha", default.pass_alpha, path, low=0.0, high=0.5, open_low=True),
        min_samples=fields.integer(block, "min_samples", default.min_samples, path, low=1),
        block_on_feedback=fields.boolean(block, "block_on_feedback", default.block_on_feedback, path),
    )


def _parse_validation(data: object, path: str, base: Path) -> Validation | None:
    if data is None:
        return None
    block = fields.block(data, path, _VALIDATE_KEYS)
    golden = fields.string(block, "golden_set", path)
    label = fields.string(block, "label_column", path)
    group = fields.string(block, "group_column", path)
    min_metric = _metrics(block.get("min_metric"), f"{path}.min_metric", HIGHER_IS_BETTER)
    max_metric = _metrics(block.get("max_metric"), f"{path}.max_metric", LOWER_IS_BETTER)
    needs_labels = [
        key
        for key in ("min_metric", "max_metric", "max_metric_drop", "max_group_gap")
        if block.get(key) is not None and block.get(key) != {}
    ]
    if needs_labels and label is None:
        raise ConfigError(f"{path}.{needs_labels[0]}: needs label_column (the golden set's true labels or values)")
    if group is not None and label is None:
        raise ConfigError(f"{path}.group_column: needs label_column (the bias gate compares a metric across groups)")
    if golden is None and (label is not None or block.get("min_agreement") is not None):
        raise ConfigError(f"{path}.golden_set: is required for the quality, agreement and bias gates")
    return Validation(
        golden_set=None if golden is None else _path(base, golden),
        label_column=label,
        group_column=group,
        min_metric=min_metric,
        max_metric=max_metric,
        max_metric_drop=fields.optional_number(block, "max_metric_drop", None, path, low=0.0, high=1e12),
        min_agreement=fields.optional_number(block, "min_agreement", None, path, low=0.0, high=1.0),
        max_group_gap=fields.optional_number(block, "max_group_gap", None, path, low=0.0, high=1e12),
        max_p99_latency_ms=fields.optional_number(block, "max_p99_latency_ms", None, path, low=0.0, high=1e9),
        max_latency_ratio=fields.optional_number(
            block, "max_latency_ratio", None, path, low=1.0, high=1e6, open_low=False
        ),
        check_drift=fields.boolean(block, "check_drift", True, path),
    )


def _metrics(data: object, path: str, allowed: Sequence[str]) -> Mapping[str, float]:
    if data is None:
        return MappingProxyType({})
    block: Mapping[str, Any] = fields.block(data, path, allowed)
    return MappingProxyType(
        {name: fields.number(block, name, 0.0, path, low=-1e12, high=1e12) for name in allowed if name in block}
    )
