"""Cost of drift monitoring. Run as a script:

    python benchmarks/bench_drift.py

First the sampler's `offer` (the only drift code on the request path): nanoseconds per call for an unsampled
request, a sampled one (buffer drained between calls so it never fills), and one sampled into a full buffer (drop
and count), for a 1-row request shaped like the demo model's (input FP32 [1, 30]; outputs label INT64 [1],
probabilities FP32 [1, 2]) and for a 32-row batch.

Then one window off the request path: a 2,000-row window of 20 numeric features (benchmarks/drift_quality.py's
columns) counted into its slots and judged, against a 10,000-row reference; with and without the joint monitor.
"""

from __future__ import annotations

import functools
import random
import timeit

import numpy as np

from gateway.drift.sampler import DriftKey, DriftSampler

KEY = DriftKey("breast_cancer", "1")


def _request(rows: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    x = np.random.default_rng(0).normal(size=(rows, 30)).astype(np.float32)
    return {"input": x}, {"label": np.zeros(rows, dtype=np.int64), "probabilities": np.zeros((rows, 2), np.float32)}


def _per_call_ns(sampler: DriftSampler, rows: int, calls: int, drain: bool) -> float:
    inputs, outputs = _request(rows)
    offer = sampler.offer
    if drain:
        clear = sampler.drain

        def body() -> None:
            offer(KEY, inputs, outputs)
            clear(1)  # keeps the buffer from filling; its cost (~100 ns) is subtracted below

        def drain_only() -> None:
            clear(1)

        best = min(timeit.repeat(body, number=calls, repeat=5))
        base = min(timeit.repeat(drain_only, number=calls, repeat=5))
        return (best - base) / calls * 1e9
    return min(timeit.repeat(lambda: offer(KEY, inputs, outputs), number=calls, repeat=5)) / calls * 1e9


def _noop_ns(calls: int) -> float:
    def noop() -> None:
        return None

    return min(timeit.repeat(noop, number=calls, repeat=5)) / calls * 1e9


def window_cost() -> None:
    from benchmarks.drift_quality import WIDE, draw, reference
    from gateway.drift.counting import WindowCounter
    from gateway.drift.evaluation import Reference, evaluate_window
    from gateway.drift.settings import DriftSettings

    rng = np.random.default_rng(0)
    profile = reference(rng, 10_000, WIDE)
    inputs = {"x": draw(rng, 2_000)["x"]}
    # In-run baseline: counting feature by feature (each column sorted on its own), as the monitor did before.
    x = inputs["x"]
    one_by_one = functools.partial(lambda: [f.count_values(x[:, f.column]) for f in profile.features])
    baseline = min(timeit.repeat(one_by_one, number=20, repeat=25)) / 20 * 1e3
    print(f"window 2,000 x 20 counted feature by feature (baseline)   {baseline:.3f} ms")
    for joint in (False, True):
        settings = DriftSettings(joint=joint)
        counter = WindowCounter(profile, joint=joint)
        judged = Reference(profile, joint=joint)
        counts = [c for c in counter.count(inputs, {}) if c is not None]
        count = functools.partial(counter.count, inputs, {})
        judge = functools.partial(
            evaluate_window, profile, counts, settings, index=0, evaluated_at=0.0, reference=judged
        )
        counting = min(timeit.repeat(count, number=20, repeat=25)) / 20 * 1e3
        judging = min(timeit.repeat(judge, number=20, repeat=25)) / 20 * 1e3
        label = "with the joint monitor" if joint else "per-feature only"
        print(
            f"window 2,000 x 20 {label:23} count {counting:.3f} ms + judge {judging:.3f} ms"
            f" = {counting + judging:.3f} ms"
        )


def main() -> None:
    calls = 200_000
    overhead = _noop_ns(calls)  # the lambda/def call timeit itself adds
    print(f"(timeit call overhead {overhead:.0f} ns, subtracted)")
    for rows in (1, 32):
        unsampled = DriftSampler(10_000, rng=random.Random(0))
        unsampled.configure(KEY, 1e-9)  # the skip counter never runs out
        sampled = DriftSampler(10_000, rng=random.Random(0))
        sampled.configure(KEY, 1.0)
        full = DriftSampler(1, rng=random.Random(0))
        full.configure(KEY, 1.0)
        full.offer(KEY, *_request(rows))
        rows_note = f"{rows}-row request"
        print(f"unsampled    {rows_note:15} {_per_call_ns(unsampled, rows, calls, False) - overhead:8.0f} ns/call")
        print(f"sampled      {rows_note:15} {_per_call_ns(sampled, rows, calls // 4, True) - overhead:8.0f} ns/call")
        print(f"full buffer  {rows_note:15} {_per_call_ns(full, rows, calls // 4, False) - overhead:8.0f} ns/call")
    mixed = DriftSampler(1_000_000, rng=random.Random(0))
    mixed.configure(KEY, 0.1)
    print(f"rate 0.1     1-row request   {_per_call_ns(mixed, 1, calls, False) - overhead:8.0f} ns/call (average)")
    window_cost()


if __name__ == "__main__":
    main()
