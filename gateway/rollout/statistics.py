"""Always-valid statistics for rollout gates: pure functions of running counts, safe to evaluate at every tick.

A rollout controller looks at its gates every few seconds on data that keeps accumulating, so a fixed-sample test
(a z test at level alpha) would be checked hundreds of times and its false-alarm rate would grow with every look.
Every test here is instead a non-negative supermartingale under its null, so Ville's inequality bounds the chance
it EVER crosses 1/alpha by alpha, however often and whenever it is looked at:

- proportions (error rates, "share of requests slower than X"): a one-sided beta-mixture likelihood ratio against
  Bernoulli(p0), exact at any n, no normal approximation;
- quantiles (p99 latency): the count of samples at or below the true quantile is Binomial(n, q), so inverting the
  same test gives ranks, hence order statistics, that bracket the quantile at every n at once;
- differences of means (candidate minus control): the normal-mixture SPRT confidence sequence of Johari et al.
  (docs: shared/reference/experiments.md, section 2), asymptotic through its plug-in variance.

Latencies are kept as counts on fixed log-spaced bins (`LATENCY_EDGES`), so a gate costs O(bins) whatever n is,
and the quantile bounds widen to bin edges, which keeps them conservative. As in `gateway.drift.statistics`, only
`scipy.special` and `math` are used: `scipy.stats` objects are too slow for a path evaluated per tick.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import optimize, special

Side = Literal["above", "below"]
Verdict = Literal["above", "below", "undecided"]
Counts = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]

# Latency bins: 8 per octave (each edge 2**(1/8), about 9 %, above the last) from 2**-20 s (about 1 us) to
# 2**10 s (17 min), with a catch-all bin on each side: [0, 2**-20) and [2**10, inf). Powers of two make the edges
# exact binary fractions at every octave, and 9 % is finer than any latency-ratio gate worth setting.
_BINS_PER_OCTAVE = 8
_LOWEST_OCTAVE = -20
_HIGHEST_OCTAVE = 10
LATENCY_EDGES: Floats = np.concatenate(
    (
        [0.0],
        np.exp2(
            np.arange(_LOWEST_OCTAVE * _BINS_PER_OCTAVE, _HIGHEST_OCTAVE * _BINS_PER_OCTAVE + 1) / _BINS_PER_OCTAVE
        ),
        [math.inf],
    )
).astype(np.float64)
LATENCY_EDGES.setflags(write=False)

# proportion_bounds works on p0 in [_P_FLOOR, 1 - _P_FLOOR]: below 1e-12 the prior's b = (1 - p0) / p0 swamps any
# realistic n in double precision, and a bound that close to 0 or 1 displays as 0 or 1 anyway.
_P_FLOOR = 1e-12


def _check_probability(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:  # also refuses NaN
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")


def _check_counts(successes: int, n: int) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n] = [0, {n}], got {successes!r}")


def _check_side(side: str) -> None:
    if side not in ("above", "below"):
        raise ValueError(f"side must be 'above' or 'below', got {side!r}")


def prior_strength(p0: float) -> tuple[float, float]:
    """Beta(a, b) mixing prior for a Bernoulli test against p0: mean p0, standard deviation min(p0, 1 - p0).

    That is strength m = a + b = p0 (1 - p0) / sd^2 - 1, clamped to at least 1 (at p0 = 1/2 the formula gives 0);
    returns (a, b) = (p0 m, (1 - p0) m). The spread scales with p0, so a 0.1 % error-rate gate mixes over error
    rates of a few tenths of a percent rather than over [0, 1], where most of the prior would be wasted on
    alternatives nobody needs detected. Symmetric: prior_strength(1 - p0) == reversed(prior_strength(p0)).
    """
    _check_probability("p0", p0)
    sd = min(p0, 1.0 - p0)
    m = max(p0 * (1.0 - p0) / (sd * sd) - 1.0, 1.0)
    return p0 * m, (1.0 - p0) * m


def _log_side_mass(a: float, b: float, p0: float, side: Side) -> float:
    """log P(Beta(a, b) on `side` of p0); -inf when it underflows."""
    # betaincc is the upper tail computed directly, i.e. I_{1-p0}(b, a) without rounding 1 - p0 first.
    mass = float(special.betaincc(a, b, p0) if side == "above" else special.betainc(a, b, p0))
    return math.log(mass) if mass > 0.0 else -math.inf


def log_evidence(successes: int, n: int, p0: float, side: Side) -> float:
    """Log of the one-sided beta-mixture likelihood ratio against Bernoulli(p0) after n trials, `successes` ones.

    The mixing prior is Beta(a, b) from `prior_strength`, truncated to (p0, 1] for "above" and [0, p0) for
    "below". For "above" every component q > p0 has E_p[(q/p0)^X ((1-q)/(1-p0))^(1-X)] <= 1 under every p <= p0
    (the expectation is linear in p and equals 1 at p = p0), so the mixture is a non-negative supermartingale under
    the whole composite null p <= p0, and P(ever >= 1/alpha) <= alpha (Ville). "below" mirrors it for p >= p0.

    Closed form, with S = successes:
    log B(a+S, b+n-S) + log P_post(side) - log B(a, b) - log P_prior(side) - S log p0 - (n-S) log(1-p0),
    P(side) the mass of the (posterior or prior) Beta on that side of p0. Returns -inf when the posterior side
    mass underflows to 0 (the data sit far on the other side: no evidence), 0.0 when n == 0. Non-decreasing in S
    for "above", non-increasing for "below". Stable for n up to 10**7 and p0 in [1e-4, 1 - 1e-4] (and well
    beyond: the terms are betaln/betainc of the data, never a sum of n likelihoods).
    """
    _check_counts(successes, n)
    _check_probability("p0", p0)
    _check_side(side)
    return _log_evidence(successes, n, p0, side)


def _log_evidence(successes: int, n: int, p0: float, side: Side) -> float:
    """log_evidence without the argument checks: the searches below call it a few hundred times per gate."""
    if n == 0:
        return 0.0
    a, b = prior_strength(p0)
    failures = n - successes
    log_post_mass = _log_side_mass(a + successes, b + failures, p0, side)
    if log_post_mass == -math.inf:
        return -math.inf
    # log1p keeps (n - S) log(1 - p0) exact for tiny p0, where it is the term that matters.
    log_null = (successes * math.log(p0) if successes else 0.0) + (failures * math.log1p(-p0) if failures else 0.0)
    return _log_beta(a + successes, b + failures) + log_post_mass - _log_prior(p0, side) - log_null


@functools.lru_cache(maxsize=4096)
def _log_prior(p0: float, side: Side) -> float:
    """log B(a, b) + log P_prior(side): a function of p0 alone, and the gates test a few fixed p0 at every tick."""
    a, b = prior_strength(p0)
    return _log_beta(a, b) + _log_side_mass(a, b, p0, side)


def _log_beta(a: float, b: float) -> float:
    # math.lgamma on floats is ~10x cheaper than the scipy ufunc on scalars; exact enough (a, b > 0, sums < 1e8).
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def proportion_test(successes: int, n: int, p0: float, alpha: float) -> Verdict:
    """Sequential test of a Bernoulli rate against p0, valid at level alpha in each direction under any looks.

    'above' when log_evidence(..., 'above') >= log(1/alpha): evidence that p > p0, wrongly given with probability
    at most alpha over the whole stream when p <= p0; 'below' likewise for p < p0; else 'undecided'.
    (Both cannot hold at once: each needs the data on its own side of p0.)
    """
    _check_probability("alpha", alpha)
    threshold = -math.log(alpha)
    if log_evidence(successes, n, p0, "above") >= threshold:
        return "above"
    if log_evidence(successes, n, p0, "below") >= threshold:
        return "below"
    return "undecided"


def _rejects(successes: int, n: int, p0: float, side: Side, threshold: float) -> bool:
    return _log_evidence(successes, n, p0, side) >= threshold


def _nearest_accepted(successes: int, n: int, side: Side, threshold: float, start: float, stop: float) -> float:
    """The p0 nearest `start` (0 or 1), going towards `stop` (the observed rate, never rejected), that the `side`
    test does not reject: `start` itself when the test does not reject the point next to it.

    Brackets the boundary by walking out from `stop` (first step: the normal approximation's width, then doubling)
    and solves log_evidence = threshold inside the bracket with Brent's method: about a dozen evaluations, where a
    plain bisection from the ends took a hundred (the gates call this at every tick)."""
    span = abs(stop - start)
    if span <= _P_FLOOR:
        return start
    toward = 1.0 if start > stop else -1.0  # from `stop` towards `start`
    edge = start - toward * _P_FLOOR  # the last point before `start`

    def excess(p0: float) -> float:
        return max(_log_evidence(successes, n, p0, side) - threshold, -1e300)

    if excess(edge) < 0.0:
        return start  # nothing is rejected all the way to `start`
    rate = successes / n
    width = math.sqrt(2.0 * threshold * max(rate * (1.0 - rate), 1.0 / n) / n) + threshold / n
    stop = min(max(stop, _P_FLOOR), 1.0 - _P_FLOOR)  # a rate of 0 or 1 is no p0 to test
    accepted = stop
    while True:
        point = stop + toward * width
        if (point - edge) * toward >= 0.0:
            rejected = edge
            break
        if excess(point) >= 0.0:
            rejected = point
            break
        accepted, width = point, width * 2.0
    low, high = sorted((accepted, rejected))
    root = float(optimize.brentq(excess, low, high, xtol=1e-20, rtol=1e-12))
    # Return the side of the root the test does not reject (the solver's root may sit a hair inside the rejection).
    for _ in range(64):
        if excess(root) < 0.0 or root == accepted:
            break
        root = root + (accepted - root) * 1e-9 if abs(accepted - root) > abs(root) * 1e-9 else accepted
    return root


def proportion_bounds(successes: int, n: int, alpha: float) -> tuple[float, float]:
    """A confidence sequence for p: [lo, hi] holds p at every n at once with probability >= 1 - alpha.

    It is (the hull of) the p0 in [0, 1] that neither one-sided test rejects at level alpha / 2: lo is the smallest
    p0 the 'above' test does not reject, hi the largest the 'below' test does not; lo is 0 (hi 1) when the test
    rejects nothing down to p0 = 1e-12 (up to 1 - 1e-12). The evidence is not provably monotone in p0 (the prior
    moves with p0), but numerically it is, but for a sliver at n = S = 1 far below any threshold; the search walks
    out from the observed rate to the first rejected point and solves for the boundary there (well under a
    millisecond).
    """
    _check_counts(successes, n)
    _check_probability("alpha", alpha)
    if n == 0:
        return 0.0, 1.0
    threshold = -math.log(alpha / 2.0)
    # The maximum-likelihood rate is never rejected (the mixture averages likelihood ratios that are <= 1 there),
    # so each search has an accepted end.
    return _bound(successes, n, threshold, "lower"), _bound(successes, n, threshold, "upper")


def proportion_bound(successes: int, n: int, alpha: float, which: Literal["lower", "upper"]) -> float:
    """One edge of a confidence sequence for p, at level alpha on its own side: the lower edge is wrong (above p)
    with probability at most alpha, at every n at once; so is the upper (below p). Half the cost of both."""
    _check_counts(successes, n)
    _check_probability("alpha", alpha)
    if n == 0:
        return 0.0 if which == "lower" else 1.0
    return _bound(successes, n, -math.log(alpha), which)


def _bound(successes: int, n: int, threshold: float, which: Literal["lower", "upper"]) -> float:
    rate = successes / n
    if which == "lower":
        return 0.0 if successes == 0 else _nearest_accepted(successes, n, "above", threshold, 0.0, rate)
    return 1.0 if successes == n else _nearest_accepted(successes, n, "below", threshold, 1.0, rate)


def _unrejected_extreme(n: int, q: float, side: Side, threshold: float) -> int:
    """For 'above' the largest s in [0, n] the test against q does not reject, for 'below' the smallest, by
    bisection on s: the evidence is monotone in s, and neither test rejects the s whose rate s / n is on the far
    side of q from it (floor(n q) for 'above', ceil(n q) for 'below'), which starts the search."""
    if side == "above":
        accepted, rejected = min(math.floor(n * q), n), n + 1
        if not _rejects(n, n, q, side, threshold):
            return n
    else:
        accepted, rejected = max(math.ceil(n * q), 0), -1
        if not _rejects(0, n, q, side, threshold):
            return 0
    while abs(rejected - accepted) > 1:
        middle = (accepted + rejected) // 2
        if _rejects(middle, n, q, side, threshold):
            rejected = middle
        else:
            accepted = middle
    return accepted


def quantile_rank_bounds(n: int, q: float, alpha: float) -> tuple[int, int]:
    """(s_lo, s_hi): with probability >= 1 - alpha, at every n at once, S_n = #{samples <= the true q-quantile}
    lies in [s_lo, s_hi].

    For a continuous distribution S_n ~ Binomial(n, q) exactly, so s_lo is the smallest s the 'below' test
    (p0 = q, level alpha / 2) does not reject and s_hi the largest s the 'above' test does not reject. Hence the
    true quantile lies in [X_(s_lo), X_(s_hi + 1)) (1-based order statistics; s_lo == 0 means no lower bound,
    s_hi >= n no upper bound). With atoms the bracket still holds, closed: the count at or below the quantile is
    Binomial with rate >= q and the count strictly below with rate <= q, which is each test's composite null.
    0 <= s_lo <= ceil(n q), floor(n q) <= s_hi <= n, and s_lo <= s_hi (the two tests together reject with
    probability <= alpha < 1, so never every s at once).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    _check_probability("q", q)
    _check_probability("alpha", alpha)
    if n == 0:
        return 0, 0
    threshold = -math.log(alpha / 2.0)
    return _unrejected_extreme(n, q, "below", threshold), _unrejected_extreme(n, q, "above", threshold)


def _check_histogram(counts: npt.NDArray[np.int64], edges: npt.NDArray[np.float64]) -> None:
    if counts.ndim != 1 or edges.ndim != 1 or len(edges) != len(counts) + 1:
        raise ValueError(f"edges must be 1-D with len(counts) + 1 entries, got {len(edges)} for {len(counts)} counts")
    if len(counts) and np.any(counts < 0):
        raise ValueError("counts must be >= 0")
    if not np.all(np.diff(edges) > 0):  # also refuses NaN
        raise ValueError("edges must be strictly increasing")


def _bin_of_rank(cumulative: npt.NDArray[np.int64], rank: int) -> int:
    """Index of the bin holding the rank-th smallest value (1-based rank <= total)."""
    return int(np.searchsorted(cumulative, rank, side="left"))


def histogram_quantile(
    counts: npt.NDArray[np.int64], edges: npt.NDArray[np.float64], q: float, alpha: float
) -> tuple[float, float, float]:
    """(estimate, lower, upper) of the q-quantile of values binned into counts[i] over [edges[i], edges[i+1]).

    The estimate is the upper edge of the bin holding rank ceil(q n) (the empirical quantile, rounded up to its
    bin). [lower, upper) is the confidence sequence of `quantile_rank_bounds` widened to bin edges: lower is the
    lower edge of the bin holding rank s_lo (edges[0] when s_lo == 0), upper the upper edge of the bin holding rank
    s_hi + 1 (math.inf when s_hi + 1 > n). Conservative by construction: X_(s) >= its bin's lower edge and
    X_(s) < its bin's upper edge. With no values, (nan, edges[0], inf).
    """
    _check_histogram(counts, edges)
    _check_probability("q", q)
    _check_probability("alpha", alpha)
    cumulative = np.cumsum(counts, dtype=np.int64)
    n = int(cumulative[-1]) if len(cumulative) else 0
    if n == 0:
        return math.nan, float(edges[0]), math.inf
    # q n computed in floating point lands a hair above an integer for some q (0.07 * 100 = 7.000000000000001),
    # which would move ceil to the next rank; a relative tolerance far below one rank absorbs that.
    product = q * n
    rank = min(max(math.ceil(product - 1e-9 * max(product, 1.0)), 1), n)
    estimate = float(edges[_bin_of_rank(cumulative, rank) + 1])
    s_lo, s_hi = quantile_rank_bounds(n, q, alpha)
    lower = float(edges[0]) if s_lo == 0 else float(edges[_bin_of_rank(cumulative, s_lo)])
    upper = math.inf if s_hi + 1 > n else float(edges[_bin_of_rank(cumulative, s_hi + 1) + 1])
    return estimate, lower, upper


def count_above(
    counts: npt.NDArray[np.int64],
    edges: npt.NDArray[np.float64],
    threshold: float,
    conservative: Literal["low", "high"],
) -> int:
    """Bounds on the number of values >= `threshold` in a histogram over [edges[i], edges[i+1]).

    'low' counts only the bins entirely at or above it (lower edge >= threshold): a lower bound. 'high' counts
    every bin whose upper edge > threshold, i.e. that may hold such a value: an upper bound. A quantile-ratio gate
    ("candidate p99 <= 1.5 x control p99") becomes a proportion test on these counts, each side erring safe.
    """
    _check_histogram(counts, edges)
    if conservative == "low":
        keep = edges[:-1] >= threshold
    elif conservative == "high":
        keep = edges[1:] > threshold
    else:
        raise ValueError(f"conservative must be 'low' or 'high', got {conservative!r}")
    return int(counts[keep].sum())


def latency_counts(seconds: npt.NDArray[np.float64]) -> Counts:
    """Counts of `seconds` on LATENCY_EDGES (len(LATENCY_EDGES) - 1 bins), vectorised.

    Bin i holds [LATENCY_EDGES[i], LATENCY_EDGES[i+1]); values under 2**-20 s (negative ones included: a clock step)
    land in bin 0 and values from 2**10 s up (inf included) in the last. NaN is refused with ValueError: it is a
    measuring bug upstream, and any bin it were put in would bias a gate.
    """
    values = np.asarray(seconds, dtype=np.float64).ravel()
    if np.isnan(values).any():
        raise ValueError("seconds must not contain NaN")
    bins = len(LATENCY_EDGES) - 1
    index = np.searchsorted(LATENCY_EDGES, values, side="right") - 1
    np.clip(index, 0, bins - 1, out=index)
    return np.bincount(index, minlength=bins).astype(np.int64, copy=False)


def normal_mixture_bounds(estimate: float, variance: float, tau: float, alpha: float) -> tuple[float, float]:
    """The mSPRT confidence sequence for a difference of means (experiments.md, section 2).

    estimate +/- sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V))), V = `variance` of the
    estimate (s_A^2 / n_A + s_B^2 / n_B), tau the standard deviation of the normal mixing distribution (about the
    smallest effect worth detecting). It is exactly the set of theta whose mixture likelihood ratio
    sqrt(V / (V + tau^2)) exp(tau^2 (d - theta)^2 / (2 V (V + tau^2))) stays below 1/alpha. Valid at every n at
    once only asymptotically (plug-in variances): require a minimum sample before trusting it. variance <= 0 is
    refused (ValueError): with no spread the mixture is undefined, and a zero-width interval would be a false
    certainty.
    """
    if not math.isfinite(estimate):
        raise ValueError(f"estimate must be finite, got {estimate!r}")
    if not (variance > 0.0 and math.isfinite(variance)):
        raise ValueError(f"variance must be positive and finite, got {variance!r}")
    if not (tau > 0.0 and math.isfinite(tau)):
        raise ValueError(f"tau must be positive and finite, got {tau!r}")
    _check_probability("alpha", alpha)
    ratio = variance / (tau * tau)
    half_width = math.sqrt(variance * (1.0 + ratio) * (-2.0 * math.log(alpha) + math.log1p(1.0 / ratio)))
    return estimate - half_width, estimate + half_width
