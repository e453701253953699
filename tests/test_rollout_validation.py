"""The pre-traffic validation gate on real onnxruntime sessions: the bundled demo (version 2 good, version 3 trained
on corrupted labels) against version 1, small models built here, and golden sets with faults. Latency checks run on
an injected clock that each wrapped version advances by a fixed cost, so their figures are exact."""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import models
import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper
from sklearn.metrics import f1_score, roc_auc_score

from gateway.backends import ModelFile
from gateway.backends.onnx import OnnxBackend, OnnxOptions, load_onnx
from gateway.drift.profile import Profile, load_profile
from gateway.drift.settings import DriftSettings
from gateway.prediction import reader_for
from gateway.repository import read_metadata
from gateway.rollout.golden import GoldenSetError, load_golden_set
from gateway.rollout.settings import Validation
from gateway.rollout.timing import MAX_RETIMES, WARMUP_RUNS, child_timer, time_pairs
from gateway.rollout.validation import Check, Runnable, ValidationReport, validate_candidate
from gateway.shadow.settings import CompareSettings
from gateway.signature import Signature

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "config" / "models" / "breast_cancer"
TEST_CSV = ROOT / "config" / "data" / "breast_cancer_test.csv"
SHIFTED_CSV = ROOT / "config" / "data" / "breast_cancer_shifted.csv"
FEATURES: list[str] = list(read_metadata(DEMO / "1")["feature_names"])
Arrays = Mapping[str, npt.NDArray[Any]]
SHADOW_DEFAULTS = CompareSettings()  # abs_tol 1e-6, rel_tol 1e-3


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as executor:
        yield executor


@pytest.fixture(scope="module")
def demo(pool: ThreadPoolExecutor) -> dict[int, OnnxBackend]:
    return {v: load_onnx(DEMO / str(v) / "model.onnx", OnnxOptions(), pool) for v in (1, 2, 3)}


def profile_of(backend: OnnxBackend, version: int) -> Profile:
    return load_profile(DEMO / str(version) / "profile.json", backend.signature)


def validate(
    candidate: Runnable,
    baseline: Runnable,
    settings: Validation,
    *,
    profile: Profile | None = None,
    compare: CompareSettings = SHADOW_DEFAULTS,
    feature_names: Sequence[str] | None = FEATURES,
    clock: Callable[[], float] = time.perf_counter,
    latency_runs: int = 300,
) -> ValidationReport:
    reader = reader_for(candidate.signature, compare.kind, compare.output)
    return validate_candidate(
        candidate,
        baseline,
        settings,
        reader=reader,
        compare=compare,
        profile=profile,
        drift=DriftSettings(),
        feature_names=feature_names,
        latency_runs=latency_runs,
        clock=clock,
    )


def get(report: ValidationReport, name: str) -> Check:
    check = report.check(name)
    assert check is not None, f"no check {name!r}"
    return check


def figures(report: ValidationReport) -> dict[str, tuple[str, Any]]:
    """(verdict, value) by check name; Any so a value compares with pytest.approx."""
    return {c.name: (c.verdict, c.value) for c in report.checks}


# ---- test doubles -----------------------------------------------------------------------------------------------


class FakeClock:
    """Time that moves only when a Timed version runs; counts how often it is read."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


@dataclass
class Timed:
    """A version whose every run takes `seconds` on `clock`."""

    inner: Runnable
    clock: FakeClock
    seconds: float
    runs: int = 0

    @property
    def signature(self) -> Signature:
        return self.inner.signature

    def run(self, inputs: Arrays) -> tuple[dict[str, npt.NDArray[Any]], float | None]:
        self.runs += 1
        self.clock.now += self.seconds
        return self.inner.run(inputs)


@dataclass
class Rewritten:
    """A version whose outputs pass through `rewrite(outputs, call number)`."""

    inner: Runnable
    rewrite: Callable[[dict[str, npt.NDArray[Any]], int], dict[str, npt.NDArray[Any]]]
    calls: int = 0

    @property
    def signature(self) -> Signature:
        return self.inner.signature

    def run(self, inputs: Arrays) -> tuple[dict[str, npt.NDArray[Any]], float | None]:
        self.calls += 1
        outputs, seconds = self.inner.run(inputs)
        return self.rewrite(dict(outputs), self.calls), seconds


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def argmax_classifier(path: Path, classes: int, *, scores: bool = True) -> Path:
    """`label = argmax(X)`, `probabilities = softmax(X)` over FP32 X [batch, classes]: class k wins on column k."""
    nodes = [helper.make_node("ArgMax", ["X"], ["label"], axis=1, keepdims=0)]
    outputs = [helper.make_tensor_value_info("label", TensorProto.INT64, [None])]
    if scores:
        nodes.append(helper.make_node("Softmax", ["X"], ["probabilities"], axis=1))
        outputs.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, classes]))
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, classes])]
    return _save(helper.make_graph(nodes, "argmax", inputs, outputs), path)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def demo_rows() -> tuple[list[str], list[list[str]]]:
    with TEST_CSV.open(newline="") as handle:
        records = list(csv.reader(handle))
    return records[0], records[1:]


# ---- the demo ---------------------------------------------------------------------------------------------------

DEMO_GATE = Validation(
    golden_set=TEST_CSV,
    label_column="target",
    min_metric=MappingProxyType({"accuracy": 0.9}),
    max_metric_drop=0.02,
    min_agreement=0.9,
    max_p99_latency_ms=50.0,
    max_latency_ratio=3.0,
)


def test_v2_against_v1_passes_every_configured_check(demo: dict[int, OnnxBackend]) -> None:
    clock = FakeClock()
    candidate, baseline = Timed(demo[2], clock, 0.0012), Timed(demo[1], clock, 0.0008)
    report = validate(candidate, baseline, DEMO_GATE, profile=profile_of(demo[2], 2), clock=clock)

    assert report.passed, report.summary()
    assert report.rows == 171
    got = figures(report)
    assert list(got) == [
        "schema",
        "integration",
        "finite_outputs",
        "accuracy",
        "accuracy_drop",
        "agreement",
        "data_quality",
        "bias",
        "p99_latency_ms",
        "latency_ratio",
    ]
    assert got["accuracy"] == ("pass", pytest.approx(167 / 171))
    assert got["accuracy_drop"] == ("pass", pytest.approx(0.0))  # 167 of 171 right for both
    assert got["agreement"] == ("pass", pytest.approx(167 / 171))
    assert got["data_quality"] == ("pass", 0.0)  # the 171 test rows sit within the 398-row training profile
    assert got["bias"][0] == "skipped"
    assert got["p99_latency_ms"] == ("pass", pytest.approx(1.2))
    assert got["latency_ratio"] == ("pass", pytest.approx(1.5))
    assert report.summary() == "validation passed (9 checks, 1 skipped)"


def test_v3_against_v1_fails_quality_and_agreement_but_not_schema(demo: dict[int, OnnxBackend]) -> None:
    settings = Validation(
        golden_set=TEST_CSV,
        label_column="target",
        min_metric=MappingProxyType({"accuracy": 0.9}),
        max_metric_drop=0.02,
        min_agreement=0.9,
    )
    report = validate(demo[3], demo[1], settings, profile=profile_of(demo[3], 3))

    assert [c.name for c in report.failures()] == ["accuracy", "accuracy_drop", "agreement"]
    got = figures(report)
    assert got["schema"] == ("pass", 0.0)  # same pipeline as version 1, so the same tensors
    assert got["accuracy"] == ("fail", pytest.approx(140 / 171))  # 0.819
    assert got["accuracy_drop"] == ("fail", pytest.approx(27 / 171))  # 0.977 - 0.819
    assert got["agreement"] == ("fail", pytest.approx(140 / 171))
    assert get(report, "accuracy_drop").threshold == 0.02
    assert got["p99_latency_ms"] == ("skipped", None)  # no latency threshold: not timed at all
    assert report.summary() == (
        "validation failed: accuracy 0.819 < 0.900; accuracy_drop 0.158 > 0.020; agreement 0.819 < 0.900"
    )


def test_demo_metrics_match_scikit_learn(demo: dict[int, OnnxBackend]) -> None:
    settings = Validation(
        golden_set=TEST_CSV, label_column="target", min_metric=MappingProxyType({"f1": 0.5, "roc_auc": 0.5})
    )
    report = validate(demo[3], demo[1], settings)
    golden = load_golden_set(TEST_CSV, demo[3].signature, label_column="target", group_column=None)
    outputs, _ = demo[3].run(golden.inputs)
    assert get(report, "f1").value == pytest.approx(f1_score(golden.labels, outputs["label"]))
    auc = roc_auc_score(golden.labels, outputs["probabilities"][:, 1])
    assert get(report, "roc_auc").value == pytest.approx(auc)
    assert auc == pytest.approx(0.968842, abs=1e-6)  # as metadata.json records


def test_the_shifted_set_fails_data_quality_on_the_shifted_features(demo: dict[int, OnnxBackend]) -> None:
    # 171 rows suffice at the default drift settings: the four shifted features move by 0.5 sd and x1.3.
    settings = Validation(golden_set=SHIFTED_CSV, label_column="target")
    report = validate(demo[2], demo[1], settings, profile=profile_of(demo[2], 2))
    check = report.check("data_quality")
    # The four shifted features, and the joint monitor (the shifted rows leave the reference's principal subspace).
    assert check is not None and check.verdict == "fail" and check.value == 5.0
    for name in ("concave points error", "fractal dimension error", "worst compactness", "worst concavity"):
        assert name in check.detail
    assert "joint:reconstruction_error" in check.detail
    assert [c.name for c in report.failures()] == ["data_quality"]


def test_data_quality_skipped_without_a_profile_or_when_switched_off(demo: dict[int, OnnxBackend]) -> None:
    settings = Validation(golden_set=SHIFTED_CSV, label_column="target", check_drift=False)
    off = validate(demo[2], demo[1], settings, profile=profile_of(demo[2], 2))
    none = validate(demo[2], demo[1], Validation(golden_set=SHIFTED_CSV))
    assert get(off, "data_quality").detail == "check_drift is off"
    assert get(none, "data_quality").detail == "the candidate has no drift profile"
    assert off.passed and none.passed


def test_report_lines_and_json(demo: dict[int, OnnxBackend]) -> None:
    report = validate(demo[3], demo[1], DEMO_GATE, profile=profile_of(demo[3], 3))
    lines = report.lines()
    assert len(lines) == len(report.checks)
    accuracy = next(line for line in lines if " accuracy " in line)
    assert accuracy.startswith("FAIL  accuracy ")
    assert re.search(r"  0\.8187 +>= 0\.9000 +candidate 0\.819 < 0\.900; baseline 0\.977$", accuracy)
    # Aligned: every line's figure starts in the same column, after the padded names.
    column = 4 + 2 + max(len(c.name) for c in report.checks) + 2
    assert all(line[column - 1] == " " and line[column] != " " for line in lines)
    data = report.to_json()
    assert data["passed"] is False and data["rows"] == 171
    checks = data["checks"]
    assert isinstance(checks, list) and checks[0] == {
        "name": "schema",
        "verdict": "pass",
        "value": 0.0,
        "threshold": 0.0,
        "op": "<=",
        "detail": "inputs (input) and outputs (label, probabilities) match the baseline",
    }


def test_real_clock_times_real_runs(demo: dict[int, OnnxBackend]) -> None:
    settings = Validation(golden_set=TEST_CSV, max_p99_latency_ms=1000.0)
    report = validate(demo[2], demo[1], settings, latency_runs=50)
    check = report.check("p99_latency_ms")
    assert check is not None and check.verdict == "pass" and check.value is not None and 0 < check.value < 1000
    ratio = report.check("latency_ratio")
    assert ratio is not None and ratio.verdict == "skipped" and ratio.value is not None and ratio.value > 0


# ---- schema, integration, finite outputs, failures inside a check -----------------------------------------------


def test_a_schema_mismatch_names_the_input_and_only_schema_runs_without_a_golden_set(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    baseline = load_onnx(models.affine(tmp_path / "four.onnx", features=4), OnnxOptions(), pool)
    candidate = load_onnx(models.affine(tmp_path / "five.onnx", features=5), OnnxOptions(), pool)
    report = validate(candidate, baseline, Validation(max_p99_latency_ms=10.0))
    schema = report.checks[0]
    assert (schema.name, schema.verdict, schema.value) == ("schema", "fail", 2.0)
    assert "input 'X': baseline FP32[-1, 4], candidate FP32[-1, 5]" in schema.detail
    assert "output 'Y': baseline FP32[-1, 4], candidate FP32[-1, 5]" in schema.detail
    assert all(c.verdict == "skipped" and c.detail == "no golden set" for c in report.checks[1:])
    assert report.rows == 0


def test_a_missing_output_fails_schema_and_roc_auc_is_skipped_without_scores(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    baseline = load_onnx(argmax_classifier(tmp_path / "full.onnx", 2), OnnxOptions(), pool)
    candidate = load_onnx(argmax_classifier(tmp_path / "bare.onnx", 2, scores=False), OnnxOptions(), pool)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 2))
    path = write_csv(tmp_path / "g.csv", ["a", "b", "y"], [[*row, int(row[1] > row[0])] for row in x])
    settings = Validation(golden_set=path, label_column="y", min_metric=MappingProxyType({"roc_auc": 0.9}))
    report = validate(candidate, baseline, settings, feature_names=None)
    assert report.checks[0].verdict == "fail"
    assert "output 'probabilities' (FP32[-1, 2]) is missing from the candidate" in report.checks[0].detail
    roc = report.check("roc_auc")
    assert roc is not None and roc.verdict == "skipped" and "no class scores" in roc.detail


def test_non_finite_outputs_are_counted_and_survive_the_json_round_trip(demo: dict[int, OnnxBackend]) -> None:
    def poison(outputs: dict[str, npt.NDArray[Any]], _: int) -> dict[str, npt.NDArray[Any]]:
        probabilities = outputs["probabilities"].copy()
        probabilities[:3, 0] = np.nan
        probabilities[3, 1] = np.inf
        return {**outputs, "probabilities": probabilities}

    report = validate(Rewritten(demo[2], poison), demo[1], Validation(golden_set=TEST_CSV))
    got = figures(report)
    assert got["finite_outputs"] == ("fail", 4.0)
    assert got["integration"] == ("pass", 0.0)  # NaN and inf go out as null, and are accepted as such


def test_integration_fails_when_the_served_answer_differs_from_a_direct_run(demo: dict[int, OnnxBackend]) -> None:
    def drift(outputs: dict[str, npt.NDArray[Any]], call: int) -> dict[str, npt.NDArray[Any]]:
        return {**outputs, "probabilities": outputs["probabilities"] + np.float32(call * 1e-3)}

    check = get(validate(Rewritten(demo[2], drift), demo[1], Validation(golden_set=TEST_CSV)), "integration")
    assert check.verdict == "fail"
    assert check.detail == "8 rows through V2 JSON: 'probabilities' values differ from a direct run"


def test_a_broken_baseline_fails_the_checks_that_need_it_and_nothing_raises(demo: dict[int, OnnxBackend]) -> None:
    def boom(outputs: dict[str, npt.NDArray[Any]], _: int) -> dict[str, npt.NDArray[Any]]:
        raise RuntimeError("session lost")

    report = validate(demo[2], Rewritten(demo[1], boom), DEMO_GATE, profile=profile_of(demo[2], 2))
    got = figures(report)
    assert [c.name for c in report.failures()] == ["accuracy_drop", "agreement", "p99_latency_ms", "latency_ratio"]
    assert got["accuracy"] == ("pass", pytest.approx(167 / 171))
    assert get(report, "accuracy").detail.endswith(
        "; baseline: the baseline failed on the golden set: RuntimeError: session lost"
    )
    assert get(report, "agreement").detail == "error: the baseline failed on the golden set: RuntimeError: session lost"
    assert get(report, "p99_latency_ms").detail == "error: latency runs failed: RuntimeError: session lost"


# ---- latency on the fake clock ----------------------------------------------------------------------------------


def test_a_candidate_three_times_slower_fails_the_ratio_and_the_ceiling(demo: dict[int, OnnxBackend]) -> None:
    clock = FakeClock()
    candidate, baseline = Timed(demo[2], clock, 0.003), Timed(demo[1], clock, 0.001)
    settings = Validation(golden_set=TEST_CSV, max_p99_latency_ms=2.0, max_latency_ratio=2.5)
    report = validate(candidate, baseline, settings, clock=clock, latency_runs=100)
    got = figures(report)
    assert got["p99_latency_ms"] == ("fail", pytest.approx(3.0))
    assert got["latency_ratio"] == ("fail", pytest.approx(3.0))
    assert clock.reads == 2 * 2 * 100  # start and end of each timed run of each version
    # Both: 10 warm-ups and 100 timed runs; the candidate also ran the golden set and the integration round trip.
    assert (candidate.runs, baseline.runs) == (1 + 2 + 10 + 100, 1 + 10 + 100)
    assert "latency_ratio 3.000 > 2.500" in report.summary()

    looser = Validation(golden_set=TEST_CSV, max_p99_latency_ms=4.0, max_latency_ratio=3.5)
    assert validate(candidate, baseline, looser, clock=clock, latency_runs=100).passed


def test_p99_is_the_tail_not_the_median(demo: dict[int, OnnxBackend]) -> None:
    clock = FakeClock()

    @dataclass
    class Spiky(Timed):
        def run(self, inputs: Arrays) -> tuple[dict[str, npt.NDArray[Any]], float | None]:
            outputs = super().run(inputs)
            if self.runs % 20 == 0:  # 5 % of the runs take 10 ms more
                self.clock.now += 0.010
            return outputs

    settings = Validation(golden_set=TEST_CSV, max_p99_latency_ms=5.0)
    report = validate(Spiky(demo[2], clock, 0.001), Timed(demo[1], clock, 0.001), settings, clock=clock)
    check = report.check("p99_latency_ms")
    assert check is not None and check.verdict == "fail" and check.value == pytest.approx(11.0)


def test_without_latency_thresholds_nothing_is_timed(demo: dict[int, OnnxBackend]) -> None:
    clock = FakeClock()
    candidate = Timed(demo[2], clock, 0.001)
    report = validate(candidate, demo[1], Validation(golden_set=TEST_CSV), clock=clock)
    assert clock.reads == 0
    assert candidate.runs == 3  # the golden set once, and the integration round trip's served and direct runs
    assert get(report, "latency_ratio").detail == "no max_p99_latency_ms or max_latency_ratio set"


def test_the_gateway_times_onnx_versions_in_a_child_process(demo: dict[int, OnnxBackend]) -> None:
    """In the gateway the runs would otherwise wait for the GIL behind the event loop (timing.py says why)."""
    reader = reader_for(demo[2].signature, SHADOW_DEFAULTS.kind, SHADOW_DEFAULTS.output)
    settings = Validation(golden_set=TEST_CSV, max_p99_latency_ms=1000.0, max_latency_ratio=1000.0)
    report = validate_candidate(
        demo[2], demo[1], settings, reader=reader, compare=SHADOW_DEFAULTS, profile=None, drift=DriftSettings(),
        feature_names=FEATURES, latency_runs=300, timer=child_timer,
    )  # fmt: skip
    check = get(report, "latency_ratio")
    assert check.verdict == "pass", check.detail
    ending = r"; 300 single-row runs each, in a child process(, \d+ timed again after a preemption)?\)$"
    assert re.search(ending, check.detail), check.detail
    # The child built its own sessions: these ran only the golden set and the integration round trip.
    p99 = get(report, "p99_latency_ms").value
    assert p99 is not None and p99 > 0


def test_a_version_that_is_not_a_local_file_is_timed_in_process(demo: dict[int, OnnxBackend]) -> None:
    clock = FakeClock()
    timings = child_timer(Timed(demo[2], clock, 0.002), demo[1], [{"input": np.zeros((1, 30), np.float32)}], 250)
    assert timings.where == "the gateway process (a version is not a local model file)"
    assert len(timings.candidate) == len(timings.baseline) == 250


def test_a_run_the_machine_preempted_is_timed_again(demo: dict[int, OnnxBackend]) -> None:
    # A run that spans a preemption measures the scheduler's time slice, not the model: it is timed again, up to
    # MAX_RETIMES times; the time kept is the first attempt the process was not switched out of, or the last.
    clock = FakeClock()
    switches = [0]

    @dataclass
    class Preempted(Timed):
        """Its timed runs (counting attempts) numbered in `preempted` lose a 10 ms time slice to someone else."""

        preempted: frozenset[int] = frozenset()

        def run(self, inputs: Arrays) -> tuple[dict[str, npt.NDArray[Any]], float | None]:
            if self.runs - WARMUP_RUNS in self.preempted:
                switches[0] += 1
                self.clock.now += 0.010
            return super().run(inputs)

    # Attempt 3 is timed run 3, preempted once; attempt 4 times it again, clean. Attempts 8 to 8 + MAX_RETIMES are
    # all of run 7's, each preempted: it keeps the last.
    preempted = frozenset({3, *range(8, 8 + MAX_RETIMES + 1)})
    candidate, baseline = Preempted(demo[2], clock, 0.002, preempted=preempted), Timed(demo[1], clock, 0.001)
    feeds = [{"input": np.zeros((1, 30), np.float32)}]
    c, b, retimed = time_pairs(candidate, baseline, feeds, 10, clock, lambda: switches[0])
    assert retimed == 1 + MAX_RETIMES
    assert candidate.runs == WARMUP_RUNS + 10 + retimed and baseline.runs == WARMUP_RUNS + 10
    assert [round(x, 6) for x in b] == [0.001] * 10
    assert [round(x, 6) for x in c] == [0.002] * 7 + [0.012] + [0.002] * 2


def test_a_child_that_fails_leaves_the_figures_to_this_process(
    demo: dict[int, OnnxBackend], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Gone(Rewritten):
        @property
        def model_file(self) -> ModelFile:
            return ModelFile(tmp_path / "deleted.onnx", OnnxOptions())

    feeds = [{"input": np.zeros((1, 30), np.float32)}]
    timings = child_timer(Gone(demo[2], lambda outputs, _: outputs), demo[1], feeds, 200)
    assert timings.where.startswith("the gateway process (the child process failed: ModelLoadError: ")
    assert "deleted.onnx" in timings.where and len(timings.candidate) == 200
    assert "could not use a child process" in caplog.text


# ---- regression, multiclass, bias -------------------------------------------------------------------------------


def _regression_golden(tmp_path: Path) -> Path:
    # Y = 2X + 1 misses these targets by 0.5, 0.5, 1 and 1: MAE 0.75, RMSE sqrt(0.625).
    x = np.arange(40, dtype=np.float32).reshape(-1, 1)
    error = np.tile([0.5, -0.5, 1.0, -1.0], 10)
    path = tmp_path / "golden.npz"
    np.savez(path, X=x, target=2 * x[:, 0].astype(np.float64) + 1 + error)
    return path


def test_regression_metrics_and_agreement_on_an_affine_model(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    baseline = load_onnx(models.affine(tmp_path / "b.onnx", features=1, scale=2.0, shift=1.0), OnnxOptions(), pool)
    worse = load_onnx(models.affine(tmp_path / "c.onnx", features=1, scale=2.0, shift=3.0), OnnxOptions(), pool)
    settings = Validation(
        golden_set=_regression_golden(tmp_path),
        label_column="target",
        max_metric=MappingProxyType({"mae": 1.0, "rmse": 0.5}),
        max_metric_drop=0.5,
        min_agreement=0.9,
    )
    same = figures(validate(baseline, baseline, settings))
    assert same["mae"] == ("pass", pytest.approx(0.75))
    assert same["rmse"] == ("fail", pytest.approx(np.sqrt(0.625)))
    assert same["mae_drop"] == ("pass", pytest.approx(0.0))
    assert same["agreement"] == ("pass", 1.0)

    report = validate(worse, baseline, settings)
    got = figures(report)
    assert got["mae"] == ("fail", pytest.approx(2.0))  # misses by 1.5, 2.5, 1 and 3
    assert got["mae_drop"] == ("fail", pytest.approx(1.25))
    assert got["agreement"] == ("fail", 0.0)  # every value 2 apart: outside abs_tol + rel_tol * |baseline|
    tolerant = validate(worse, baseline, settings, compare=CompareSettings(abs_tol=2.5))
    assert figures(tolerant)["agreement"] == ("pass", 1.0)


def test_a_drop_limit_alone_gates_mae_for_a_regressor(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    baseline = load_onnx(models.affine(tmp_path / "b.onnx", features=1), OnnxOptions(), pool)
    settings = Validation(golden_set=_regression_golden(tmp_path), label_column="target", max_metric_drop=0.1)
    got = figures(validate(baseline, baseline, settings))
    assert got["mae"] == ("skipped", pytest.approx(0.75))  # reported, not gated
    assert got["mae_drop"] == ("pass", pytest.approx(0.0))
    assert got["agreement"] == ("skipped", 1.0)  # no min_agreement: the figure is still there


def test_multiclass_f1_and_roc_auc_match_scikit_learn(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    model = load_onnx(argmax_classifier(tmp_path / "m.onnx", 3), OnnxOptions(), pool)
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    x[np.arange(300), y] += 1.0  # informative, far from perfect
    path = write_csv(tmp_path / "g.csv", ["a", "b", "c", "y"], [[*row, label] for row, label in zip(x, y, strict=True)])
    settings = Validation(golden_set=path, label_column="y", min_metric=MappingProxyType({"f1": 0.0, "roc_auc": 0.0}))
    report = validate(model, model, settings, feature_names=None)
    outputs, _ = model.run({"X": x})
    f1 = f1_score(y, outputs["label"], average="macro")
    auc = roc_auc_score(y, outputs["probabilities"], multi_class="ovr", average="macro")
    assert get(report, "f1").value == pytest.approx(f1)
    assert get(report, "roc_auc").value == pytest.approx(auc)


def _group_golden(tmp_path: Path, groups: dict[str, tuple[int, int]]) -> Path:
    """Rows of a 2-class argmax model: per group (right, wrong) counts."""
    rows: list[list[object]] = []
    for group, (right, wrong) in groups.items():
        rows += [[2.0, 0.0, 0, group]] * right + [[2.0, 0.0, 1, group]] * wrong
    return write_csv(tmp_path / "groups.csv", ["a", "b", "y", "region"], rows)


def test_bias_fails_when_one_group_is_much_worse(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    model = load_onnx(argmax_classifier(tmp_path / "m.onnx", 2), OnnxOptions(), pool)
    path = _group_golden(tmp_path, {"north": (40, 0), "south": (20, 20), "tiny": (0, 5)})
    settings = Validation(golden_set=path, label_column="y", group_column="region", max_group_gap=0.2)
    report = validate(model, model, settings, feature_names=None)
    assert figures(report)["bias"] == ("fail", pytest.approx(0.5))
    check = get(report, "bias")
    assert check.detail == (
        "gap 0.500 > 0.200; accuracy by region: north 1.000 (n=40), south 0.500 (n=40); ignored (< 20 rows): tiny (n=5)"
    )
    looser = Validation(golden_set=path, label_column="y", group_column="region", max_group_gap=0.6)
    assert validate(model, model, looser, feature_names=None).passed


def test_bias_is_skipped_with_fewer_than_two_groups_of_20_rows(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    model = load_onnx(argmax_classifier(tmp_path / "m.onnx", 2), OnnxOptions(), pool)
    path = _group_golden(tmp_path, {"north": (40, 0), "south": (10, 9)})
    settings = Validation(golden_set=path, label_column="y", group_column="region", max_group_gap=0.2)
    check = get(validate(model, model, settings, feature_names=None), "bias")
    assert check.verdict == "skipped"
    assert check.detail.startswith("fewer than two groups of 'region' have 20 rows")


# ---- golden sets ------------------------------------------------------------------------------------------------


def test_feature_columns_are_picked_by_name_and_cells_may_be_missing(
    tmp_path: Path, demo: dict[int, OnnxBackend]
) -> None:
    header, rows = demo_rows()
    order = [*reversed(range(len(header)))]  # target first, features backwards, plus a group column
    rows[0][3] = ""
    shuffled = [[row[j] for j in order] + ["g"] for row in rows]
    path = write_csv(tmp_path / "g.csv", [header[j] for j in order] + ["site"], shuffled)
    golden = load_golden_set(
        path, demo[1].signature, label_column="target", group_column="site", feature_names=FEATURES
    )
    original = load_golden_set(TEST_CSV, demo[1].signature, label_column="target", group_column=None)
    assert golden.rows == 171 and golden.inputs["input"].dtype == np.float32
    assert np.isnan(golden.inputs["input"][0, 3])
    assert np.array_equal(golden.inputs["input"][1:], original.inputs["input"][1:])
    assert golden.labels is not None and golden.labels.dtype == np.int64
    assert golden.groups is not None and golden.groups.tolist() == ["g"] * 171


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h, rows: (h[:-1], [r[:-1] for r in rows]), "no label column 'target'"),
        (lambda h, rows: (h[1:], [r[1:] for r in rows]), "has 29 feature columns; input 'input' takes 30"),
        (
            lambda h, rows: (h, [*rows[:1], [*rows[1][:1], "abc", *rows[1][2:]], *rows[2:]]),
            "row 2, column 'mean texture': 'abc' is not a number",
        ),
        (lambda h, rows: (h, [*rows[:4], rows[4][:5], *rows[5:]]), "row 5 has 5 cells; the header has 31"),
        (lambda h, rows: (h, []), "has no rows"),
    ],
    ids=["missing-label", "wrong-width", "non-numeric", "short-row", "no-rows"],
)
def test_csv_faults_name_the_file_and_the_problem(
    tmp_path: Path,
    demo: dict[int, OnnxBackend],
    edit: Callable[[list[str], list[list[str]]], tuple[list[str], list[list[str]]]],
    message: str,
) -> None:
    header, rows = edit(*demo_rows())
    path = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(GoldenSetError, match=re.escape(f"golden set {path}: ") + ".*" + re.escape(message)):
        load_golden_set(path, demo[1].signature, label_column="target", group_column=None, feature_names=FEATURES)


def test_npz_faults(tmp_path: Path, demo: dict[int, OnnxBackend]) -> None:
    signature = demo[1].signature
    missing = tmp_path / "missing.npz"
    np.savez(missing, features=np.zeros((3, 30), np.float32))
    with pytest.raises(GoldenSetError, match=r"missing.npz: no array for model input\(s\) input \(arrays: features\)"):
        load_golden_set(missing, signature, label_column=None, group_column=None)
    narrow = tmp_path / "narrow.npz"
    np.savez(narrow, input=np.zeros((3, 29), np.float32))
    with pytest.raises(GoldenSetError, match=r"input 'input' is FP32\[-1, 30\]; the data has shape \[3, 29\]"):
        load_golden_set(narrow, signature, label_column=None, group_column=None)
    short = tmp_path / "short.npz"
    np.savez(short, input=np.zeros((3, 30), np.float32), y=np.zeros(2))
    with pytest.raises(GoldenSetError, match="label array 'y' has 2 rows; the inputs have 3"):
        load_golden_set(short, signature, label_column="y", group_column=None)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(GoldenSetError, match="garbage.npz: unreadable"):
        load_golden_set(garbage, signature, label_column=None, group_column=None)


def test_a_golden_set_fault_is_a_failing_check_not_an_exception(tmp_path: Path, demo: dict[int, OnnxBackend]) -> None:
    settings = Validation(golden_set=tmp_path / "absent.csv", label_column="target", min_agreement=0.9)
    report = validate(demo[2], demo[1], settings)
    assert [(c.name, c.verdict) for c in report.checks[:2]] == [("schema", "pass"), ("golden_set", "fail")]
    assert "absent.csv: unreadable" in report.checks[1].detail
    assert all(c.verdict == "skipped" for c in report.checks[2:])
    assert report.summary().startswith("validation failed: golden_set: golden set ")
