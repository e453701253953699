"""Drift monitor quality on seeded synthetic data: the null false-alarm grid and the power table (issue #14).

    python -m benchmarks.drift_quality                 # 1,000 windows a cell, 500 per power scenario
    python -m benchmarks.drift_quality --reps 200 --power-reps 100

The data: one FP32 [-1, 20] input and one BYTES input.
- x[0..9] normal, x[4] and x[5] correlated at 0.6; x[10], x[11] Student t with 3 degrees of freedom (heavy tails);
  x[12], x[13] lognormal and x[14] exponential (skewed); x[15] a rounded normal (integer-valued, about 15 values);
  x[16..19] integer codes (few values; x[16] has a rare level at 3 %);
- city: 10 common levels (90 %) and a long tail of 400 rare ones (10 %), so a finite reference misses some.
Every null window is judged against a fresh reference (the rate is over references and windows, as a user with
an unknown reference sees it), with the default settings, one window per verdict.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.drift.counting import WindowCounter
from gateway.drift.evaluation import Reference, WindowResult, evaluate_window
from gateway.drift.profile import Profile, build_profile
from gateway.drift.settings import DriftSettings
from gateway.signature import Signature, TensorSpec

WIDE = Signature((TensorSpec("x", "FP32", (-1, 20)),), ())
MIXED = Signature((TensorSpec("x", "FP32", (-1, 20)), TensorSpec("city", "BYTES", (-1,))), ())
CODE_SHARES = (
    np.array([0.5, 0.3, 0.17, 0.03]),  # x[16]: the rare level is code 3
    np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.1]),
    np.array([0.6, 0.4]),
    np.full(10, 0.1),
)
CITIES = np.array([f"city{i}".encode() for i in range(410)], dtype=object)
CITY_SHARES = np.concatenate([np.full(10, 0.09), np.full(400, 0.10 / 400)])
REFERENCE_ROWS = (50, 90, 300, 1_000, 10_000)
WINDOW_ROWS = (200, 500, 2_000, 5_000)
PER_REFERENCE = 20  # power: windows judged against each reference
DEFAULTS = DriftSettings()

Inputs = dict[str, npt.NDArray[Any]]


def draw(rng: np.random.Generator, n: int, *, rare: float = 0.03, correlation: float = 0.6) -> Inputs:
    x = np.empty((n, 20), dtype=np.float32)
    z = rng.standard_normal(size=(n, 15))
    x[:, :10] = z[:, :10]
    x[:, 5] = correlation * z[:, 4] + np.sqrt(1.0 - correlation**2) * z[:, 5]
    x[:, 10:12] = rng.standard_t(3, size=(n, 2))
    x[:, 12:14] = np.exp(z[:, 12:14])
    x[:, 14] = rng.standard_exponential(size=n)
    x[:, 15] = np.round(z[:, 14] * 2.0)
    u = rng.random((n, 4))
    for j, shares in enumerate(CODE_SHARES):
        if j == 0:
            shares = np.append(shares[:3] * (1 - rare) / 0.97, rare)
        x[:, 16 + j] = np.minimum(np.searchsorted(np.cumsum(shares), u[:, j], side="right"), len(shares) - 1)
    city = CITIES[np.minimum(np.searchsorted(np.cumsum(CITY_SHARES), rng.random(n), side="right"), len(CITIES) - 1)]
    return {"x": x, "city": city}


def reference(rng: np.random.Generator, rows: int, signature: Signature = MIXED) -> Profile:
    data = draw(rng, rows)
    return build_profile(signature, {s.name: data[s.name] for s in signature.inputs}, dataset_sha256="synthetic")


class Judge:
    """Counts and judges windows against one profile, as the live monitor does."""

    def __init__(self, profile: Profile, settings: DriftSettings = DEFAULTS) -> None:
        self.profile = profile
        self.settings = settings
        self.counter = WindowCounter(profile, joint=settings.joint)
        self.reference = Reference(profile, joint=settings.joint)

    def __call__(self, inputs: Mapping[str, npt.NDArray[Any]]) -> WindowResult:
        counts = self.counter.count(inputs, {})
        complete = [c for c in counts if c is not None]
        return evaluate_window(
            self.profile, complete, self.settings, index=0, evaluated_at=0.0, reference=self.reference
        )


def null_flags(reference_rows: int, window_rows: int, reps: int, seed: int) -> int:
    """How many of `reps` null windows (each against a fresh reference) drifted."""
    rng = np.random.default_rng([seed, reference_rows, window_rows])
    return sum(Judge(reference(rng, reference_rows))(draw(rng, window_rows)).drifted for _ in range(reps))


Shift = Callable[[np.random.Generator, Inputs, Profile], None]


def _mean(rng: np.random.Generator, data: Inputs, profile: Profile) -> None:
    data["x"][:, 0] += 0.2


def _scale(rng: np.random.Generator, data: Inputs, profile: Profile) -> None:
    data["x"][:, 1] *= 1.3


def _unseen(rng: np.random.Generator, data: Inputs, profile: Profile) -> None:
    data["city"][rng.random(len(data["city"])) < 0.05] = b"new city"


def _missing(rng: np.random.Generator, data: Inputs, profile: Profile) -> None:
    data["x"][rng.random(len(data["x"])) < 0.10, 2] = np.nan


def _beyond(rng: np.random.Generator, data: Inputs, profile: Profile) -> None:
    rows = rng.random(len(data["x"])) < 0.02
    feature = profile.feature("x[3]")
    assert feature is not None
    data["x"][rows, 3] = feature.maximum + 0.01 + rng.random(int(rows.sum()))


# name -> (the feature that must be flagged, shift applied to a null window, rare share, correlation)
SCENARIOS: dict[str, tuple[str, Shift | None, float, float]] = {
    "mean +0.2 sd": ("x[0]", _mean, 0.03, 0.6),
    "scale x1.3": ("x[1]", _scale, 0.03, 0.6),
    "rare class 3 -> 8 %": ("x[16]", None, 0.08, 0.6),
    "5 % unseen category": ("city", _unseen, 0.03, 0.6),
    "10 % newly missing": ("x[2]", _missing, 0.03, 0.6),
    "2 % beyond the maximum": ("x[3]", _beyond, 0.03, 0.6),
    "correlation 0.6 -> -0.6": ("joint:reconstruction_error", None, 0.03, -0.6),
}


def power(scenario: str, window_rows: int, reps: int, seed: int, reference_rows: int = 10_000) -> int:
    """How many of `reps` shifted windows flag the scenario's feature: a fresh reference every PER_REFERENCE windows,
    since the power to see a small shift depends on where the reference happened to put the feature (with a 10,000
    row reference, +0.2 sd is caught in 60 % to 82 % of windows depending on the reference alone)."""
    feature, shift, rare, correlation = SCENARIOS[scenario]
    rng = np.random.default_rng([seed, window_rows])
    hits = 0
    for start in range(0, reps, PER_REFERENCE):
        profile = reference(rng, reference_rows)
        judge = Judge(profile)
        for _ in range(min(PER_REFERENCE, reps - start)):
            data = draw(rng, window_rows, rare=rare, correlation=correlation)
            if shift is not None:
                shift(rng, data, profile)
            hits += any(f.drifted and f.name == feature for f in judge(data).features)
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=1000, help="null windows per grid cell")
    parser.add_argument("--power-reps", type=int, default=500, help="windows per power scenario and size")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--power-only", action="store_true", help="skip the null grid")
    args = parser.parse_args()
    started = time.perf_counter()
    if not args.power_only:
        _grid(args.reps, args.seed)
    _power_table(args.power_reps, args.seed)
    print(f"\n({time.perf_counter() - started:.0f} s)")


def _grid(reps: int, seed: int) -> None:
    print(f"Null windows flagged (of {reps} a cell; alpha {DEFAULTS.alpha}):\n")
    print("| reference rows | " + " | ".join(f"n = {n:,}" for n in WINDOW_ROWS) + " |")
    print("|---|" + "---|" * len(WINDOW_ROWS))
    for rows in REFERENCE_ROWS:
        cells = [null_flags(rows, n, reps, seed) / reps for n in WINDOW_ROWS]
        print(f"| {rows:,} | " + " | ".join(f"{c:.1%}" for c in cells) + " |", flush=True)


def _power_table(reps: int, seed: int) -> None:
    print(f"\nShifted windows flagged (of {reps}; a fresh 10,000-row reference every {PER_REFERENCE}):\n")
    print("| shift | n = 500 | n = 2,000 |")
    print("|---|---|---|")
    for name in SCENARIOS:
        cells = [power(name, n, reps, seed) / reps for n in (500, 2_000)]
        print(f"| {name} | " + " | ".join(f"{c:.1%}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
