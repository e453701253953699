"""Decision quality of the rollout controller: seeded traffic, simulated on a fake clock, through the real controller
and the real gates (gateway/rollout/controller.py, gates.py, statistics.py); only the traffic is synthetic.

Each simulated second brings `rate` requests (Poisson). A step's share of them goes to the candidate, the rest to the
baseline; in a shadow step a share of the baseline's requests is also copied to the candidate. Errors are Bernoulli,
latencies log-normal (scaled by the scenario's slowdown for the candidate, shadow copies included),
labels Bernoulli, and a candidate's label differs from the baseline's on a request with probability
1 - agreement. The baseline's latency and labels are sampled at the rate the gateway's tap uses (the candidate's
share over the baseline's), so both arms bring about as many samples as in the gateway.

    python -m benchmarks.rollout_decisions                 # 200 rollouts per scenario, the README's table
    python -m benchmarks.rollout_decisions --runs 50 --rate 500 --no-shadow
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.rollout.controller import RolloutController, Traffic, fresh_state
from gateway.rollout.observations import MAX_PREDICTIONS, Arm, DriftVerdict, Recorder, ShadowArm, StepObservations
from gateway.rollout.settings import Gates, RolloutSettings, Step
from gateway.rollout.state import Identity
from gateway.rollout.statistics import latency_counts
from gateway.shadow.runner import Sink
from gateway.tap import Tap

IDENTITY = Identity("candidate", 2, "", "baseline", 1, "")

# The example rollout, but for the latency gate: a candidate exactly 1.5x slower sits ON a 1.5 ratio gate,
# which no test can call a breach; 1.25 is the gate that a 1.5x slowdown must clearly break.
STEPS = (
    Step(shadow=100, duration=30, min_requests=500),
    Step(weight=5, duration=60, min_requests=500),
    Step(weight=25, duration=60, min_requests=1000),
    Step(weight=50, duration=60, min_requests=1000),
    Step(weight=100, duration=30),
)
GATES = Gates(
    max_error_rate=0.01,
    max_error_rate_increase=0.005,
    max_p99_latency_ratio=1.25,
    min_shadow_agreement=0.95,
    block_on_drift=True,
    max_prediction_shift_js=0.10,
)
SETTINGS = RolloutSettings(
    candidate="candidate", steps=STEPS, interval=5.0, failure_limit=2, progress_deadline=1800.0, gates=GATES
)


@dataclass(frozen=True, slots=True)
class World:
    """The traffic and the two versions' behaviour."""

    rate: float = 200.0  # requests per second
    baseline_errors: float = 0.005
    candidate_errors: float = 0.005
    latency_ms: float = 5.0  # median request latency of the baseline
    sigma: float = 0.3  # log-normal spread of both
    slowdown: float = 1.0  # the candidate's latencies are the baseline's times this
    positive: float = 0.63  # share of label 1 in the baseline's answers
    agreement: float = 0.99  # share of requests where the candidate's label equals the baseline's


SCENARIOS = {
    "good": World(),
    "errors +2 points": World(candidate_errors=0.025),
    "1.5x slower": World(slowdown=1.5),
}


class SimRecorder:
    """A Recorder fed with synthetic traffic, one slice of simulated time at a time."""

    def __init__(self, world: World, traffic: Traffic, rng: np.random.Generator) -> None:
        self._world = world
        self._share = traffic.candidate_share or 0.0
        self._shadow = traffic.shadow_percent / 100.0
        self._rng = rng
        base = 1.0 - self._share
        self._base_rate = 1.0 if base <= 0 else min(1.0, max(self._share / base, 0.01))
        self.candidate_requests = self.candidate_errors = self.baseline_requests = self.baseline_errors = 0
        self._latency = {"candidate": latency_counts(np.zeros(0)), "baseline": latency_counts(np.zeros(0))}
        self._labels: dict[str, list[npt.NDArray[np.int64]]] = {"candidate": [], "baseline": []}
        self._shadow_counts = {"completed": 0, "failed": 0}
        self._rows = self._agreed = 0
        self._paired = {"primary": latency_counts(np.zeros(0)), "shadow": latency_counts(np.zeros(0))}
        self._paired_labels: dict[str, list[npt.NDArray[np.int64]]] = {"primary": [], "shadow": []}

    @property
    def taps(self) -> dict[str, Tap]:
        return {}

    @property
    def sink(self) -> Sink | None:
        return None

    def advance(self, seconds: float) -> int:
        """Simulate `seconds` of traffic; returns the requests the candidate served to clients."""
        world, rng = self._world, self._rng
        total = int(rng.poisson(world.rate * seconds))
        served = int(rng.binomial(total, self._share))
        kept = total - served
        self._serve("candidate", served, world.candidate_errors, world.latency_ms * world.slowdown, 1.0)
        self._serve("baseline", kept, world.baseline_errors, world.latency_ms, self._base_rate)
        self.candidate_requests += served
        self.baseline_requests += kept
        if self._shadow > 0:
            self._copy(int(rng.binomial(kept, self._shadow)))
        return served

    def _serve(self, arm: str, n: int, error_rate: float, median_ms: float, sampled: float) -> None:
        rng = self._rng
        errors = int(rng.binomial(n, error_rate))
        if arm == "candidate":
            self.candidate_errors += errors
        else:
            self.baseline_errors += errors
        kept = int(rng.binomial(n - errors, sampled))
        self._latency[arm] += latency_counts(median_ms / 1e3 * np.exp(rng.normal(0.0, self._world.sigma, kept)))
        if sum(len(p) for p in self._labels[arm]) < MAX_PREDICTIONS:
            self._labels[arm].append(self._answers(kept, candidate=arm == "candidate"))

    def _answers(self, n: int, *, candidate: bool) -> npt.NDArray[np.int64]:
        labels = (self._rng.random(n) < self._world.positive).astype(np.int64)
        if candidate:
            flip = self._rng.random(n) >= self._world.agreement
            labels = np.where(flip, 1 - labels, labels)
        return labels

    def _copy(self, copies: int) -> None:
        world, rng = self._world, self._rng
        failed = int(rng.binomial(copies, world.candidate_errors))
        completed = copies - failed
        self._shadow_counts["failed"] += failed
        self._shadow_counts["completed"] += completed
        self._rows += completed
        self._agreed += int(rng.binomial(completed, world.agreement))
        # The gateway pairs each copy's request latency with the same request's on the candidate (the primary's
        # model time swapped for the candidate's); here the candidate's whole request is `slowdown` times slower.
        seconds = world.latency_ms / 1e3 * np.exp(rng.normal(0.0, world.sigma, completed))
        self._paired["primary"] += latency_counts(seconds)
        self._paired["shadow"] += latency_counts(seconds * world.slowdown)
        if sum(len(p) for p in self._paired_labels["primary"]) < MAX_PREDICTIONS:
            primary = (rng.random(completed) < world.positive).astype(np.int64)
            flip = rng.random(completed) >= world.agreement
            self._paired_labels["primary"].append(primary)
            self._paired_labels["shadow"].append(np.where(flip, 1 - primary, primary))

    def read(self) -> StepObservations:
        def joined(parts: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

        return StepObservations(
            task="classification",
            candidate=Arm(
                self.candidate_requests, self.candidate_errors, self._latency["candidate"].copy(),
                joined(self._labels["candidate"]),
            ),
            baseline=Arm(
                self.baseline_requests, self.baseline_errors, self._latency["baseline"].copy(),
                joined(self._labels["baseline"]),
            ),
            shadow=ShadowArm(
                completed=self._shadow_counts["completed"], failed=self._shadow_counts["failed"], rows=self._rows,
                agreed=self._agreed, primary_latency=self._paired["primary"].copy(),
                shadow_latency=self._paired["shadow"].copy(),
                primary_predictions=joined(self._paired_labels["primary"]),
                shadow_predictions=joined(self._paired_labels["shadow"]),
            ),
            drift=DriftVerdict(),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Outcome:
    phase: str  # succeeded | failed
    seconds: float  # from the start of the rollout to its end
    exposed: int  # requests the candidate served to clients (shadow copies excluded)
    step: int  # the step it ended in (0-based)
    reason: str


def simulate(world: World, settings: RolloutSettings, seed: int, *, horizon: float = 4 * 3600.0) -> Outcome:
    """One rollout, from its first step to success or failure (validation is not simulated)."""
    rng = np.random.default_rng(seed)
    recorders: list[SimRecorder] = []

    def make(controller: RolloutController, traffic: Traffic) -> Recorder:
        recorder = SimRecorder(world, traffic, rng)
        recorders.append(recorder)
        return recorder

    now = 0.0
    state = fresh_state("route", IDENTITY, settings, now, "simulated")
    controller = RolloutController(settings, state, recorders=make, now=now)
    exposed = 0
    tick = settings.interval
    while controller.state.active and now < horizon:
        recorder = controller.recorder
        assert isinstance(recorder, SimRecorder)
        exposed += recorder.advance(tick)
        now += tick
        if controller.due(now):
            evaluation = controller.evaluate()
            if evaluation is not None:
                controller.apply(evaluation, now)
    final = controller.state
    return Outcome(final.phase, now, exposed, final.step, final.reason)


@dataclass(frozen=True, slots=True)
class Summary:
    scenario: str
    runs: int
    rolled_back: int
    seconds: list[float]
    exposed: list[int]  # of the rolled-back runs
    stuck: int  # failed on the progress deadline rather than on a gate

    def row(self) -> str:
        share = self.rolled_back / self.runs
        minutes = [s / 60 for s in self.seconds]
        exposure = f"{_median(self.exposed):,.0f} / {_p95(self.exposed):,.0f}" if self.exposed else "-"
        return (
            f"| {self.scenario} | {self.rolled_back} of {self.runs} ({share:.1%}) | "
            f"{_median(minutes):.1f} / {_p95(minutes):.1f} | {exposure} | {self.stuck} |"
        )


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def _p95(values: Sequence[float]) -> float:
    return float(np.percentile(values, 95)) if values else math.nan


def summarise(name: str, world: World, settings: RolloutSettings, runs: int, seed: int) -> Summary:
    outcomes = [simulate(world, settings, seed * 1_000_003 + i) for i in range(runs)]
    failed = [o for o in outcomes if o.phase != "succeeded"]
    return Summary(
        name,
        runs,
        len(failed),
        [o.seconds for o in outcomes],
        [o.exposed for o in failed],
        sum("progress deadline" in o.reason for o in failed),
    )


HEADER = (
    "| candidate | rolled back | minutes to decide, median / p95 | requests it served before the rollback, "
    "median / p95 | of them on the deadline |\n|---|---|---|---|---|"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-shadow", action="store_true", help="start at the 5 %% step, without the shadow step")
    args = parser.parse_args(argv)
    settings = SETTINGS if not args.no_shadow else dataclasses.replace(SETTINGS, steps=STEPS[1:])
    started = time.perf_counter()
    print(f"{args.runs} rollouts per candidate at {args.rate:g} req/s, steps: "
          + ", ".join(s.describe() for s in settings.steps))  # fmt: skip
    print(HEADER)
    for name, world in SCENARIOS.items():
        summary = summarise(name, dataclasses.replace(world, rate=args.rate), settings, args.runs, args.seed)
        print(summary.row(), flush=True)
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
