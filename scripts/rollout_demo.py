"""Progressive delivery on the bundled demo, in three acts, each under two minutes:

1. the good candidate (version 2) passes validation, is shadowed, then walks 5 -> 25 -> 50 -> 100 % and is promoted;
2. the bad candidate (version 3: trained on corrupted labels) is stopped at the validation gate, before any traffic;
3. the bad candidate again, with validation left out: rolled back at the shadow step, before any client saw it.

Each act starts `gateway serve` on config/examples/rollout.yaml (the candidate, the validate block and the state file
changed as the act needs, in a temporary folder), sends the training rows as live traffic from two clients with
random user ids, and prints the rollout's transitions as they happen. Exit 1 if an act ends otherwise.

    python scripts/rollout_demo.py            # all three acts
    python scripts/rollout_demo.py --act 3    # one of them
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from demo_process import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "examples" / "rollout.yaml"
TRAFFIC = ROOT / "config" / "data" / "breast_cancer_train.csv"
LIMIT = 120.0  # seconds an act may take
# Two clients in this process: on a 2-core machine more would leave the gateway fighting its own load generator for
# the cores, and a p99 latency gate would be judging the scheduler's noise rather than the models.
CLIENTS = 2


@dataclass(frozen=True)
class Act:
    number: int
    title: str
    candidate: int
    validate: bool
    expected: str  # the phase the rollout must end in


ACTS = (
    Act(1, "the good candidate (version 2) is promoted", 2, True, "succeeded"),
    Act(2, "the bad candidate (version 3) is stopped at the validation gate", 3, True, "failed"),
    Act(3, "the bad candidate without validation is rolled back at the shadow step", 3, False, "failed"),
)


@dataclass
class Load:
    url: str
    rows: list[list[float]]
    answered: int = 0
    failed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while not self.stop.is_set():
                row = rng.choice(self.rows)
                body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]})
                try:
                    response = client.post(
                        "/v2/models/breast_cancer/infer",
                        content=body,
                        headers={"x-user-id": f"u{rng.randrange(10**6)}"},
                    )
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.answered += 1
                else:
                    self.failed += 1


def config_for(act: Act, folder: Path) -> Path:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    document["model_repository"] = str(ROOT / "config" / "models")
    route = document["routes"]["breast_cancer"]
    route["versions"]["canary"] = act.candidate
    rollout = route["rollout"]
    if act.validate:
        rollout["validate"]["golden_set"] = str(ROOT / "config" / "data" / "breast_cancer_test.csv")
    else:
        del rollout["validate"]
    rollout["state_file"] = str(folder / "state.json")
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def play(act: Act, rows: list[list[float]]) -> bool:
    print(f"\nAct {act.number}: {act.title}")
    with tempfile.TemporaryDirectory(prefix="rollout-demo-") as tmp:
        folder = Path(tmp)
        path = config_for(act, folder)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = (folder / "gateway.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port),
             "--drain-delay", "0", "--allow-path", str(ROOT / "config" / "data")],  # the golden set's folder
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        started = time.monotonic()
        load = Load(url, rows)
        threads = [threading.Thread(target=load.run, args=(i,), daemon=True) for i in range(CLIENTS)]
        try:
            wait_ready(url, process, 60.0)
            for thread in threads:
                thread.start()
            status = follow(url, started)
        finally:
            load.stop.set()
            for thread in threads:
                thread.join(timeout=15)
            process.terminate()
            process.wait(timeout=30)
            log.close()
        seconds = time.monotonic() - started
        ok = status["phase"] == act.expected and seconds < LIMIT
        print(f"  -> {status['phase']} in {seconds:.0f} s: {status['reason']}")
        print(f"  clients: {load.answered} answered, {load.failed} failed")
        validation = status.get("validation")
        if validation and act.number == 2:
            for check in validation["checks"]:
                if check["verdict"] == "fail":
                    print(f"     {check['name']}: {check['detail']}")
        print(f"  {'OK' if ok else 'UNEXPECTED'} (expected {act.expected} within {LIMIT:.0f} s)")
        return ok


def follow(url: str, started: float) -> dict[str, Any]:
    """Print each transition as it happens; return the final status."""
    shown = 0
    status: dict[str, Any] = {}
    while time.monotonic() - started < LIMIT + 30:
        status = httpx.get(f"{url}/admin/rollouts/breast_cancer", timeout=5.0).json()
        for entry in status["history"][shown:]:
            at = time.monotonic() - started
            step = f" step {entry['step'] + 1}" if entry["step"] >= 0 else ""
            print(f"  {at:5.1f} s  {entry['from'] or 'start':>11} -> {entry['to']:<11}{step}: {entry['reason']}")
        shown = len(status["history"])
        if status["phase"] in ("succeeded", "failed", "aborted"):
            return status
        time.sleep(0.2)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--act", type=int, choices=[a.number for a in ACTS], help="play one act only")
    args = parser.parse_args()
    with TRAFFIC.open() as handle:
        rows = [[float(value) for value in row[:30]] for row in list(csv.reader(handle))[1:]]
    results = [play(act, rows) for act in ACTS if args.act in (None, act.number)]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
