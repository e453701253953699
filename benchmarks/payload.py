"""Request bodies for a load test: a V2 JSON infer request built from a model's metadata, with seeded data."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_FLOAT_TYPES = {"FP16", "FP32", "FP64", "BF16"}
_INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


def infer_url(url: str, model: str | None, version: str | None = None) -> str:
    """`url` itself when it already has a path, else `<url>/v2/models/<model>[/versions/<version>]/infer`."""
    parts = urlsplit(url)
    if parts.path not in ("", "/"):
        return url
    if not model:
        raise ValueError("give --model, or the full .../infer URL")
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def metadata_url(infer: str) -> str:
    parts = urlsplit(infer)
    path = parts.path[: -len("/infer")] if parts.path.endswith("/infer") else parts.path
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def build_body(inputs: Sequence[dict[str, Any]], *, batch: int = 1, seed: int = 0) -> bytes:
    """An infer request for the metadata `inputs` (name, datatype, shape): leading -1 -> `batch`, other -1 -> 1."""
    rng = random.Random(seed)
    tensors = []
    for spec in inputs:
        shape = [int(d) for d in spec["shape"]]
        shape = [(batch if i == 0 else 1) if d < 0 else d for i, d in enumerate(shape)]
        count = 1
        for d in shape:
            count *= d
        datatype = str(spec["datatype"])
        data: list[Any]
        if datatype in _FLOAT_TYPES:
            data = [round(rng.gauss(0.0, 1.0), 4) for _ in range(count)]
        elif datatype in _INT_TYPES:
            data = [rng.randrange(0, 10) for _ in range(count)]
        elif datatype == "BOOL":
            data = [rng.random() < 0.5 for _ in range(count)]
        elif datatype == "BYTES":
            data = [f"s{rng.randrange(1000)}" for _ in range(count)]
        else:
            raise ValueError(f"input {spec['name']!r}: cannot generate datatype {datatype}")
        tensors.append({"name": spec["name"], "shape": shape, "datatype": datatype, "data": data})
    return json.dumps({"inputs": tensors}, separators=(",", ":")).encode()


def fetch_body(infer: str, *, batch: int = 1, seed: int = 0, timeout_s: float = 10.0) -> bytes:
    """GET the model's V2 metadata next to `infer` and build a request body for it."""
    url = metadata_url(infer)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            metadata = json.loads(response.read())
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read model metadata from {url}: {exc} (give --body FILE instead)") from exc
    inputs = metadata.get("inputs") if isinstance(metadata, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise ValueError(f"model metadata at {url} lists no inputs (give --body FILE instead)")
    return build_body(inputs, batch=batch, seed=seed)
