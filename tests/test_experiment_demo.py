"""The experiment demo runs as the README shows: the bad version is found worse and its quality alert fires (metric
and webhook), the good canary is found no worse than stable by more than the margin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_experiment_demo_decides_and_alerts() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "experiment_demo.py")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK   the bad version is found worse" in result.stdout
    assert "firing: breast_cancer_bad bad windowed accuracy" in result.stdout
