"""Each drift statistic against scipy on the same data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from gateway.drift.statistics import (
    benjamini_hochberg,
    chi2_contingency,
    js_distance,
    ks_binned,
    novelty_pvalues,
    pool_for_both,
    psi,
)


def _counts_on_all_points(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bins whose edges are every distinct data point, so the binned CDF is the exact empirical CDF."""
    edges = np.unique(np.concatenate([a, b]))
    # searchsorted side="right" on the edges, as the profile counts: bin i holds values in [edges[i-1], edges[i]).
    ca = np.bincount(np.searchsorted(edges, a, side="right"), minlength=len(edges) + 1)
    cb = np.bincount(np.searchsorted(edges, b, side="right"), minlength=len(edges) + 1)
    return ca, cb


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.3])
def test_ks_on_fine_bins_equals_scipy_ks_2samp(shift: float) -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=3000)
    b = rng.normal(loc=shift, size=1200)
    ca, cb = _counts_on_all_points(a, b)
    d, p = ks_binned(ca, cb)
    exact = stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(exact.statistic, abs=1e-12)
    en = len(a) * len(b) / (len(a) + len(b))
    # Our p-value is the Kolmogorov limit, exactly scipy's kstwobign...
    assert p == pytest.approx(stats.kstwobign.sf(math.sqrt(en) * d), rel=1e-9, abs=1e-300)
    # ...and close to ks_2samp's asymptotic p-value (scipy uses the finite-n kstwo with n = round(en)).
    assert p == pytest.approx(exact.pvalue, rel=0.05, abs=1e-6)


def test_ks_on_coarse_bins_is_conservative() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=5000)
    b = rng.normal(loc=0.2, size=2000)
    edges = np.quantile(a, np.arange(1, 20) / 20)
    ca = np.bincount(np.searchsorted(edges, a, side="right"), minlength=20)
    cb = np.bincount(np.searchsorted(edges, b, side="right"), minlength=20)
    d, p = ks_binned(ca, cb)
    exact = stats.ks_2samp(a, b, method="asymp")
    assert d <= exact.statistic + 1e-12
    assert p >= stats.kstwobign.sf(math.sqrt(5000 * 2000 / 7000) * exact.statistic)


def test_ks_of_empty_side_is_no_evidence() -> None:
    assert ks_binned(np.array([5, 5]), np.array([0, 0])) == (0.0, 1.0)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_chi2_matches_scipy_chi2_contingency(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = rng.integers(5, 500, size=8)
    win = rng.integers(5, 100, size=8)
    stat, dof, p = chi2_contingency(ref, win)
    expected = stats.chi2_contingency(np.vstack([ref, win]), correction=False)
    assert stat == pytest.approx(expected.statistic, rel=1e-10)
    assert dof == expected.dof
    assert p == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


def test_chi2_leaves_out_slots_empty_on_both_sides() -> None:
    stat, dof, p = chi2_contingency(np.array([10, 0, 30]), np.array([5, 0, 20]))
    expected = stats.chi2_contingency(np.array([[10, 30], [5, 20]]), correction=False)
    assert stat == pytest.approx(expected.statistic) and dof == 1
    assert p == pytest.approx(expected.pvalue)


@pytest.mark.parametrize("seed", [6, 7])
def test_js_matches_scipy_jensenshannon_base2(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 100, size=12)
    win = rng.integers(0, 100, size=12)
    win[3] = 0  # an empty slot on one side needs no smoothing
    assert js_distance(ref, win) == pytest.approx(jensenshannon(ref, win, base=2), rel=1e-10)


def test_js_is_bounded_by_one_for_disjoint_supports() -> None:
    assert js_distance(np.array([5, 0]), np.array([0, 7])) == pytest.approx(1.0)


def test_psi_is_symmetric_and_zero_on_equal_shares() -> None:
    p = np.array([10, 20, 30, 40])
    q = np.array([25, 25, 25, 25])
    assert psi(p, q) == pytest.approx(psi(q, p))
    assert psi(p, 2 * p) == pytest.approx(0.0)
    shares_p, shares_q = p / p.sum(), q / q.sum()
    assert psi(p, q) == pytest.approx(float(np.sum((shares_q - shares_p) * np.log(shares_q / shares_p))))


def test_novelty_matches_one_sided_fisher_exact() -> None:
    cases = [(0, 10_000, 3, 2_000), (4, 10_000, 12, 2_000), (30, 500, 2, 400), (0, 300, 0, 50), (7, 100, 40, 60)]
    ref_hits, ref_total, win_hits, win_total = (np.array(c) for c in zip(*cases, strict=True))
    got = novelty_pvalues(ref_hits, ref_total, win_hits, win_total)
    for (a, n_ref, x, n_win), p in zip(cases, got, strict=True):
        table = [[x, n_win - x], [a, n_ref - a]]
        assert p == pytest.approx(stats.fisher_exact(table, alternative="greater").pvalue, rel=1e-8)


def test_novelty_with_empty_reference_slot_is_the_exchangeable_tail() -> None:
    # C(n, x) / C(N + n, x): one stray value beyond the maximum of 10,000 reference rows in a 2,000-row window has
    # p = 1/6, so a single outlier is never evidence (a binomial test against a zero share would say p = 0).
    p = novelty_pvalues(np.array([0, 0]), np.array([10_000, 10_000]), np.array([1, 40]), np.array([2_000, 2_000]))
    assert p[0] == pytest.approx(2000 / 12000)
    assert p[1] < 1e-25


def test_pooling_asks_enough_of_both_rows_and_drops_massless_slots() -> None:
    # A 90-row reference against a 2,000-row window: each cell must expect 5 in the reference row too, i.e. a
    # column total of at least 5 * 2090 / 90 = 116.1; the 0-reference slot (novelty's business) is dropped first.
    ref = np.array([10, 10, 10, 10, 10, 10, 10, 10, 10, 0])
    win = np.array([220, 220, 220, 220, 220, 220, 220, 220, 240, 7])
    pooled_ref, pooled_win = pool_for_both(ref, win, ordered=True)
    assert pooled_ref.tolist() == [10] * 9 and pooled_win.tolist() == [220] * 8 + [240]  # 230 >= 116: kept
    ref = np.array([4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 9, 9])
    win = np.full(20, 100)
    pooled_ref, pooled_win = pool_for_both(ref, win, ordered=True)
    needed = 5 * (ref.sum() + win.sum()) / ref.sum()  # 5 * 2090 / 90
    assert ((pooled_ref + pooled_win) >= needed).all() and pooled_ref.sum() == 90 and pooled_win.sum() == 2000
    assert len(pooled_ref) == 10  # neighbours merged in pairs: the shape kept, coarser
    # Categories: the short ones pooled; a pool still short folds into the smallest other slot.
    pooled_ref, pooled_win = pool_for_both(np.array([500, 500, 1, 2]), np.array([1000, 990, 3, 2]), ordered=False)
    assert pooled_ref.tolist() == [500, 503] and pooled_win.tolist() == [1000, 995]
    pooled_ref, pooled_win = pool_for_both(np.array([500, 500, 3, 3]), np.array([500, 500, 3, 3]), ordered=False)
    assert pooled_ref.tolist() == [500, 500, 6] and pooled_win.tolist() == [500, 500, 6]  # columns 6 < 10, pool 12


def test_benjamini_hochberg_matches_scipy_adjusted_pvalues() -> None:
    rng = np.random.default_rng(8)
    p = np.concatenate([rng.uniform(size=30), rng.uniform(0, 1e-3, size=5)])
    for q in (0.01, 0.05, 0.2):
        assert (benjamini_hochberg(p, q) == (stats.false_discovery_control(p, method="bh") <= q)).all()
    assert benjamini_hochberg(np.array([]), 0.05).size == 0
