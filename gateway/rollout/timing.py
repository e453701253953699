"""Single-row latency runs of two versions, alternating, for the validation gate's p99 checks.

In the gateway, validation runs in a worker thread while the event loop serves traffic. A run of a 10 us model that
ends while the loop holds the GIL waits for it, up to the switch interval (5 ms): a p99 taken there measures the
loop's load, not the model (CI saw a 6x "ratio" between two models 2x apart). So when both versions are ONNX files,
`child_timer` times them in a process of its own, on sessions built with the versions' own options; what it cannot
time there (a version that is not a local file, a child that fails to start) it times in this process and says so.

Even in a child, a machine with more runnable threads than cores preempts it: a run that spans a preemption takes a
time slice (milliseconds) instead of microseconds. A 2,000-run p99 is the 20th-largest run, and preemptions land on
either version by chance, so under load the "ratio" is a coin-toss count of time slices (measured: 20 child runs
beside 3 busy loops on 2 cores read 1.0-4.1x for two models 1.7x apart, and twice 41x and 73x). So a run during
which the kernel switched the timing process out involuntarily is timed again: what is left is the models' own
latency, which is what the gate compares. `Timings.retimed` says how many runs that took.
"""

from __future__ import annotations

import logging
import pickle
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from gateway.backends import Arrays, ModelFile

logger = logging.getLogger(__name__)

Seconds = npt.NDArray[np.float64]

WARMUP_RUNS = 10
MIN_RUNS = 200
BUDGET = 2.0  # seconds of timed runs, both versions together
CHILD_TIMEOUT = 300.0  # seconds for the child to start, load both versions and time them
MAX_RETIMES = 5  # times one run is timed again after a preemption before its time is kept as it is


class Runs(Protocol):
    def run(self, inputs: Arrays) -> Any: ...


@dataclass(frozen=True, slots=True)
class Timings:
    candidate: Seconds  # seconds per single-row run
    baseline: Seconds
    where: str  # "a child process" or "the gateway process (...why...)"
    retimed: int = 0  # runs timed again because the process was preempted during them


Timer = Callable[[Runs, Runs, Sequence[Arrays], int], Timings]
Switches = Callable[[], int]  # involuntary context switches so far (of the process or the thread)


def no_switches() -> int:
    """For a clock that is not the machine's (tests): nothing to retime."""
    return 0


def process_switches() -> int:
    """Involuntary context switches of this process, every thread: the child's (the runtime's own threads count)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


def thread_switches() -> int:
    """Of the calling thread where the platform can say (Linux); in the gateway the other threads' are not ours."""
    who = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
    return resource.getrusage(who).ru_nivcsw


def time_pairs(
    candidate: Runs,
    baseline: Runs,
    feeds: Sequence[Arrays],
    runs: int,
    clock: Callable[[], float],
    switches: Switches = no_switches,
) -> tuple[Seconds, Seconds, int]:
    """Seconds per single-row run of each version, up to `runs` each, and how many runs were timed again because
    `switches` moved during them. The versions alternate, and which goes first alternates too, so neither is favoured
    by a cache the other just warmed or by a busy moment of the machine."""
    for i in range(WARMUP_RUNS):  # lazy initialisation and arena growth are not what the gate asks about
        candidate.run(feeds[i % len(feeds)])
        baseline.run(feeds[i % len(feeds)])
    times = np.empty((2, runs), dtype=np.float64)
    pair = (candidate, baseline)
    # A p99 of a few hundred runs is its third-largest value: one preemption decides it. Up to `runs` runs each, as
    # many as BUDGET seconds allow (at least MIN_RUNS): a fast model gets thousands, a slow one fewer.
    began = time.perf_counter()
    done = runs
    retimed = 0
    for i in range(runs):
        feed = feeds[i % len(feeds)]
        for j in (0, 1) if i % 2 == 0 else (1, 0):
            for attempt in range(MAX_RETIMES + 1):
                switched = switches()
                start = clock()
                pair[j].run(feed)
                times[j, i] = clock() - start
                if switches() == switched or attempt == MAX_RETIMES:
                    break
                retimed += 1
        if i + 1 >= MIN_RUNS and time.perf_counter() - began > BUDGET:
            done = i + 1
            break
    return times[0, :done], times[1, :done], retimed


def in_process_timer(clock: Callable[[], float] = time.perf_counter, why: str = "") -> Timer:
    where = f"the gateway process ({why})" if why else "this process"
    # Preemptions are the machine's only when the clock is: a test's clock has none to retime.
    switches = thread_switches if clock is time.perf_counter else no_switches

    def timer(candidate: Runs, baseline: Runs, feeds: Sequence[Arrays], runs: int) -> Timings:
        c, b, retimed = time_pairs(candidate, baseline, feeds, runs, clock, switches)
        return Timings(c, b, where, retimed)

    return timer


def child_timer(candidate: Runs, baseline: Runs, feeds: Sequence[Arrays], runs: int) -> Timings:
    """Time in a spawned child process when both versions are local files; otherwise (or when the child fails) here."""
    files = [getattr(v, "model_file", None) for v in (candidate, baseline)]
    if not all(isinstance(f, ModelFile) for f in files):
        return in_process_timer(why="a version is not a local model file")(candidate, baseline, feeds, runs)
    try:
        c, b, retimed = _in_child(files[0], files[1], feeds, runs)  # type: ignore[arg-type]
    except Exception as exc:  # a sandbox without process spawning, a crashed child: a noisier figure beats none
        logger.warning("validation latency runs could not use a child process (%s); timing them here", exc)
        return in_process_timer(why=f"the child process failed: {exc}")(candidate, baseline, feeds, runs)
    return Timings(c, b, "a child process", retimed)


def _in_child(
    candidate: ModelFile, baseline: ModelFile, feeds: Sequence[Arrays], runs: int
) -> tuple[Seconds, Seconds, int]:
    # A fresh interpreter (`python -m gateway.rollout.timing`), not multiprocessing: fork would copy the gateway's
    # threads mid-flight, and spawn re-runs the parent's __main__ (`python -m gateway` would start a second CLI).
    # The job goes in on stdin and the timings come back on stdout, pickled: both ends are this module.
    job = pickle.dumps((candidate, baseline, [dict(f) for f in feeds], runs), protocol=pickle.HIGHEST_PROTOCOL)
    done = subprocess.run(
        [sys.executable, "-m", "gateway.rollout.timing"], input=job, capture_output=True, timeout=CHILD_TIMEOUT
    )
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {done.returncode}"]
        raise RuntimeError(lines[-1])
    c, b, retimed = pickle.loads(done.stdout)
    return np.asarray(c, dtype=np.float64), np.asarray(b, dtype=np.float64), int(retimed)


def _child_main() -> None:  # runs in the child; covered by the tests that validate through child_timer
    from concurrent.futures import ThreadPoolExecutor

    from gateway.backends.onnx import OnnxBackend

    candidate, baseline, feeds, runs = pickle.loads(sys.stdin.buffer.read())
    try:
        with ThreadPoolExecutor(max_workers=1) as executor:  # unused: the runs are direct, but a backend wants one
            pair = [OnnxBackend(f.path, f.options, executor) for f in (candidate, baseline)]
            timings = time_pairs(pair[0], pair[1], feeds, runs, time.perf_counter, process_switches)
    except Exception as exc:  # the parent quotes the last line of stderr
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.stdout.buffer.write(pickle.dumps(timings, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    _child_main()
