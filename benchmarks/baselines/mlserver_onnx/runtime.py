# mypy: ignore-errors
# (This file runs inside MLServer's own virtualenv; the project's environment has no `mlserver` to type-check against.)
"""A small ONNX runtime for MLServer: one onnxruntime session per model, V2 tensors through MLServer's NumpyCodec.

MLServer ships no ONNX runtime, so this is what a user writes: the custom-runtime pattern of its documentation,
`session.run` inline in `predict` as MLServer's own runtimes (sklearn, xgboost) call their models. The session uses
one thread, like every other server in the comparison.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {item.name: NumpyCodec.decode_input(item).astype(np.float32, copy=False) for item in payload.inputs}
        results = self._session.run(self._output_names, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(n, v) for n, v in zip(self._output_names, results, strict=True)],
        )
