"""One window's verdict: per-feature statistics, Benjamini-Hochberg across the window's tests, the effect gate, and
the persistence rule that turns window verdicts into a version's drifting state.

Each feature contributes two tests to the window's family:
- the distribution test on the slots the reference has mass in: for a numeric feature the smaller of the binned KS
  and the binned chi-square p-values, doubled (Bonferroni: KS is the better test for location shifts, chi-square for
  scale and shape changes); for a categorical feature the chi-square over its categories (and OTHER if the
  reference had some);
- the novelty test on slots the reference has (almost) no mass in: below its minimum, above its maximum, unseen
  categories, missing values. One-sided Fisher exact per slot, the smallest times the slot count.
A feature drifts when a test is rejected by BH at `alpha` and its effect passes the gate (JS distance for the
distribution test, the excess window share for the novelty test).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gateway.drift.profile import FeatureProfile, Profile, SlotCounts
from gateway.drift.settings import DriftSettings
from gateway.drift.statistics import (
    benjamini_hochberg,
    chi2_contingency,
    js_distance,
    ks_binned,
    novelty_pvalues,
    pool_for_both,
    psi,
)


@dataclass(frozen=True, slots=True)
class FeatureResult:
    name: str
    source: str
    kind: str
    psi: float
    js_distance: float
    ks_statistic: float | None  # numeric features only
    ks_pvalue: float | None
    chi2_pvalue: float
    distribution_pvalue: float
    novel_share: float  # excess window share in slots the reference has no mass in (the novelty test's effect)
    novel_pvalue: float
    missing_ratio: float
    significant: bool  # a test rejected by BH, before the effect gate
    drifted: bool  # significant and past the effect gate

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "kind": self.kind,
            "psi": self.psi,
            "js_distance": self.js_distance,
            "ks_statistic": self.ks_statistic,
            "ks_pvalue": self.ks_pvalue,
            "chi2_pvalue": self.chi2_pvalue,
            "distribution_pvalue": self.distribution_pvalue,
            "novel_share": self.novel_share,
            "novel_pvalue": self.novel_pvalue,
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


@dataclass(frozen=True, slots=True)
class _Partial:
    psi: float
    js: float
    ks_d: float | None
    ks_p: float | None
    chi2_p: float
    p: float


def _distribution(feature: FeatureProfile, window: SlotCounts) -> _Partial:
    ref = np.asarray(feature.counts, dtype=np.int64)
    win = window.slots
    pooled_ref, pooled_win = pool_for_both(ref, win, ordered=feature.kind == "numeric")
    _, _, chi2_p = chi2_contingency(pooled_ref, pooled_win)
    if feature.kind == "numeric":
        d, ks_p = ks_binned(ref, win)
        p = min(1.0, 2.0 * min(ks_p, chi2_p))
        return _Partial(psi(ref, win), js_distance(ref, win), d, ks_p, chi2_p, p)
    return _Partial(psi(ref, win), js_distance(ref, win), None, None, chi2_p, chi2_p)


def _novelty_slots(feature: FeatureProfile, window: SlotCounts) -> list[tuple[int, int, int, int]]:
    """(reference hits, reference total, window hits, window total) per novelty slot of the feature."""
    ref_present = sum(feature.counts)
    win_present = int(window.slots.sum())
    ref_rows = ref_present + feature.missing
    win_rows = win_present + window.missing
    slots = [(feature.missing, ref_rows, window.missing, win_rows)]
    if feature.kind == "numeric":
        slots.append((0, ref_present, window.below, win_present))
        slots.append((0, ref_present, window.above, win_present))
    else:
        slots.append((feature.counts[-1], ref_present, int(window.slots[-1]), win_present))
    return slots


def evaluate_window(
    profile: Profile, counts: Sequence[SlotCounts], settings: DriftSettings, *, index: int, evaluated_at: float
) -> WindowResult:
    """The window's statistics and verdicts; `counts[i]` are the window's counts for `profile.features[i]`."""
    features = profile.features
    partials = [_distribution(f, c) for f, c in zip(features, counts, strict=True)]
    slot_rows = [_novelty_slots(f, c) for f, c in zip(features, counts, strict=True)]
    flat = np.asarray([s for slots in slot_rows for s in slots], dtype=np.float64).reshape(-1, 4)
    slot_p = novelty_pvalues(flat[:, 0], flat[:, 1], flat[:, 2], flat[:, 3])
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = np.nan_to_num(flat[:, 2] / flat[:, 3]) - np.nan_to_num(flat[:, 0] / flat[:, 1])
    novel_p: list[float] = []
    novel_share: list[float] = []
    start = 0
    for slots in slot_rows:
        part = slot_p[start : start + len(slots)]
        best = int(np.argmin(part))
        novel_p.append(min(1.0, float(part[best]) * len(slots)))
        novel_share.append(float(excess[start + best]))
        start += len(slots)
    n = len(features)
    rejected = benjamini_hochberg(np.asarray([p.p for p in partials] + novel_p), settings.alpha)
    samples = int(counts[0].slots.sum()) + counts[0].missing if counts else 0
    results = []
    for i, (feature, partial, window) in enumerate(zip(features, partials, counts, strict=True)):
        dist_drift = bool(rejected[i]) and partial.js >= settings.min_js_distance
        novel_drift = bool(rejected[n + i]) and novel_share[i] >= settings.min_novel_share
        rows = int(window.slots.sum()) + window.missing
        results.append(
            FeatureResult(
                name=feature.name,
                source=feature.source,
                kind=feature.kind,
                psi=partial.psi,
                js_distance=partial.js,
                ks_statistic=partial.ks_d,
                ks_pvalue=partial.ks_p,
                chi2_pvalue=partial.chi2_p,
                distribution_pvalue=partial.p,
                novel_share=novel_share[i],
                novel_pvalue=novel_p[i],
                missing_ratio=window.missing / rows if rows else math.nan,
                significant=bool(rejected[i] or rejected[n + i]),
                drifted=dist_drift or novel_drift,
            )
        )
    return WindowResult(index, samples, evaluated_at, tuple(results))


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
