"""KServe for the remote-version tests and benchmark: its own virtualenv (created on first use) and the command that
serves `benchmarks/baselines/kserve_affine/server.py`.

The `kserve` package pins its own protobuf, grpcio and Kubernetes client and brings pandas, so it never shares the
gateway's environment. `ensure_venv` creates `benchmarks/.venvs/kserve` once (a stamp file marks success) with uv,
which installs it in seconds where pip takes a minute and a half on the 2-core machine (uv is in the dev extra);
without uv it falls back to pip. A failure raises `KserveSetupError`.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.sidevenv import SetupError, ensure

SERVER = Path(__file__).resolve().parent / "baselines" / "kserve_affine" / "server.py"
VENV = Path(__file__).resolve().parent / ".venvs" / "kserve"
_PACKAGES = ("kserve>=0.14", "numpy")


class KserveSetupError(SetupError):
    """The KServe virtualenv could not be created or installed into."""


def ensure_venv(venv: Path = VENV, *, timeout_s: float = 600.0) -> Path:
    """The virtualenv's python, creating the environment and installing KServe into it first if needed."""
    probe = "import kserve, importlib.metadata as m; print(m.version('kserve'))"
    return ensure(venv, _PACKAGES, probe, error=KserveSetupError, timeout_s=timeout_s)


def server_command(python: Path, port: int) -> list[str]:
    return [str(python), str(SERVER), str(port)]
