"""Null calibration and power of the default drift settings on a synthetic 20-feature mix.

The mix (one FP32 [-1, 20] input): 12 normal, 2 lognormal, 1 exponential, 1 tie-heavy rounded normal, and 4
integer-coded categorical columns (profiled as categories since they have few distinct integer values), one with a
rare class at 3 %. Windows are 2,000 rows against a 10,000-row reference unless stated. Everything is seeded.

Measured while sizing the defaults (same harness, other seeds): null windows flagged 0.4 % at alpha = 0.01 (1.5 %
at alpha = 0.05); every power scenario below was flagged in 1,500 of 1,500 windows; the +0.03 sigma shift at
n = 50,000 was significant in 94 % of windows and never passed the gate (largest JS 0.0205, gate 0.04).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from gateway.drift.evaluation import Persistence, WindowResult, evaluate_window
from gateway.drift.profile import Profile, SlotCounts, build_profile
from gateway.drift.settings import DriftSettings
from gateway.signature import Signature, TensorSpec

SIGNATURE = Signature((TensorSpec("x", "FP32", (-1, 20)),), ())
CATEGORY_SHARES = [
    np.array([0.5, 0.3, 0.17, 0.03]),  # column 16: the rare class is code 3
    np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.1]),
    np.array([0.6, 0.4]),
    np.full(10, 0.1),
]
DEFAULTS = DriftSettings()

Array = npt.NDArray[np.float32]


def draw(rng: np.random.Generator, n: int, rare: float = 0.03) -> Array:
    x = np.empty((n, 20), dtype=np.float32)
    z = rng.standard_normal(size=(n, 15), dtype=np.float32)
    x[:, :12] = z[:, :12]
    x[:, 12:14] = np.exp(z[:, 12:14])
    x[:, 14] = rng.standard_exponential(size=n, dtype=np.float32)
    x[:, 15] = np.round(z[:, 14] * 2.0)
    u = rng.random((n, 4))
    for j, shares in enumerate(CATEGORY_SHARES):
        if j == 0:
            shares = np.append(shares[:3] * (1 - rare) / 0.97, rare)
        x[:, 16 + j] = np.minimum(np.searchsorted(np.cumsum(shares), u[:, j], side="right"), len(shares) - 1)
    return x


def reference(rng: np.random.Generator, rows: int) -> Profile:
    return build_profile(SIGNATURE, {"x": draw(rng, rows)}, dataset_sha256="synthetic")


def evaluate(profile: Profile, x: Array, settings: DriftSettings = DEFAULTS) -> WindowResult:
    counts: list[SlotCounts] = [f.count_values(x[:, f.column]) for f in profile.features]
    return evaluate_window(profile, counts, settings, index=0, evaluated_at=0.0)


def test_default_features_are_profiled_as_intended() -> None:
    profile = reference(np.random.default_rng(0), 10_000)
    kinds = [f.kind for f in profile.features]
    assert kinds == ["numeric"] * 15 + ["categorical"] * 5  # the tie-heavy column has 15-ish values: categories
    assert all(len(f.counts) == 20 for f in profile.features[:15])


def test_null_windows_flag_no_more_often_than_alpha_allows() -> None:
    # 1,000 independent replicates, each a fresh 10,000-row reference and a fresh 2,000-row window from the same
    # generators, so the flag count X is Binomial(1000, f) with f <= alpha = 0.01 if the procedure is calibrated.
    # P(X >= 24 | f = 0.01) = 4.2e-5: the flake rate of this bound is below 1e-4 (measured f was 0.004).
    rng = np.random.default_rng(20240501)
    flagged = 0
    persistence = Persistence(DEFAULTS.persistence_k, DEFAULTS.persistence_m)
    turned_on = 0
    for _ in range(1000):
        result = evaluate(reference(rng, 10_000), draw(rng, 2_000))
        flagged += result.drifted
        if persistence.add(result.drifted) and persistence.drifting:
            turned_on += 1
    assert flagged <= 23
    # 2 of the last 3 windows needs two flags within 3 windows: at most 2 * 1000 * f**2 = 0.2 expected turn-ons;
    # P(>= 4) for Poisson(0.2) is 5.5e-5.
    assert turned_on <= 3


def test_null_windows_at_the_time_capped_minimum_stay_calibrated() -> None:
    # A window closed by `max_window_seconds` may be judged on as few as `min_window_size` (200) rows. The same
    # replicates as above at that size: X ~ Binomial(1000, f), and P(X >= 24 | f = 0.01) = 4.2e-5 again (this seed
    # flags 3).
    rng = np.random.default_rng(20261126)
    flagged = sum(evaluate(reference(rng, 10_000), draw(rng, DEFAULTS.min_window_size)).drifted for _ in range(1000))
    assert flagged <= 23


Shift = Callable[[np.random.Generator, Array, Profile], None]


def _mean_shift(rng: np.random.Generator, x: Array, profile: Profile) -> None:
    x[:, 0] += 0.2


def _scale(rng: np.random.Generator, x: Array, profile: Profile) -> None:
    x[:, 1] *= 1.3


def _unseen_category(rng: np.random.Generator, x: Array, profile: Profile) -> None:
    x[rng.random(len(x)) < 0.05, 17] = 99.0


def _missing(rng: np.random.Generator, x: Array, profile: Profile) -> None:
    x[rng.random(len(x)) < 0.10, 2] = np.nan


def _beyond_maximum(rng: np.random.Generator, x: Array, profile: Profile) -> None:
    rows = rng.random(len(x)) < 0.02
    x[rows, 3] = profile.features[3].maximum + 0.01 + rng.random(int(rows.sum()))


@pytest.mark.parametrize(
    ("shift", "rare", "feature"),
    [
        (_mean_shift, 0.03, "x[0]"),
        (_scale, 0.03, "x[1]"),
        (None, 0.08, "x[16]"),  # the rare class goes from 3 % to 8 %
        (_unseen_category, 0.03, "x[17]"),
        (_missing, 0.03, "x[2]"),
        (_beyond_maximum, 0.03, "x[3]"),
    ],
    ids=["mean+0.2sigma", "scale*1.3", "rare3to8pct", "unseen5pct", "missing10pct", "beyondmax2pct"],
)
def test_default_settings_detect_each_required_shift(shift: Shift | None, rare: float, feature: str) -> None:
    # 100 windows; the measured detection rate was 1,500 / 1,500 per scenario, so the true rate is >= 0.997 (99 %
    # confidence), and P(fewer than 95 of 100 | 0.997) = 1.2e-5: flake rate below 1e-4.
    rng = np.random.default_rng(7)
    profile = reference(rng, 10_000)
    detected = 0
    for _ in range(100):
        x = draw(rng, 2_000, rare)
        if shift is not None:
            shift(rng, x, profile)
        result = evaluate(profile, x)
        detected += any(f.drifted and f.name == feature for f in result.features)
    assert detected >= 95


def test_tiny_shift_in_huge_windows_is_significant_but_stopped_by_the_effect_gate() -> None:
    # +0.03 sigma on one normal feature, windows of 50,000 against a reference of 200,000. Measured on other seeds:
    # significant in 94 of 100 windows, so the rate is >= 0.86 (99 % confidence) and P(fewer than 8 of 16 | 0.86)
    # = 9e-5. The gate margin is wide: observed JS 0.016 +- 0.002 (largest of 100: 0.0205) against 0.04.
    rng = np.random.default_rng(11)
    profile = reference(rng, 200_000)
    significant = drifted = 0
    for _ in range(16):
        x = draw(rng, 50_000)
        x[:, 0] += 0.03
        result = evaluate(profile, x)
        first = result.features[0]
        significant += first.significant
        drifted += result.drifted
        assert first.js_distance < 0.75 * DEFAULTS.min_js_distance
    assert significant >= 8
    assert drifted == 0


def test_unseen_bytes_category_is_detected() -> None:
    # The same novelty test on a BYTES input: "new" at 5 % of a 2,000-row window. Each window's novelty p-value is
    # about C(2000, 100) / C(12000, 100) < 1e-70, far past any BH threshold: no flake.
    signature = Signature((TensorSpec("city", "BYTES", (-1,)),), ())
    cities = np.array([b"oslo", b"lima", b"pune", b"kobe"], dtype=object)
    rng = np.random.default_rng(3)
    profile = build_profile(signature, {"city": cities[rng.integers(0, 4, 10_000)]}, dataset_sha256="s")
    feature = profile.features[0]
    for _ in range(20):
        window = cities[rng.integers(0, 4, 2_000)]
        window[rng.random(2_000) < 0.05] = b"new"
        result = evaluate_window(profile, [feature.count_values(window)], DEFAULTS, index=0, evaluated_at=0.0)
        assert result.drifted and result.features[0].novel_share > 0.03


@pytest.mark.parametrize("rows", [90, 280])
def test_small_references_no_longer_false_alarm_tens_of_times_too_often(rows: int) -> None:
    # Issue #14's first finding: with a 90-row reference the chi-square half flagged 11 % of iid 2,000-row windows
    # (2.7 % at 280), because slots were pooled on the window's expected counts only. Pooled on both rows' (and
    # neighbours merged), 300 seeded windows flagged 1.7 % at both sizes when measured; the goal is 1 %, which
    # the novelty test's share still stands between. Bound: X ~ Binomial(300, 0.017) reaches 13 with probability
    # about 2e-3, so this fails a correct implementation rarely, and the old pooling (11 %, 2.7 %) far more often
    # than not at 90 rows.
    rng = np.random.default_rng(rows)
    flagged = sum(evaluate(reference(rng, rows), draw(rng, 2_000)).drifted for _ in range(300))
    assert flagged <= 12, f"{flagged} of 300 null windows flagged with a {rows}-row reference"
