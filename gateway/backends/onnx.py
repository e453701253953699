"""One ONNX model version in an onnxruntime session, run off the event loop with bounded concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from gateway.admission import NO_HEADERS, request_timeout
from gateway.backends import Arrays, Execution, ModelFile
from gateway.errors import BackendError, DeadlineExceededError, ModelLoadError, ModelRejectedError, OverloadedError
from gateway.protocol import DTYPES
from gateway.signature import Signature, TensorSpec

GraphOptimization = Literal["disable", "basic", "extended", "all"]
INLINE_MAX_ROWS = 32  # the largest batch the warm-up times; bigger requests always go to a thread

_OPT_LEVEL = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

# onnxruntime's type strings -> V2 datatypes (tensor(bfloat16) has no numpy dtype here: refused at load).
_V2_OF_ORT = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True, slots=True)
class OnnxOptions:
    """Session options. One intra-op thread by default: on a small CPU box, parallel requests beat parallel ops."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization: GraphOptimization = "all"
    max_concurrency: int = 2  # executions of this version at once; more wait on the semaphore
    max_waiting: int = 1024  # requests waiting for a slot before new ones are refused with 503
    # Admission (gateway/admission.py says why): seconds of work a request may find waiting ahead of it, and the
    # seconds it may wait for a slot when its x-request-timeout-ms header does not say.
    max_queue_wait: float = 1.0
    request_timeout: float = 30.0
    # Run on the event loop, with no thread hop, when the execution is expected to take less than this: a hop costs
    # tens of microseconds of wake-ups, more than a tiny model computes. 0 turns inline execution off.
    inline_below_us: float = 150.0


def version_signature(session: ort.InferenceSession, path: Path) -> Signature:
    return Signature(
        inputs=tuple(_spec(a, path) for a in session.get_inputs()),
        outputs=tuple(_spec(a, path) for a in session.get_outputs()),
    )


def _spec(arg: Any, path: Path) -> TensorSpec:
    datatype = _V2_OF_ORT.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"{path}: tensor '{arg.name}' has type {arg.type}, which this server does not serve")
    # Symbolic dims come back as strings, unnamed ones as None: both are variable (-1) in V2 metadata.
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


class OnnxBackend:
    def __init__(self, path: Path, options: OnnxOptions, executor: Executor) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.graph_optimization_level = _OPT_LEVEL[options.graph_optimization]
        so.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises bare Exception subclasses for corrupt or unsupported files
            raise ModelLoadError(f"{path}: onnxruntime cannot load it: {_first_line(exc)}") from exc
        self._path = path
        self._options = options
        # The C++ session's run, without the Python wrapper's per-call input-name validation (2-3 us, a third of a
        # tiny model's run): `Signature.check` has already matched the inputs to the model.
        inner = getattr(self._session, "_sess", None)
        self._run = inner.run if inner is not None else self._session.run
        # One RunOptions for every run: given None, the binding builds a default one per call (about a microsecond).
        # Runs only read it, so threads can share it.
        self._run_options = ort.RunOptions()
        self._signature = version_signature(self._session, path)
        self._output_names = [s.name for s in self._signature.outputs]
        self._executor = executor
        self._slots = asyncio.Semaphore(options.max_concurrency)
        self._max_waiting = options.max_waiting
        self._waiting = 0
        self._concurrency = options.max_concurrency
        self._max_queue_wait = options.max_queue_wait
        self._request_timeout = options.request_timeout
        # Smoothed seconds a slot stays taken per thread execution, by the wall clock: the hop, the run and the wait
        # for the GIL to hand the result back, which a busy loop stretches far past onnxruntime's own figure (that
        # figure let 85 ms of work queue under a 20 ms bound). Refusals cost no decode, so a busy loop refusing more
        # does not feed this back into refusing everything. 0 until one has run.
        self._service = 0.0
        # True while a new request would find more than max_queue_wait of work (or max_waiting requests) ahead of it:
        # the data plane reads it before decoding, so a refusal costs no decode. Updated only when the queue moves.
        self.shedding = False
        self._budget = options.inline_below_us * 1e-6
        # Cost model from warm-up: fixed seconds per execution plus seconds per input element; inf until measured.
        self._fixed_cost = float("inf")
        self._element_cost = 0.0
        self._inline_elements = 0

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def model_file(self) -> ModelFile:
        """Enough to build the same session in another process (validation times its latency runs in one)."""
        return ModelFile(self._path, self._options)

    def warm(self) -> None:
        """Run on zeros so the first real request does not pay for lazy initialisation, and time a 1-row and a
        32-row execution to decide which requests are cheap enough to run inline; fail the load if it cannot run."""
        try:
            fixed = self._time(1)
            base = sum(a.size for a in self._zeros(1).values())
            if self._batched:
                per_row = (self._time(INLINE_MAX_ROWS) - fixed) / (INLINE_MAX_ROWS - 1)
                # Timing noise can make a big batch look free; never assume less than a tenth of a row's share.
                self._element_cost = max(per_row, fixed / 10) / max(base, 1)
                self._inline_elements = base * INLINE_MAX_ROWS  # beyond what was measured, never guess: a thread
            else:
                self._element_cost = fixed / max(base, 1)
                self._inline_elements = base
            self._fixed_cost = fixed
        except Exception as exc:
            raise ModelLoadError(f"{self._path}: warm-up inference failed: {_first_line(exc)}") from exc

    def _time(self, rows: int) -> float:
        """Typical seconds for one execution of `rows` rows: the first runs (arena growth, lazy kernels) are
        discarded and the lower quartile of the rest kept, which a busy machine disturbs least."""
        inputs = self._zeros(rows)
        for _ in range(5):
            self.run(inputs)
        times = sorted(self.run(inputs).compute_seconds or 0.0 for _ in range(21))
        return times[len(times) // 4]

    @property
    def _batched(self) -> bool:
        return all(s.shape and s.shape[0] == -1 for s in self._signature.inputs)

    def _zeros(self, rows: int) -> dict[str, npt.NDArray[Any]]:
        return {s.name: _zeros(s, rows) for s in self._signature.inputs}

    def runs_inline(self, inputs: Arrays) -> bool:
        """Whether this request is expected to compute in less time than a thread hop costs (see OnnxOptions)."""
        elements = 0
        for array in inputs.values():
            elements += array.size
        return elements <= self._inline_elements and self._fixed_cost + self._element_cost * elements < self._budget

    def run(self, inputs: Arrays) -> Execution:
        """Run synchronously (the caller picks the thread), timing onnxruntime; its errors become gateway errors."""
        start = perf_counter()
        try:
            values = self._run(self._output_names, inputs, self._run_options)
        except InvalidArgument as exc:
            raise ModelRejectedError(f"the model rejected the input: {_first_line(exc)}") from exc
        except Exception as exc:
            raise BackendError(f"onnxruntime failed: {_first_line(exc)}") from exc
        seconds = perf_counter() - start
        return Execution(dict(zip(self._output_names, values, strict=True)), seconds)

    async def infer(
        self, inputs: Arrays, headers: Mapping[str, str] = NO_HEADERS, start: float | None = None
    ) -> Execution:
        """Run `inputs`: inline when cheap, else in a thread once a slot is free. A request that has to wait is
        admitted only if it can start within its time (see gateway/admission.py); `headers` and `start` (its
        perf_counter start) are read only then."""
        if self.runs_inline(inputs):
            return self.run(inputs)
        if self._slots.locked():
            deadline = self._admit(headers, start)
            self._waiting += 1
            self._reassess()
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
                self._reassess()
            now = perf_counter()
            if now > deadline:
                self._slots.release()
                raise DeadlineExceededError(
                    f"the request's deadline passed while it waited for this model version ({now - deadline:.3f} s ago)"
                )
        else:
            await self._slots.acquire()
        try:
            # session.run releases the GIL, so the loop keeps serving while the model computes.
            began = perf_counter()
            execution = await asyncio.get_running_loop().run_in_executor(self._executor, self.run, inputs)
            self._service += 0.2 * (perf_counter() - began - self._service)
            if self._waiting:
                self._reassess()
            return execution
        finally:
            self._slots.release()

    def _ahead(self) -> float:
        """Seconds until a slot frees for a newcomer: the work waiting ahead of it and its own turn."""
        return (self._waiting + 1) * self._service / self._concurrency

    def _reassess(self) -> None:
        waiting = self._waiting
        # Only with requests already waiting are the slots all busy: a request that finds a free slot never waits.
        self.shedding = waiting > 0 and (waiting >= self._max_waiting or self._ahead() > self._max_queue_wait)

    def overloaded(self, allowed: float | None = None) -> OverloadedError:
        """The refusal of a request that may wait `allowed` seconds (default max_queue_wait): also what a request
        gets while `shedding`, before its body is decoded."""
        ahead = self._ahead()
        allowed = self._max_queue_wait if allowed is None else max(0.0, allowed)
        return OverloadedError(
            f"{self._waiting} requests are already waiting for this model version (about {ahead * 1e3:.0f} ms of"
            f" work ahead; this request may wait {allowed * 1e3:.0f} ms)",
            retry_after=max(1.0, ahead),
        )

    def _admit(self, headers: Mapping[str, str], start: float | None) -> float:
        """The deadline of a request that must wait for a slot, or OverloadedError (503) when it cannot start in
        time: too many waiting, or more work ahead of it than `max_queue_wait` or its remaining time."""
        now = perf_counter()
        deadline = (now if start is None else start) + request_timeout(headers, self._request_timeout)
        allowed = min(self._max_queue_wait, deadline - now)
        if self._waiting >= self._max_waiting or self._ahead() > allowed:
            raise self.overloaded(allowed)
        return deadline

    def close(self) -> None:
        # Sessions free their memory when the last reference goes; nothing to flush.
        pass


def _zeros(spec: TensorSpec, rows: int = 1) -> npt.NDArray[Any]:
    shape = tuple((rows if i == 0 else 1) if d < 0 else d for i, d in enumerate(spec.shape))
    if spec.datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=DTYPES[spec.datatype])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def load_onnx(path: Path, options: OnnxOptions, executor: Executor, *, warm: bool = True) -> OnnxBackend:
    backend = OnnxBackend(path, options, executor)
    if warm:
        backend.warm()
    return backend


def runtime_version() -> str:
    return str(ort.__version__)
