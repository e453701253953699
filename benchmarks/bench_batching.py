"""Throughput of one ONNX model with and without the dynamic batcher, closed loop, 1-row requests.

    python benchmarks/bench_batching.py [--seconds 3] [--clients 64]

An MLP (64 -> 256 -> 256 -> 10, float32) runs in onnxruntime with one intra-op thread on a 2-thread pool. "direct"
runs every request on its own; the batched rows go through `DynamicBatcher`. Also measures the batcher's own cost
per request with an identity model.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import CollectorRegistry

from gateway.batching import BatchingConfig, BatchingMetrics, DynamicBatcher, executor_offload

Arrays = Mapping[str, npt.NDArray[Any]]


def mlp() -> bytes:
    rng = np.random.default_rng(0)
    sizes = [64, 256, 256, 10]
    nodes, inits = [], []
    prev = "X"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        inits.append(numpy_helper.from_array(rng.normal(size=(a, b)).astype(np.float32) * 0.1, f"W{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"H{i}"]))
        prev = f"H{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"R{i}"]))
            prev = f"R{i}"
    nodes.append(helper.make_node("Identity", [prev], ["Y"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


async def closed_loop(call: Callable[[Arrays], Awaitable[Any]], clients: int, seconds: float) -> tuple[float, ...]:
    latencies: list[float] = []
    x = {"X": np.ones((1, 64), np.float32)}
    stop = time.perf_counter() + seconds

    async def client() -> None:
        while (start := time.perf_counter()) < stop:
            await call(x)
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    lat = np.array(latencies) * 1e3
    return len(latencies) / elapsed, float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


async def main(seconds: float, clients: int) -> None:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(mlp(), sess_options=so, providers=["CPUExecutionProvider"])

    def run(inputs: Arrays) -> dict[str, npt.NDArray[Any]]:
        (y,) = session.run(["Y"], dict(inputs))
        return {"Y": y}

    with ThreadPoolExecutor(max_workers=2) as pool:
        loop = asyncio.get_running_loop()

        async def direct(x: Arrays) -> Any:
            return await loop.run_in_executor(pool, run, x)

        rps, p50, p99 = await closed_loop(direct, clients, seconds)
        print(f"direct (2 threads)                       {rps:8.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
        for max_batch, delay_us, in_flight in [(32, 0, 1), (32, 500, 1), (32, 0, 2), (64, 500, 2)]:
            registry = CollectorRegistry()
            metrics = BatchingMetrics(registry).bind("mlp", "1")
            batcher = DynamicBatcher(
                run,
                BatchingConfig(max_batch, delay_us, 0),
                metrics=metrics,
                offload=executor_offload(pool),
                max_in_flight=in_flight,
            )
            rps, p50, p99 = await closed_loop(batcher.submit, clients, seconds)
            await batcher.aclose()
            executions = registry.get_sample_value("gateway_batch_executions_total", {"model": "mlp", "version": "1"})
            rows = registry.get_sample_value("gateway_batch_inferences_total", {"model": "mlp", "version": "1"})
            mean = (rows or 0) / (executions or 1)
            label = f"batched max={max_batch} delay={delay_us}us inflight={in_flight}"
            print(f"{label:<41}{rps:8.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  mean batch {mean:5.1f}")

        # The batcher's own cost: identity model, so what remains is queueing, concat/split and the thread hop.
        registry = CollectorRegistry()
        batcher = DynamicBatcher(
            lambda x: dict(x),
            BatchingConfig(64, 0, 0),
            metrics=BatchingMetrics(registry).bind("id", "1"),
            offload=executor_offload(pool),
        )
        rps, p50, p99 = await closed_loop(batcher.submit, clients, seconds)
        await batcher.aclose()
        print(f"{'batched identity model (overhead)':<41}{rps:8.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args()
    onnx.checker.check_model(onnx.load_from_string(mlp()))
    asyncio.run(main(args.seconds, args.clients))
