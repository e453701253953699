"""Model runtimes behind one narrow seam: named arrays in, named arrays out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy.typing as npt

from gateway.signature import Signature

Arrays = Mapping[str, npt.NDArray[Any]]


class Execution(NamedTuple):
    """What one run produced, and how long the runtime itself took (queue and thread hop excluded)."""

    outputs: dict[str, npt.NDArray[Any]]
    compute_seconds: float | None  # None when the runner observed it itself (a batch's execution)


@dataclass(frozen=True, slots=True)
class ModelFile:
    """A version as a file and its session options: enough for another process to build the same session."""

    path: Path
    options: Any  # the runtime's options (OnnxOptions), picklable


class Backend(Protocol):
    @property
    def shedding(self) -> bool:
        """A new request would be refused now: the work queued ahead of it (gateway/admission.py), or a remote
        endpoint ejected (gateway/remote). An attribute where it can be (the data plane reads it per request)."""
        ...

    @property
    def signature(self) -> Signature: ...

    def overloaded(self) -> Exception:
        """The refusal to raise while `shedding`."""
        ...

    async def infer(self, inputs: Arrays, headers: Mapping[str, str] = ..., start: float | None = None) -> Execution:
        """Run `inputs`; `headers` and `start` (perf_counter) are the request's, for admission when it must wait."""
        ...

    def run(self, inputs: Arrays) -> Execution:
        """Run synchronously in the caller's thread (offline work such as validation; never on the event loop)."""
        ...

    def close(self) -> None: ...
