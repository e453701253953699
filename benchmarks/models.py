"""The benchmark models: small ReLU MLPs built with ``onnx.helper`` from seeded weights, in Triton's repository layout.

``python -m benchmarks.models DIR`` writes ``DIR/tiny/1/model.onnx`` (16 -> 64 -> 64 -> 2) and
``DIR/medium/1/model.onnx`` (256 -> 1024 -> 1024 -> 10). Input ``input`` FP32 ``[-1, n_in]``, output ``output`` FP32
``[-1, n_out]``. The same seed gives byte-identical files, so every server in a comparison loads the same model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Opset 17 / IR 8 load in every onnxruntime from 1.14 on, including the one MLServer's virtualenv pulls in.
_OPSET = 17
_IR_VERSION = 8


@dataclass(frozen=True, slots=True)
class MlpSpec:
    """Layer widths from input to output, e.g. (16, 64, 64, 2)."""

    name: str
    widths: tuple[int, ...]
    seed: int

    @property
    def n_inputs(self) -> int:
        return self.widths[0]

    @property
    def n_outputs(self) -> int:
        return self.widths[-1]


TINY = MlpSpec("tiny", (16, 64, 64, 2), seed=16)
MEDIUM = MlpSpec("medium", (256, 1024, 1024, 10), seed=256)
# MEDIUM's input, three times its compute (about 1 ms a row here): the overload benchmark's model, heavy enough that
# serving, not parsing or the load generator, is what runs out at 3x its capacity, as with the models users serve.
DEEP = MlpSpec("deep", (256, 1024, 1024, 1024, 1024, 10), seed=1024)
MODELS: dict[str, MlpSpec] = {TINY.name: TINY, MEDIUM.name: MEDIUM, DEEP.name: DEEP}


def build_model(spec: MlpSpec) -> onnx.ModelProto:
    """Gemm (+ Relu) per layer, He-scaled normal weights from `spec.seed`, no Relu after the last layer."""
    rng = np.random.default_rng(spec.seed)
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    current = "input"
    layers = list(zip(spec.widths[:-1], spec.widths[1:], strict=True))
    for index, (n_in, n_out) in enumerate(layers):
        weight = (rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(np.float32)
        bias = (rng.standard_normal(n_out) * 0.01).astype(np.float32)
        initializers.append(numpy_helper.from_array(weight, f"w{index}"))
        initializers.append(numpy_helper.from_array(bias, f"b{index}"))
        last = index == len(layers) - 1
        gemm_out = "output" if last else f"gemm{index}"
        nodes.append(helper.make_node("Gemm", [current, f"w{index}", f"b{index}"], [gemm_out], name=f"gemm{index}"))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"relu{index}"], name=f"relu{index}"))
            current = f"relu{index}"
    graph = helper.make_graph(
        nodes,
        spec.name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", spec.n_inputs])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", spec.n_outputs])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="gateway-benchmarks"
    )
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_repository(directory: Path, specs: Sequence[MlpSpec] = (TINY, MEDIUM)) -> dict[str, Path]:
    """Write `<directory>/<name>/1/model.onnx` for each spec (overwriting); return name -> model path."""
    paths: dict[str, Path] = {}
    for spec in specs:
        path = directory / spec.name / "1" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = build_model(spec).SerializeToString()
        # Skip the write when identical, so a repository a running server watches is not touched needlessly.
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        paths[spec.name] = path
    return paths


def write_profile(model: Path, spec: MlpSpec, *, rows: int = 5000, seed: int = 5) -> Path:
    """A drift profile beside `model` (its `profile.json`), from `rows` seeded standard-normal rows, the
    distribution the benchmarks' request bodies draw their values from, and the model's outputs on them: the
    reference the gateway "as deployed" judges its sampled traffic against."""
    import onnxruntime

    from gateway.backends.onnx import version_signature
    from gateway.drift.profile import build_profile, save_profile

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inputs = np.random.default_rng(seed).standard_normal((rows, spec.n_inputs)).astype(np.float32)
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, {"input": inputs}), strict=True))
    profile = build_profile(version_signature(session, model), {"input": inputs}, outputs, dataset_sha256="0" * 64)
    path = model.parent / "profile.json"
    save_profile(profile, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("directory", type=Path, help="repository root to write into")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    args = parser.parse_args(argv)
    for name, path in write_repository(args.directory, [MODELS[m] for m in args.models]).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
