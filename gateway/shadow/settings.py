"""A route's `shadow:` block: which version gets copies of live requests, how many, and how answers are compared.

```yaml
shadow:
  to: canary            # a version of the route; default: the rollout's candidate when the route has a rollout
  percent: 100          # share of the requests served by the other versions that is copied (0-100)
  max_inflight: 64      # shadow runs at once; a copy over the cap is dropped and counted
  timeout_ms: 1000      # a shadow run still going after this is abandoned and counted as timed out
  compare:              # how a shadow answer is held against the primary's
    kind: auto          # auto | classification | regression (see gateway/prediction.py)
    output: null        # the output to compare; default: detected from the model's signature
    abs_tol: 1.0e-6     # regression: |shadow - primary| <= abs_tol + rel_tol * |primary| on every value of a row
    rel_tol: 1.0e-3
```

Inside a rollout the rollout's steps own the shadow percentage to the candidate; this block still sets the cap, the
timeout and the comparison.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from gateway import fields
from gateway.errors import ConfigError
from gateway.prediction import TaskChoice

_KEYS = ("to", "percent", "max_inflight", "timeout_ms", "compare")
_COMPARE_KEYS = ("kind", "output", "abs_tol", "rel_tol")
_KINDS = ("auto", "classification", "regression")


@dataclass(frozen=True, slots=True)
class CompareSettings:
    kind: TaskChoice = "auto"
    output: str | None = None
    abs_tol: float = 1e-6
    rel_tol: float = 1e-3


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    to: str | None = None  # None: the rollout's candidate
    percent: float = 100.0
    max_inflight: int = 64
    timeout: float = 1.0  # seconds
    compare: CompareSettings = CompareSettings()


DEFAULT = ShadowSettings(percent=0.0)  # what a route without a shadow block uses for its rollout's shadow steps


def parse_shadow_settings(
    data: object, path: str, *, versions: Sequence[str], baseline: str, candidate: str | None
) -> ShadowSettings | None:
    """Untrusted `shadow:` value -> ShadowSettings (None when absent), or ConfigError naming the key.

    `versions` are the route's version names, `baseline` its configured baseline, `candidate` its rollout's
    candidate (None without a rollout).
    """
    if data is None:
        return None
    block = fields.block(data, path, _KEYS)
    to = fields.string(block, "to", path)
    if to is None and candidate is None:
        raise ConfigError(f"{path}.to: is required (the route has no rollout whose candidate it could default to)")
    if to is not None:
        if to not in versions:
            raise ConfigError(f"{path}.to: unknown version {to!r} (versions: {', '.join(versions)})")
        if to == baseline:
            raise ConfigError(f"{path}.to: {to!r} is the route's baseline; a shadow copies traffic to another version")
    return ShadowSettings(
        to=to,
        percent=fields.number(block, "percent", 100.0, path, low=0.0, high=100.0),
        max_inflight=fields.integer(block, "max_inflight", 64, path, low=1, high=100_000),
        timeout=fields.integer(block, "timeout_ms", 1000, path, low=1, high=600_000) / 1000.0,
        compare=_parse_compare(block.get("compare"), f"{path}.compare"),
    )


def _parse_compare(data: object, path: str) -> CompareSettings:
    if data is None:
        return CompareSettings()
    block: Mapping[str, object] = fields.block(data, path, _COMPARE_KEYS)
    return CompareSettings(
        kind=cast(TaskChoice, fields.choice(block, "kind", "auto", path, _KINDS)),
        output=fields.string(block, "output", path),
        abs_tol=fields.number(block, "abs_tol", 1e-6, path, low=0.0, high=1e12),
        rel_tol=fields.number(block, "rel_tol", 1e-3, path, low=0.0, high=1e6),
    )
