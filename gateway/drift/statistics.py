"""Drift statistics on fixed-bin counts: pure functions of a reference count vector and a window count vector.

Every function takes integer counts over the same slots (quantile bins or categories), so a window costs
O(slots) to evaluate whatever its size. p-values use scipy's special functions, which are cheap and exact in the
tails (`kolmogorov`, `chdtrc`); `scipy.stats` distribution objects are avoided on this path for their overhead.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

Counts = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]

# PSI needs a floor on empty slots (log of zero); 1e-4 is the common choice (Evidently, most credit-risk code).
PSI_FLOOR = 1e-4


def _shares(counts: npt.NDArray[Any]) -> Floats:
    total = float(counts.sum())
    if total <= 0:
        return np.zeros(len(counts), dtype=np.float64)
    return np.asarray(counts, dtype=np.float64) / total


def psi(reference: npt.NDArray[Any], window: npt.NDArray[Any], floor: float = PSI_FLOOR) -> float:
    """Population stability index: sum of (q - p) * ln(q / p) over slots, shares floored at `floor`. Symmetric."""
    if reference.sum() <= 0 or window.sum() <= 0:
        return 0.0  # no values on one side: no evidence, not an infinite shift
    p = np.maximum(_shares(reference), floor)
    q = np.maximum(_shares(window), floor)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: npt.NDArray[Any], window: npt.NDArray[Any]) -> float:
    """Jensen-Shannon distance in base 2, in [0, 1]; equals `scipy.spatial.distance.jensenshannon(p, q, base=2)`."""
    p = _shares(reference)
    q = _shares(window)
    if not p.any() or not q.any():
        return 0.0
    m = (p + q) / 2.0
    # rel_entr is 0 where the share is 0, which is the convention the divergence needs.
    divergence = float(np.sum(special.rel_entr(p, m)) + np.sum(special.rel_entr(q, m))) / 2.0
    return math.sqrt(max(divergence, 0.0) / math.log(2.0))


def ks_binned(reference: npt.NDArray[Any], window: npt.NDArray[Any]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov on counts in ordered bins: (D, asymptotic two-sided p-value).

    D is the largest CDF gap at the bin edges, a lower bound of the exact D on the raw values (equal when every
    value sits on its own edge), so the p-value is conservative. The p-value is the Kolmogorov limit
    `kolmogorov(sqrt(en) * D)` with en = n * m / (n + m), i.e. `scipy.stats.kstwobign.sf`.
    """
    n_ref = float(reference.sum())
    n_win = float(window.sum())
    if n_ref <= 0 or n_win <= 0:
        return 0.0, 1.0
    gap = np.cumsum(reference) / n_ref - np.cumsum(window) / n_win
    d = float(np.max(np.abs(gap)))
    en = n_ref * n_win / (n_ref + n_win)
    return d, float(special.kolmogorov(math.sqrt(en) * d))


def chi2_contingency(reference: npt.NDArray[Any], window: npt.NDArray[Any]) -> tuple[float, int, float]:
    """Pearson chi-square test of homogeneity on the 2 x K table (reference, window): (statistic, dof, p-value).

    Same as `scipy.stats.chi2_contingency(table, correction=False)`; slots empty in both rows are left out, since
    they carry no information and scipy refuses them.
    """
    ref = np.asarray(reference, dtype=np.float64)
    win = np.asarray(window, dtype=np.float64)
    keep = (ref + win) > 0
    ref, win = ref[keep], win[keep]
    n_ref, n_win = float(ref.sum()), float(win.sum())
    if len(ref) < 2 or n_ref <= 0 or n_win <= 0:
        return 0.0, 0, 1.0
    column = ref + win
    total = n_ref + n_win
    expected_ref = column * (n_ref / total)
    expected_win = column * (n_win / total)
    stat = float(np.sum((ref - expected_ref) ** 2 / expected_ref) + np.sum((win - expected_win) ** 2 / expected_win))
    dof = len(ref) - 1
    return stat, dof, float(special.chdtrc(dof, stat))


def pool_for_both(
    reference: npt.NDArray[Any], window: npt.NDArray[Any], *, ordered: bool, min_expected: float = 5.0
) -> tuple[Counts, Counts]:
    """Merge slots until every cell of the 2 x K table expects at least `min_expected` under the null, in *both*
    rows: the reference's own noise counts as much as the window's. With a small reference (90 rows, 20 bins) the
    reference row expects about 4 a slot whatever the window's size, and a chi-square on such cells false-alarms
    tens of times too often (the pooling before this one, on the window's row alone, did).

    Slot (column) totals decide the merge: given them, the table's null distribution does not depend on the unknown
    shares, so the test stays valid. Ordered slots (a numeric feature's bins) merge with their neighbours, keeping
    the shape coarser rather than lumping the tails together; the short categories merge into one pool. Slots
    with no reference mass are dropped first: values there are the novelty test's business.
    """
    ref = np.asarray(reference, dtype=np.int64)
    win = np.asarray(window, dtype=np.int64)
    keep = ref > 0
    ref, win = ref[keep], win[keep]
    n_ref, n_win = int(ref.sum()), int(win.sum())
    if n_ref <= 0 or n_win <= 0 or len(ref) < 2:
        return ref, win
    # Each row's expected count in a slot is column * row / total: the smaller row needs column >= this.
    needed = min_expected * (n_ref + n_win) / min(n_ref, n_win)
    column = ref + win
    if column.min() >= needed:  # the common case (a reference of thousands of rows): nothing to merge
        return ref, win
    if ordered:
        groups: list[list[int]] = [[]]
        total = 0
        for i, c in enumerate(column.tolist()):
            groups[-1].append(i)
            total += c
            if total >= needed:
                groups.append([])
                total = 0
        if not groups[-1]:
            groups.pop()
        elif len(groups) > 1:  # a short last group joins the one before it
            groups[-2].extend(groups.pop())
        starts = np.asarray([g[0] for g in groups])
        return np.add.reduceat(ref, starts), np.add.reduceat(win, starts)
    small = column < needed  # categories: the short ones pooled into one slot
    if not small.any():
        return ref, win
    out_ref = np.append(ref[~small], ref[small].sum())
    out_win = np.append(win[~small], win[small].sum())
    if out_ref[-1] + out_win[-1] < needed and len(out_ref) > 1:  # the pool is still short: into the smallest other
        target = int(np.argmin(out_ref[:-1] + out_win[:-1]))
        out_ref[target] += out_ref[-1]
        out_win[target] += out_win[-1]
        out_ref, out_win = out_ref[:-1], out_win[:-1]
    return out_ref, out_win


def novelty_pvalues(
    ref_hits: npt.NDArray[Any], ref_total: npt.NDArray[Any], win_hits: npt.NDArray[Any], win_total: npt.NDArray[Any]
) -> Floats:
    """One-sided Fisher exact p-values that a slot holds a larger share of the window than of the reference.

    Vectorised over slots. Conditional on the slot's total hits, the window's share is hypergeometric under the
    null, so the test stays valid where the reference has no mass at all: with no reference hits the p-value is
    C(n, x) / C(N + n, x), the chance that the x most extreme of N + n exchangeable values all fell in the window.
    (A binomial test against the empty reference share would instead flag any single stray value.)
    """
    a = np.asarray(ref_hits, dtype=np.float64)
    big_n = np.asarray(ref_total, dtype=np.float64)
    x = np.asarray(win_hits, dtype=np.float64)
    n = np.asarray(win_total, dtype=np.float64)
    population = big_n + n
    hits = a + x
    # log P(X >= x) for X ~ Hypergeom(population, hits, n), summed over k = x .. min(n, hits) in log space.
    out = np.ones(len(x), dtype=np.float64)
    for i in np.flatnonzero(x > 0):
        k = np.arange(x[i], min(n[i], hits[i]) + 1.0)
        log_pmf = _log_comb(hits[i], k) + _log_comb(population[i] - hits[i], n[i] - k) - _log_comb(population[i], n[i])
        out[i] = min(1.0, float(np.exp(special.logsumexp(log_pmf))))
    return out


def _log_comb(n: float | Floats, k: float | Floats) -> Floats:
    return np.asarray(
        special.gammaln(np.add(n, 1.0)) - special.gammaln(np.add(k, 1.0)) - special.gammaln(np.subtract(n, k) + 1.0)
    )


def benjamini_hochberg(pvalues: npt.NDArray[Any], q: float) -> npt.NDArray[np.bool_]:
    """Which hypotheses the Benjamini-Hochberg step-up procedure rejects at false-discovery rate `q`."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    rejected = np.zeros(m, dtype=np.bool_)
    if m == 0:
        return rejected
    order = np.argsort(p, kind="stable")
    below = p[order] <= q * np.arange(1, m + 1) / m
    if below.any():
        last = int(np.flatnonzero(below)[-1])
        rejected[order[: last + 1]] = True
    return rejected
