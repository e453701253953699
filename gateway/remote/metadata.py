"""A remote model's V2 metadata (`GET /v2/models/{m}[/versions/{v}]`) as the signature the gateway routes,
validates, shadows and watches drift by.

Read once, when the version loads (a reload that keeps the version keeps its signature; one that changes its spec
reads it again). A model whose metadata names no inputs or outputs (a server that does not declare them) cannot
be served: the gateway would know nothing to check, compare or profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import ModelLoadError
from gateway.protocol import DTYPES
from gateway.signature import Signature, TensorSpec


@dataclass(frozen=True, slots=True)
class RemoteMetadata:
    signature: Signature
    platform: str
    versions: tuple[str, ...]  # what the server says it has
    parameters: Mapping[str, Any]  # its `parameters`, when it sends any (another gateway sends its metadata.json)


def parse_metadata(body: bytes, where: str) -> RemoteMetadata:
    """The metadata answer's bytes -> RemoteMetadata; ModelLoadError naming `where` and the fault."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ModelLoadError(f"{where}: the metadata is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{where}: the metadata is not a JSON object")
    inputs = _specs(data.get("inputs"), "inputs", where)
    outputs = _specs(data.get("outputs"), "outputs", where)
    if not inputs or not outputs:
        raise ModelLoadError(
            f"{where}: the metadata declares no {'inputs' if not inputs else 'outputs'}; the gateway needs the model's"
            " signature to route, validate and watch it (declare them on the server)"
        )
    versions = data.get("versions")
    parameters = data.get("parameters")
    return RemoteMetadata(
        signature=Signature(inputs, outputs),
        platform=str(data.get("platform") or ""),
        versions=tuple(str(v) for v in versions) if isinstance(versions, list) else (),
        parameters=parameters if isinstance(parameters, dict) else {},
    )


def _specs(value: object, key: str, where: str) -> tuple[TensorSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ModelLoadError(f"{where}: metadata '{key}' must be a list")
    specs: list[TensorSpec] = []
    for i, item in enumerate(value):
        at = f"{where}: metadata {key}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise ModelLoadError(f"{at} must be an object with a name")
        datatype = item.get("datatype")
        if datatype not in DTYPES:
            raise ModelLoadError(f"{at} ('{item['name']}') has datatype {datatype!r}, which the gateway does not serve")
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise ModelLoadError(f"{at} ('{item['name']}') has no list of integers for its shape")
        specs.append(TensorSpec(item["name"], str(datatype), tuple(d if d >= 0 else -1 for d in shape)))
    return tuple(specs)
