"""The typical baseline: a FastAPI V2-style endpoint with pydantic models running onnxruntime, as a user writes it.

Pydantic request and response models, a sync `def` endpoint (FastAPI runs it in its threadpool), `session.run`
inline, one uvicorn worker. Nothing is tuned beyond what the FastAPI tutorial shows, except what every server in the
comparison shares: uvloop, httptools, no access log, and a one-thread onnxruntime session (see `_load_sessions`).

    python -m benchmarks.baselines.fastapi_onnx --model-repository DIR --host 127.0.0.1 --port 8003
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferenceRequest(BaseModel):
    id: str | None = None
    inputs: list[RequestInput]


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


def _load_sessions(repository: Path, threads: int) -> dict[str, Any]:
    """Each model at its highest numeric version, as in Triton's layout."""
    options = ort.SessionOptions()
    # onnxruntime pins its own pool threads to cores by itself, out of taskset's reach: with the default pool the
    # "one core" server would spin on the load generator's core too. One thread keeps it on its core, as the gateway.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sessions: dict[str, Any] = {}
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        versions = sorted((int(v.name) for v in model_dir.iterdir() if v.name.isdigit()), reverse=True)
        if versions:
            path = str(model_dir / str(versions[0]) / "model.onnx")
            sessions[model_dir.name] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return sessions


def create_app(repository: Path, *, threads: int = 1, inline: bool = True) -> FastAPI:
    """`inline`: an `async def` endpoint calling `session.run` on the event loop; else a sync `def`, which FastAPI
    runs in its threadpool. Both are common; inline is the faster of the two here (one core, tiny models)."""
    app = FastAPI()
    sessions = _load_sessions(repository, threads)

    def run(model_name: str, request: InferenceRequest) -> InferenceResponse:
        session = sessions.get(model_name)
        if session is None:
            raise HTTPException(status_code=404, detail=f"unknown model {model_name}")
        feeds = {item.name: np.asarray(item.data, dtype=np.float32).reshape(item.shape) for item in request.inputs}
        results = session.run(None, feeds)
        outputs = [
            ResponseOutput(name=meta.name, shape=list(value.shape), datatype="FP32", data=value.ravel().tolist())
            for meta, value in zip(session.get_outputs(), results, strict=True)
        ]
        return InferenceResponse(model_name=model_name, id=request.id, outputs=outputs)

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    if inline:

        @app.post("/v2/models/{model_name}/infer", response_model=InferenceResponse)
        async def infer(model_name: str, request: InferenceRequest) -> InferenceResponse:
            return run(model_name, request)

    else:

        @app.post("/v2/models/{model_name}/infer", response_model=InferenceResponse)
        def infer_in_threadpool(model_name: str, request: InferenceRequest) -> InferenceResponse:
            return run(model_name, request)

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="FastAPI + pydantic + onnxruntime V2 baseline.")
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--intra-op-threads", type=int, default=1, help="onnxruntime threads per run (default 1)")
    parser.add_argument("--threadpool", action="store_true", help="sync endpoint in FastAPI's threadpool")
    args = parser.parse_args(argv)
    app = create_app(args.model_repository, threads=args.intra_op_threads, inline=not args.threadpool)
    uvicorn.run(
        app, host=args.host, port=args.port, loop="uvloop", http="httptools", access_log=False, log_level="warning"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
