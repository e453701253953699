"""The benchmark suite: HTTP framing, latency accounting of both loops, the models, and the comparison's smoke mode.

No test asserts how fast anything is. The one timing-dependent check (open-loop latency includes queueing) only
asserts a lower bound that a slower machine makes larger, never smaller.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings, strategies as st

from benchmarks.bench_path import bodies
from benchmarks.loadgen import LoadSpec, run_load, summarize_latencies
from benchmarks.models import MEDIUM, TINY, build_model, write_repository
from benchmarks.payload import build_body, infer_url, metadata_url
from benchmarks.report import Cell, Report, Row
from benchmarks.wire import Endpoint, ResponseFramer, WireError, encode_request

ROOT = Path(__file__).resolve().parent.parent
REPLY_BODY = b'{"outputs":[]}'
REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n" + REPLY_BODY


# --- framing -------------------------------------------------------------------------------------------------------

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\nconnection: close\r\n\r\nno!"
NO_CONTENT = b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n"
STREAM = REPLY + CHUNKED + NO_CONTENT + REPLY + NOT_FOUND


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_framer_finds_every_response_however_the_bytes_are_split(cuts: list[int]) -> None:
    framer = ResponseFramer()
    bounds = [0, *sorted(cuts), len(STREAM)]
    statuses: list[int] = []
    for start, stop in zip(bounds, bounds[1:], strict=False):
        statuses += framer.feed(STREAM[start:stop])
    assert statuses == [200, 200, 204, 200, 404]
    assert framer.idle
    assert framer.close_requested


def test_framer_rejects_a_response_it_cannot_delimit() -> None:
    with pytest.raises(WireError):
        ResponseFramer().feed(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nbody until close")
    with pytest.raises(WireError):
        ResponseFramer().feed(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_request_is_encoded_once_with_length_and_host() -> None:
    endpoint = Endpoint.parse("http://127.0.0.1:8123/v2/models/tiny/infer")
    request = encode_request(endpoint, b"{}", headers={"X-User-Id": "7"})
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"POST /v2/models/tiny/infer HTTP/1.1"
    assert b"Host: 127.0.0.1:8123" in head and b"Content-Length: 2" in head and b"X-User-Id: 7" in head
    assert body == b"{}"
    with pytest.raises(ValueError):
        Endpoint.parse("https://example.com/")


# --- bodies, percentiles, models -----------------------------------------------------------------------------------


def test_infer_and_metadata_urls() -> None:
    assert infer_url("http://h:1", "tiny") == "http://h:1/v2/models/tiny/infer"
    assert infer_url("http://h:1/", "tiny", "2") == "http://h:1/v2/models/tiny/versions/2/infer"
    assert infer_url("http://h:1/custom/infer", None) == "http://h:1/custom/infer"
    assert metadata_url("http://h:1/v2/models/tiny/infer") == "http://h:1/v2/models/tiny"
    with pytest.raises(ValueError):
        infer_url("http://h:1", None)


def test_generated_body_matches_the_metadata_shape_and_is_seeded() -> None:
    inputs = [
        {"name": "input", "datatype": "FP32", "shape": [-1, 16]},
        {"name": "k", "datatype": "INT64", "shape": [-1, 2, -1]},
    ]
    body = json.loads(build_body(inputs, batch=4, seed=3))
    first, second = body["inputs"]
    assert first["shape"] == [4, 16] and len(first["data"]) == 64
    assert second["shape"] == [4, 2, 1] and len(second["data"]) == 8
    assert build_body(inputs, batch=4, seed=3) == build_body(inputs, batch=4, seed=3)
    assert build_body(inputs, batch=4, seed=3) != build_body(inputs, batch=4, seed=4)


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    stats = summarize_latencies([i / 1000 for i in range(1, 101)])  # 1 ms .. 100 ms
    assert stats["p50"] == pytest.approx(50.0)
    assert stats["p99"] == pytest.approx(99.0)
    assert stats["max"] == pytest.approx(100.0)
    assert stats["mean"] == pytest.approx(50.5)
    assert summarize_latencies([])["p99"] == 0.0


def test_models_are_deterministic_and_have_the_declared_signature(tmp_path: Path) -> None:
    assert build_model(TINY).SerializeToString() == build_model(TINY).SerializeToString()
    paths = write_repository(tmp_path)
    assert paths["tiny"] == tmp_path / "tiny" / "1" / "model.onnx"
    for spec in (TINY, MEDIUM):
        session = ort.InferenceSession(str(paths[spec.name]), providers=["CPUExecutionProvider"])
        (inp,) = session.get_inputs()
        (out,) = session.get_outputs()
        assert (inp.name, inp.type, inp.shape[1]) == ("input", "tensor(float)", spec.n_inputs)
        assert (out.name, out.shape[1]) == ("output", spec.n_outputs)
        result = session.run(None, {"input": np.ones((3, spec.n_inputs), np.float32)})[0]
        assert result.shape == (3, spec.n_outputs) and np.isfinite(result).all()


# --- load generator against an in-test server ----------------------------------------------------------------------


class _DelayedReply(asyncio.Protocol):
    """Answers each complete request (Content-Length framed) with REPLY after `delay` seconds, in order."""

    def __init__(self, delay: float, opened: list[asyncio.BaseTransport]) -> None:
        self._delay = delay
        self._opened = opened
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._opened.append(transport)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while (end := self._buf.find(b"\r\n\r\n")) >= 0:
            head = bytes(self._buf[:end]).lower()
            start = head.index(b"content-length:") + len(b"content-length:")
            length = int(head[start:].split(b"\r\n", 1)[0])
            if len(self._buf) < end + 4 + length:
                return
            del self._buf[: end + 4 + length]
            assert self._transport is not None
            if self._delay:
                asyncio.get_running_loop().call_later(self._delay, self._transport.write, REPLY)
            else:
                self._transport.write(REPLY)


@pytest.fixture
def server_factory() -> Iterator[object]:
    """Start fixed-reply servers on a background event loop; yields a function delay -> base URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers: list[asyncio.Server] = []
    opened: list[asyncio.BaseTransport] = []

    def start(delay: float) -> str:
        async def serve() -> int:
            server = await loop.create_server(lambda: _DelayedReply(delay, opened), "127.0.0.1", 0)
            servers.append(server)
            port: int = server.sockets[0].getsockname()[1]
            return port

        port = asyncio.run_coroutine_threadsafe(serve(), loop).result(timeout=10)
        return f"http://127.0.0.1:{port}/v2/models/m/infer"

    yield start

    async def shut() -> None:
        for transport in opened:
            transport.close()
        for server in servers:
            server.close()
            await server.wait_closed()

    asyncio.run_coroutine_threadsafe(shut(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def test_closed_loop_counts_responses_in_the_window(server_factory: object) -> None:
    url = server_factory(0.0)  # type: ignore[operator]
    result = run_load(LoadSpec(url=url, body=b"{}", connections=4, duration_s=0.5, warmup_s=0.1))
    assert result.mode == "closed" and result.engine == "python"
    assert result.requests > 0 and result.errors == 0
    assert result.rps == pytest.approx(result.requests / result.duration_s)
    assert 0 < result.latency_ms["p50"] <= result.latency_ms["p99"] <= result.latency_ms["max"]


def test_open_loop_sends_exactly_the_scheduled_requests(server_factory: object) -> None:
    url = server_factory(0.0)  # type: ignore[operator]
    result = run_load(LoadSpec(url=url, body=b"{}", connections=4, duration_s=0.5, warmup_s=0.1, rate=200.0))
    # Requests due at start + i/200 with 0.1 <= i/200 < 0.6: i = 20 .. 119, so 100; +-1 for float rounding at edges.
    assert result.requests + result.errors in (99, 100, 101)
    assert result.errors == 0


def test_open_loop_latency_counts_time_queued_behind_a_slow_server(server_factory: object) -> None:
    # One connection, 50 ms per response, a request due every 25 ms: request i waits for i earlier ones, so its
    # latency from its due time is about 50 + 25 i ms, while each response itself takes only 50 ms after it is sent.
    # A coordinated-omission load generator would report ~50 ms for all of them; the p99 here must be far above.
    url = server_factory(0.05)  # type: ignore[operator]
    result = run_load(LoadSpec(url=url, body=b"{}", connections=1, duration_s=0.4, warmup_s=0.0, rate=40.0))
    assert result.requests == 16 and result.errors == 0
    assert result.queued >= 10
    assert result.latency_ms["p99"] > 300.0  # >= 50 + 25 * 15 = 425 ms on any machine; slower only adds
    assert result.max_send_lag_ms > 250.0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_wrk_engine_reports_the_same_fields(server_factory: object) -> None:
    url = server_factory(0.0)  # type: ignore[operator]
    result = run_load(LoadSpec(url=url, body=b"{}", connections=2, duration_s=1.0, warmup_s=0.0), engine="wrk")
    assert result.engine == "wrk" and result.requests > 0 and result.errors == 0
    assert result.latency_ms["p50"] <= result.latency_ms["p99"]


# --- report and the comparison's smoke mode ------------------------------------------------------------------------


def test_report_marks_failed_servers_and_computes_ratios() -> None:
    from benchmarks.loadgen import LoadResult

    def result(rps: float, p99: float) -> LoadResult:
        lat = {"p50": p99 / 2, "p90": p99, "p99": p99, "p999": p99, "max": p99, "mean": p99 / 2}
        return LoadResult("python", "closed", "u", 32, None, 1.0, int(rps), 0, rps, lat, 0.5)

    tiny = Cell("tiny", 1, 32)
    report = Report(
        "t",
        {},
        (
            Row("floor", tiny, result(20000, 2.0)),
            Row("fastapi", tiny, result(4000, 10.0)),
            Row("gateway", tiny, result(14000, 3.0)),
            Row("mlserver", tiny, None, "server failed to start: boom"),
        ),
    )
    ratios = {(r.gateway, r.baseline): r for r in report.ratios()}
    assert ratios[("gateway", "floor")].rps == pytest.approx(0.7)
    assert ratios[("gateway", "fastapi")].p99 == pytest.approx(0.3)
    targets = {t.name: t.passed for t in report.targets()}
    assert targets["tiny b1 c32: gateway >= 0.6x floor req/s"] is True
    assert targets["tiny b1 c32: gateway >= 3x fastapi req/s"] is True
    assert targets["mlserver below the gateway in every row"] is None
    markdown = report.markdown()
    assert "server failed to start: boom" in markdown and "0.70x" in markdown


def test_report_judges_the_deployed_gateway_and_the_batch_ceiling() -> None:
    from benchmarks.loadgen import LoadResult
    from benchmarks.report import BatchCeiling

    def result(rps: float) -> LoadResult:
        lat = {"p50": 1.0, "p90": 1.0, "p99": 2.0, "p999": 2.0, "max": 2.0, "mean": 1.0}
        return LoadResult("python", "closed", "u", 32, None, 1.0, int(rps), 0, rps, lat, 0.5)

    tiny, medium = Cell("tiny", 1, 32), Cell("medium", 1, 32)

    def targets(deployed: float, batched: float) -> dict[str, tuple[bool | None, str]]:
        rows = (
            Row("raw", tiny, result(20000)),
            Row("gateway", tiny, result(10000)),
            Row("gateway-deployed", tiny, result(deployed)),
            Row("gateway-batching", medium, result(batched)),
        )
        report = Report("t", {}, rows, batch_ceiling=BatchCeiling("medium", 32, (9000.0, 10000.0)))
        assert "vs raw" in report.markdown()  # the physical limit beside every ratio
        return {t.name: (t.passed, t.detail) for t in report.targets()}

    share = "tiny b1 c32: gateway as deployed >= 0.95x the bare gateway's req/s"
    ceiling = "medium b1 c32, batching: >= 0.55x the in-process batch ceiling (rows/s)"
    assert targets(9600, 5600)[share] == (True, "0.960x")
    assert targets(9400, 5600)[share] == (False, "0.940x")
    assert targets(9600, 5600)[ceiling] == (True, "0.56x (5,600 req/s of 10,000 rows/s at batch 32)")  # the larger
    assert targets(9600, 5400)[ceiling][0] is False
    # With the framework-free batching server measured, its share of the ceiling stands beside the gateway's, and the
    # gateway's req/s over it is a ratio like any other baseline's.
    rows = (Row("gateway-batching", medium, result(4000)), Row("raw-batching", medium, result(6000)))
    report = Report("t", {}, rows, batch_ceiling=BatchCeiling("medium", 32, (10000.0,)))
    judged = {t.name: (t.passed, t.detail) for t in report.targets()}
    assert judged[ceiling] == (
        False,
        "0.40x (4,000 req/s of 10,000 rows/s at batch 32); raw-batching 0.60x (6,000 req/s)",
    )
    assert [(r.baseline, round(r.rps, 3)) for r in report.ratios()] == [("raw-batching", 0.667)]


def test_rounds_report_the_median_attempt_with_every_rounds_rate() -> None:
    from benchmarks.compare import _median
    from benchmarks.loadgen import LoadResult

    def row(rps: float) -> Row:
        lat = {"p50": 1.0, "p90": 1.0, "p99": 1.0, "p999": 1.0, "max": 1.0, "mean": 1.0}
        return Row(
            "gateway", Cell("tiny", 1, 32), LoadResult("python", "closed", "u", 32, None, 1.0, 1, 0, rps, lat, 0.5)
        )

    median = _median([row(900.0), row(1200.0), row(1000.0)])
    assert median.rps == 1000.0 and median.rounds == (900.0, 1200.0, 1000.0)
    failed = Row("gateway", Cell("tiny", 1, 32), None, "server exited")
    assert _median([row(900.0), failed]) is failed


def _run_module(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_compare_smoke_mode_measures_every_server(tmp_path: Path) -> None:
    _run_module(
        "benchmarks.compare", "--smoke", "--rounds", "2", "--duration", "0.5", "--out", str(tmp_path), timeout=240
    )
    report = json.loads((tmp_path / "compare-smoke.json").read_text())
    assert (tmp_path / "compare-smoke.md").read_text().startswith("# ")
    rows = report["rows"]
    assert {r["system"] for r in rows} == {"raw", "floor", "fastapi", "gateway", "gateway-deployed"}
    assert len(rows) == 20  # tiny x batch {1, 32} x connections {1, 32} x 5 systems
    # As deployed means deployed: the version's drift profile was loaded and the prediction log written.
    work = tmp_path / "compare-smoke-work"
    assert (work / "models-deployed" / "tiny" / "1" / "profile.json").is_file()
    assert not (work / "models" / "tiny" / "1" / "profile.json").exists()  # the bare gateway has none
    logged = (work / "predictions.jsonl").read_bytes().splitlines()
    assert logged and json.loads(logged[0])["model"] == "tiny"
    for row in rows:
        assert row["error"] is None, (row["system"], row["error"])
        assert row["result"]["rps"] > 0, row["system"]
        assert len(row["rounds"]) == 2 and row["result"]["rps"] == min(row["rounds"])  # the lower middle of two


def test_a_server_that_fails_to_start_becomes_failed_rows(tmp_path: Path) -> None:
    from benchmarks.compare import Plan, run_systems
    from benchmarks.servers import ServerSpec

    cells = (Cell("tiny", 1, 1), Cell("tiny", 1, 32))
    plan = Plan(
        cells,
        ("broken",),
        duration_s=0.1,
        warmup_s=0.0,
        engine="python",
        server_cores=(),
        loadgen_cores=(),
        ceiling=False,
        start_timeout_s=30.0,
    )
    broken = ServerSpec("broken", (sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"))
    rows = run_systems([broken], {("tiny", 1): tmp_path / "unused.json"}, plan, tmp_path)
    assert [(r.system, r.cell, r.result) for r in rows] == [("broken", c, None) for c in cells]
    assert all(r.error is not None and "exited with 3" in r.error and "no model here" in r.error for r in rows)


def test_path_benchmark_drives_every_case_to_a_200(tmp_path: Path) -> None:
    done = _run_module("benchmarks.bench_path", "--count", "50", "--rounds", "1", timeout=120)
    lines = done.stdout.strip().splitlines()
    cases, ratios = lines[:-2], lines[-2:]
    assert len(cases) == len(bodies()) == 7 and all(line.endswith("us/request") for line in cases), done.stdout
    assert [r.split()[:3] for r in ratios] == [["binary", "/", "json"], ["as", "deployed", "/"]], done.stdout
    assert all(float(r.split()[-1]) > 0 for r in ratios)


def test_batched_path_benchmark_answers_every_connection_and_prints_the_ratio() -> None:
    # Its rounds check every one of the 32 answers is a 200 (else it exits non-zero, which _run_module reports).
    done = _run_module("benchmarks.bench_batched_path", "--count", "5", "--repeats", "1", timeout=180)
    lines = done.stdout.strip().splitlines()
    assert [line.split(",")[0].split(" (")[0] for line in lines[:2]] == ["gateway", "in-process ceiling"], done.stdout
    assert all(line.endswith(" us") and float(line.split()[-2]) > 0 for line in lines[:2]), done.stdout
    assert lines[2].startswith("ceiling / gateway") and float(lines[2].split()[-1]) > 0, done.stdout


def test_raw_batching_baseline_batches_concurrent_requests_and_answers_each_its_own_rows(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor as Pool

    import httpx

    from benchmarks.servers import ServerSpec, start_server
    from gateway.backends.onnx import OnnxBackend, OnnxOptions
    from gateway.fastlane import FastLane

    model = write_repository(tmp_path / "models", [TINY])["tiny"]
    spec = ServerSpec(
        "raw-batching",
        (
            sys.executable,
            "-m",
            "benchmarks.baselines.rawbatch",
            "--model-repository",
            str(tmp_path / "models"),
            "--host",
            "{host}",
            "--port",
            "{port}",
        ),  # fmt: skip
        cwd=ROOT,
    )
    server = start_server(spec, log_dir=tmp_path / "logs")
    try:
        url = f"{server.base_url}/v2/models/tiny/infer"
        bodies = [build_body([{"name": "input", "datatype": "FP32", "shape": [-1, 16]}], seed=s) for s in range(24)]
        with httpx.Client(timeout=10.0) as client, Pool(max_workers=8) as pool:
            answers = list(pool.map(lambda b: client.post(url, content=b), bodies))  # 8 at once: batches form
            refused = client.post(f"{server.base_url}/v2/models/nothing/infer", content=bodies[0])
        backend = OnnxBackend(model, OnnxOptions(), Pool(max_workers=1))
        lane = FastLane(backend.signature, "1")
        for body, answer in zip(bodies, answers, strict=True):
            decoded = lane.decode(body)
            assert decoded is not None
            expected = lane.encode(backend.run(decoded[0]).outputs, "tiny", None)
            assert answer.status_code == 200 and answer.content == expected  # its own rows, not a neighbour's
        assert refused.status_code == 400
    finally:
        server.stop()


def test_shadow_benchmark_measures_both_routes(tmp_path: Path) -> None:
    out = tmp_path / "shadow.json"
    _run_module("benchmarks.bench_shadow", "--smoke", "--json", str(out), timeout=240)
    report = json.loads(out.read_text())
    assert {(r["mode"].split(",")[0], r["route"]) for r in report["rows"]} == {
        ("closed", "plain"), ("closed", "shadowed"), ("open", "plain"), ("open", "shadowed"),
    }  # fmt: skip
    for row in report["rows"]:
        assert row["result"]["errors"] == 0 and row["result"]["rps"] > 0, row
    assert report["copies"] > 0  # the shadowed route really copied its requests


def test_overload_benchmark_runs_every_phase_and_reports_its_checks(tmp_path: Path) -> None:
    out = tmp_path / "overload.json"
    _run_module("benchmarks.bench_overload", "--smoke", "--json", str(out), timeout=240)
    report = json.loads(out.read_text())
    assert list(report["phases"]) == ["baseline, 80 %", "surge, 3x", "recovery, 80 %"]
    assert report["capacity"]["rps"] > 0
    for phase in report["phases"].values():
        assert phase["requests"] > 0 and phase["ok_per_bin"], phase  # 2xx answers, and their timeline
        assert "200" in phase["latency_by_status_ms"]
    assert len(report["checks"]) == 4 and all(isinstance(c["met"], bool) for c in report["checks"].values())
    assert report["rss_peaks_mb"]["surge, 3x"] > 0


def test_soak_runs_mixed_traffic_with_reloads_and_answers_every_kind_as_expected(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    _run_module("benchmarks.soak", "--smoke", "--json", str(out), timeout=240)
    report = json.loads(out.read_text())
    assert set(report["sent"]) == {"plain", "sticky", "pinned", "broken_json", "wrong_shape", "unknown_model"}
    assert report["unexpected"] == {}, report["examples"]
    assert report["reloads_applied"] >= 1 and report["reloads_missed"] == 0
    assert report["rss_mb"]["end"] > 0 and report["fds"]["end"] > 0 and report["threads"]["end"] > 0


def test_experiment_power_smoke_mode_reports_both_tests() -> None:
    output = _run_module("benchmarks.experiment_power", "--smoke", timeout=120).stdout
    assert "always-valid test:" in output and "z-test read at every look:" in output
    assert "fixed horizon for 80 % power, read once: 9,804 per arm" in output
