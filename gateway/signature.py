"""A model version's tensor signature (names, V2 datatypes, shapes) and the check of a request against it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.errors import ProtocolError
from gateway.inference import InferenceRequest


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One declared input or output. `shape` uses -1 for a variable (symbolic or unnamed) dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.datatype}{list(self.shape)}"

    def fits(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        for expected, actual in zip(self.shape, shape):  # noqa: B905 - lengths are equal: checked above
            if expected != -1 and expected != actual:
                return False
        return True


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    _by_name: Mapping[str, TensorSpec] = field(init=False, repr=False, compare=False)
    _output_names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {s.name: s for s in self.inputs})
        object.__setattr__(self, "_output_names", frozenset(s.name for s in self.outputs))

    def input(self, name: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((s for s in self.outputs if s.name == name), None)

    def check(self, request: InferenceRequest) -> None:
        """Raise ProtocolError naming the first input (or output) that does not fit this signature."""
        inputs = request.inputs
        outputs = request.outputs
        if len(inputs) == len(self.inputs) and (outputs is None or all(o.name in self._output_names for o in outputs)):
            # The common case, checked without building anything; any doubt falls through to the exact report.
            for tensor in inputs:
                spec = self._by_name.get(tensor.name)
                if spec is None or spec.datatype != tensor.datatype or not spec.fits(tensor.array.shape):
                    break
            else:
                if len(inputs) == 1 or len({t.name for t in inputs}) == len(inputs):
                    return
        seen: set[str] = set()
        for tensor in request.inputs:
            spec = self.input(tensor.name)
            if spec is None:
                expected = ", ".join(s.name for s in self.inputs)
                raise ProtocolError(f"unknown input '{tensor.name}'; the model's inputs are: {expected}")
            if tensor.name in seen:
                raise ProtocolError(f"input '{tensor.name}' is given more than once")
            seen.add(tensor.name)
            if tensor.datatype != spec.datatype:
                raise ProtocolError(
                    f"input '{tensor.name}' has datatype {tensor.datatype}; the model expects {spec.datatype}"
                )
            shape = tensor.shape
            if not spec.fits(shape):
                raise ProtocolError(
                    f"input '{tensor.name}' has shape {list(shape)}; the model expects {spec.describe()}"
                    " (-1 is any size)"
                )
        missing = [s.name for s in self.inputs if s.name not in seen]
        if missing:
            raise ProtocolError(f"missing input(s): {', '.join(missing)}")
        if request.outputs is not None:
            for out in request.outputs:
                if self.output(out.name) is None:
                    expected = ", ".join(s.name for s in self.outputs)
                    raise ProtocolError(f"unknown output '{out.name}'; the model's outputs are: {expected}")
