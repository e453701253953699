"""The pre-traffic gate: before a candidate version gets any live traffic, hold it against the baseline on a golden set.

`validate_candidate` is synchronous and slow (it runs both versions over the whole golden set and times hundreds of
single-row runs): call it from a worker thread. It never raises for a bad candidate or a bad golden set; every
finding is a `Check` with its figure and threshold, so a failing candidate is reported check by check and
`gateway validate` can print every figure. Checks, in order:

- schema: the candidate takes the baseline's inputs and still gives every output the baseline gives;
- integration: a few golden rows through V2 JSON (decode, signature check, run, encode) equal a direct run;
- finite_outputs: no NaN or infinity in the candidate's float outputs;
- quality (with a label column): each configured metric against its floor or ceiling, then each metric's drop
  against the baseline's;
- agreement: share of rows where the two versions predict the same (within the shadow comparison's tolerance);
- data_quality: the golden set and the candidate's outputs against the candidate's drift profile, one window;
- bias: the candidate's metric per group; the gap between the best and the worst group;
- p99_latency_ms and latency_ratio: single-row runs, alternating the two versions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import orjson
from scipy.stats import rankdata

from gateway.drift.counting import WindowCounter
from gateway.drift.evaluation import evaluate_window
from gateway.drift.profile import Profile, SlotCounts
from gateway.drift.settings import DriftSettings
from gateway.inference import InferenceResponse, Tensor
from gateway.prediction import PredictionReader, Task
from gateway.protocol import DATATYPE_OF, decode_request, encode_response
from gateway.rollout.golden import GoldenSet, GoldenSetError, load_golden_set
from gateway.rollout.settings import HIGHER_IS_BETTER, Validation
from gateway.rollout.timing import WARMUP_RUNS, Timer, Timings, in_process_timer
from gateway.shadow.settings import CompareSettings
from gateway.signature import Signature, TensorSpec

Arrays = Mapping[str, npt.NDArray[Any]]
Verdict = Literal["pass", "fail", "skipped"]
Op = Literal[">=", "<=", ""]

INTEGRATION_ROWS = 8
MIN_GROUP_ROWS = 20  # a group's metric on fewer rows is too noisy to gate on
CHUNK_ROWS = 1024  # golden rows per run: bounds the memory a large golden set takes in one session run
_INTEGRATION_RTOL = 1e-6
# Checks whose figure is a count of faults: the summary quotes their detail, which says what the faults are.
_COUNTS = frozenset({"schema", "integration", "finite_outputs", "data_quality", "golden_set"})

T = TypeVar("T")


class Runnable(Protocol):
    """What a loaded version offers; OnnxBackend satisfies it."""

    @property
    def signature(self) -> Signature: ...

    def run(self, inputs: Arrays) -> tuple[dict[str, npt.NDArray[Any]], float | None]: ...


@dataclass(frozen=True, slots=True)
class Check:
    name: str  # e.g. "schema", "accuracy", "accuracy_drop", "agreement", "bias", "p99_latency_ms"
    verdict: Verdict
    value: float | None
    threshold: float | None
    detail: str  # one line a human reads
    op: Op = ""  # how `value` is held against `threshold`: ">=" a floor, "<=" a ceiling

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "verdict": self.verdict,
            "value": _json_number(self.value),
            "threshold": _json_number(self.threshold),
            "op": self.op or None,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class ValidationReport:
    checks: tuple[Check, ...]
    rows: int  # golden rows used (0 without a golden set)

    @property
    def passed(self) -> bool:
        return not self.failures()

    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.verdict == "fail")

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def summary(self) -> str:
        failures = self.failures()
        if failures:
            return "validation failed: " + "; ".join(_brief(c) for c in failures)
        ran = sum(c.verdict == "pass" for c in self.checks)
        skipped = len(self.checks) - ran
        return f"validation passed ({ran} checks" + (f", {skipped} skipped)" if skipped else ")")

    def to_json(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "rows": self.rows,
            "summary": self.summary(),
            "checks": [c.to_json() for c in self.checks],
        }

    def lines(self) -> list[str]:
        """One aligned line per check for a terminal: `FAIL  accuracy  0.8187  >= 0.9000  <detail>`."""
        table = [
            (
                _VERDICT_WORD[c.verdict],
                c.name,
                _figure(c.name, c.value),
                f"{c.op} {_figure(c.name, c.threshold)}".strip() if c.threshold is not None else "",
                c.detail,
            )
            for c in self.checks
        ]
        widths = [max((len(row[i]) for row in table), default=0) for i in range(4)]
        return [
            "  ".join([*(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)), row[4]]).rstrip()
            for row in table
        ]


_VERDICT_WORD: Mapping[Verdict, str] = {"pass": "PASS", "fail": "FAIL", "skipped": "SKIP"}


def validate_candidate(
    candidate: Runnable,
    baseline: Runnable,
    settings: Validation,
    *,
    reader: PredictionReader,
    compare: CompareSettings,
    profile: Profile | None,
    drift: DriftSettings,
    feature_names: Sequence[str] | None = None,
    latency_runs: int = 2000,
    clock: Callable[[], float] = time.perf_counter,
    timer: Timer | None = None,
) -> ValidationReport:
    """Every check of `settings` on the candidate against the baseline (see the module docstring for the order).

    `reader` reads both versions' outputs as predictions; `compare` holds the regression tolerance of the agreement
    check; `profile` is the candidate's drift profile (None: no data quality check) judged with `drift`'s
    thresholds; `feature_names` (the candidate's metadata.json) pick a CSV golden set's feature columns. `timer`
    times the latency runs (default: in this thread, on `clock`; the gateway passes timing.child_timer).
    """
    checks = [_guarded("schema", 0.0, "<=", lambda: _schema(candidate.signature, baseline.signature))]
    names = _planned(settings, reader.task)
    if settings.golden_set is None:
        checks += [_skipped(name, "no golden set") for name in names]
        return ValidationReport(tuple(checks), 0)
    try:
        golden = load_golden_set(
            settings.golden_set,
            candidate.signature,
            label_column=settings.label_column,
            group_column=settings.group_column,
            feature_names=feature_names,
        )
    except GoldenSetError as exc:
        checks.append(Check("golden_set", "fail", None, None, str(exc)))
        checks += [_skipped(name, "no usable golden set (see golden_set)") for name in names]
        return ValidationReport(tuple(checks), 0)
    session = _Session(candidate, baseline, golden, reader, latency_runs, timer or in_process_timer(clock))
    checks.append(_guarded("integration", 0.0, "<=", lambda: _integration(candidate, golden)))
    checks.append(_guarded("finite_outputs", 0.0, "<=", lambda: _finite(session.candidate_outputs.get())))
    for metric, threshold in _metric_gates(settings, reader.task):
        higher = metric in HIGHER_IS_BETTER
        op: Op = ">=" if higher else "<="
        checks.append(_guarded(metric, threshold, op, partial(_quality, session, metric, threshold)))
    if settings.max_metric_drop is not None:
        limit = settings.max_metric_drop
        for metric, _ in _metric_gates(settings, reader.task):
            checks.append(_guarded(f"{metric}_drop", limit, "<=", partial(_drop, session, metric, limit)))
    checks.append(_guarded("agreement", settings.min_agreement, ">=", lambda: _agreement(session, settings, compare)))
    checks.append(_guarded("data_quality", 0.0, "<=", lambda: _data_quality(session, settings, profile, drift)))
    checks.append(_guarded("bias", settings.max_group_gap, "<=", lambda: _bias(session, settings)))
    checks += _latency_checks(session, settings)
    return ValidationReport(tuple(checks), golden.rows)


# ---- plan -------------------------------------------------------------------------------------------------------


def _metric_gates(settings: Validation, task: Task) -> list[tuple[str, float | None]]:
    """(metric, floor or ceiling) in the order configured; a drop limit alone gates the task's default metric."""
    gates: list[tuple[str, float | None]] = [*settings.min_metric.items(), *settings.max_metric.items()]
    if not gates and settings.max_metric_drop is not None:
        gates = [("accuracy" if task == "classification" else "mae", None)]
    return gates


def _planned(settings: Validation, task: Task) -> list[str]:
    """The names of every check after `schema`, for reporting them skipped when there is nothing to run them on."""
    metrics = [name for name, _ in _metric_gates(settings, task)]
    drops = [f"{name}_drop" for name in metrics] if settings.max_metric_drop is not None else []
    return [
        "integration",
        "finite_outputs",
        *metrics,
        *drops,
        "agreement",
        "data_quality",
        "bias",
        "p99_latency_ms",
        "latency_ratio",
    ]


# ---- running ----------------------------------------------------------------------------------------------------


class _NotApplicableError(Exception):
    """A check that cannot apply; the message says why."""


class _FailedError(RuntimeError):
    """A shared value that could not be computed; the message already says what failed and why."""


class _Once(Generic[T]):
    """A value computed on first use; a failure (or a reason to skip) is kept and raised again to every check that
    needs the value, so one broken run fails each dependent check with the same message."""

    def __init__(self, what: str, compute: Callable[[], T]) -> None:
        self._what = what
        self._compute: Callable[[], T] | None = compute
        self._result: tuple[T] | None = None
        self._skip: str | None = None
        self._error: str | None = None

    def get(self) -> T:
        if self._compute is not None:
            compute, self._compute = self._compute, None
            try:
                self._result = (compute(),)
            except _NotApplicableError as skip:
                self._skip = str(skip)
            except _FailedError as exc:  # a value this one needed: its message already tells the story
                self._error = str(exc)
            except Exception as exc:
                self._error = f"{self._what}: {_describe(exc)}"
        if self._result is not None:
            return self._result[0]
        if self._skip is not None:
            raise _NotApplicableError(self._skip)
        raise _FailedError(self._error)


@dataclass(frozen=True, slots=True)
class _Predicted:
    """One version's predictions on the golden rows: labels and scores (classification) or values (regression)."""

    labels: npt.NDArray[np.int64] | None
    values: npt.NDArray[np.float64] | None  # [rows, k]
    scores: npt.NDArray[np.float64] | None  # [rows, K]

    def take(self, mask: npt.NDArray[np.bool_]) -> _Predicted:
        return _Predicted(
            None if self.labels is None else self.labels[mask],
            None if self.values is None else self.values[mask],
            None if self.scores is None else self.scores[mask],
        )


class _Session:
    """What the checks share: both versions' outputs and predictions on the golden set, and the latency samples,
    each computed at most once."""

    def __init__(
        self,
        candidate: Runnable,
        baseline: Runnable,
        golden: GoldenSet,
        reader: PredictionReader,
        latency_runs: int,
        timer: Timer,
    ) -> None:
        self.golden = golden
        self.latency_runs = latency_runs
        self.candidate_outputs = _Once("the candidate failed on the golden set", lambda: _run_all(candidate, golden))
        self.baseline_outputs = _Once("the baseline failed on the golden set", lambda: _run_all(baseline, golden))
        self.candidate = _Once(
            "cannot read the candidate's predictions", lambda: _predicted(reader, self.candidate_outputs.get(), golden)
        )
        self.baseline = _Once(
            "cannot read the baseline's predictions", lambda: _predicted(reader, self.baseline_outputs.get(), golden)
        )
        self.latency = _Once(
            "latency runs failed", lambda: _time_runs(candidate, baseline, golden, latency_runs, timer)
        )
        self._metrics: dict[tuple[str, str], _Once[float]] = {}

    def metric(self, version: Literal["candidate", "baseline"], name: str) -> float:
        key = (version, name)
        if key not in self._metrics:
            predicted = self.candidate if version == "candidate" else self.baseline
            self._metrics[key] = _Once(
                f"{name} of the {version}", lambda: _metric(name, _truth(self.golden), predicted.get())
            )
        return self._metrics[key].get()


def _batch_size(signature: Signature) -> int:
    # An input with a fixed batch of 1 takes one row per run (the golden loader refuses other fixed batches).
    return 1 if any(spec.shape[:1] == (1,) for spec in signature.inputs) else CHUNK_ROWS


def _run_all(runnable: Runnable, golden: GoldenSet) -> dict[str, npt.NDArray[Any]]:
    size = _batch_size(runnable.signature)
    if golden.rows <= size:
        return dict(runnable.run(golden.inputs)[0])
    parts: dict[str, list[npt.NDArray[Any]]] = {}
    for start in range(0, golden.rows, size):
        feed = {name: array[start : start + size] for name, array in golden.inputs.items()}
        for name, array in runnable.run(feed)[0].items():
            parts.setdefault(name, []).append(array)
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def _predicted(reader: PredictionReader, outputs: Arrays, golden: GoldenSet) -> _Predicted:
    if reader.task == "classification":
        labels = reader.labels(outputs)
        _check_rows(len(labels), golden.rows, reader.output)
        return _Predicted(labels, None, reader.scores(outputs))
    values = reader.values(outputs)
    _check_rows(len(values), golden.rows, reader.output)
    return _Predicted(None, values, None)


def _check_rows(got: int, rows: int, output: str) -> None:
    if got != rows:
        raise ValueError(f"output '{output}' has {got} rows for {rows} golden rows")


def _truth(golden: GoldenSet) -> npt.NDArray[Any]:
    if golden.labels is None:
        raise _NotApplicableError("no label_column")
    return golden.labels


def _guarded(name: str, threshold: float | None, op: Op, body: Callable[[], Check]) -> Check:
    """Run one check; an exception fails this check alone, with the error in its detail."""
    try:
        return body()
    except _NotApplicableError as skip:
        return Check(name, "skipped", None, threshold, str(skip), op)
    except Exception as exc:
        return Check(name, "fail", None, threshold, f"error: {_describe(exc)}", op)


def _skipped(name: str, reason: str) -> Check:
    return Check(name, "skipped", None, None, reason)


def _judged(name: str, value: float, threshold: float, op: Op, detail: str) -> Check:
    holds = value >= threshold if op == ">=" else value <= threshold  # NaN holds neither way: it fails
    return Check(name, "pass" if holds else "fail", value, threshold, detail, op)


# ---- schema and integration -------------------------------------------------------------------------------------


def _schema(candidate: Signature, baseline: Signature) -> Check:
    differences: list[str] = []
    for spec in baseline.inputs:
        other = candidate.input(spec.name)
        if other is None:
            differences.append(f"input '{spec.name}' ({spec.describe()}) is missing from the candidate")
        elif not _compatible(spec, other):
            differences.append(f"input '{spec.name}': baseline {spec.describe()}, candidate {other.describe()}")
    for spec in candidate.inputs:
        if baseline.input(spec.name) is None:
            differences.append(f"input '{spec.name}' ({spec.describe()}) is new in the candidate")
    for spec in baseline.outputs:
        other = candidate.output(spec.name)
        if other is None:
            differences.append(f"output '{spec.name}' ({spec.describe()}) is missing from the candidate")
        elif not _compatible(spec, other):
            differences.append(f"output '{spec.name}': baseline {spec.describe()}, candidate {other.describe()}")
    if differences:
        return Check("schema", "fail", float(len(differences)), 0.0, "; ".join(differences), "<=")
    inputs = ", ".join(s.name for s in candidate.inputs)
    outputs = ", ".join(s.name for s in baseline.outputs)
    return Check("schema", "pass", 0.0, 0.0, f"inputs ({inputs}) and outputs ({outputs}) match the baseline", "<=")


def _compatible(a: TensorSpec, b: TensorSpec) -> bool:
    return (
        a.datatype == b.datatype
        and len(a.shape) == len(b.shape)
        and all(x == y or -1 in (x, y) for x, y in zip(a.shape, b.shape, strict=True))
    )


def _integration(candidate: Runnable, golden: GoldenSet) -> Check:
    """A few golden rows as a client sends them: V2 JSON in, through the server's decoder, signature check and
    encoder, V2 JSON out; the answer must equal running the same rows directly."""
    signature = candidate.signature
    rows = min(INTEGRATION_ROWS, golden.rows, _batch_size(signature))
    feed = golden.head(rows)
    body = orjson.dumps(
        {
            "inputs": [
                {
                    "name": s.name,
                    "shape": list(feed[s.name].shape),
                    "datatype": s.datatype,
                    "data": _json_data(feed[s.name]),
                }
                for s in signature.inputs
            ]
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    request = decode_request(body)
    signature.check(request)
    served, _ = candidate.run(request.input_map())
    response = InferenceResponse(
        "validation", "", tuple(Tensor(name, _datatype(signature, name, a), a) for name, a in served.items())
    )
    encoded, _ = encode_response(response)
    answered = {entry["name"]: entry for entry in orjson.loads(encoded)["outputs"]}
    direct, _ = candidate.run(feed)
    differences = []
    for name, expected in direct.items():
        entry = answered.get(name)
        if entry is None:
            differences.append(f"'{name}' is missing from the response")
        elif entry["shape"] != list(expected.shape) or entry["datatype"] != _datatype(signature, name, expected):
            got = f"{entry['datatype']}{entry['shape']}"
            differences.append(f"'{name}' came back as {got}, directly {_datatype(signature, name, expected)}")
        elif not _same_values(expected, entry["data"]):
            differences.append(f"'{name}' values differ from a direct run")
    what = f"{rows} row{'s' if rows != 1 else ''} through V2 JSON"
    if differences:
        return Check("integration", "fail", float(len(differences)), 0.0, f"{what}: {'; '.join(differences)}", "<=")
    return Check("integration", "pass", 0.0, 0.0, f"{what}: outputs {', '.join(direct)} equal a direct run", "<=")


def _json_data(array: npt.NDArray[Any]) -> Any:
    if array.dtype == object:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel().tolist()]
    if array.dtype == np.float16:  # orjson has no float16; float32 holds every float16 exactly
        array = array.astype(np.float32)
    return np.ascontiguousarray(array).ravel()


def _datatype(signature: Signature, name: str, array: npt.NDArray[Any]) -> str:
    spec = signature.output(name)
    return spec.datatype if spec is not None else DATATYPE_OF.get(array.dtype, "BYTES")


def _same_values(expected: npt.NDArray[Any], data: list[Any]) -> bool:
    flat = expected.ravel()
    if len(data) != flat.size:
        return False
    if expected.dtype == object:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in flat.tolist()] == data
    if expected.dtype.kind == "f":
        # JSON has no NaN or infinity: the encoder sends them as null, which reads back as NaN.
        got = np.asarray([math.nan if v is None else v for v in data], dtype=np.float64)
        want = flat.astype(np.float64)
        finite = np.isfinite(want)
        return bool(
            np.isnan(got[~finite]).all() and np.allclose(got[finite], want[finite], rtol=_INTEGRATION_RTOL, atol=0.0)
        )
    return bool(np.array_equal(np.asarray(data, dtype=expected.dtype), flat))


def _finite(outputs: Arrays) -> Check:
    floats = {name: a for name, a in outputs.items() if a.dtype.kind == "f"}
    if not floats:
        return Check("finite_outputs", "pass", 0.0, 0.0, "no float outputs", "<=")
    bad = {name: int(np.count_nonzero(~np.isfinite(a))) for name, a in floats.items()}
    total = sum(bad.values())
    if total:
        where = ", ".join(f"{name} {n}" for name, n in bad.items() if n)
        return Check("finite_outputs", "fail", float(total), 0.0, f"NaN or infinite values: {where}", "<=")
    size = sum(a.size for a in floats.values())
    return Check("finite_outputs", "pass", 0.0, 0.0, f"all {size} values of {', '.join(floats)} are finite", "<=")


# ---- quality ----------------------------------------------------------------------------------------------------


def _quality(session: _Session, metric: str, threshold: float | None) -> Check:
    value = session.metric("candidate", metric)
    baseline = _baseline_text(session, metric)
    higher = metric in HIGHER_IS_BETTER
    op: Op = ">=" if higher else "<="
    if threshold is None:  # only gated through its drop
        return Check(metric, "skipped", value, None, f"candidate {value:.3f}; {baseline}; no floor set", op)
    holds = value >= threshold if higher else value <= threshold
    relation = op if holds else ("<" if higher else ">")
    detail = f"candidate {value:.3f} {relation} {threshold:.3f}; {baseline}"
    return _judged(metric, value, threshold, op, detail)


def _baseline_text(session: _Session, metric: str) -> str:
    try:
        return f"baseline {session.metric('baseline', metric):.3f}"
    except Exception as exc:
        return f"baseline: {_describe(exc)}"


def _drop(session: _Session, metric: str, limit: float) -> Check:
    candidate = session.metric("candidate", metric)
    baseline = session.metric("baseline", metric)
    drop = baseline - candidate if metric in HIGHER_IS_BETTER else candidate - baseline
    relation = "<=" if drop <= limit else ">"
    detail = f"{drop:.3f} {relation} {limit:.3f}: baseline {baseline:.3f}, candidate {candidate:.3f}"
    return _judged(f"{metric}_drop", drop, limit, "<=", detail)


def _metric(name: str, truth: npt.NDArray[Any], predicted: _Predicted) -> float:
    """One quality metric of `predicted` against the golden truth (numpy and scipy only)."""
    if name in HIGHER_IS_BETTER:
        if predicted.labels is None:
            raise ValueError(f"{name} needs a classifier; the outputs are read as a regression")
        if truth.dtype.kind not in "iu":
            raise ValueError(f"{name} needs integer class labels; the label column holds non-integral values")
        if name == "accuracy":
            return float(np.mean(predicted.labels == truth))
        if name == "f1":
            return _f1(truth, predicted.labels)
        if predicted.scores is None:
            raise _NotApplicableError("the model has no class scores (a [-1, K] float output) to rank rows by")
        return _roc_auc(truth, predicted.scores)
    if name in ("mae", "rmse"):
        if predicted.values is None:
            raise ValueError(f"{name} needs a regressor; the outputs are read as class labels")
        error = predicted.values[:, 0] - truth.astype(np.float64)
        return float(np.mean(np.abs(error))) if name == "mae" else float(np.sqrt(np.mean(error**2)))
    raise ValueError(f"unknown metric {name!r}")


def _f1(truth: npt.NDArray[Any], labels: npt.NDArray[np.int64]) -> float:
    """Binary F1 of class 1 when every label is 0 or 1, else the macro F1 over every class seen."""
    classes = np.union1d(truth, labels)
    if set(classes.tolist()) <= {0, 1}:
        return _f1_of(truth, labels, 1)
    return float(np.mean([_f1_of(truth, labels, int(c)) for c in classes]))


def _f1_of(truth: npt.NDArray[Any], labels: npt.NDArray[np.int64], positive: int) -> float:
    predicted, actual = labels == positive, truth == positive
    tp = int(np.count_nonzero(predicted & actual))
    wrong = int(np.count_nonzero(predicted ^ actual))  # false positives plus false negatives
    return 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0  # sklearn's zero_division=0


def _roc_auc(truth: npt.NDArray[Any], scores: npt.NDArray[np.float64]) -> float:
    """Binary: the class-1 column's AUC. Multiclass: the macro mean of one-vs-rest AUCs over the classes present;
    class k is scored by column k."""
    classes = np.unique(truth)
    if len(classes) < 2:
        raise _NotApplicableError(f"the golden labels hold one class ({int(classes[0])}); ROC AUC needs two")
    if classes[0] < 0 or classes[-1] >= scores.shape[1]:
        raise ValueError(f"labels run from {classes[0]} to {classes[-1]}; the scores have {scores.shape[1]} columns")
    if scores.shape[1] == 2 and set(classes.tolist()) == {0, 1}:
        return _auc(truth == 1, scores[:, 1])
    return float(np.mean([_auc(truth == c, scores[:, int(c)]) for c in classes]))


def _auc(positive: npt.NDArray[np.bool_], score: npt.NDArray[np.float64]) -> float:
    # Mann-Whitney U: the share of (positive, negative) pairs ranked the right way, ties counting half.
    ranks = rankdata(score)
    n_pos = int(np.count_nonzero(positive))
    n_neg = len(positive) - n_pos
    u = float(np.sum(ranks[positive])) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


# ---- agreement, data quality, bias ------------------------------------------------------------------------------


def _agreement(session: _Session, settings: Validation, compare: CompareSettings) -> Check:
    candidate, baseline = session.candidate.get(), session.baseline.get()
    if candidate.labels is not None and baseline.labels is not None:
        same = candidate.labels == baseline.labels
    else:
        assert candidate.values is not None and baseline.values is not None  # one reader: both regression
        if candidate.values.shape != baseline.values.shape:
            raise ValueError(
                f"the candidate gives {candidate.values.shape[1]} values a row, the baseline {baseline.values.shape[1]}"
            )
        # As the shadow comparison: |candidate - baseline| <= abs_tol + rel_tol * |baseline| on every value of a row.
        close = np.isclose(
            candidate.values, baseline.values, rtol=compare.rel_tol, atol=compare.abs_tol, equal_nan=True
        )
        same = close.all(axis=1)
    share = float(np.mean(same))
    rows = len(same)
    differ = f"{rows - int(np.count_nonzero(same))} of {rows} rows differ"
    threshold = settings.min_agreement
    if threshold is None:
        return Check("agreement", "skipped", share, None, f"{share:.3f} ({differ}); no min_agreement set", ">=")
    relation = ">=" if share >= threshold else "<"
    return _judged("agreement", share, threshold, ">=", f"{share:.3f} {relation} {threshold:.3f} ({differ})")


def _data_quality(session: _Session, settings: Validation, profile: Profile | None, drift: DriftSettings) -> Check:
    if not settings.check_drift:
        raise _NotApplicableError("check_drift is off")
    if profile is None:
        raise _NotApplicableError("the candidate has no drift profile")
    # Binned exactly as the live monitor bins a window (gateway/drift/monitor.py).
    counter = WindowCounter(profile, joint=drift.joint)
    counted = counter.count(session.golden.inputs, session.candidate_outputs.get())
    counts: list[SlotCounts] = []
    for feature, count in zip(counter.features, counted, strict=True):
        if count is None:
            raise ValueError(f"profile feature '{feature.name}' needs {feature.source} '{feature.tensor}'")
        counts.append(count)
    window = evaluate_window(profile, counts, drift, index=0, evaluated_at=0.0)
    drifted = [f for f in window.features if f.drifted]
    rows = session.golden.rows
    if drifted:
        names = ", ".join(f"{f.name} (JS {f.js_distance:.3f}, novel {f.novel_share:.3f})" for f in drifted)
        detail = f"{len(drifted)} of {len(window.features)} features drifted from the profile on {rows} rows: {names}"
        return Check("data_quality", "fail", float(len(drifted)), 0.0, detail, "<=")
    widest = max(window.features, key=lambda f: f.js_distance, default=None)
    largest = "" if widest is None else f"; largest JS distance {widest.js_distance:.3f} ({widest.name})"
    detail = f"no drift in {len(window.features)} features on {rows} rows{largest}"
    return Check("data_quality", "pass", 0.0, 0.0, detail, "<=")


def _bias(session: _Session, settings: Validation) -> Check:
    column = settings.group_column
    groups = session.golden.groups
    if column is None or groups is None:
        raise _NotApplicableError("no group_column")
    truth = _truth(session.golden)
    predicted = session.candidate.get()
    metric = "accuracy" if predicted.labels is not None else "mae"
    figures: list[tuple[str, int, float]] = []
    small: list[tuple[str, int]] = []
    for group in sorted(set(groups.tolist())):
        mask = groups == group
        count = int(np.count_nonzero(mask))
        if count < MIN_GROUP_ROWS:
            small.append((group, count))
        else:
            figures.append((group, count, _metric(metric, truth[mask], predicted.take(mask))))
    ignored = f"; ignored (< {MIN_GROUP_ROWS} rows): {', '.join(f'{g} (n={n})' for g, n in small)}" if small else ""
    if len(figures) < 2:
        listing = ", ".join(f"{g} (n={n})" for g, n, _ in figures) or "none"
        raise _NotApplicableError(
            f"fewer than two groups of '{column}' have {MIN_GROUP_ROWS} rows (enough: {listing}){ignored}"
        )
    values = [value for _, _, value in figures]
    gap = max(values) - min(values)
    listing = ", ".join(f"{g} {value:.3f} (n={n})" for g, n, value in figures)
    threshold = settings.max_group_gap
    if threshold is None:
        return Check("bias", "skipped", gap, None, f"{metric} by {column}: {listing}{ignored}; no max_group_gap", "<=")
    relation = "<=" if gap <= threshold else ">"
    detail = f"gap {gap:.3f} {relation} {threshold:.3f}; {metric} by {column}: {listing}{ignored}"
    return _judged("bias", gap, threshold, "<=", detail)


# ---- latency ----------------------------------------------------------------------------------------------------


def _time_runs(candidate: Runnable, baseline: Runnable, golden: GoldenSet, runs: int, timer: Timer) -> Timings:
    feeds = [golden.row(i) for i in range(min(golden.rows, max(runs, WARMUP_RUNS)))]
    return timer(candidate, baseline, feeds, runs)


def _latency_checks(session: _Session, settings: Validation) -> list[Check]:
    limit_ms, ratio_limit = settings.max_p99_latency_ms, settings.max_latency_ratio
    if limit_ms is None and ratio_limit is None:
        reason = "no max_p99_latency_ms or max_latency_ratio set"
        return [_skipped("p99_latency_ms", reason), _skipped("latency_ratio", reason)]
    if session.latency_runs < 1:
        reason = f"latency_runs is {session.latency_runs}"
        return [_skipped("p99_latency_ms", reason), _skipped("latency_ratio", reason)]

    def p99s() -> tuple[float, float, str]:
        timings = session.latency.get()
        retimed = f", {timings.retimed} timed again after a preemption" if timings.retimed else ""
        runs = f"{len(timings.candidate)} single-row runs each, in {timings.where}{retimed}"
        return float(np.percentile(timings.candidate, 99)) * 1e3, float(np.percentile(timings.baseline, 99)) * 1e3, runs

    def latency() -> Check:
        candidate, baseline, runs = p99s()
        measured = f"baseline p99 {baseline:.3f} ms; {runs}"
        if limit_ms is None:
            return Check("p99_latency_ms", "skipped", candidate, None, f"candidate p99 {candidate:.3f} ms; {measured}")
        relation = "<=" if candidate <= limit_ms else ">"
        detail = f"candidate p99 {candidate:.3f} ms {relation} {limit_ms:g} ms; {measured}"
        return _judged("p99_latency_ms", candidate, limit_ms, "<=", detail)

    def ratio() -> Check:
        candidate, baseline, runs = p99s()
        value = candidate / baseline if baseline > 0 else (math.inf if candidate > 0 else 1.0)
        measured = f"candidate p99 {candidate:.3f} ms, baseline p99 {baseline:.3f} ms; {runs}"
        if ratio_limit is None:
            return Check("latency_ratio", "skipped", value, None, f"{value:.2f}x ({measured}); no max_latency_ratio")
        relation = "<=" if value <= ratio_limit else ">"
        return _judged(
            "latency_ratio", value, ratio_limit, "<=", f"{value:.2f}x {relation} {ratio_limit:g}x ({measured})"
        )

    return [_guarded("p99_latency_ms", limit_ms, "<=", latency), _guarded("latency_ratio", ratio_limit, "<=", ratio)]


# ---- formatting -------------------------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _FailedError):
        return str(exc)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _json_number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _figure(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name in _COUNTS and value.is_integer():
        return str(int(value))
    return f"{value:.4f}" if abs(value) < 1e6 or not math.isfinite(value) else f"{value:.4g}"


def _brief(check: Check) -> str:
    if check.name in _COUNTS or check.value is None or check.threshold is None or not check.op:
        return f"{check.name}: {check.detail}"
    relation = "<" if check.op == ">=" else ">"
    return f"{check.name} {check.value:.3f} {relation} {check.threshold:.3f}"
