"""The model repository on disk, in Triton's layout: `<repo>/<model>/<version>/model.onnx`, numeric versions."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.errors import ModelLoadError

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"


@dataclass(frozen=True, slots=True)
class VersionSource:
    """One version folder of a model; `metadata` is the optional metadata.json beside the model, as read."""

    model: str
    version: int
    folder: Path
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def model_file(self) -> Path:
        return self.folder / MODEL_FILE


def parse_version(name: str) -> int | None:
    """Triton's rule: a version folder is all digits with no leading zero; anything else is ignored."""
    if not name.isdigit() or not name.isascii() or name.startswith("0"):
        return None
    return int(name)


def scan_models(root: Path) -> dict[str, list[int]]:
    """Every model folder under `root` and its numeric versions (ascending). Other folders and files are ignored."""
    if not root.is_dir():
        raise ModelLoadError(f"model repository {root} is not a directory")
    models: dict[str, list[int]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = sorted(v for p in model_dir.iterdir() if p.is_dir() and (v := parse_version(p.name)) is not None)
        if versions:
            models[model_dir.name] = versions
        else:
            logger.warning("ignoring %s: it has no numeric version folder", model_dir)
    return models


def locate(root: Path, model: str, version: int) -> VersionSource:
    """The version folder with its metadata; ModelLoadError naming the path when it is missing or unreadable."""
    folder = root / model / str(version)
    if not (folder / MODEL_FILE).is_file():
        raise ModelLoadError(f"{folder / MODEL_FILE}: no such model file")
    return VersionSource(model, version, folder, read_metadata(folder))


def read_metadata(folder: Path) -> Mapping[str, Any]:
    path = folder / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: unreadable metadata: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: metadata must be a JSON object")
    return data
