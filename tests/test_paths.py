"""Config path containment: golden sets, state files and the prediction log stay inside the config's folder or the
model repository unless the operator allows a folder; symlinks are judged where they lead (a ConfigMap's `..data`
links pass, a link out does not)."""

from __future__ import annotations

from pathlib import Path

import models
import pytest
from prometheus_client import CollectorRegistry

from gateway.app import Settings, create_app
from gateway.config import parse_config_bytes
from gateway.errors import ConfigError
from gateway.generation import parse_features
from gateway.paths import ALLOWED_ENV, allow, inside

ROUTE = """
model_repository: {repository}
{extra}
routes:
  m:
    versions: {{stable: 1, canary: 2}}
    split: {{weights: {{stable: 100}}, baseline: stable}}
    rollout:
      candidate: canary
      state_file: {state}
      validate: {{golden_set: {golden}}}
"""


def features(folder: Path, *, golden: str, state: str = "state/m.json", extra: str = "") -> None:
    text = ROUTE.format(repository=folder / "models", extra=extra, golden=golden, state=state)
    parse_features(parse_config_bytes(text.encode(), source=str(folder / "gateway.yaml"), base_dir=folder))


@pytest.fixture(autouse=True)
def no_allowance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOWED_ENV, raising=False)  # conftest allows config/data for the other tests


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "config" / "models").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "golden.csv").write_text("a,b\n1,2\n")
    return tmp_path / "config"


def test_paths_inside_the_config_folder_or_the_repository_pass(folder: Path) -> None:
    features(folder, golden="golden.csv")
    features(folder, golden="models/m/golden.csv", state="models/m/state.json")


@pytest.mark.parametrize(
    ("golden", "state", "key"),
    [
        ("../outside/golden.csv", "state/m.json", "routes.m.rollout.validate.golden_set"),
        ("golden.csv", "../outside/state.json", "routes.m.rollout.state_file"),
        ("/etc/passwd", "state/m.json", "routes.m.rollout.validate.golden_set"),
    ],
)
def test_a_path_that_escapes_is_refused_naming_its_key(folder: Path, golden: str, state: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}: .* is outside the config's folder .* allow its folder with"):
        features(folder, golden=golden, state=state)


def test_an_allowed_folder_lets_the_path_through(folder: Path) -> None:
    allow([folder.parent / "outside"])  # monkeypatched environment: undone after the test
    features(folder, golden="../outside/golden.csv")


def test_a_symlink_is_judged_where_it_leads(folder: Path) -> None:
    # A ConfigMap mount: the file is a link into ..data/, inside the same folder: it passes.
    (folder / "..data").mkdir()
    (folder / "..data" / "golden.csv").write_text("a\n1\n")
    (folder / "golden.csv").symlink_to(folder / "..data" / "golden.csv")
    features(folder, golden="golden.csv")
    # A link that leads out is refused as a `..` would be.
    (folder / "escape.csv").symlink_to(folder.parent / "outside" / "golden.csv")
    with pytest.raises(ConfigError, match="validate.golden_set: .*escape.csv is outside"):
        features(folder, golden="escape.csv")
    assert inside(folder / "golden.csv", [folder]) and not inside(folder / "escape.csv", [folder])


def test_a_prediction_log_outside_is_refused_at_start(folder: Path) -> None:
    models.affine_repository(folder / "models", {1: 2.0})
    config = folder / "gateway.yaml"
    log = "{path: ../outside/predictions.jsonl}"
    config.write_text(
        f"model_repository: ./models\nprediction_log: {log}\nroutes: {{affine: {{versions: {{a: 1}}}}}}\n"
    )
    with pytest.raises(ConfigError, match=r"prediction_log.path: .*predictions.jsonl is outside the config's folder"):
        create_app(Settings(config_path=config, watch=False), registry=CollectorRegistry())
