"""A KServe model server (the `kserve` package, in its own virtualenv: benchmarks/kserve_env.py) serving one model,
`affine`: Y = X * 3 + 1, FP32 [-1, 4] in and out, with its signature declared so its V2 metadata has one.

Two inputs misbehave on purpose, for the gateway's tests of remote faults: a first value of -1 makes the model
sleep 2 s before answering (a slow endpoint), and -2 makes it raise (a 500).

    python server.py HTTP_PORT
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class Affine(Model):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__("affine")
        self.ready = True

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": "Y", "datatype": "FP32", "shape": [-1, 4]}]

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        if x.size and x.flat[0] == -1:
            await asyncio.sleep(2.0)
        if x.size and x.flat[0] == -2:
            raise RuntimeError("the model failed on purpose")
        y = (x.astype(np.float32) * np.float32(3.0) + np.float32(1.0)).astype(np.float32)
        output = InferOutput(name="Y", shape=list(y.shape), datatype="FP32")
        binary = bool(payload.parameters and payload.parameters.get("binary_data_output"))
        output.set_data_from_numpy(y, binary_data=binary)
        response_id = payload.id or str(uuid.uuid4())  # KServe's answer must carry an id, as it makes one itself
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=response_id)


if __name__ == "__main__":
    ModelServer(http_port=int(sys.argv[1]), enable_grpc=False, workers=1).start([Affine()])
