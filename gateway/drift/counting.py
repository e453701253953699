"""Counting a batch of sampled rows into every monitored feature's slots.

The numeric columns of one rank-2 tensor are counted together: one copy and one sort of the whole column block, then
two binary searches per column over its few edges (sorting 2,000 values and searching 20 edges in them is several
times cheaper than searching 2,000 values in the edges). Categorical and rank-1 features count one by one. The joint
monitor's reconstruction errors are computed from the same rows and counted like a numeric column.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.drift import joint as joint_monitor
from gateway.drift.profile import FeatureProfile, Profile, SlotCounts

Arrays = Mapping[str, npt.NDArray[Any]]


def joint_feature(profile: Profile) -> FeatureProfile | None:
    """The joint monitor as a numeric pseudo-feature over its reconstruction errors (None without one)."""
    joint = profile.joint
    if joint is None:
        return None
    return FeatureProfile(
        joint_monitor.NAME,
        "input",
        "",
        None,
        "numeric",
        joint.counts,
        0,
        joint.edges,
        joint.minimum,
        joint.maximum,
    )


def monitored(profile: Profile, *, joint: bool) -> tuple[FeatureProfile, ...]:
    """The features a window is judged on: the profile's, then the joint pseudo-feature when enabled and present."""
    extra = joint_feature(profile) if joint else None
    return profile.features if extra is None else (*profile.features, extra)


@dataclass(frozen=True, slots=True)
class _Block:
    source: str
    tensor: str
    indices: tuple[int, ...]  # positions in the monitored features
    columns: npt.NDArray[np.intp]
    # Per column: (minimum, *edges, the next float above the maximum), searched from the left: the count under the
    # last is the count at most the maximum.
    bounds: tuple[npt.NDArray[np.float64], ...]
    # The same bounds rounded up to float32, for FP32 tensors (sorted as they are, a third cheaper than as float64):
    # for a float32 v and a float64 b, v < b exactly when v < the smallest float32 at or above b.
    bounds32: tuple[npt.NDArray[np.float32], ...]


def _bounds(feature: FeatureProfile) -> npt.NDArray[np.float64]:
    above = np.nextafter(feature.maximum, np.inf)
    return np.asarray([feature.minimum, *feature.edges, above], dtype=np.float64)


def _ceil32(bounds: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    rounded = bounds.astype(np.float32)
    low = rounded.astype(np.float64) < bounds
    rounded[low] = np.nextafter(rounded[low], np.float32(np.inf))
    return rounded


class WindowCounter:
    """Counts batches of rows for one profile; built once per monitored version, immutable."""

    def __init__(self, profile: Profile, *, joint: bool) -> None:
        self.profile = profile
        self.features = monitored(profile, joint=joint)
        self._joint = profile.joint if len(self.features) > len(profile.features) else None
        grouped: dict[tuple[str, str], list[int]] = {}
        singles: list[int] = []
        for i, f in enumerate(profile.features):
            if f.kind == "numeric" and f.column is not None:
                grouped.setdefault((f.source, f.tensor), []).append(i)
            else:
                singles.append(i)
        self._blocks = tuple(
            _Block(
                source,
                tensor,
                tuple(indices),
                np.asarray([profile.features[i].column for i in indices], dtype=np.intp),
                tuple(_bounds(profile.features[i]) for i in indices),
                tuple(_ceil32(_bounds(profile.features[i])) for i in indices),
            )
            for (source, tensor), indices in grouped.items()
        )
        self._singles = tuple(singles)
        by_name = {f.name: f for f in profile.features}
        self._joint_columns = (
            ()
            if self._joint is None
            else tuple((by_name[name].tensor, by_name[name].column) for name in self._joint.features)
        )
        # The usual case: every joint column is a column of one rank-2 input, gathered in one indexing operation.
        tensors = {tensor for tensor, _ in self._joint_columns}
        columns = [column for _, column in self._joint_columns]
        self._joint_block = (
            (tensors.pop(), np.asarray(columns, dtype=np.intp)) if len(tensors) == 1 and None not in columns else None
        )

    def _joint_matrix(self, inputs: Arrays) -> npt.NDArray[np.float64] | None:
        if self._joint_block is None:
            return _gather(inputs, self._joint_columns)
        tensor, columns = self._joint_block
        array = inputs.get(tensor)
        return None if array is None else np.asarray(array[:, columns], dtype=np.float64)

    def count(self, inputs: Arrays, outputs: Arrays) -> list[SlotCounts | None]:
        """Counts per monitored feature for a batch of rows (None: the batch lacks the feature's tensor, e.g. a
        request that asked for a subset of the outputs)."""
        out: list[SlotCounts | None] = [None] * len(self.features)
        features = self.profile.features
        for block in self._blocks:
            array = (inputs if block.source == "input" else outputs).get(block.tensor)
            if array is None:
                continue
            _count_block(block, np.asarray(array), out)
        for i in self._singles:
            f = features[i]
            array = (inputs if f.source == "input" else outputs).get(f.tensor)
            if array is not None:
                values = array if f.column is None else array[:, f.column]
                out[i] = f.count_values(np.asarray(values).reshape(-1))
        if self._joint is not None:
            matrix = self._joint_matrix(inputs)
            if matrix is not None:
                out[-1] = self.features[-1].count_values(self._joint.errors(matrix))
        return out


def _gather(inputs: Arrays, columns: tuple[tuple[str, int | None], ...]) -> npt.NDArray[np.float64] | None:
    parts = []
    for tensor, column in columns:
        array = inputs.get(tensor)
        if array is None:
            return None
        parts.append(np.asarray(array if column is None else array[:, column], dtype=np.float64).reshape(-1))
    return np.column_stack(parts)


def _count_block(block: _Block, array: npt.NDArray[Any], out: list[SlotCounts | None]) -> None:
    single = array.dtype == np.float32
    # A contiguous copy, sorted in place (NaN sorts last).
    block_values = np.array(array[:, block.columns].T, dtype=np.float32 if single else np.float64)
    block_values.sort(axis=1)
    all_bounds = block.bounds32 if single else block.bounds
    rows = block_values.shape[1]
    present = rows - np.count_nonzero(np.isnan(block_values), axis=1)
    for j, i in enumerate(block.indices):
        count = int(present[j])
        # One search: [minimum, edges..., just above maximum] -> below, the bins' cumulative counts, and above.
        found = np.searchsorted(block_values[j, :count], all_bounds[j], side="left")
        edges = len(found) - 2
        slots = np.empty(edges + 1, dtype=np.int64)
        slots[0] = found[1] if edges else count
        if edges:
            np.subtract(found[2 : edges + 1], found[1:edges], out=slots[1:edges])
            slots[edges] = count - found[edges]
        out[i] = SlotCounts(slots, rows - count, int(found[0]), count - int(found[-1]))
