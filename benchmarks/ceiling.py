"""The in-process ceiling of batched serving: rows per second when a batch's requests cost only what batching
cannot avoid, with no HTTP, no event loop and no queue. For batch size B, each round decodes B single-row request
bodies with the gateway's own fast lane, concatenates them, runs the version's ONNX session once on the B rows (the
gateway's session options), splits the outputs back and encodes B answers with the fast lane.

A batched gateway serving single-row requests can approach this and never pass it: the gap is HTTP, the event loop
and the batcher. `benchmarks.compare` runs it pinned to the server's core and puts the batched gateway's req/s over it.

    python -m benchmarks.ceiling MODEL_DIR BODY [--batch 32] [--seconds 3]   # prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def batch_runner(model: Path, body: bytes, batch: int) -> Callable[[], None]:
    """One round of the ceiling's work for `batch` copies of `body`: decode each with the fast lane, one run of the
    version's session (the gateway's options) on the rows together, each answer encoded by the fast lane."""
    from gateway.backends.onnx import OnnxBackend, OnnxOptions
    from gateway.fastlane import FastLane

    # The session runs in the caller's thread (`run`); the executor only satisfies the backend's constructor.
    backend = OnnxBackend(model, OnnxOptions(), ThreadPoolExecutor(max_workers=1))
    lane = FastLane(backend.signature, "1")
    names = [s.name for s in backend.signature.inputs]

    def one_batch() -> None:
        decoded = [lane.decode(body) for _ in range(batch)]
        if any(d is None for d in decoded):
            raise SystemExit("the fast lane does not take this body")
        inputs = {n: np.concatenate([d[0][n] for d in decoded if d is not None]) for n in names}
        outputs = backend.run(inputs).outputs
        for i in range(batch):
            part = {k: v[i : i + 1] for k, v in outputs.items()}
            if lane.encode(part, "m", None) is None:
                raise SystemExit("the fast lane cannot encode this model's outputs")

    return one_batch


def rows_per_second(model: Path, body: bytes, batch: int, seconds: float) -> dict[str, Any]:
    """Best rows/s over rounds of about 0.3 s each, for `seconds` after a warm-up (best: the machine's noise only
    ever slows a round down)."""
    one_batch = batch_runner(model, body, batch)
    for _ in range(20):
        one_batch()
    best = 0.0
    rounds = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or rounds < 3:
        start = time.perf_counter()
        count = 0
        while time.perf_counter() - start < 0.3:
            one_batch()
            count += 1
        best = max(best, count * batch / (time.perf_counter() - start))
        rounds += 1
    return {"rows_per_s": best, "batch": batch, "rounds": rounds}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ceiling", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the version's model.onnx")
    parser.add_argument("body", type=Path, help="a single-row JSON request body")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    result = rows_per_second(args.model, args.body.read_bytes(), args.batch, args.seconds)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
