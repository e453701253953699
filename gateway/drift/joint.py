"""The joint monitor: drift in how the numeric inputs move together, which no per-feature test can see.

NannyML's data-reconstruction drift, made a test: the reference's numeric inputs are standardised and a PCA keeps
the components that explain `VARIANCE` of their variance; a row's reconstruction error is its squared distance from
that subspace. When a correlation flips sign, rows leave the subspace the reference spanned and their errors grow,
while every marginal distribution stays the same.

The error is then one more numeric column: binned at its reference quantiles, and tested against the window's
errors like any feature (one-sided: only growing errors are drift). Half the reference fits the model and the other
half gives the reference errors (see build_joint), so the test is exact however good the model is; a poor model
only costs power.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.drift.bins import count_sorted, quantile_edges

Floats = npt.NDArray[np.float64]

NAME = "joint:reconstruction_error"  # the pseudo-feature's name in results and exports
VARIANCE = 0.65  # share of the standardised variance the kept components explain (NannyML's default)
MIN_ROWS_PER_FEATURE = 10  # fewer reference rows than this per numeric input: the PCA is too noisy to be of use
MIN_ROWS = 100


@dataclass(frozen=True, slots=True)
class JointProfile:
    features: tuple[str, ...]  # the numeric input features it reads, in this order
    center: tuple[float, ...]
    scale: tuple[float, ...]
    components: tuple[tuple[float, ...], ...]  # kept principal axes, orthonormal rows over the features
    explained: float  # share of the standardised variance they explain
    edges: tuple[float, ...]  # bins of the cross-fitted reference errors
    counts: tuple[int, ...]
    minimum: float
    maximum: float
    _center: Floats = field(init=False, repr=False, compare=False)
    _scale: Floats = field(init=False, repr=False, compare=False)
    _axes: Floats = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_center", np.asarray(self.center, dtype=np.float64))
        object.__setattr__(self, "_scale", np.asarray(self.scale, dtype=np.float64))
        object.__setattr__(self, "_axes", np.asarray(self.components, dtype=np.float64).reshape(-1, len(self.center)))

    def errors(self, matrix: Floats) -> Floats:
        """Reconstruction errors of rows (one column per feature, in `features` order); missing values count as the
        reference mean, so they neither add nor hide error."""
        return _errors(_standardise(matrix, self._center, self._scale), self._axes)

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "center": list(self.center),
            "scale": list(self.scale),
            "components": [list(c) for c in self.components],
            "explained": self.explained,
            "edges": list(self.edges),
            "counts": list(self.counts),
            "min": self.minimum,
            "max": self.maximum,
        }


def _standardise(matrix: Floats, center: Floats, scale: Floats) -> Floats:
    z = np.asarray(matrix, dtype=np.float64) - center
    z /= scale
    np.copyto(z, 0.0, where=np.isnan(z))
    return z


def _errors(z: Floats, axes: Floats) -> Floats:
    # |z|^2 - |projection|^2: the axes are orthonormal, so no reconstruction needs to be formed.
    projected = z @ axes.T
    squared = np.einsum("ij,ij->i", z, z) - np.einsum("ij,ij->i", projected, projected)
    return np.asarray(np.maximum(squared, 0.0), dtype=np.float64)


def _axes(gram: Floats, keep: int) -> tuple[Floats, Floats]:
    """The `keep` leading principal axes (rows) of the rows whose Gram matrix z'z is `gram`, and all eigenvalues
    in decreasing order. From the F x F Gram matrix rather than an SVD of the rows: the folds' matrices are the
    whole one minus the fold's, so ten PCAs cost one pass over the data."""
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1]
    return np.asarray(vectors[:, order[:keep]].T, dtype=np.float64), np.asarray(values[order], dtype=np.float64)


def build_joint(names: Sequence[str], columns: Sequence[Floats], bins: int) -> JointProfile | None:
    """The joint monitor of the numeric input columns, or None when there are fewer than two of them, too few rows
    (under MIN_ROWS, or MIN_ROWS_PER_FEATURE per column), or no component to leave out."""
    width = len(columns)
    if width < 2:
        return None
    matrix = np.column_stack([np.asarray(c, dtype=np.float64) for c in columns])
    rows = len(matrix)
    if rows < max(MIN_ROWS, MIN_ROWS_PER_FEATURE * width):
        return None
    # Split the reference: one half fits the standardisation and the PCA, the other half's errors under that very
    # model are the reference errors. A window's rows are measured with the same model, so under the null both
    # sides' errors are exchangeable and the test is exact. (Errors of the rows the model was fitted on are
    # optimistic; cross-fitted ones come from other models than the window's, and one model's luck, shared by
    # every window, then reads as drift in all of them.) Seeded: a rebuild from the same data is the same profile.
    fit = np.zeros(rows, dtype=np.bool_)
    fit[np.random.default_rng(0).permutation(rows)[: rows // 2]] = True
    center = np.nanmean(matrix[fit], axis=0)
    scale = np.nanstd(matrix[fit], axis=0)
    scale[~(scale > 0)] = 1.0  # a constant column standardises to 0 and adds nothing
    z = _standardise(matrix[fit], center, scale)
    axes, variance = _axes(z.T @ z, width)
    share = np.cumsum(variance) / variance.sum()
    keep = int(np.searchsorted(share, VARIANCE) + 1)
    if keep >= width:
        return None
    axes = axes[:keep]
    held_out = _errors(_standardise(matrix[~fit], center, scale), axes)
    present = np.sort(held_out)
    edges = quantile_edges(present, bins)
    return JointProfile(
        tuple(names),
        tuple(float(v) for v in center),
        tuple(float(v) for v in scale),
        tuple(tuple(float(v) for v in row) for row in axes),
        float(share[keep - 1]),
        tuple(float(e) for e in edges),
        tuple(int(c) for c in count_sorted(present, edges)),
        float(present[0]),
        float(present[-1]),
    )


def parse_joint(data: Any) -> JointProfile:
    joint = JointProfile(
        tuple(str(n) for n in data["features"]),
        tuple(float(v) for v in data["center"]),
        tuple(float(v) for v in data["scale"]),
        tuple(tuple(float(v) for v in row) for row in data["components"]),
        float(data["explained"]),
        tuple(float(e) for e in data["edges"]),
        tuple(int(c) for c in data["counts"]),
        float(data["min"]),
        float(data["max"]),
    )
    width = len(joint.features)
    if len(joint.center) != width or len(joint.scale) != width or any(len(c) != width for c in joint.components):
        raise ValueError("joint: features, center, scale and components do not match")
    if len(joint.counts) != len(joint.edges) + 1:
        raise ValueError("joint: edges and counts do not match")
    return joint
