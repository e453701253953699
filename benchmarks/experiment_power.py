"""The experiment test's error rates by simulation: A/A false alarms under continuous monitoring (against a z-test
read at the same looks), and the samples per arm at which +2 points on a 50 % conversion rate is found.

    python -m benchmarks.experiment_power             # 1,000 A/A and 500 A/B experiments, a look every 100
    python -m benchmarks.experiment_power --smoke     # a few, to check it runs

Each experiment draws Bernoulli outcomes per arm, and the gateway's own SequentialTest (gateway/experiment/
sequential.py) looks after every 100 samples per arm. Reported: the share of A/A experiments that ever declare a
difference (at most alpha by construction) next to a fixed-sample z-test's share at the same looks; and for the A/B
case the samples per arm by which 80 % of experiments have decided, next to the fixed-horizon sample size for 80 %
power (two-sided, same alpha), which is only valid when read once.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import numpy as np
from scipy import stats

from gateway.experiment.sequential import Arm, SequentialTest

STEP = 100


def first_decisions(p_a: float, p_b: float, experiments: int, max_n: int, seed: int, *, alpha: float, tau: float
                    ) -> tuple[list[int | None], list[int | None]]:  # fmt: skip
    """Per experiment, the samples per arm at the first look that decided: (the mSPRT's, a repeated z-test's)."""
    rng = np.random.default_rng(seed)
    looks = max_n // STEP
    a = rng.binomial(STEP, p_a, size=(experiments, looks)).cumsum(axis=1)
    b = rng.binomial(STEP, p_b, size=(experiments, looks)).cumsum(axis=1)
    z_critical = stats.norm.ppf(1 - alpha / 2)
    sequential: list[int | None] = []
    naive: list[int | None] = []
    for i in range(experiments):
        test = SequentialTest(alpha=alpha, proportion=True, tau=tau)
        hit: int | None = None
        z_hit: int | None = None
        for k in range(looks):
            n = (k + 1) * STEP
            control, candidate = Arm(n, float(a[i, k]), float(a[i, k])), Arm(n, float(b[i, k]), float(b[i, k]))
            if hit is None:
                test = test.update(control, candidate)
                if test.low > 0 or test.high < 0:
                    hit = n
            if z_hit is None:
                se = math.sqrt(control.variance / n + candidate.variance / n)
                if se > 0 and abs(candidate.mean - control.mean) / se > z_critical:
                    z_hit = n
            if hit is not None and z_hit is not None:
                break
        sequential.append(hit)
        naive.append(z_hit)
    return sequential, naive


def quantile_n(hits: list[int | None], share: float) -> int | None:
    ordered = sorted(h for h in hits if h is not None)
    needed = math.ceil(share * len(hits))
    return ordered[needed - 1] if len(ordered) >= needed else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiment_power", description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--tau", type=float, default=SequentialTest().tau)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    aa_runs, ab_runs = (20, 20) if args.smoke else (1_000, 500)
    aa, aa_naive = first_decisions(0.5, 0.5, aa_runs, 20_000, 1, alpha=args.alpha, tau=args.tau)
    called = sum(h is not None for h in aa)
    naive = sum(h is not None for h in aa_naive)
    print(f"A/A, {aa_runs} experiments, a look every {STEP} up to 20,000 per arm (alpha {args.alpha:g}):")
    print(f"  always-valid test: {called} declared a difference ({called / aa_runs:.1%})")
    print(f"  z-test read at every look: {naive} ({naive / aa_runs:.1%})")
    ab, _ = first_decisions(0.50, 0.52, ab_runs, 60_000, 2, alpha=args.alpha, tau=args.tau)
    n80 = quantile_n(ab, 0.8)
    fixed = (stats.norm.ppf(1 - args.alpha / 2) + stats.norm.ppf(0.8)) ** 2 * (0.5 * 0.5 + 0.52 * 0.48) / 0.02**2
    found = sum(h is not None for h in ab)
    print(f"50 % -> 52 %, {ab_runs} experiments up to 60,000 per arm: {found} decided ({found / ab_runs:.1%})")
    print(f"  80 % of experiments decided by {n80:,} per arm" if n80 else "  fewer than 80 % decided")
    print(f"  fixed horizon for 80 % power, read once: {math.ceil(fixed):,} per arm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
