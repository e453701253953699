"""Soak: ten minutes of mixed traffic with a config reload every 10 s, drift and the prediction log on.

    python -m benchmarks.soak                  # 600 s
    python -m benchmarks.soak --smoke          # 20 s; the test suite runs it

One gateway serves the bundled breast-cancer demo (90/10 canary, sticky per user, drift on every version) with the
prediction log writing every request (rotated at 20 MB). Eight clients send, in a seeded mix: plain requests (half),
sticky ones carrying a user id (a fifth), requests pinned to a version (a tenth), and malformed ones (a fifth:
broken JSON, a wrong shape, an unknown model), each kind with the statuses it must get (200; 400 or 404). Every 10 s
the config is rewritten with the canary's weight moved (10 <-> 20 %) and the bench checks that the reload applied.
Every 2 s it samples the gateway's RSS, open descriptors and threads. Reported: requests by kind, unexpected answers
(any status a kind must not get, any transport error), reloads applied, and RSS, descriptor and thread counts at
the end of the warm-up (the first tenth) and at the end. Exit 1 on an unexpected answer, a reload not applied, RSS
growth of 5 % or more after warm-up, or more descriptors or threads at the end than the warm-up's peak.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from benchmarks.servers import ServerSpec, start_server

ROOT = Path(__file__).resolve().parent.parent
TRAFFIC = ROOT / "config" / "data" / "breast_cancer_train.csv"
CLIENTS = 8
RELOAD_EVERY = 10.0
SAMPLE_EVERY = 2.0
RSS_GROWTH = 0.05


def config_text(repository: Path, log: Path, canary: int) -> str:
    return (
        f"model_repository: {repository}\n"
        f"prediction_log: {{path: {log}, sample_rate: 1.0, max_bytes: 20000000, backups: 1}}\n"
        "routes:\n  breast_cancer:\n    versions: {stable: 1, canary: 2}\n"
        f"    split:\n      weights: {{stable: {100 - canary}, canary: {canary}}}\n      baseline: stable\n"
        "      sticky: {key: [header:x-user-id], salt: soak, on_missing: random}\n"
        "    drift: {sample_rate: 1.0, window_size: 500}\n"
    )


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)  # "kind status" -> count
    examples: list[str] = field(default_factory=list)

    def note(self, kind: str, outcome: str) -> None:
        self.unexpected[f"{kind} {outcome}"] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {outcome}")


def rows() -> list[list[float]]:
    lines = TRAFFIC.read_text().splitlines()[1:]
    return [[float(v) for v in line.split(",")[:30]] for line in lines]


def body(row: list[float]) -> bytes:
    return orjson.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]})


async def client(base: str, seed: int, data: list[list[float]], until: float, tally: Tally) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base, timeout=10.0) as http:
        while time.monotonic() < until:
            draw = rng.random()
            row = rng.choice(data)
            path, headers, content, expected = "/v2/models/breast_cancer/infer", {}, body(row), {200}
            if draw < 0.5:
                kind = "plain"
            elif draw < 0.7:
                kind, headers = "sticky", {"x-user-id": f"user-{rng.randrange(5000)}"}
            elif draw < 0.8:
                kind, path = "pinned", f"/v2/models/breast_cancer/versions/{rng.choice((1, 2))}/infer"
            else:
                kind = rng.choice(("broken_json", "wrong_shape", "unknown_model"))
                if kind == "broken_json":
                    content, expected = content[:-7], {400}
                elif kind == "wrong_shape":
                    content = orjson.dumps(
                        {"inputs": [{"name": "input", "shape": [1, 29], "datatype": "FP32", "data": row[:29]}]}
                    )
                    expected = {400}
                else:
                    path, expected = "/v2/models/no_such_model/infer", {404}
            tally.sent[kind] += 1
            try:
                response = await http.post(path, content=content, headers=headers)
            except httpx.HTTPError as exc:
                tally.note(kind, f"transport {type(exc).__name__}")
                continue
            if response.status_code not in expected:
                tally.note(kind, f"{response.status_code} {response.text[:120]}")


def sample(pid: int) -> tuple[float, int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024
    threads = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:"))
    return rss, len(list(Path(f"/proc/{pid}/fd").iterdir())), threads


def applied_reloads(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    match = re.search(r'^gateway_config_reloads_total\{outcome="applied"\} (\S+)$', text, re.MULTILINE)
    return 0.0 if match is None else float(match.group(1))


async def soak(base: str, pid: int, config: Path, repository: Path, log: Path, duration: float) -> dict[str, object]:
    data = rows()
    tally = Tally()
    start = time.monotonic()
    until = start + duration
    clients = [asyncio.create_task(client(base, seed, data, until, tally)) for seed in range(CLIENTS)]
    samples: list[tuple[float, float, int, int]] = []
    reloads, missed, canary = 0, 0, 10
    next_reload, next_sample = start + RELOAD_EVERY, start
    while time.monotonic() < until:
        now = time.monotonic()
        if now >= next_sample:
            samples.append((now - start, *sample(pid)))
            next_sample += SAMPLE_EVERY
        if now >= next_reload:
            before = await asyncio.to_thread(applied_reloads, base)
            canary = 30 - canary  # 10 <-> 20
            config.write_text(config_text(repository, log, canary))
            deadline = time.monotonic() + 5
            while await asyncio.to_thread(applied_reloads, base) <= before:
                if time.monotonic() > deadline:
                    missed += 1
                    break
                await asyncio.sleep(0.05)
            else:
                reloads += 1
            next_reload += RELOAD_EVERY
        await asyncio.sleep(0.05)
    await asyncio.gather(*clients)
    samples.append((time.monotonic() - start, *sample(pid)))
    warm = [s for s in samples if s[0] <= duration / 10] or samples[:1]
    rest = [s for s in samples if s[0] > duration / 10] or samples[-1:]
    tail = [s for s in samples if s[0] >= duration * 0.9] or samples[-1:]
    return {
        "duration_s": duration,
        "sent": dict(tally.sent),
        "requests": sum(tally.sent.values()),
        "unexpected": dict(tally.unexpected),
        "examples": tally.examples,
        "reloads_applied": reloads,
        "reloads_missed": missed,
        "rss_mb": {"warm_up_end": warm[-1][1], "after_warm_up_min": min(s[1] for s in rest), "end": tail[-1][1],
                   "last_tenth_mean": sum(s[1] for s in tail) / len(tail)},
        "fds": {"warm_up_peak": max(s[2] for s in warm), "end": tail[-1][2], "peak_after": max(s[2] for s in rest)},
        "threads": {"warm_up_peak": max(s[3] for s in warm), "end": tail[-1][3], "peak_after": max(s[3] for s in rest)},
        "samples": samples,
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--smoke", action="store_true", help="20 s (checks the tool runs)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    duration = 20.0 if args.smoke else args.duration
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repository = work / "models"
        shutil.copytree(ROOT / "config" / "models", repository)
        shutil.rmtree(repository / "breast_cancer" / "3", ignore_errors=True)  # the demo's bad candidate: unused here
        config, log = work / "gateway.yaml", work / "predictions.jsonl"
        config.write_text(config_text(repository, log, 10))
        spec = ServerSpec(
            "gateway",
            (sys.executable, "-m", "gateway", "serve", "--config", str(config), "--host", "{host}", "--port", "{port}",
             "--log-level", "warning", "--drain-delay", "0", "--reload-interval", "0.5"),
        )  # fmt: skip
        server = start_server(spec, log_dir=work / "logs")
        try:
            report = asyncio.run(soak(server.base_url, server.process.pid, config, repository, log, duration))
        finally:
            server.stop()
    rss, fds, threads = report["rss_mb"], report["fds"], report["threads"]
    assert isinstance(rss, dict) and isinstance(fds, dict) and isinstance(threads, dict)
    growth = rss["last_tenth_mean"] / rss["warm_up_end"] - 1
    print(f"{report['requests']:,} requests in {duration:.0f} s: {report['sent']}")
    print(f"unexpected answers: {sum(report['unexpected'].values())} {report['unexpected']}")  # type: ignore[attr-defined]
    print(f"reloads applied: {report['reloads_applied']}, missed: {report['reloads_missed']}")
    print(f"RSS MB: warm-up end {rss['warm_up_end']:.1f}, last tenth {rss['last_tenth_mean']:.1f} ({growth:+.1%})")
    print(f"descriptors: warm-up peak {fds['warm_up_peak']}, peak after {fds['peak_after']}, end {fds['end']}")
    print(f"threads: warm-up peak {threads['warm_up_peak']}, peak after {threads['peak_after']}, end {threads['end']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    failed = (
        sum(report["unexpected"].values()) > 0  # type: ignore[attr-defined]
        or report["reloads_missed"] != 0
        or report["reloads_applied"] == 0
        or growth >= RSS_GROWTH
        or fds["end"] > fds["warm_up_peak"]
        or threads["end"] > threads["warm_up_peak"]
    )
    return 1 if failed and not args.smoke else 0


if __name__ == "__main__":
    sys.exit(main())
