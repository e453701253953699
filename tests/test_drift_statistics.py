"""Each drift statistic against scipy on the same data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from gateway.drift.statistics import (
    benjamini_hochberg,
    beyond_pvalues,
    chi2_contingency,
    chi2_rows,
    effect_rows,
    js_distance,
    ks_rows,
    novelty_pvalues,
    pool_for_both,
    psi,
    rank_z_rows,
    weighted_minimum,
)


def _counts_on_all_points(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bins whose edges are every distinct data point, so the binned CDF is the exact empirical CDF."""
    edges = np.unique(np.concatenate([a, b]))
    # searchsorted side="right" on the edges, as the profile counts: bin i holds values in [edges[i-1], edges[i]).
    ca = np.bincount(np.searchsorted(edges, a, side="right"), minlength=len(edges) + 1)
    cb = np.bincount(np.searchsorted(edges, b, side="right"), minlength=len(edges) + 1)
    return ca, cb


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.3])
def test_normal_scores_z_on_fine_bins_equals_the_van_der_waerden_statistic_on_raw_values(shift: float) -> None:
    # Independent implementation on the raw values: scores Phi^-1(rank / (N + 1)) with mid-ranks, the window's
    # centred score sum over its permutation standard deviation.
    rng = np.random.default_rng(1)
    a = np.round(rng.normal(size=3000), 2)  # ties, which the mid-ranks must handle
    b = np.round(rng.normal(loc=shift, size=1200), 2)
    ca, cb = _counts_on_all_points(a, b)
    z, z_scale = (v[0] for v in rank_z_rows(ca[None].astype(float), cb[None].astype(float)))
    pooled = np.concatenate([a, b])
    m, n, total = len(a), len(b), len(pooled)
    for got, scores in (
        (z, stats.norm.ppf(stats.rankdata(pooled) / (total + 1))),
        (z_scale, np.abs(stats.norm.ppf(stats.rankdata(pooled) / (total + 1)))),
    ):
        centred = scores - scores.mean()
        expected = centred[m:].sum() / math.sqrt(n * m / (total * (total - 1)) * (centred**2).sum())
        assert got == pytest.approx(expected, rel=1e-9)
    if shift >= 0.1:
        assert z > 2  # the window sits higher (expected z: 2.9 at +0.1, 8.8 at +0.3)


def test_normal_scores_z_is_standard_normal_under_the_null() -> None:
    # 4,000 null tables on 20 quantile bins: mean about 0, variance about 1 (standard errors 0.016 and 0.022).
    rng = np.random.default_rng(3)
    edges = np.quantile(rng.normal(size=100_000), np.arange(1, 20) / 20)
    ref = np.stack([np.bincount(np.searchsorted(edges, rng.normal(size=500)), minlength=20) for _ in range(4000)])
    win = np.stack([np.bincount(np.searchsorted(edges, rng.normal(size=300)), minlength=20) for _ in range(4000)])
    for z in rank_z_rows(ref.astype(float), win.astype(float)):
        assert abs(z.mean()) < 0.07 and abs(z.var() - 1) < 0.1


def test_a_wider_window_moves_the_scale_z_and_not_the_location_z() -> None:
    rng = np.random.default_rng(4)
    edges = np.quantile(rng.normal(size=100_000), np.arange(1, 20) / 20)
    ref = np.bincount(np.searchsorted(edges, rng.normal(size=10_000)), minlength=20).astype(float)
    win = np.bincount(np.searchsorted(edges, rng.normal(scale=1.3, size=2_000)), minlength=20).astype(float)
    z, z_scale = (v[0] for v in rank_z_rows(ref[None], win[None]))
    assert abs(z) < 3 and z_scale > 8


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_binned_ks_is_conservative_against_scipy_on_the_raw_values(shift: float) -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=5000)
    b = rng.normal(loc=shift, size=2000)
    edges = np.quantile(a, np.arange(1, 20) / 20)
    ca = np.bincount(np.searchsorted(edges, a, side="right"), minlength=20).astype(float)
    cb = np.bincount(np.searchsorted(edges, b, side="right"), minlength=20).astype(float)
    exact = stats.ks_2samp(a, b, method="asymp")
    assert ks_rows(ca[None], cb[None])[0] >= stats.kstwobign.sf(math.sqrt(5000 * 2000 / 7000) * exact.statistic)


def test_row_functions_agree_with_their_one_feature_forms() -> None:
    rng = np.random.default_rng(5)
    ref = rng.integers(5, 400, size=(6, 12)).astype(float)
    win = rng.integers(5, 200, size=(6, 12)).astype(float)
    ref[2, 8:] = win[2, 8:] = 0  # a shorter feature, zero-padded
    keep = ref > 0
    statistic, p = chi2_rows(ref, win, keep)
    for i in range(6):
        stat_i, _, p_i = chi2_contingency(ref[i], win[i])
        assert statistic[i] == pytest.approx(stat_i, rel=1e-9)
        assert p_i <= p[i] < min(1.0, 1.5 * p_i + 1e-12)  # Williams' correction: a little larger, never smaller
        assert effect_rows(ref, win)[1][i] == pytest.approx(psi(ref[i], win[i]), rel=1e-9)


def test_williams_correction_fades_with_large_counts() -> None:
    small = chi2_rows(np.array([[4.0, 6, 5, 5]]), np.array([[90.0, 110, 95, 105]]), np.ones((1, 4), bool))[1][0]
    big = chi2_rows(np.array([[400.0, 600, 500, 500]]), np.array([[90.0, 110, 95, 105]]), np.ones((1, 4), bool))
    assert small > chi2_contingency(np.array([4, 6, 5, 5]), np.array([90, 110, 95, 105]))[2]
    assert big[1][0] == pytest.approx(
        chi2_contingency(np.array([400, 600, 500, 500]), np.array([90, 110, 95, 105]))[2], rel=0.02
    )


def test_corrected_js_removes_the_noise_of_the_sample_sizes() -> None:
    # Raw JS distance of pure noise on 20 bins is about 0.085 at n = 500 and 0.045 at n = 2,000 against 10,000
    # reference rows; with its null expectation removed the median is 0 at both sizes, and a +0.2 sigma shift reads
    # about the same at both sizes (its true JS distance on these bins is about 0.084).
    rng = np.random.default_rng(9)
    edges = np.quantile(rng.normal(size=200_000), np.arange(1, 20) / 20)

    def counts(n: int, shift: float = 0.0) -> np.ndarray:
        return np.bincount(np.searchsorted(edges, rng.normal(loc=shift, size=n)), minlength=20).astype(float)

    for n in (500, 2000):
        ref = np.stack([counts(10_000) for _ in range(200)])
        noise = effect_rows(ref, np.stack([counts(n) for _ in range(200)]))[0]
        shifted = effect_rows(ref, np.stack([counts(n, 0.2) for _ in range(200)]))[0]
        raw = np.array([js_distance(r, w) for r, w in zip(ref, np.stack([counts(n) for _ in range(200)]), strict=True)])
        assert np.median(noise) == 0.0 and np.median(raw) > 0.04
        assert 0.07 < np.median(shifted) < 0.095


def test_weighted_minimum_is_the_smallest_p_over_its_weight() -> None:
    p = np.array([[0.001, 0.5, 1.0], [0.2, 0.01, 1.0], [1.0, 1.0, 1.0]])
    w = np.array([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.0, 0.9, 0.1]])
    assert weighted_minimum(p, w) == pytest.approx([0.001 / 0.6, 0.01 / 0.3, 1.0])


def test_beyond_range_pvalue_is_the_fisher_tail_with_no_reference_hits() -> None:
    x, n, m = np.array([1.0, 40.0, 0.0]), np.array([2000.0, 2000.0, 500.0]), np.array([10_000.0, 10_000.0, 90.0])
    expected = novelty_pvalues(np.zeros(3), m, x, n)
    assert beyond_pvalues(x, n, m) == pytest.approx(expected, rel=1e-9)


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
