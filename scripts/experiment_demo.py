"""A/B experiments with delayed feedback on the bundled demo, in about ten seconds.

Starts `gateway serve` on config/examples/experiment.yaml (two routes on the breast-cancer model: stable against the
good MLP canary, and stable against the bad version of the progressive-delivery demo), with a webhook receiver in
this process for the quality alert. Sends rows of the test set (seeded, with replacement) as predictions that carry
an id, and posts the true labels back a round later as delayed feedback, with a simulated conversion (a click that
is likelier when the prediction was right). Prints what /admin/experiments says after each round and the webhook
calls it received; exit 1 unless the bad version is found worse, its alert fired, and the canary is found no worse
than stable by more than the 5-point margin.

    python scripts/experiment_demo.py
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from demo_process import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "examples" / "experiment.yaml"
TEST_SET = ROOT / "config" / "data" / "breast_cancer_test.csv"
ROUNDS = 8
PER_ROUND = 200  # predictions per route and round; their feedback arrives with the next round
CONVERSION = {True: 0.30, False: 0.05}  # P(a click | the prediction was right / wrong)


class Receiver(BaseHTTPRequestHandler):
    calls: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        Receiver.calls.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def rows() -> list[tuple[list[float], int]]:
    with TEST_SET.open() as handle:
        reader = csv.reader(handle)
        header = next(reader)
        target = header.index("target")
        return [([float(v) for i, v in enumerate(r) if i != target], int(float(r[target]))) for r in reader]


def config(folder: Path, webhook: str) -> Path:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    document["model_repository"] = str(ROOT / "config" / "models")
    for route in document["routes"].values():
        route["experiment"]["alert"]["webhook_url"] = webhook
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def predict(client: httpx.Client, route: str, batch: list[tuple[str, list[float], int]]) -> list[dict[str, Any]]:
    """Serve each row; return the feedback it will get: its label and a conversion drawn from whether it was right."""
    pending = []
    rng = random.Random(zlib.crc32(route.encode()))  # the same clicks every run
    for request_id, features, label in batch:
        body = orjson.dumps(
            {"id": request_id, "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": features}]}
        )
        # One user per request, named by its id: the sticky split then routes every run the same way.
        answer = client.post(f"/v2/models/{route}/infer", content=body, headers={"x-user-id": request_id})
        answer.raise_for_status()
        predicted = next(o for o in answer.json()["outputs"] if o["name"] == "label")["data"][0]
        converted = rng.random() < CONVERSION[predicted == label]
        version = answer.headers["x-gateway-route"].split(";")[0].rpartition("/")[2]
        pending.append({"id": request_id, "label": label, "converted": float(converted), "version": version})
    return pending


def send_feedback(client: httpx.Client, route: str, pending: list[dict[str, Any]]) -> None:
    """The labels, joined by request id; then each click as a stateless reward naming its version (as a business
    system would send it, maybe to another replica), under an id of its own."""
    labels = [{"id": p["id"], "label": p["label"]} for p in pending]
    answer = client.post(f"/v2/models/{route}/feedback", content=orjson.dumps(labels))
    answer.raise_for_status()
    if answer.json()["outcomes"]["accepted"] != len(labels):
        raise SystemExit(f"feedback not accepted: {answer.json()}")
    clicks = [{"id": f"{p['id']}-click", "reward": p["converted"], "version": p["version"]} for p in pending]
    client.post(f"/v2/models/{route}/feedback", content=orjson.dumps(clicks)).raise_for_status()


def summary(report: dict[str, Any]) -> str:
    experiment = report["experiment"]
    clicks = ", ".join(
        f"{version} {q['conversion']['cumulative']:.3f}"
        for version, q in report["versions"].items()
        if "conversion" in q
    )
    arms = ", ".join(
        f"{a['version']} {a['mean']:.3f} (n={a['n']})" if a["mean"] is not None else f"{a['version']} -"
        for a in experiment["arms"]
    )
    interval = experiment["interval"]
    diff = "not tested yet" if interval is None else f"difference in [{interval[0]:+.3f}, {interval[1]:+.3f}]"
    alerts = ", ".join(v for v, firing in experiment["alerts"].items() if firing) or "none"
    return (
        f"accuracy {arms}; {diff}; p {experiment['p_value']:.2g}; {experiment['decision']};"
        f" not worse by {experiment['margin']:g}: {experiment['not_worse_by_margin']}; alerts: {alerts};"
        f" conversion {clicks or '-'}"
    )


def main() -> int:
    data = rows()
    receiver = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    webhook = f"http://127.0.0.1:{receiver.server_address[1]}/retrain"
    with tempfile.TemporaryDirectory(prefix="experiment-demo-") as tmp:
        path = config(Path(tmp), webhook)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port),
             "--log-level", "warning", "--drain-delay", "0"],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            wait_ready(url, process)
            reports = play(url, data)
        finally:
            process.terminate()
            process.wait(timeout=30)
    receiver.shutdown()
    good, bad = reports["breast_cancer"]["experiment"], reports["breast_cancer_bad"]["experiment"]
    print("\nwebhook calls (the retraining trigger):")
    for call in Receiver.calls:
        print(f"  {call['state']}: {call['model']} {call['version']} windowed {call['metric']} {call['value']:.3f}"
              f" < {call['bound']:g}")  # fmt: skip
    checks = {
        "the bad version is found worse": bad["decision"] == "candidate worse",
        "its quality alert fired (metric and webhook)": bad["alerts"].get("bad") is True
        and any(c["version"] == "bad" and c["state"] == "firing" for c in Receiver.calls),
        "the canary is no worse than stable by more than 5 points": good["not_worse_by_margin"] is True,
        "no alert for the good versions": not any(good["alerts"].values()),
    }
    print()
    for name, ok in checks.items():
        print(f"{'OK  ' if ok else 'MISS'} {name}")
    return 0 if all(checks.values()) else 1


def play(url: str, data: list[tuple[list[float], int]]) -> dict[str, Any]:
    rng = random.Random(20261129)
    pending: dict[str, list[dict[str, Any]]] = {"breast_cancer": [], "breast_cancer_bad": []}
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for round_number in range(1, ROUNDS + 2):
            for route in pending:
                if pending[route]:
                    send_feedback(client, route, pending[route])
                pending[route] = []
                if round_number <= ROUNDS:
                    batch = [(f"{route}-{round_number}-{i}", *rng.choice(data)) for i in range(PER_ROUND)]
                    pending[route] = predict(client, route, batch)
            reports: dict[str, Any] = client.get("/admin/experiments").json()
            elapsed = time.monotonic() - started
            print(f"\nround {round_number} ({elapsed:4.1f} s): {ROUNDS if round_number > ROUNDS else round_number}"
                  f" x {PER_ROUND} predictions per route served, feedback for the rounds before it")  # fmt: skip
            for route in pending:
                print(f"  {route}: {summary(reports[route])}")
    return reports


if __name__ == "__main__":
    sys.exit(main())
