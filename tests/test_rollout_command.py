"""`gateway validate` running each rollout's pre-traffic validation on the demo models, and `gateway rollout` against a
real gateway process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server import Server, free_port, gateway

from gateway.cli import main
from gateway.rollout import command

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "config" / "models"
GOLDEN = ROOT / "config" / "data" / "breast_cancer_test.csv"
CHECKS = (
    "schema", "integration", "finite_outputs", "accuracy", "accuracy_drop", "agreement", "data_quality", "bias",
    "p99_latency_ms", "latency_ratio",
)  # fmt: skip
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"

pytestmark = pytest.mark.skipif(
    not all((MODELS / "breast_cancer" / str(v) / "model.onnx").is_file() for v in (1, 2, 3)) or not GOLDEN.is_file(),
    reason="demo models or data not generated",
)


def validate_config(tmp_path: Path, candidate: int, *, golden: Path = GOLDEN) -> Path:
    """Stable version 1 against a candidate, gated on the golden set; no latency checks (machine speed). A second
    route has no rollout at all."""
    path = tmp_path / f"candidate{candidate}.yaml"
    path.write_text(
        f"""
model_repository: {MODELS}
routes:
  breast_cancer:
    versions: {{stable: 1, canary: {candidate}}}
    split: {{weights: {{stable: 100, canary: 0}}, baseline: stable}}
    rollout:
      candidate: canary
      state_file: {tmp_path / "state.json"}
      validate:
        golden_set: {golden}
        label_column: target
        min_metric: {{accuracy: 0.9}}
        max_metric_drop: 0.02
        min_agreement: 0.9
  plain:
    model: breast_cancer
    versions: {{v1: 1}}
"""
    )
    return path


def check_line(out: str, verdict: str, name: str) -> str:
    match = re.search(rf"^  {verdict}\s+{name}\s.*$", out, re.MULTILINE)
    assert match is not None, f"no {verdict} line for {name} in:\n{out}"
    return match.group(0)


# ---- gateway validate -------------------------------------------------------------------------------------------


def test_validate_passes_a_good_candidate_and_prints_every_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = validate_config(tmp_path, 2)
    assert main(["validate", str(config)]) == 0
    out = capsys.readouterr().out
    assert "ok: breast_cancer version 1: input FP32[-1, 30]" in out and "ok: breast_cancer version 2:" in out
    assert "route breast_cancer: validating canary (version 2) against stable (1)" in out
    for name in CHECKS:
        assert re.search(rf"^  (PASS|SKIP)\s+{name}\s", out, re.MULTILINE), f"{name} missing:\n{out}"
    assert "FAIL" not in out
    assert "  validation passed (7 checks, 3 skipped)" in out
    assert "route plain: no validate block (no rollout block)" in out
    assert out.rstrip().endswith("valid, 2 route(s), 2 version(s) loaded; 1 validation(s) passed")


def test_validate_fails_a_bad_candidate_with_its_figures_as_a_process(tmp_path: Path) -> None:
    config = validate_config(tmp_path, 3)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "validate", str(config)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    # Version 3 gets 140 of the 171 test rows right (version 1: 167), and 31 of its labels differ from version 1's.
    assert re.search(
        r"accuracy\s+0\.8187\s+>= 0\.9000\s+candidate 0\.819 < 0\.900; baseline 0\.977",
        check_line(out, "FAIL", "accuracy"),
    )
    assert re.search(r"accuracy_drop\s+0\.1579\s+<= 0\.0200", check_line(out, "FAIL", "accuracy_drop"))
    assert re.search(r"agreement\s+0\.8187\s+>= 0\.9000.*31 of 171 rows differ", check_line(out, "FAIL", "agreement"))
    for name in ("schema", "integration", "finite_outputs", "data_quality"):
        check_line(out, "PASS", name)
    assert "  validation failed: accuracy 0.819 < 0.900; accuracy_drop 0.158 > 0.020; agreement 0.819 < 0.900" in out
    assert out.rstrip().endswith("validation failed on route(s) breast_cancer")


def test_validate_json_gives_each_routes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--json", str(validate_config(tmp_path, 3))]) == 1
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert document["valid"] is True and document["passed"] is False and document["error"] is None
    assert [(v["model"], v["version"]) for v in document["versions"]] == [("breast_cancer", 1), ("breast_cancer", 3)]
    route = document["routes"]["breast_cancer"]
    assert route["candidate"] == {"name": "canary", "version": 3}
    assert route["baseline"] == {"name": "stable", "version": 1}
    report = route["validation"]
    assert report["passed"] is False and report["rows"] == 171
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == list(CHECKS)
    assert checks["accuracy"]["verdict"] == "fail" and checks["accuracy"]["value"] == pytest.approx(140 / 171)
    assert checks["accuracy"]["threshold"] == 0.9 and checks["accuracy"]["op"] == ">="
    assert document["routes"]["plain"] == {
        "rollout": False, "passed": None, "summary": "no rollout block", "validation": None
    }  # fmt: skip

    assert main(["validate", "--json", str(validate_config(tmp_path, 2))]) == 0
    good = json.loads(capsys.readouterr().out)
    assert good["passed"] is True and good["routes"]["breast_cancer"]["validation"]["passed"] is True


def test_validate_fails_on_a_missing_golden_set_and_on_a_config_fault(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(validate_config(tmp_path, 2, golden=tmp_path / "nope.csv"))]) == 1
    out = capsys.readouterr().out
    assert "nope.csv" in check_line(out, "FAIL", "golden_set")
    broken = tmp_path / "broken.yaml"
    broken.write_text(validate_config(tmp_path, 2).read_text().replace("candidate: canary", "candidate: nobody"))
    assert main(["validate", "--json", str(broken)]) == 1
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["valid"] is False and "rollout.candidate: unknown version 'nobody'" in document["error"]
    assert "invalid: " in captured.err


# ---- gateway rollout --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A gateway whose rollout has no validate block and sits in a one-hour shadow step until acted on."""
    folder = tmp_path_factory.mktemp("rollout")
    config = folder / "gateway.yaml"
    config.write_text(
        f"""
model_repository: {MODELS}
routes:
  breast_cancer:
    versions: {{stable: 1, canary: 2}}
    split: {{weights: {{stable: 100, canary: 0}}, baseline: stable}}
    rollout:
      candidate: canary
      state_file: {folder / "state.json"}
      steps: [{{shadow: 100, duration: 1h, min_requests: 1000}}, {{weight: 50, duration: 1h}}]
"""
    )
    with gateway(["--config", str(config)], folder / "gateway.log") as server:
        yield server


def rollout(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["rollout", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def phase_of(out: str) -> str:
    match = re.search(r"^  phase\s+(\S+)$", out, re.MULTILINE)
    assert match is not None, out
    return match.group(1)


def test_rollout_status_and_actions_against_a_live_gateway(served: Server, capsys: pytest.CaptureFixture[str]) -> None:
    url = ("--url", served.url)
    code, out, _ = rollout(capsys, "status", *url)
    assert code == 0 and out.startswith("route breast_cancer\n") and phase_of(out) == "shadowing"
    assert re.search(r"^  candidate\s+canary \(version 2\)$", out, re.MULTILINE)
    assert re.search(r"^  baseline\s+stable \(version 1\)$", out, re.MULTILINE)
    assert re.search(r"^  step\s+1 of 2, weight 0%, shadow 100%, \S+ of 1h00m, \d+ of 1000 requests$", out, re.M)
    assert re.search(r"^  weights\s+canary 0%, stable 100%$", out, re.MULTILINE)
    assert re.search(r"^  failed checks\s+0 of 2", out, re.MULTILINE)
    assert re.search(rf"^    {ISO}  validating -> shadowing  step 1  no validate block", out, re.MULTILINE)

    code, out, _ = rollout(capsys, "pause", "breast_cancer", *url)
    assert code == 0 and phase_of(out) == "paused"
    assert re.search(rf"^    {ISO}  shadowing -> paused\s+step 1  paused by an operator$", out, re.MULTILINE)
    code, out, err = rollout(capsys, "pause", "breast_cancer", *url)
    assert (code, out) == (1, "")
    assert "409 Conflict: rollout of route 'breast_cancer' is paused; only a running step can be paused" in err

    code, out, _ = rollout(capsys, "resume", "breast_cancer", *url)
    assert code == 0 and phase_of(out) == "shadowing"
    code, out, _ = rollout(capsys, "abort", "breast_cancer", *url)
    assert code == 0 and phase_of(out) == "aborted"
    assert re.search(r"^  reason\s+aborted by an operator \(was shadowing\)$", out, re.MULTILINE)
    code, out, _ = rollout(capsys, "retry", "breast_cancer", *url)
    assert code == 0 and phase_of(out) == "shadowing"  # no validate block: straight back to the first step

    code, out, _ = rollout(capsys, "status", "breast_cancer", "--json", *url)
    status = json.loads(out)
    assert code == 0 and status["route"] == "breast_cancer" and status["phase"] == "shadowing"
    assert status["step"]["index"] == 1 and status["candidate"] == {"name": "canary", "version": 2}


def test_rollout_names_an_unknown_route(served: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = rollout(capsys, "status", "nope", "--url", served.url)
    assert (code, out) == (1, "") and "404 Not Found: route 'nope' has no rollout" in err
    code, _, err = rollout(capsys, "promote", "nope", "--url", served.url)
    assert code == 1 and "route 'nope' has no rollout (routes with one: breast_cancer)" in err


def test_rollout_exits_2_when_nothing_listens_or_no_route_is_given(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = rollout(capsys, "status", "--url", url, "--timeout", "5")
    assert (code, out) == (2, "") and f"cannot reach the gateway at {url}" in err
    code, _, err = rollout(capsys, "pause", "--url", url)
    assert code == 2 and "pause needs a ROUTE" in err


def test_status_shows_gates_validation_and_the_last_history_entries() -> None:
    history = [
        {"at": 1_700_000_000.0 + i, "from": "shadowing", "to": "shadowing", "step": 0, "reason": f"entry {i}"}
        for i in range(7)
    ]
    text = command.describe(
        {
            "route": "r",
            "phase": "progressing",
            "reason": "step 1 of 2 (shadow 100%) passed",
            "candidate": {"name": "canary", "version": 2},
            "baseline": {"name": "stable", "version": 1},
            "step": {"index": 2, "of": 2, "weight": 5.0, "shadow": 0.0, "duration": 90.0, "min_requests": 500,
                     "requests": 42, "started_at": 0.0, "elapsed": 12.3},
            "weights": {"stable": 0.95, "canary": 0.05},
            "shadow": None,
            "failed_checks": 1,
            "failure_limit": 2,
            "started_at": 1_700_000_000.0,
            "gates": [{"gate": "error_rate", "verdict": "fail", "value": 0.0312, "threshold": 0.01, "samples": 400,
                       "detail": "candidate errors"}],
            "validation": {"passed": True, "summary": "validation passed (7 checks, 3 skipped)"},
            "history": history,
        }
    )  # fmt: skip
    assert "  step           2 of 2, weight 5%, shadow 0%, 12.3s of 1m30s, 42 of 500 requests" in text
    assert "  weights        stable 95%, canary 5%" in text
    assert "  validation     validation passed (7 checks, 3 skipped)" in text
    assert "    FAIL  error_rate  value 0.0312  threshold 0.01  n=400  candidate errors" in text
    assert "  history (UTC, last 5 of 7)" in text
    assert "entry 1" not in text and "    2023-11-14T22:13:26Z  shadowing -> shadowing  step 1  entry 6" in text
