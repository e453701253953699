"""One window's verdict: one test per feature, Benjamini-Hochberg across the window's features, the effect gate, and
the persistence rule that turns window verdicts into a version's drifting state.

Each feature's p-value is the weighted minimum (Bonferroni with weights; valid whatever the tests' dependence) of
the tests that suit its kind (weights below):
- location (numeric): the normal-scores rank test on the bins, the most efficient rank test of a shift;
- scale (numeric): the same scores' absolute values, for a wider or narrower window;
- KS (continuous numeric): the largest CDF gap, for any other change of shape;
- chi-square (categories, and integer columns binned by value): homogeneity on the slots the reference has mass
  in, after merging slots until both rows expect 5 (the reference's own noise counts as much as the window's), and
  pooling categories whose presence in the profile may be luck;
- novelty: values where the reference has (almost) no mass: beyond its range (exact null for a finite reference),
  in OTHER (Good-Turing: the reference's singletons foretell how often unseen categories turn up), one value
  standing out in OTHER (a new category), newly missing. One-sided per slot, the smallest times the slot count.
The joint monitor's reconstruction error, when on, is one more feature: location one-sided (only growing errors
are drift) and beyond-range.

A feature drifts when BH at `alpha` rejects its test and its effect passes a gate: the JS distance with its null
expectation removed (`min_js_distance`), or the novelty slot's share above what the reference foretells
(`min_novel_share`). The weights were chosen on benchmarks/drift_quality.py's grid: every cell at or under 1 % false
alarms, and the most power left for a shift.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

from gateway.drift.counting import monitored
from gateway.drift.profile import FeatureProfile, Profile, SlotCounts
from gateway.drift.settings import DriftSettings
from gateway.drift.statistics import (
    benjamini_hochberg,
    beyond_pvalues,
    chi2_contingency,
    chi2_rows,
    effect_rows,
    ks_rows,
    novelty_pvalues,
    pool_for_both,
    rank_z_rows,
    weighted_minimum,
)

Floats = npt.NDArray[np.float64]

# Weights of (location, scale, KS, chi-square, novelty). Location leads for numeric features since a shift is what
# most drift is and its test is the most efficient one; a novelty signal is either absent or overwhelming (p-values
# of 1e-10 and below), so a small weight costs it nothing. The chi-square judges slots fixed in advance (categories,
# an integer column's values) and not a continuous column's quantile bins: those are the reference's own order
# statistics, so the reference row is not the multinomial sample the test assumes, and with a window 10 times the
# reference the chi-square's tail at 1e-4 is 3 to 8 times too heavy (benchmarks/drift_quality.py); the rank tests
# and KS are sums and maxima of the same cells and stay calibrated.
QUANTILE_WEIGHTS = (0.75, 0.1, 0.1, 0.0, 0.05)
VALUE_WEIGHTS = (0.4, 0.1, 0.0, 0.45, 0.05)
CATEGORICAL_WEIGHTS = (0.0, 0.0, 0.0, 0.95, 0.05)
JOINT_WEIGHTS = (0.95, 0.0, 0.0, 0.0, 0.05)
MIN_EXPECTED = 5.0  # per cell of the chi-square table, on both rows


@dataclass(frozen=True, slots=True)
class FeatureResult:
    name: str
    source: str
    kind: str
    psi: float
    js_distance: float  # null expectation removed (0: indistinguishable from noise)
    location_pvalue: float | None  # numeric features only
    scale_pvalue: float | None
    ks_pvalue: float | None
    chi2_pvalue: float | None  # categories and integer value bins only
    novel_share: float  # window share in the novelty slot above what the reference foretells
    novel_pvalue: float
    pvalue: float  # the feature's combined test, before BH
    missing_ratio: float
    significant: bool  # rejected by BH, before the effect gate
    drifted: bool  # significant and past the effect gate

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "kind": self.kind,
            "psi": self.psi,
            "js_distance": self.js_distance,
            "location_pvalue": self.location_pvalue,
            "scale_pvalue": self.scale_pvalue,
            "ks_pvalue": self.ks_pvalue,
            "chi2_pvalue": self.chi2_pvalue,
            "novel_share": self.novel_share,
            "novel_pvalue": self.novel_pvalue,
            "pvalue": self.pvalue,
            "missing_ratio": self.missing_ratio,
            "significant": self.significant,
            "drifted": self.drifted,
        }


@dataclass(frozen=True, slots=True)
class WindowResult:
    index: int
    samples: int
    evaluated_at: float
    features: tuple[FeatureResult, ...]

    @property
    def drifted(self) -> bool:
        return any(f.drifted for f in self.features)

    @property
    def significant(self) -> bool:
        return any(f.significant for f in self.features)

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "samples": self.samples,
            "evaluated_at": self.evaluated_at,
            "drifted": self.drifted,
            "significant": self.significant,
            "drifted_features": [f.name for f in self.features if f.drifted],
            "features": [f.to_json() for f in self.features],
        }


class Reference:
    """A profile's reference side as matrices (one zero-padded row per monitored feature), built once per version."""

    def __init__(self, profile: Profile, *, joint: bool) -> None:
        self.features: tuple[FeatureProfile, ...] = monitored(profile, joint=joint)
        features = self.features
        width = max((len(f.counts) for f in features), default=1)
        self.counts = np.zeros((len(features), width), dtype=np.float64)
        for i, f in enumerate(features):
            self.counts[i, : len(f.counts)] = f.counts
        self.last = np.asarray([len(f.counts) - 1 for f in features])
        self.numeric = np.asarray([f.kind == "numeric" for f in features], dtype=np.bool_)
        self.joint = np.zeros(len(features), dtype=np.bool_)
        self.joint[len(profile.features) :] = True  # monitored() appends the joint monitor's errors, if any
        self.present = self.counts.sum(axis=1)
        self.missing = np.asarray([f.missing for f in features], dtype=np.float64)
        self.has_mass = self.counts > 0
        by_value = np.asarray([f.by_value for f in features], dtype=np.bool_)
        weights = np.where(by_value[:, None], VALUE_WEIGHTS, QUANTILE_WEIGHTS)
        weights = np.where(self.numeric[:, None], weights, CATEGORICAL_WEIGHTS)
        self.weights = np.where(self.joint[:, None], JOINT_WEIGHTS, weights)
        self.chi_rows = np.flatnonzero(self.weights[:, 3] > 0)  # the features a chi-square judges
        # OTHER's reference hits under the null: its count plus Good-Turing's unseen mass (singletons / m).
        self.rows = np.arange(len(features))
        other = self.counts[self.rows, self.last]
        self.other_hits = np.where(self.numeric, 0.0, other + np.asarray([_singletons(f) for f in features]))
        # The most any one value in OTHER can have had in the reference: 0 if the profile kept every category it
        # saw, else at most the smallest kept count (the profile kept the most frequent).
        kept_min = np.asarray([min(f.counts[:-1], default=0) for f in features], dtype=np.float64)
        self.cut = np.where(self.numeric | (other <= 0), 0.0, kept_min)
        # Novelty slots, three per feature: 0 missing; 1 below the minimum (numeric) or OTHER (categorical); 2 above
        # the maximum (numeric) or the most frequent single value in OTHER (categorical: one new category at 5 %
        # stands out of a long tail of rare ones, whose values come a few times each; its reference count was at
        # most the cut, so its test is exact or conservative). Their reference hits and rows under the null:
        present, missing, numeric = self.present, self.missing, self.numeric
        self.null_hits = np.stack([missing, np.where(numeric, 0.0, self.other_hits), self.cut], axis=1)
        self.null_total = np.stack([present + missing, present, present], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.stack(
                [
                    missing / (present + missing),
                    np.where(numeric, 1.0 / (present + 1.0), self.other_hits / present),
                    np.where(numeric, 1.0 / (present + 1.0), self.cut / present),
                ],
                axis=1,
            )
        self.null_share = np.where(np.isfinite(share), share, 0.0)  # beyond each end: 1/(m + 1) by chance
        # Slots whose reference has no hits at all: the exact exchangeable tail (statistics.beyond_pvalues).
        self.beyond = np.zeros((len(features), 3), dtype=np.bool_)
        self.beyond[:, 1] = numeric
        self.beyond[:, 2] = numeric | (self.cut <= 0)


def _singletons(feature: FeatureProfile) -> float:
    if feature.kind == "numeric":
        return 0.0
    if feature.rare_levels is not None:
        return float(feature.rare_levels[0])
    return float(sum(c == 1 for c in feature.counts[:-1]))  # a version-1 profile: the kept categories' only


def _window_matrix(reference: Reference, counts: Sequence[SlotCounts]) -> tuple[Floats, Floats]:
    """The window's slot counts as a matrix, and per feature (missing, below, above, the most frequent OTHER value's
    count, how many distinct values OTHER may hold)."""
    slots = np.zeros_like(reference.counts)
    extra = np.zeros((len(counts), 5), dtype=np.float64)
    for i, c in enumerate(counts):
        slots[i, : len(c.slots)] = c.slots
        extra[i, :3] = (c.missing, c.below, c.above)
        if c.unseen:
            extra[i, 3:] = (max(c.unseen.values()), len(c.unseen) + c.untracked)
    return slots, extra


def _shape_pvalues(reference: Reference, window: Floats) -> Floats:
    """Chi-square per feature that is judged by one (NaN for the others); whole-matrix where no slot needs merging
    (numeric value bins against references of thousands of rows), else merged feature by feature."""
    pvalues = np.full(len(window), np.nan)
    judged = reference.chi_rows
    if not len(judged):
        return pvalues
    ref, keep, win = reference.counts[judged], reference.has_mass[judged], window[judged]
    m = reference.present[judged]
    n = win.sum(axis=1, where=keep)
    with np.errstate(divide="ignore", invalid="ignore"):
        needed = MIN_EXPECTED * (m + n) / np.minimum(m, n)
    numeric = reference.numeric[judged]
    fine = (np.all((ref + win >= needed[:, None]) | ~keep, axis=1) & numeric) | (n <= 0)
    _, pvalues[judged] = chi2_rows(ref, win, keep)
    for j in np.flatnonzero(~fine):
        i = judged[j]
        end = reference.last[i] + 1
        row_ref, row_win = ref[j, :end].astype(np.int64), win[j, :end].astype(np.int64)
        if not numeric[j]:
            row_ref, row_win = _established(row_ref, row_win)
        pooled_ref, pooled_win = pool_for_both(row_ref, row_win, ordered=bool(numeric[j]))
        pvalues[i] = chi2_contingency(pooled_ref, pooled_win)[2]
    return pvalues


def _established(
    ref: npt.NDArray[np.int64], win: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A categorical feature's slots as the chi-square may judge them: categories whose column total is too small
    to have been sure of a reference hit join OTHER (the last slot).

    A category is kept in the profile because the reference held it, so a rare one's reference count is at least 1
    by selection: with a column total of 3 against a 50-row reference and a 2,000-row window, the null puts it in
    the reference with probability 7 %, yet every kept one is there. Pooling those with OTHER (which holds the rare
    categories the reference missed) decides membership by the column total, which the null treats alike on both
    sides, so the test stays valid. Past a total where a miss had probability under 1e-3, selection is immaterial.
    When the profile cut a long tail at `max_categories`, the kept categories near the cut are likewise lucky
    draws and join OTHER too.
    """
    m, n = float(ref.sum()), float(win.sum())
    if m <= 0 or n <= 0:
        return ref, win
    sure = math.log(1e-3) / math.log(n / (m + n))
    small = (ref + win)[:-1] < sure
    if ref[-1] > 0 and len(ref) > 1:
        # The profile kept only the top categories: those that made the cut by a small margin are the lucky draws
        # of many alike (the winner's curse), so anything under twice the cut goes to OTHER too.
        small |= ref[:-1] < 2 * int(ref[:-1].min())
    pooled_ref = np.append(ref[:-1][~small], ref[:-1][small].sum() + ref[-1])
    pooled_win = np.append(win[:-1][~small], win[:-1][small].sum() + win[-1])
    return pooled_ref, pooled_win


def _novelty(reference: Reference, window: Floats, extra: Floats) -> tuple[Floats, Floats]:
    """(p-value, excess share) per feature from its novelty slots (see Reference for the slots and their nulls)."""
    rows = len(window)
    present_w = window.sum(axis=1)
    numeric = reference.numeric
    hits = np.empty((rows, 3))
    hits[:, 0] = extra[:, 0]
    hits[:, 1] = np.where(numeric, extra[:, 1], window[reference.rows, reference.last])
    hits[:, 2] = np.where(numeric, extra[:, 2], extra[:, 3])
    totals = np.empty((rows, 3))
    totals[:, 0] = present_w + extra[:, 0]
    totals[:, 1:] = present_w[:, None]
    live = hits > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = np.where(live, hits / totals, 0.0) - reference.null_share
    pvalues = np.ones((rows, 3))
    beyond = reference.beyond & live
    if beyond.any():
        pvalues[beyond] = beyond_pvalues(hits[beyond], totals[beyond], reference.null_total[beyond])
    # The exact hypergeometric tail where the reference has hits too, only where the window's share is above the
    # reference's (elsewhere the p-value is at least about one half; 1 is conservative and the common case).
    counted = ~reference.beyond & live & (excess > 0)
    if counted.any():
        pvalues[counted] = novelty_pvalues(
            reference.null_hits[counted], reference.null_total[counted], hits[counted], totals[counted]
        )
    # A value standing out in OTHER was the largest of this many: its p-value times that.
    pvalues[:, 2] = np.where(numeric, pvalues[:, 2], np.minimum(pvalues[:, 2] * np.maximum(extra[:, 4], 1.0), 1.0))
    best = np.argmin(pvalues, axis=1)
    return np.minimum(pvalues[reference.rows, best] * 3.0, 1.0), excess[reference.rows, best]


def evaluate_window(
    profile: Profile,
    counts: Sequence[SlotCounts],
    settings: DriftSettings,
    *,
    index: int,
    evaluated_at: float,
    reference: Reference | None = None,
) -> WindowResult:
    """The window's statistics and verdicts; `counts[i]` are the window's counts for the i-th monitored feature
    (the profile's features, then the joint monitor's errors when `counts` has one more entry)."""
    if reference is None:
        reference = Reference(profile, joint=len(counts) > len(profile.features))
    features = reference.features
    if len(counts) != len(features):
        raise ValueError(f"{len(counts)} count vectors for {len(features)} monitored features")
    if not features:
        return WindowResult(index, 0, evaluated_at, ())
    window, extra = _window_matrix(reference, counts)
    z_location, z_scale = rank_z_rows(reference.counts, window)
    # Student's t on the smaller side's degrees of freedom: with a reference of 50-90 rows the score sum's tail is
    # heavier than the normal's at the p-values BH needs (about 1e-4); at thousands of rows this is the normal.
    dof = np.maximum(np.minimum(reference.present, window.sum(axis=1)) - 1.0, 1.0)
    upper = special.stdtr(dof, -np.abs(z_location))
    location = np.where(reference.joint, np.where(z_location > 0, upper, 1.0 - upper), 2.0 * upper)
    location = np.where(reference.numeric, location, 1.0)
    scale = np.where(reference.numeric, 2.0 * special.stdtr(dof, -np.abs(z_scale)), 1.0)
    ks = np.where(reference.numeric, ks_rows(reference.counts, window), 1.0)
    shape = _shape_pvalues(reference, window)
    novel_p, novel_share = _novelty(reference, window, extra)
    tests = np.stack([location, scale, ks, np.where(np.isnan(shape), 1.0, shape), novel_p], axis=1)
    combined = weighted_minimum(tests, reference.weights)
    rejected = benjamini_hochberg(combined, settings.alpha)
    js, psi = effect_rows(reference.counts, window)
    drifted = rejected & ((js >= settings.min_js_distance) | (novel_share >= settings.min_novel_share))
    rows = window.sum(axis=1) + extra[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        missing_ratio = extra[:, 0] / rows
    # Plain lists first: float() on numpy scalars, 13 per feature, costs more than the statistics.
    columns = zip(
        features,
        psi.tolist(),
        js.tolist(),
        location.tolist(),
        scale.tolist(),
        ks.tolist(),
        reference.numeric.tolist(),
        shape.tolist(),
        novel_share.tolist(),
        novel_p.tolist(),
        combined.tolist(),
        missing_ratio.tolist(),
        rows.tolist(),
        rejected.tolist(),
        drifted.tolist(),
        strict=True,
    )
    results = tuple(
        FeatureResult(
            f.name,
            f.source,
            f.kind,
            ps,
            j,
            lp if num else None,
            sp if num else None,
            kp if num else None,
            None if cp != cp else cp,  # NaN: no chi-square judges this feature
            ns,
            nvp,
            p,
            mr if r else math.nan,
            g,
            d,
        )
        for f, ps, j, lp, sp, kp, num, cp, ns, nvp, p, mr, r, g, d in columns
    )
    return WindowResult(index, int(rows[0]), evaluated_at, results)


class Persistence:
    """k of the last m window verdicts: `drifting` holds while at least k of them drifted."""

    def __init__(self, k: int, m: int) -> None:
        self._k = k
        self._history: deque[bool] = deque(maxlen=m)
        self.drifting = False

    def add(self, drifted: bool) -> bool:
        """Record one window's verdict; return True if the drifting state changed."""
        self._history.append(drifted)
        now = sum(self._history) >= self._k
        changed = now != self.drifting
        self.drifting = now
        return changed

    @property
    def recent(self) -> tuple[bool, ...]:
        return tuple(self._history)
