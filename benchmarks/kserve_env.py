"""KServe for the remote-version tests and benchmark: its own virtualenv (created on first use) and the command that
serves `benchmarks/baselines/kserve_affine/server.py`.

The `kserve` package pins its own protobuf, grpcio and Kubernetes client and brings pandas, so it never shares the
gateway's environment. `ensure_venv` creates `benchmarks/.venvs/kserve` once (a stamp file marks success) with uv,
which installs it in seconds where pip takes a minute and a half on the 2-core machine (uv is in the dev extra);
without uv it falls back to pip. A failure raises `KserveSetupError`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SERVER = Path(__file__).resolve().parent / "baselines" / "kserve_affine" / "server.py"
VENV = Path(__file__).resolve().parent / ".venvs" / "kserve"
_PACKAGES = ("kserve>=0.14", "numpy")
_STAMP = ".installed"


class KserveSetupError(Exception):
    """The KServe virtualenv could not be created or installed into."""


def ensure_venv(venv: Path = VENV, *, timeout_s: float = 600.0) -> Path:
    """The virtualenv's python, creating the environment and installing KServe into it first if needed."""
    python = venv / "bin" / "python"
    stamp = venv / _STAMP
    wanted = " ".join(_PACKAGES)
    if stamp.exists() and python.exists() and stamp.read_text().splitlines()[:1] == [wanted]:
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    (venv.parent / ".gitignore").write_text("*\n")  # out of git, ruff and mypy, as virtualenv itself does
    uv = shutil.which("uv") or _beside_python("uv")
    if uv is not None:
        steps = [[uv, "venv", "--quiet", "--python", sys.executable, str(venv)]]
        steps.append([uv, "pip", "install", "--quiet", "--python", str(python), *_PACKAGES])
    else:
        steps = [[sys.executable, "-m", "venv", str(venv)]]
        steps.append([str(python), "-m", "pip", "install", "--quiet", *_PACKAGES])
    for command in steps:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KserveSetupError(f"{' '.join(command[:4])}: {exc}") from exc
        if done.returncode != 0:
            raise KserveSetupError(f"{' '.join(command[:4])} failed: {(done.stderr or done.stdout)[-1500:]}")
    probe = subprocess.run(
        [str(python), "-c", "import kserve, importlib.metadata as m; print(m.version('kserve'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        raise KserveSetupError(f"kserve does not import: {probe.stderr[-1500:]}")
    stamp.write_text(f"{wanted}\nkserve {probe.stdout}")
    return python


def server_command(python: Path, port: int) -> list[str]:
    return [str(python), str(SERVER), str(port)]


def _beside_python(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None
