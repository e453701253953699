"""Small ONNX models the tests build with onnx.helper: real sessions, no downloads, milliseconds to make."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# V2 datatype -> ONNX element type: every datatype the protocol and ONNX share.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}
_OPSET = [helper.make_opsetid("", 17)]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def identity_all_types(path: Path) -> Path:
    """Inputs `in_<DT>` [batch, 2] for every datatype, each copied to `out_<DT>`."""
    inputs, outputs, nodes = [], [], []
    for datatype, elem in ONNX_TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{datatype}", elem, ["batch", 2]))
        outputs.append(helper.make_tensor_value_info(f"out_{datatype}", elem, ["batch", 2]))
        nodes.append(helper.make_node("Identity", [f"in_{datatype}"], [f"out_{datatype}"]))
    graph = helper.make_graph(nodes, "identity_all_types", inputs, outputs)
    return _save(helper.make_model(graph, opset_imports=_OPSET), path)


def affine(path: Path, *, features: int = 4, scale: float = 2.0, shift: float = 1.0) -> Path:
    """`Y = X * scale + shift`, FP32 [batch, features]; a different scale makes a distinguishable version."""
    scale_t = numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale")
    shift_t = numpy_helper.from_array(np.array(shift, dtype=np.float32), "shift")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["X", "scale"], ["scaled"]), helper.make_node("Add", ["scaled", "shift"], ["Y"])],
        "affine",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, features])],
        initializer=[scale_t, shift_t],
    )
    return _save(helper.make_model(graph, opset_imports=_OPSET), path)


def affine_repository(root: Path, versions: dict[int, float], model: str = "affine") -> Path:
    """A Triton-layout repository with one affine model whose version N multiplies by versions[N]."""
    for version, scale in versions.items():
        affine(root / model / str(version) / "model.onnx", scale=scale)
    return root


def faulty(path: Path, *, scale: float = 2.0, shift: float = 1.0, features: int = 4, valid_below: int = 4) -> Path:
    """`affine`, except that a row whose first value is >= `valid_below` (or < 0) makes onnxruntime refuse the run
    (a Gather out of range): a candidate that errors on some inputs."""
    table = numpy_helper.from_array(np.zeros((valid_below,), dtype=np.float32), "table")
    constants = [
        table,
        numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array(shift, dtype=np.float32), "shift"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("Slice", ["X", "starts", "ends", "axes"], ["first"]),
        helper.make_node("Cast", ["first"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["picked"]),
        helper.make_node("Mul", ["picked", "zero"], ["nothing"]),
        helper.make_node("Mul", ["X", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], ["moved"]),
        helper.make_node("Add", ["moved", "nothing"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "faulty",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, features])],
        initializer=constants,
    )
    return _save(helper.make_model(graph, opset_imports=_OPSET), path)


def slow(
    path: Path, *, scale: float = 2.0, shift: float = 1.0, features: int = 4, width: int = 384, layers: int = 12
) -> Path:
    """`affine`'s answer after `layers` square MatMuls of `width` whose result is multiplied by zero: the same outputs,
    about width * width * layers multiply-adds per row slower (a millisecond or so on one core)."""
    rng = np.random.default_rng(0)
    constants = [
        numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array(shift, dtype=np.float32), "shift"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(rng.normal(0, 0.05, (features, width)).astype(np.float32), "w_in"),
        numpy_helper.from_array(rng.normal(0, 0.05, (width, width)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.05, (width, features)).astype(np.float32), "w_out"),
    ]
    nodes = [helper.make_node("MatMul", ["X", "w_in"], ["h0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("MatMul", [f"h{layers}", "w_out"], ["busy"]),
        helper.make_node("Mul", ["busy", "zero"], ["nothing"]),
        helper.make_node("Mul", ["X", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], ["moved"]),
        helper.make_node("Add", ["moved", "nothing"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, features])],
        initializer=constants,
    )
    return _save(helper.make_model(graph, opset_imports=_OPSET), path)
