"""Values of one inference: named tensors, the request and the response. Immutable, protocol-neutral.

NamedTuples rather than frozen dataclasses: several are made per request, and a frozen dataclass pays an
`object.__setattr__` per field (a few microseconds a request in all); a tuple is built in one step.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

Parameters = Mapping[str, Any]
NO_PARAMETERS: Parameters = MappingProxyType({})


class Tensor(NamedTuple):
    """A named tensor with its V2 datatype. `array` has the tensor's real shape (BYTES as an object array)."""

    name: str
    datatype: str
    array: npt.NDArray[Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.array.shape)


class RequestedOutput(NamedTuple):
    """One entry of the request's `outputs`; `binary` is the resolved Triton `binary_data` flag."""

    name: str
    binary: bool = False


class InferenceRequest(NamedTuple):
    inputs: tuple[Tensor, ...]
    id: str | None = None
    # None: every output the model has, each with `binary_output` as its encoding.
    outputs: tuple[RequestedOutput, ...] | None = None
    binary_output: bool = False
    parameters: Parameters = NO_PARAMETERS

    def input_map(self) -> dict[str, npt.NDArray[Any]]:
        return {t.name: t.array for t in self.inputs}


class InferenceResponse(NamedTuple):
    model_name: str
    model_version: str
    outputs: tuple[Tensor, ...]
    id: str | None = None
    # Per output, whether to send it as Triton binary data; same order as `outputs`.
    binary: tuple[bool, ...] = ()
    parameters: Parameters = NO_PARAMETERS


def views_body(array: npt.NDArray[Any]) -> bool:
    """Whether `array` is a view of a request body (bytes, or a memoryview of them: binary inputs are), which a
    side channel keeping it would pin. Decoded JSON inputs, the model's outputs (whose memory the runtime's capsule
    owns) and copies are not: a side channel may keep those as they are, since the gateway never mutates a tensor
    once the answer is built."""
    base = array.base
    while type(base) is np.ndarray:
        base = base.base
    return isinstance(base, bytes | bytearray | memoryview)
