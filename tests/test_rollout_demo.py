"""The README's progressive-delivery demo: scripts/rollout_demo.py plays its three acts on the bundled models (the good
candidate promoted, the bad one stopped at validation, and without validation rolled back at the shadow step), each
within two minutes, and exits 0 only if every act ends as it should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_demo_plays_every_act_as_the_readme_says() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "rollout_demo.py")], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert done.stdout.count("  OK (expected") == 3
    assert "succeeded in" in done.stdout and "validation failed: accuracy 0.819 < 0.900" in done.stdout
    assert "rolled back at step 1 of 5 (shadow 100%)" in done.stdout
    assert done.stdout.count(" answered, 0 failed") == 3  # no client request failed in any act
