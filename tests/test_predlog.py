from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import pytest
from hypothesis import example, given, strategies as st
from prometheus_client import CollectorRegistry

from gateway.errors import ConfigError
from gateway.inference import Tensor
from gateway.predlog import (
    Datatypes,
    PredictionLog,
    PredictionLogConfig,
    PredictionLogMetrics,
    parse_prediction_log,
)

STAMP = 1_700_000_000.5  # 2023-11-14T22:13:20.5Z


class Factory(Protocol):
    def __call__(
        self,
        config: PredictionLogConfig,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = ...,
        rand: Callable[[], float] | None = ...,
    ) -> PredictionLog: ...


@pytest.fixture
def make() -> Iterator[Factory]:
    """Builds logs and closes them (and their files) after the test."""
    logs: list[PredictionLog] = []

    def build(
        config: PredictionLogConfig,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = lambda: STAMP,
        rand: Callable[[], float] | None = None,
    ) -> PredictionLog:
        log = PredictionLog(config, metrics=PredictionLogMetrics(registry), clock=clock, random=rand)
        logs.append(log)
        return log

    yield build
    for log in logs:
        log.close()


def count(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name)
    return 0.0 if value is None else value


def offer(log: PredictionLog, i: int = 0, *, outputs: tuple[Tensor, ...] | None = None) -> None:
    """One served request, as the data plane offers it: the log's draw, then the record when it is drawn."""
    if not log.sampled():
        return
    x = Tensor("x", "FP32", np.arange(4, dtype=np.float32).reshape(2, 2) + i)
    y = Tensor("y", "INT64", np.array([i, i + 1], dtype=np.int64))
    answered = (y,) if outputs is None else outputs
    log.record(
        f"r{i}",
        "fraud",
        "2",
        "weighted",
        {x.name: x.array},
        {t.name: t.array for t in answered},
        tuple(t.name for t in answered),
        Datatypes({x.name: x.datatype}, {t.name: t.datatype for t in answered}),
        1.25,
    )


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@given(st.floats(min_value=0.0, max_value=4e9, allow_nan=False))
@example(1_700_000_000.9999995)  # the fraction rounds up to the next second
@example(1_700_000_000.0000005)
@example(1_700_000_000.0)
def test_time_is_what_datetime_writes_to_the_microsecond(stamp: float) -> None:
    """The writer formats each second once and the microseconds itself: the text must be isoformat's, rounding and
    carry included."""
    log = PredictionLog(PredictionLogConfig(Path("unused.jsonl")), metrics=PredictionLogMetrics(CollectorRegistry()))
    moment = datetime.fromtimestamp(stamp, UTC)
    expected = moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond:06d}Z"
    assert log._stamp(stamp) == expected
    assert log._stamp(stamp) == expected  # again, from the cached second


def test_records_are_written_as_parseable_json_lines(tmp_path: Path, make: Factory) -> None:
    registry = CollectorRegistry()
    log = make(PredictionLogConfig(tmp_path / "log.jsonl"), registry)
    offer(log, 0)
    offer(log, 1, outputs=(Tensor("label", "BYTES", np.array([b"fraud", "ok", b"\xff"], dtype=object)),))
    assert log.flush_once() == 2
    first, second = read_lines(tmp_path / "log.jsonl")
    assert first == {
        "id": "r0",
        "time": "2023-11-14T22:13:20.500000Z",
        "model": "fraud",
        "version": "2",
        "reason": "weighted",
        "inputs": {"x": {"datatype": "FP32", "shape": [2, 2], "data": [0.0, 1.0, 2.0, 3.0]}},
        "outputs": {"y": {"datatype": "INT64", "shape": [2], "data": [0, 1]}},
        "latency_ms": 1.25,
    }
    assert second["outputs"]["label"] == {"datatype": "BYTES", "shape": [3], "data": ["fraud", "ok", "\\xff"]}
    assert count(registry, "gateway_predlog_records_total") == 2
    assert count(registry, "gateway_predlog_dropped_total") == 0


def test_large_tensors_are_cut_at_max_elements_and_marked(tmp_path: Path, make: Factory) -> None:
    log = make(PredictionLogConfig(tmp_path / "log.jsonl", max_elements=5), CollectorRegistry())
    big = np.arange(100, dtype=np.float64).reshape(10, 10).T  # non-contiguous on purpose
    offer(log, outputs=(Tensor("big", "FP64", big), Tensor("small", "FP64", np.array([np.nan, np.inf, 1.0]))))
    log.flush_once()
    (record,) = read_lines(tmp_path / "log.jsonl")
    assert record["outputs"]["big"] == {
        "datatype": "FP64",
        "shape": [10, 10],
        "data": [0.0, 10.0, 20.0, 30.0, 40.0],
        "truncated": True,
    }
    # JSON has no NaN/inf: kept as strings instead of silently becoming null.
    assert record["outputs"]["small"] == {"datatype": "FP64", "shape": [3], "data": ["nan", "inf", 1.0]}


def test_rotation_keeps_n_backups_under_the_size_limit(tmp_path: Path, make: Factory) -> None:
    registry = CollectorRegistry()
    path = tmp_path / "log.jsonl"
    log = make(PredictionLogConfig(path, max_bytes=2_000, backups=2), registry)
    for i in range(200):
        offer(log, i)
        if i % 7 == 0:
            log.flush_once()  # rotation must work across chunk boundaries too
    log.flush_once()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["log.jsonl", "log.jsonl.1", "log.jsonl.2"]
    ids: list[int] = []
    for name in ("log.jsonl.2", "log.jsonl.1", "log.jsonl"):
        assert (tmp_path / name).stat().st_size <= 2_000
        ids += [int(r["id"][1:]) for r in read_lines(tmp_path / name)]
    # The three files hold the newest records, in order, with nothing missing between them.
    assert ids == list(range(200 - len(ids), 200))
    assert count(registry, "gateway_predlog_records_total") == 200


def test_rotation_without_backups_truncates(tmp_path: Path, make: Factory) -> None:
    path = tmp_path / "log.jsonl"
    log = make(PredictionLogConfig(path, max_bytes=1_000, backups=0), CollectorRegistry())
    for i in range(50):
        offer(log, i)
    log.flush_once()
    assert [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]
    assert 0 < path.stat().st_size <= 1_000
    assert read_lines(path)[-1]["id"] == "r49"


def test_appends_to_an_existing_file_and_counts_its_size(tmp_path: Path, make: Factory) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"x" * 900 + b"\n")
    log = make(PredictionLogConfig(path, max_bytes=1_000, backups=1), CollectorRegistry())
    offer(log)
    log.flush_once()
    assert (tmp_path / "log.jsonl.1").read_bytes() == b"x" * 900 + b"\n"
    assert read_lines(path)[0]["id"] == "r0"


def test_a_full_queue_drops_and_counts_and_offer_stays_cheap(tmp_path: Path, make: Factory) -> None:
    registry = CollectorRegistry()
    log = make(PredictionLogConfig(tmp_path / "log.jsonl", max_queue=10), registry)
    x = {"x": np.zeros((1, 4), np.float32)}
    datatypes = Datatypes({"x": "FP32"}, {"x": "FP32"})
    n = 100_000
    start = time.perf_counter()
    for _ in range(n):
        log.record(None, "m", "1", "pinned", x, x, ("x",), datatypes, 0.1)
    mean = (time.perf_counter() - start) / n
    print(f"\nmean offer() cost with a full queue: {mean * 1e9:.0f} ns over {n} calls")
    assert log.pending == 10
    assert count(registry, "gateway_predlog_dropped_total") == n - 10
    assert log.flush_once() == 10


def test_sampling_rate_is_within_a_binomial_bound(tmp_path: Path, make: Factory) -> None:
    rate, n = 0.3, 20_000
    log = make(
        PredictionLogConfig(tmp_path / "log.jsonl", sample_rate=rate, max_queue=n),
        CollectorRegistry(),
        rand=random.Random(20240611).random,
    )
    for i in range(n):
        offer(log, i)
    # Kept ~ Binomial(n, p): sd = sqrt(n p (1 - p)) ~ 64.8. Six sd either side fails a fair sampler with probability
    # ~2e-9 (and the seed makes this run deterministic anyway).
    sd = math.sqrt(n * rate * (1 - rate))
    assert abs(log.pending - n * rate) <= 6 * sd


def test_sampling_rate_zero_keeps_nothing_and_one_keeps_everything(tmp_path: Path, make: Factory) -> None:
    never = make(PredictionLogConfig(tmp_path / "a", sample_rate=0.0), CollectorRegistry(), rand=lambda: 0.0)
    always = make(PredictionLogConfig(tmp_path / "b", sample_rate=1.0), CollectorRegistry(), rand=lambda: 0.999)
    for i in range(100):
        offer(never, i)
        offer(always, i)
    assert never.pending == 0
    assert always.pending == 100


def test_an_unwritable_path_counts_write_errors_and_never_raises(tmp_path: Path, make: Factory) -> None:
    registry = CollectorRegistry()
    path = tmp_path / "missing-dir" / "log.jsonl"
    log = make(PredictionLogConfig(path), registry)
    for i in range(5):
        offer(log, i)
    assert log.flush_once() == 0
    assert count(registry, "gateway_predlog_write_errors_total") == 5
    assert count(registry, "gateway_predlog_records_total") == 0
    # The disk comes back: writing resumes.
    path.parent.mkdir()
    offer(log, 9)
    assert log.flush_once() == 1
    assert [r["id"] for r in read_lines(path)] == ["r9"]


def test_a_path_that_is_a_directory_counts_write_errors(tmp_path: Path, make: Factory) -> None:
    registry = CollectorRegistry()
    log = make(PredictionLogConfig(tmp_path), registry)
    offer(log)
    log.flush_once()
    assert count(registry, "gateway_predlog_write_errors_total") == 1


def test_an_unencodable_record_is_counted_and_the_others_are_written(tmp_path: Path, make: Factory) -> None:
    registry = CollectorRegistry()
    log = make(PredictionLogConfig(tmp_path / "log.jsonl"), registry)
    offer(log, 0)
    offer(log, 1, outputs=(Tensor("z", "FP64", np.array([1 + 2j])),))  # complex: not JSON
    offer(log, 2)
    assert log.flush_once() == 2
    assert [r["id"] for r in read_lines(tmp_path / "log.jsonl")] == ["r0", "r2"]
    assert count(registry, "gateway_predlog_write_errors_total") == 1


def test_offer_survives_a_broken_clock(tmp_path: Path, make: Factory) -> None:
    registry = CollectorRegistry()

    def broken() -> float:
        raise RuntimeError("clock gone")

    log = make(PredictionLogConfig(tmp_path / "log.jsonl"), registry, clock=broken)
    offer(log)
    assert count(registry, "gateway_predlog_dropped_total") == 1


def test_the_background_writer_writes_and_aclose_flushes(tmp_path: Path, make: Factory) -> None:
    registry = CollectorRegistry()
    path = tmp_path / "log.jsonl"
    log = make(PredictionLogConfig(path), registry)

    async def scenario() -> None:
        offer(log, 0)  # before the writer starts
        writer = asyncio.create_task(log.run())
        for i in range(1, 50):
            offer(log, i)
            if i % 10 == 0:
                await asyncio.sleep(0)
        deadline = asyncio.get_running_loop().time() + 10
        while count(registry, "gateway_predlog_records_total") < 50:
            assert asyncio.get_running_loop().time() < deadline, "writer did not catch up"
            await asyncio.sleep(0.001)
        offer(log, 50)
        await log.aclose()
        await asyncio.wait_for(writer, timeout=10)
        offer(log, 51)  # after close: dropped, counted

    asyncio.run(scenario())
    assert [r["id"] for r in read_lines(path)] == [f"r{i}" for i in range(51)]
    assert count(registry, "gateway_predlog_dropped_total") == 1


def test_aclose_without_a_writer_flushes_what_is_queued(tmp_path: Path, make: Factory) -> None:
    log = make(PredictionLogConfig(tmp_path / "log.jsonl"), CollectorRegistry())
    offer(log)
    asyncio.run(log.aclose())
    assert len(read_lines(tmp_path / "log.jsonl")) == 1


def test_parse_reads_every_key() -> None:
    config = parse_prediction_log(
        {
            "routes": {},
            "prediction_log": {
                "path": "/var/log/gw/predictions.jsonl",
                "sample_rate": 0.25,
                "max_queue": 500,
                "max_bytes": 1_000_000,
                "backups": 3,
                "max_elements": 64,
            },
        }
    )
    assert config == PredictionLogConfig(Path("/var/log/gw/predictions.jsonl"), 0.25, 500, 1_000_000, 3, 64)
    assert parse_prediction_log({"prediction_log": {"path": "p.jsonl", "sample_rate": 1}}) == PredictionLogConfig(
        Path("p.jsonl")
    )
    assert parse_prediction_log({"routes": {}}) is None
    assert parse_prediction_log({"prediction_log": None}) is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"path": "p", "sampel_rate": 0.1}, "prediction_log.sampel_rate: unknown key"),
        ({"sample_rate": 0.1}, "prediction_log.path: required"),
        ({"path": ""}, "prediction_log.path: must be a non-empty string"),
        ({"path": 3}, "prediction_log.path: must be a non-empty string"),
        ({"path": "p", "sample_rate": 1.5}, r"prediction_log.sample_rate: must be a number in \[0, 1\]"),
        ({"path": "p", "sample_rate": "half"}, "prediction_log.sample_rate"),
        ({"path": "p", "sample_rate": True}, "prediction_log.sample_rate"),
        ({"path": "p", "max_queue": 0}, "prediction_log.max_queue: must be an integer >= 1, got 0"),
        ({"path": "p", "max_bytes": -1}, "prediction_log.max_bytes: must be an integer >= 0"),
        ({"path": "p", "backups": 1.5}, "prediction_log.backups"),
        ({"path": "p", "max_elements": False}, "prediction_log.max_elements"),
        ("yes", "prediction_log: must be a mapping"),
    ],
)
def test_parse_names_the_exact_key_path(section: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_prediction_log({"prediction_log": section})


# ---- through the gateway ----------------------------------------------------------------------------------------


def test_logged_requests_keep_the_fast_lane_and_record_what_the_client_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The log's draw is a skip counter taken after the answer; a logged request is decoded like any other (the fast
    # lane for JSON and tritonclient's binary, the general codec for the rest) and its record holds the tensors the
    # client sent and the outputs it was answered, whichever path decoded it. The answers are the same bytes.
    import models
    from starlette.testclient import TestClient

    import gateway.dataplane
    import gateway.protocol
    from gateway.app import Settings, create_app

    repo = models.affine_repository(tmp_path / "repo", {1: 2.0})
    log_path = tmp_path / "predictions.jsonl"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"model_repository: {repo}\nroutes:\n  affine:\n    versions: {{a: 1}}\n"
        f"prediction_log: {{path: {log_path}, sample_rate: 0.3}}\n"
    )
    general = gateway.protocol.decode_request
    decoded: list[bytes] = []

    def counted(body: bytes, header_length: int | None = None) -> Any:
        decoded.append(body)
        return general(body, header_length)

    monkeypatch.setattr(gateway.dataplane, "decode_request", counted)
    n = 480
    answers: dict[bytes, set[bytes]] = {}
    tensor = {"name": "X", "shape": [1, 4], "datatype": "FP32"}
    sent_general = set()
    app = create_app(Settings(config_path=config, watch=False), registry=CollectorRegistry(), seed=11)
    with TestClient(app) as client:
        for i in range(n):
            row = [float(i % 40), 1.0, 2.0, 3.0]  # each body four times: logged some times, not others
            headers = {}
            if i % 3 == 1:  # tritonclient's shape: a JSON head, the tensor's bytes, the output asked for as binary
                head = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 16}}],
                                     "outputs": [{"name": "Y", "parameters": {"binary_data": True}}]})  # fmt: skip
                body = head + np.asarray(row, np.float32).tobytes()
                headers = {"inference-header-content-length": str(len(head))}
            elif i % 3 == 2:  # naming the output as JSON: the general codec's
                body = orjson.dumps({"id": f"g{i % 40}", "inputs": [{**tensor, "data": row}],
                                     "outputs": [{"name": "Y"}]})  # fmt: skip
                sent_general.add(body)
            else:
                body = orjson.dumps({"id": f"r{i % 40}", "inputs": [{**tensor, "data": row}]})
            response = client.post("/v2/models/affine/infer", content=body, headers=headers)
            assert response.status_code == 200, response.text
            answers.setdefault(body, set()).add(response.content)
    records = read_lines(log_path)
    # ~Binomial(480, 0.3): sd 10; the seed fixes the draw, the bound only says the rate is the configured one.
    assert abs(len(records) - n * 0.3) <= 6 * math.sqrt(n * 0.3 * 0.7)
    assert set(decoded) == sent_general and len(decoded) == n // 3  # the general codec decoded only its own shape
    for record in records:
        x = record["inputs"]["X"]
        assert x["datatype"] == "FP32" and x["shape"] == [1, 4] and x["data"][1:] == [1.0, 2.0, 3.0]
        assert record["outputs"]["Y"] == {"datatype": "FP32", "shape": [1, 4], "data": [v * 2 + 1 for v in x["data"]]}
    kinds = {None if r["id"] is None else r["id"][0] for r in records}
    assert kinds == {None, "r", "g"}  # binary (no id), fast-lane JSON and general JSON requests were all logged
    assert len(answers) == 120 and all(len(seen) == 1 for seen in answers.values())  # one answer, logged or not


def test_a_tensor_viewing_a_request_buffer_is_copied_when_recorded(tmp_path: Path, make: Factory) -> None:
    # Binary inputs are views of the request body: the record copies them (capped), so it neither pins the body nor
    # sees a later change to its buffer; arrays that own their data are kept as they are until written.
    log = make(PredictionLogConfig(tmp_path / "log.jsonl", max_elements=3), CollectorRegistry())
    buffer = bytearray(np.arange(4, dtype=np.float32).tobytes())
    view = np.frombuffer(buffer, dtype=np.float32).reshape(1, 4)
    owned = np.array([[7.0, 8.0]], dtype=np.float32)
    log.record(
        "v", "m", "1", "weighted", {"x": view}, {"y": owned}, ("y",), Datatypes({"x": "FP32"}, {"y": "FP32"}), 0.5
    )
    buffer[:4] = np.float32(99.0).tobytes()  # the body's buffer reused after the answer
    log.flush_once()
    (record,) = read_lines(tmp_path / "log.jsonl")
    assert record["inputs"]["x"] == {"datatype": "FP32", "shape": [1, 4], "data": [0.0, 1.0, 2.0], "truncated": True}
    assert record["outputs"]["y"] == {"datatype": "FP32", "shape": [1, 2], "data": [7.0, 8.0]}
