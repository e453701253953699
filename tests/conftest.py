from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import models
import pytest
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from gateway.app import Settings, create_app
from gateway.paths import allow

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "config" / "gateway.yaml"

# Many tests write configs in temporary folders that name the repository's golden sets (config/data): allow that
# folder, as an operator would with --allow-path, for this process and the gateways it starts. tests/test_paths.py
# clears it where containment itself is under test.
allow([ROOT / "config" / "data"])


@pytest.fixture(scope="session")
def all_types_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    models.identity_all_types(root / "all_types" / "1" / "model.onnx")
    models.affine_repository(root, {1: 2.0, 2: 3.0})
    return root


@pytest.fixture()
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture()
def repo_client(all_types_repo: Path, registry: CollectorRegistry) -> Iterator[TestClient]:
    app = create_app(Settings(model_repository=all_types_repo), registry=registry)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
