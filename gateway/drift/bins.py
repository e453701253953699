"""Quantile bins for one numeric column: the edges a reference cuts, and counting sorted values into them.

Shared by the per-feature profile and the joint (reconstruction error) monitor, which bins a derived value the same
way: interior edges only, so the outer bins are open and every value lands somewhere.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]


def quantile_edges(present: Floats, bins: int) -> Floats:
    """Interior edges of `bins` equal-mass bins of the sorted, finite `present`, deduplicated (ties, or a constant
    column, collapse bins instead of leaving empty ones). numpy's default ("linear") quantiles, computed on the
    sorted values the caller needs for counting anyway."""
    position = (len(present) - 1) * np.arange(1, bins) / bins
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, len(present) - 1)
    return np.unique(present[low] + (position - low) * (present[high] - present[low]))


def value_edges(present: Floats) -> Floats:
    """One bin per distinct value of the sorted `present` (a few distinct integers): edges halfway between them."""
    distinct = np.unique(present)
    return (distinct[:-1] + distinct[1:]) / 2.0


def count_sorted(present: Floats, edges: Floats) -> npt.NDArray[np.int64]:
    """Counts per bin of the sorted `present` (len(edges) + 1 bins); a value equal to an edge is in the upper bin."""
    # Searching the edges in the sorted data is about 3x cheaper than searching each value in the edges.
    cumulative = np.searchsorted(present, edges, side="left")
    return np.diff(cumulative, prepend=0, append=len(present)).astype(np.int64)
