from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import models
import pytest
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from gateway.app import Settings, create_app

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "config" / "gateway.yaml"


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
