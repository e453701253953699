"""MLServer for the comparison: its own virtualenv (created on first use), a model folder, and two server specs.

MLServer pins its own versions of FastAPI, uvicorn, pydantic and more, so it never shares the gateway's environment.
`ensure_venv` creates `benchmarks/.venvs/mlserver` with `pip install mlserver onnxruntime` once (a stamp file marks
success); a pip failure raises `MlserverSetupError` and the comparison goes on without MLServer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from benchmarks.servers import ServerSpec, free_port
from benchmarks.sidevenv import SetupError, ensure

RUNTIME_SOURCE = Path(__file__).resolve().parent / "baselines" / "mlserver_onnx" / "runtime.py"
# MLServer 1.7's worker processes call asyncio.get_event_loop() with no loop set, which uvloop 0.22 turned into an
# error: its default (worker pool) mode only starts with an older uvloop.
_PACKAGES = ("mlserver", "uvloop<0.22", "onnxruntime", "numpy")


class MlserverSetupError(SetupError):
    """The MLServer virtualenv could not be created or installed into."""


def ensure_venv(venv: Path, *, log: Callable[[str], None] = print, timeout_s: float = 1200.0) -> Path:
    """The virtualenv's python, creating the environment and installing MLServer into it first if needed."""
    probe = "import mlserver, onnxruntime; print(mlserver.__version__)"
    return ensure(venv, _PACKAGES, probe, error=MlserverSetupError, prefer_uv=False, timeout_s=timeout_s, log=log)


def write_model_folder(folder: Path, repository: Path, *, parallel_workers: int | None) -> Path:
    """An MLServer model folder: settings.json and one model-settings.json per repository model.

    Each model is served at its highest version; the HTTP port comes from the command line, the gRPC and metrics
    ports are picked free now because MLServer always opens them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    settings: dict[str, object] = {
        "debug": False,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "logging_level": "WARNING",
    }
    if parallel_workers is not None:
        settings["parallel_workers"] = parallel_workers
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        versions = sorted((int(v.name) for v in model_dir.iterdir() if v.name.isdigit()), reverse=True)
        if not versions:
            continue
        target = folder / model_dir.name
        target.mkdir(exist_ok=True)
        model = {
            "name": model_dir.name,
            "implementation": "runtime.OnnxRuntime",
            "parameters": {"uri": str((model_dir / str(versions[0]) / "model.onnx").resolve())},
        }
        (target / "model-settings.json").write_text(json.dumps(model, indent=2))
    return folder


def mlserver_specs(python: Path, repository: Path, work: Path, start_timeout_s: float) -> list[ServerSpec]:
    """`mlserver` (inference in the HTTP process, parallel_workers 0) and `mlserver-default` (its worker pool)."""
    mlserver = python.parent / "mlserver"
    specs = []
    for name, workers in (("mlserver", 0), ("mlserver-default", None)):
        folder = write_model_folder(work / name, repository, parallel_workers=workers)
        specs.append(
            ServerSpec(
                name,
                (str(mlserver), "start", str(folder)),
                # `runtime.OnnxRuntime` is imported from its source folder, in the server and in its workers.
                env=(
                    ("MLSERVER_HTTP_PORT", "{port}"),
                    ("MLSERVER_HOST", "{host}"),
                    ("PYTHONPATH", str(RUNTIME_SOURCE.parent)),
                ),
                cwd=folder,
                start_timeout_s=start_timeout_s,
            )
        )
    return specs
