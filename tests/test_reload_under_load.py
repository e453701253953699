"""A client sends without pause while the config is rewritten 24 times: no request fails, and every request is
served by a version that was routable while it was in flight."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import models
import orjson
from server import gateway

BODY = orjson.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]})
SCALES = {1: 2.0, 2: 3.0, 3: 4.0}  # version -> Y = X * scale + 1, so the output itself tells the version apart
NAMES = {"a": 1, "b": 2, "c": 3, "x": 9, "bad": 7}


@dataclass(frozen=True)
class Step:
    how: str  # inplace | rename | configmap
    weights: dict[str, int] | None  # None: a file that must be rejected
    versions: tuple[str, ...] = ("a", "b")
    raw: str | None = None  # literal (broken) text


STEPS = [
    Step("inplace", {"a": 90, "b": 10}),
    Step("rename", {"a": 50, "b": 50}),
    Step("inplace", {"a": 50, "b": 25, "c": 25}, ("a", "b", "c")),  # a version added
    Step("inplace", None, raw="routes: [unclosed"),  # YAML syntax
    Step("configmap", {"b": 50, "c": 50}, ("b", "c")),  # a version removed, by ConfigMap symlink swap
    Step("inplace", {"b": 10, "c": 90}, ("b", "c")),  # written through the symlink
    Step("configmap", {"b": -1, "c": 1}, ("b", "c")),  # schema fault: rejected
    Step("configmap", {"b": 100}, ("b",)),
    Step("rename", {"a": 100}, ("a", "x")),  # version 9 has no model file: rejected
    Step("rename", {"a": 1, "b": 99}),
    Step("inplace", {"a": 25, "b": 75}),
    Step("configmap", {"a": 100}),
    Step("rename", {"a": 50, "bad": 50}, ("a", "bad")),  # corrupt ONNX: rejected
    Step("rename", {"a": 10, "b": 10, "c": 80}, ("a", "b", "c")),
    Step("inplace", {"c": 100}, ("a", "b", "c")),
    Step("configmap", {"a": 50, "c": 50}, ("a", "c")),
    Step("inplace", {"a": 100}, ("a",)),
    Step("rename", {"a": 5, "b": 95}),
    Step("inplace", {"a": 95, "b": 5}),
    Step("configmap", {"b": 100}, ("a", "b")),
    Step("inplace", {"a": 100}, ("a", "b", "c")),
    Step("rename", None, raw="model_repository: /nonexistent\nroutes: {}\n"),
    Step("configmap", {"a": 30, "b": 30, "c": 40}, ("a", "b", "c")),
    Step("inplace", {"b": 100}),
]


def text(repo: Path, step: Step) -> str:
    if step.raw is not None:
        return step.raw
    assert step.weights is not None
    versions = ", ".join(f"{n}: {NAMES[n]}" for n in step.versions)
    weights = ", ".join(f"{n}: {w}" for n, w in step.weights.items())
    sticky = "      sticky: {key: header:x-user-id, salt: s1}\n"
    return (
        f"model_repository: {repo}\nroutes:\n  affine:\n"
        f"    versions: {{{versions}}}\n    split:\n      weights: {{{weights}}}\n{sticky}"
    )


def routable(step: Step) -> set[int]:
    assert step.weights is not None
    return {NAMES[n] for n, w in step.weights.items() if w > 0}


class Writer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "gateway.yaml"
        self.n = 0

    def write(self, how: str, content: str) -> None:
        self.n += 1
        if how == "inplace":
            with self.path.open("w") as f:  # follows the symlink when the path is one
                f.write(content)
        elif how == "rename":
            tmp = self.folder / f".tmp{self.n}"
            tmp.write_text(content)
            os.replace(tmp, self.path)
        else:  # Kubernetes ConfigMap: a new timestamped folder, `..data` swapped to it, the file a link through it
            data = self.folder / f"..2026_{self.n}"
            data.mkdir()
            (data / "gateway.yaml").write_text(content)
            link = self.folder / "..data_tmp"
            link.symlink_to(data.name)
            os.replace(link, self.folder / "..data")
            if not self.path.is_symlink():
                file_link = self.folder / "gateway.yaml_tmp"
                file_link.symlink_to("..data/gateway.yaml")
                os.replace(file_link, self.path)


def test_reload_under_load_fails_no_request(tmp_path: Path) -> None:
    repo = models.affine_repository(tmp_path / "repo", SCALES)
    (repo / "affine" / "7").mkdir()
    (repo / "affine" / "7" / "model.onnx").write_bytes(b"\x08\x07not onnx")
    mount = tmp_path / "mount"
    mount.mkdir()
    writer = Writer(mount)
    initial = Step("inplace", {"a": 100})
    writer.path.write_text(text(repo, initial))

    # Effective config after each step (a rejected file leaves the previous one serving).
    effective = [initial]
    for step in STEPS:
        effective.append(step if step.weights is not None and not _rejected(step) else effective[-1])

    state = {"applied": 0, "writing": 0}
    records: list[tuple[int, int, int, float]] = []  # (lo, hi, version, y)
    failures: list[str] = []
    done = threading.Event()

    with gateway(["--config", str(writer.path), "--reload-interval", "3600"], tmp_path / "log") as server:

        def client() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                i = 0
                while not done.is_set():
                    i += 1
                    lo = state["applied"]
                    headers = {"x-user-id": f"user-{i}"} if i % 2 else {}
                    try:
                        r = c.post("/v2/models/affine/infer", content=BODY, headers=headers)
                    except httpx.HTTPError as exc:
                        failures.append(f"request {i}: {exc!r}")
                        continue
                    hi = state["writing"]
                    if r.status_code != 200:
                        failures.append(f"request {i}: {r.status_code} {r.text}")
                        continue
                    out = r.json()
                    records.append((lo, hi, int(out["model_version"]), out["outputs"][0]["data"][0]))

        thread = threading.Thread(target=client)
        thread.start()
        try:
            with httpx.Client(base_url=server.url, timeout=60) as admin:
                for k, step in enumerate(STEPS, start=1):
                    before = len(records)
                    deadline = time.monotonic() + 30
                    while len(records) < before + 20:  # let traffic flow on each config
                        assert time.monotonic() < deadline and not failures, failures[:3]
                        time.sleep(0.001)
                    state["writing"] = k
                    writer.write(step.how, text(repo, step))
                    outcome = admin.post("/admin/reload").json()["outcome"]
                    assert outcome == ("rejected" if effective[k] is effective[k - 1] else "applied"), (k, outcome)
                    state["applied"] = k
                metrics = admin.get("/metrics").text
        finally:
            done.set()
            thread.join(timeout=60)

    assert not failures, failures[:5]
    assert len(records) > 24 * 20
    for lo, hi, version, y in records:
        allowed = set().union(*(routable(effective[k]) for k in range(lo, hi + 1)))
        assert version in allowed, (lo, hi, version, allowed)
        assert y == SCALES[version] + 1  # the named version really computed it
    assert 'gateway_config_reloads_total{outcome="rejected"} 5.0' in metrics
    assert sum(1 for k in range(1, len(effective)) if effective[k] is not effective[k - 1]) == 19


def _rejected(step: Step) -> bool:
    assert step.weights is not None
    return any(w < 0 for w in step.weights.values()) or "x" in step.versions or "bad" in step.versions
