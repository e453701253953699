"""A server kept in a virtualenv of its own (MLServer, KServe: each pins packages the gateway's environment must
not share), created on first use: `ensure` makes it, installs the packages, checks they import, and writes a stamp
file that marks success, so later calls return at once. uv installs in seconds where pip takes minutes on the
2-core machine (uv is in the dev extra); without it, pip."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

_STAMP = ".installed"


class SetupError(Exception):
    """A side virtualenv could not be created or installed into."""


def ensure(
    venv: Path,
    packages: Sequence[str],
    probe: str,
    *,
    error: type[SetupError] = SetupError,
    prefer_uv: bool = True,
    timeout_s: float,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The virtualenv's python, made and installed into first if its stamp does not name `packages`. `probe` is a
    Python snippet that imports what matters and prints its version (kept in the stamp). Failures raise `error`."""
    python = venv / "bin" / "python"
    stamp = venv / _STAMP
    wanted = " ".join(packages)
    if stamp.exists() and python.exists() and stamp.read_text().splitlines()[:1] == [wanted]:
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    (venv.parent / ".gitignore").write_text("*\n")  # out of git, ruff and mypy, as virtualenv itself does
    uv = (shutil.which("uv") or _beside_python("uv")) if prefer_uv else None
    if log is not None:
        log(f"setting up the virtualenv {venv} ({'uv ' if uv else ''}pip install {wanted}; may take minutes)")
    if uv is not None:
        steps = [[uv, "venv", "--quiet", "--python", sys.executable, str(venv)]]
        steps.append([uv, "pip", "install", "--quiet", "--python", str(python), *packages])
    else:
        steps = [] if python.exists() else [[sys.executable, "-m", "venv", str(venv)]]
        steps.append([str(python), "-m", "pip", "install", "--quiet", *packages])
    for command in steps:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise error(f"{' '.join(command[:4])}: {exc}") from exc
        if done.returncode != 0:
            raise error(f"{' '.join(command[:4])} failed: {(done.stderr or done.stdout)[-1500:]}")
    checked = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    if checked.returncode != 0:
        raise error(f"{venv.name} does not import: {checked.stderr[-1500:]}")
    if log is not None:
        log(f"{venv.name} {checked.stdout.strip()} installed")
    stamp.write_text(f"{wanted}\n{venv.name} {checked.stdout}")
    return python


def _beside_python(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None
