"""Drift statistics on fixed-bin counts: pure functions of reference and window counts over the same slots.

A window costs O(slots) to evaluate whatever its size. The `*_rows` functions take one feature per row of a
zero-padded matrix, so a window's features are tested in a few whole-matrix numpy calls. p-values use scipy's
special functions, which are cheap and exact in the tails (`ndtri`, `erfc`, `chdtrc`); `scipy.stats` distribution
objects are avoided on this path for their overhead.
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


def rank_z_rows(reference: Floats, window: Floats) -> tuple[Floats, Floats]:
    """Normal-scores rank tests on ordered bins, per row: (location z, scale z) of the window's score sums.

    Every value gets the normal score s of its bin's mid-rank in the pooled sample. Location sums s (van der
    Waerden: Pitman efficiency 1 against the t-test for normal data and at least 1 for every other shape, where KS
    has 0.64 and Mann-Whitney 0.95); scale sums |s| (how far out the window's values sit; its squared cousin, Klotz's
    s^2, is more efficient but so skewed that a small reference false-alarms at the p-values BH needs). Each z is
    the sum centred and divided by its permutation standard deviation, valid on binned data and ties. Positive:
    the window sits higher, or spreads wider. 0 where a row has no variance (one occupied bin, an empty side).
    """
    column = reference + window
    m = reference.sum(axis=1)
    n = window.sum(axis=1)
    total = m + n
    with np.errstate(divide="ignore", invalid="ignore"):
        rank = np.cumsum(column, axis=1) - (column - 1.0) / 2.0
        score = special.ndtri(rank / (total[:, None] + 1.0))
        score = np.where(column > 0, score, 0.0)
        spread = n * m / (total * (total - 1.0))
        out = []
        for values in (score, np.abs(score)):
            deviation = values - ((column * values).sum(axis=1) / total)[:, None]
            variance = spread * (column * deviation**2).sum(axis=1)
            z = (window * deviation).sum(axis=1) / np.sqrt(variance)
            out.append(np.where(variance > 0, z, 0.0))
    return out[0], out[1]


def ks_rows(reference: Floats, window: Floats) -> Floats:
    """Two-sample Kolmogorov-Smirnov p-value per row from the CDF gaps at the bin edges (Kolmogorov's limit).

    The largest gap at the edges is at most the raw values' D, so the p-value is conservative; it stays so when the
    bins are the reference's own quantiles, which is where the chi-square does not (see evaluation.py)."""
    m = reference.sum(axis=1)
    n = window.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.abs(np.cumsum(reference, axis=1) / m[:, None] - np.cumsum(window, axis=1) / n[:, None])
        d = gap.max(axis=1)
        p = special.kolmogorov(np.sqrt(m * n / (m + n)) * d)
    return np.where((m > 0) & (n > 0), p, 1.0)


def chi2_rows(reference: Floats, window: Floats, keep: npt.NDArray[np.bool_]) -> tuple[Floats, Floats]:
    """Pearson chi-square of homogeneity per row over the slots in `keep`: (statistic, p-value), p = 1 below 2 slots.

    For a 2 x K table the statistic is sum (R n - W m)^2 / (m n (R + W)); equal to `chi2_contingency` row by row.
    """
    m = reference.sum(axis=1, where=keep)
    n = window.sum(axis=1, where=keep)
    column = reference + window
    with np.errstate(divide="ignore", invalid="ignore"):
        cells = (reference * n[:, None] - window * m[:, None]) ** 2 / (column * (m * n)[:, None])
    used = keep & (column > 0)
    statistic = np.sum(cells, axis=1, where=used)
    dof = np.count_nonzero(used, axis=1) - 1
    ok = (dof >= 1) & (m > 0) & (n > 0)
    # Williams' correction (1976): the chi-square's tail is too light for small cells; dividing by q restores it at
    # the p-values BH needs (q is about 1.03 for a 90-row reference, 1.002 for 10,000 rows).
    total = m + n
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse_columns = np.sum(1.0 / column, axis=1, where=used)
        q = 1.0 + (total * (1.0 / m + 1.0 / n) - 1.0) * (total * inverse_columns - 1.0) / (6.0 * total * dof)
    q = np.where(ok & np.isfinite(q), np.maximum(q, 1.0), 1.0)
    return statistic, np.where(ok, special.chdtrc(np.maximum(dof, 1), statistic / q), 1.0)


def effect_rows(reference: Floats, window: Floats, floor: float = PSI_FLOOR) -> tuple[Floats, Floats]:
    """Per row: the Jensen-Shannon distance (base 2) with its null expectation removed, so that a threshold means
    the same shift at every sample size; and the PSI (`psi`, for the exports).

    Between two samples from one distribution over K slots, 8 JSD (in nats) is about chi-square(K - 1) times
    (1/n + 1/m) (the G statistic of the 2 x K table), so pure noise has JSD of about (K - 1)(1/n + 1/m) / 8: a JS
    distance of 0.085 at n = 500 on 20 bins, 0.045 at n = 2,000. That is subtracted from the divergence before the
    square root (floored at 0): a +0.2 sigma shift reads about 0.08 at any n, and noise reads near 0.
    """
    m = reference.sum(axis=1)
    n = window.sum(axis=1)
    both = (m > 0) & (n > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = reference / m[:, None]
        q = window / n[:, None]
        mid = (p + q) / 2.0
        divergence = (special.rel_entr(p, mid).sum(axis=1) + special.rel_entr(q, mid).sum(axis=1)) / 2.0
        slots = np.count_nonzero(reference + window, axis=1)
        noise = (slots - 1) * (1.0 / n + 1.0 / m) / 8.0
        distance = np.sqrt(np.maximum(divergence - noise, 0.0) / math.log(2.0))
        floored_p = np.maximum(p, floor)
        floored_q = np.maximum(q, floor)
        value = np.sum((floored_q - floored_p) * np.log(floored_q / floored_p), axis=1)
    return np.where(both, distance, 0.0), np.where(both, value, 0.0)


def weighted_minimum(pvalues: Floats, weights: Floats) -> Floats:
    """Weighted Bonferroni per row: min over tests of p / weight (weights summing to 1), capped at 1.

    Valid whatever the dependence between the tests (P(min p_i / w_i <= t) <= sum w_i t = t), and as strong as the
    best single test divided by its weight: one strong test is not diluted by weak ones.
    """
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 where a test has no weight: not chosen below
        scaled = np.where(weights > 0, pvalues / weights, np.inf)
    return np.asarray(np.minimum(scaled.min(axis=1), 1.0), dtype=np.float64)


def beyond_pvalues(window_hits: Floats, window_total: Floats, reference_total: Floats) -> Floats:
    """P(at least x of a window's n values fall beyond the range of a reference of m values), both from one
    distribution: the chance that the x most extreme of m + n exchangeable values all fell in the window,
    C(n, x) / C(m + n, x). Exact, and the null of "outside a finite reference" (about 1/(m + 1) of new rows on each
    side by chance). Ties with the reference's extreme only make it conservative."""
    x, n, m = window_hits, window_total, reference_total
    with np.errstate(invalid="ignore"):
        log_p = (
            special.gammaln(n + 1.0)
            - special.gammaln(n - x + 1.0)
            - special.gammaln(m + n + 1.0)
            + special.gammaln(m + n - x + 1.0)
        )
    return np.where(x > 0, np.minimum(np.exp(log_p), 1.0), 1.0)


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
