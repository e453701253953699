"""Decision quality, simulated on a fake clock with seeded traffic through the real controller and gates
(benchmarks/rollout_decisions.py): a good candidate is rarely rolled back, a bad one almost always, and before it
has served anyone when the rollout starts with a shadow step.

The runs are seeded, so each count is the same on every run of the same code. The bounds are the issue's: at most
1 % of good rollouts rolled back (2 of 200) and at least 99 % of bad ones (198 of 200). How far they are from them:
with seed 1 no good rollout of 200 is rolled back and every bad one is, each on a gate; in 2,000 further good
rollouts (seed 99) none was rolled back, so the rate is below 0.15 % (95 %, rule of three), at which 3 or more of
200 has probability 0.4 %: a change that moves the seeded count past 2 is far more likely a regression than bad
luck. (Before the prediction-shift G-test spent its alpha over its looks, 2 of those 2,000 were.)
"""

from __future__ import annotations

import pytest

from benchmarks.rollout_decisions import SCENARIOS, SETTINGS, summarise

RUNS = 200


@pytest.mark.slow
def test_a_good_candidate_is_rolled_back_in_at_most_one_percent_of_rollouts() -> None:
    good = summarise("good", SCENARIOS["good"], SETTINGS, RUNS, seed=1)
    assert good.rolled_back <= RUNS // 100, good.row()
    assert max(good.seconds) < SETTINGS.progress_deadline + sum(s.duration for s in SETTINGS.steps)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["errors +2 points", "1.5x slower"])
def test_a_bad_candidate_is_rolled_back_in_at_least_99_percent_of_rollouts(scenario: str) -> None:
    bad = summarise(scenario, SCENARIOS[scenario], SETTINGS, RUNS, seed=1)
    assert bad.rolled_back >= RUNS * 99 // 100, bad.row()
    assert bad.stuck == 0  # stopped by a gate, not by the deadline
    assert max(bad.exposed) == 0  # caught at the shadow step: no client ever got its answer
