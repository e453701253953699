"""Prediction log: a sample of served requests written as JSON lines, off the request path.

On the request path, `sampled` decides whether a request is logged before it is decoded (a skip counter: a
subtraction for the requests it passes over), and `record` appends a logged request's tensors to a bounded deque:
no encoding, no I/O, no awaiting, no exceptions. A background task
(`run`) drains the deque in chunks and encodes + writes each chunk in a worker thread, rotating the file by size like
`logging.handlers.RotatingFileHandler` (`log.jsonl` -> `log.jsonl.1` -> ... -> `log.jsonl.<backups>`). Dropped and
failed records are counted, never silent.

A record keeps a tensor as it is unless it views a request body or holds more than `max_elements` values; then its
first `max_elements` values are copied (`_keep`). So a queued record pins no request body.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random as _random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.errors import ConfigError
from gateway.inference import views_body

logger = logging.getLogger(__name__)

_KEY = "prediction_log"
# Records per write: bounds the memory of one encode and the time a write holds the file lock.
_CHUNK = 1024


@dataclass(frozen=True, slots=True)
class PredictionLogConfig:
    """`max_bytes` 0: never rotate. `backups` 0: a full file is truncated instead of rotated."""

    path: Path
    sample_rate: float = 1.0
    max_queue: int = 10_000
    max_bytes: int = 100 * 1024 * 1024
    backups: int = 5
    max_elements: int = 1024  # per tensor; longer tensors are cut and marked `"truncated": true`


def parse_prediction_log(data: object) -> PredictionLogConfig | None:
    """Validate the `prediction_log:` section of a YAML document; None when the section is absent or null."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"the configuration must be a mapping, got {type(data).__name__}")
    section = data.get(_KEY)
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise ConfigError(f"{_KEY}: must be a mapping, got {type(section).__name__}")
    known = {"path", "sample_rate", "max_queue", "max_bytes", "backups", "max_elements"}
    for key in section:
        if key not in known:
            raise ConfigError(f"{_KEY}.{key}: unknown key (expected one of {', '.join(sorted(known))})")
    if "path" not in section:
        raise ConfigError(f"{_KEY}.path: required")
    path = section["path"]
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{_KEY}.path: must be a non-empty string, got {path!r}")
    defaults = PredictionLogConfig(Path(path))
    return PredictionLogConfig(
        path=Path(path),
        sample_rate=_rate(section, "sample_rate", defaults.sample_rate),
        max_queue=_integer(section, "max_queue", defaults.max_queue, minimum=1),
        max_bytes=_integer(section, "max_bytes", defaults.max_bytes, minimum=0),
        backups=_integer(section, "backups", defaults.backups, minimum=0),
        max_elements=_integer(section, "max_elements", defaults.max_elements, minimum=0),
    )


def _integer(section: Mapping[Any, Any], key: str, default: int, *, minimum: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{_KEY}.{key}: must be an integer >= {minimum}, got {value!r}")
    return value


def _rate(section: Mapping[Any, Any], key: str, default: float) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{_KEY}.{key}: must be a number in [0, 1], got {value!r}")
    return float(value)


class _Tally(Collector):
    """A counter that is a plain int, for the request path: prometheus_client's Counter.inc takes a lock (~0.6 µs).

    Only the event loop thread increments it; a scrape reads the int, which is atomic under the GIL.
    """

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.value)

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation)


class PredictionLogMetrics:
    """Create once per registry; every `PredictionLog` built with it (e.g. across reloads) adds to the same counts."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter("gateway_predlog_records", "Prediction log records written.", registry=registry)
        self.write_errors = Counter(
            "gateway_predlog_write_errors",
            "Prediction log records lost to encoding or file errors.",
            registry=registry,
        )
        self.dropped = _Tally(
            "gateway_predlog_dropped", "Sampled prediction log records dropped: queue full or log closed."
        )
        registry.register(self.dropped)


Arrays = Mapping[str, np.ndarray[Any, Any]]


class Datatypes(NamedTuple):
    """The V2 datatype of each input and output of a version: built once per loaded version, so a logged request
    hands the log its arrays and this, and the writer, not the request, pairs them into tensors."""

    inputs: Mapping[str, str]
    outputs: Mapping[str, str]


# (id, unix time, model, version, reason, inputs, outputs, the outputs answered, datatypes, latency_ms): a tuple is
# the cheapest thing to append.
_Record = tuple[
    str | None, float, str, str, str, Mapping[str, "_Kept"], Mapping[str, "_Kept"], Sequence[str], Datatypes, float
]


class PredictionLog:
    def __init__(
        self,
        config: PredictionLogConfig,
        *,
        metrics: PredictionLogMetrics,
        clock: Callable[[], float] = time.time,
        random: Callable[[], float] | None = None,
        linger: float = 0.25,
    ) -> None:
        self._config = config
        self._linger = linger  # seconds the writer gathers records before a write (see `run`)
        self._second = -1  # the writer's cache of the last second it formatted (`_stamp`)
        self._second_text = ""
        self._metrics = metrics
        self._clock = clock
        self._random = random if random is not None else _random.Random().random
        self._queue: deque[_Record] = deque()
        self._max_queue = config.max_queue
        self._rate = config.sample_rate
        self._log_keep = math.log1p(-self._rate) if 0.0 < self._rate < 1.0 else 0.0
        self._skip = self._gap()  # requests to pass over before the next logged one
        self._dropped = metrics.dropped
        self._closed = False
        self._wakeup: asyncio.Event | None = None
        # Serialises file access between the writer thread and flush_once/aclose.
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._size = 0
        self._failing = False

    @property
    def pending(self) -> int:
        return len(self._queue)

    def sampled(self) -> bool:
        """Whether the next request is logged: asked before it is decoded, so the others keep the fast lane.
        Bernoulli(sample_rate) per request, drawn as a geometric gap between logged ones. Never raises."""
        skip = self._skip - 1
        if skip >= 0:
            self._skip = skip
            return False
        try:
            self._skip = self._gap()
        except Exception:  # a broken injected random must not fail a request: this one is not logged, and counted
            self._dropped.value += 1
            return False
        return True

    def _gap(self) -> int:
        """Requests passed over before the next logged one: Geometric(rate) failures, by inversion."""
        if self._rate >= 1.0:
            return 0
        if self._rate <= 0.0:
            return sys.maxsize
        return int(math.log(1.0 - self._random()) / self._log_keep)

    def record(
        self,
        request_id: str | None,
        model: str,
        version: str,
        reason: str,
        inputs: Arrays,
        outputs: Arrays,
        answered: Sequence[str],
        datatypes: Datatypes,
        latency_ms: float,
    ) -> None:
        """Log one request `sampled` chose: its inputs, and of its `outputs` those `answered`. Never awaits, never
        raises, never blocks; a full queue drops, counted. Positional and tensor-free (~1.7 us, was 6 us with a
        tensor tuple per side): this runs on the request path."""
        try:
            if self._closed or len(self._queue) >= self._max_queue:
                self._dropped.value += 1
                return
            cap = self._config.max_elements
            self._queue.append(
                (request_id, self._clock(), model, version, reason, _keep(inputs, inputs, cap),
                 _keep(outputs, answered, cap), answered, datatypes, latency_ms)
            )  # fmt: skip
            if self._wakeup is not None:
                self._wakeup.set()
        except Exception:  # a broken injected clock must not fail a request
            self._dropped.value += 1

    async def run(self) -> None:
        """The writer: wait for records, encode and write them in a worker thread. Returns after `aclose`."""
        wakeup = self._wakeup = asyncio.Event()
        if self._queue:
            wakeup.set()  # records offered before the writer started
        try:
            while not self._closed:
                await wakeup.wait()
                # Gather for `linger` seconds first, unless a whole chunk is waiting: each write is a thread hop and
                # a loop wake-up, and at thousands of records a second one hop per record or two would cost the
                # requests more than the records themselves.
                if len(self._queue) < _CHUNK:
                    await asyncio.sleep(self._linger)
                wakeup.clear()  # before draining, so a record offered during the write sets it again
                while self._queue and not self._closed:
                    await asyncio.to_thread(self._write_chunk)
        finally:
            self._wakeup = None

    def flush_once(self) -> int:
        """Drain the queue and write it in the calling thread; returns the number of records written."""
        written = 0
        while self._queue:
            written += self._write_chunk()
        return written

    async def aclose(self) -> None:
        """Stop accepting records, write what is queued, close the file."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Synchronous `aclose` for threads and tests: stop accepting, write what is queued, close the file."""
        self._closed = True
        self.flush_once()
        with self._lock:
            self._close_file()

    # -- writer side (worker thread) ---------------------------------------------------------------------------------

    def _write_chunk(self) -> int:
        with self._lock:
            records: list[_Record] = []
            queue = self._queue
            while queue and len(records) < _CHUNK:
                records.append(queue.popleft())
            lines = []
            for record in records:
                try:
                    lines.append(self._encode(record))
                except Exception:
                    logger.exception("prediction log: cannot encode a record of %s/%s", record[2], record[3])
                    self._metrics.write_errors.inc()
            return self._write_lines(lines)

    def _encode(self, record: _Record) -> bytes:
        request_id, stamp, model, version, reason, inputs, outputs, answered, datatypes, latency_ms = record
        document = {
            "id": request_id,
            "time": self._stamp(stamp),
            "model": model,
            "version": version,
            "reason": reason,
            "inputs": {name: _tensor(datatypes.inputs[name], kept) for name, kept in inputs.items()},
            "outputs": {name: _tensor(datatypes.outputs[name], outputs[name]) for name in answered},
            "latency_ms": latency_ms,
        }
        return orjson.dumps(document) + b"\n"

    def _stamp(self, stamp: float) -> str:
        """RFC 3339 in UTC to the microsecond, as `datetime.fromtimestamp(stamp, UTC).isoformat()` writes it (the same
        round-half-even of the fraction and its carry); the date and time to the second are formatted once per
        second (isoformat was a quarter of a record's encoding, the datetime itself another tenth)."""
        fraction, whole = math.modf(stamp)
        micro = round(fraction * 1e6)
        second = int(whole)
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{micro:06d}Z"

    def _write_lines(self, lines: list[bytes]) -> int:
        """Write whole lines, rotating between lines; the file is unbuffered, so what `write` took is on its way."""
        written = 0
        limit = self._config.max_bytes
        segment: list[bytes] = []
        pending = 0
        try:
            self._open()
            for line in lines:
                if limit and self._size + pending and self._size + pending + len(line) > limit:
                    self._write_segment(segment)
                    written += len(segment)
                    segment, pending = [], 0
                    self._rotate()
                segment.append(line)
                pending += len(line)
            self._write_segment(segment)
            written += len(segment)
        except OSError as exc:
            self._metrics.records.inc(written)
            self._metrics.write_errors.inc(len(lines) - written)
            if not self._failing:
                logger.error("prediction log: cannot write %s: %s", self._config.path, exc)
            self._failing = True
            self._close_file()
            return written
        if self._failing:
            logger.info("prediction log: writing %s again", self._config.path)
            self._failing = False
        self._metrics.records.inc(written)
        return written

    def _write_segment(self, segment: list[bytes]) -> None:
        if not segment:
            return
        assert self._file is not None
        data = memoryview(b"".join(segment))
        self._size += len(data)
        while data:
            count = self._file.write(data)
            if not count:
                raise OSError(f"{self._config.path}: the file took no bytes")
            data = data[count:]

    def _open(self) -> None:
        if self._file is None:
            self._file = open(self._config.path, "ab", buffering=0)  # kept open across chunks
            self._size = self._file.tell()

    def _rotate(self) -> None:
        """RotatingFileHandler's scheme: shift `.i` to `.i+1`, dropping the oldest, then start a new file."""
        self._close_file()
        path = str(self._config.path)
        backups = self._config.backups
        if backups > 0:
            for i in range(backups - 1, 0, -1):
                source = f"{path}.{i}"
                if os.path.exists(source):
                    os.replace(source, f"{path}.{i + 1}")
            os.replace(path, f"{path}.1")
            self._file = open(path, "ab", buffering=0)
        else:
            self._file = open(path, "wb", buffering=0)  # no backups: truncate
        self._size = 0

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None


class _Cut(NamedTuple):
    """The first `cap` values of a tensor too large (or too entangled with a request body) to keep whole, copied."""

    flat: np.ndarray[Any, Any]
    shape: tuple[int, ...]
    truncated: bool


_Kept = np.ndarray[Any, Any] | _Cut


def _keep(arrays: Arrays, names: Iterable[str], cap: int) -> Mapping[str, _Kept]:
    """What a queued record holds of `arrays[name]` for each of `names`: the array itself when it has at most `cap`
    values and is not a view of a request body, else a copy of its first `cap` values. So a record never pins a
    request body (binary inputs are views of it) or more than `cap` values of a tensor, and the common small record
    costs the request path no copy and no new mapping; the writer encodes from what is kept. The gateway never
    mutates a tensor once the answer is built, so a kept array is what was served."""
    for name in names:
        if not _whole(arrays[name], cap):
            return {n: arrays[n] if _whole(arrays[n], cap) else _cut(arrays[n], cap) for n in names}
    return arrays


def _whole(array: np.ndarray[Any, Any], cap: int) -> bool:
    return array.size <= cap and not views_body(array)


def _cut(array: np.ndarray[Any, Any], cap: int) -> _Cut:
    flat = np.array(array.reshape(-1)[:cap])  # a copy, never a view of the request
    return _Cut(flat, tuple(array.shape), int(array.size) > cap)


def _tensor(datatype: str, kept: _Kept) -> dict[str, Any]:
    if isinstance(kept, _Cut):
        flat, shape, truncated = kept.flat, kept.shape, kept.truncated
    else:  # kept whole: at most `cap` values
        flat, shape, truncated = kept.reshape(-1), kept.shape, False
    encoded: dict[str, Any] = {"datatype": datatype, "shape": list(shape), "data": _values(flat)}
    if truncated:
        encoded["truncated"] = True
    return encoded


def _values(flat: np.ndarray[Any, Any]) -> list[Any]:
    if flat.dtype == object or flat.dtype.kind in "SU":
        return [v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else str(v) for v in flat.tolist()]
    if flat.dtype.kind == "f":
        # JSON has no NaN or infinity: write them as strings rather than lose them (orjson would write null).
        values: list[Any] = flat.tolist()
        # A sum is finite when every value is (a finite overflow only takes the slower check); Python's sum of the
        # list in hand is a fifth of a numpy reduction's call overhead on a small tensor.
        if not math.isfinite(sum(values)):
            values = [v if math.isfinite(v) else str(v) for v in values]
        return values
    return list(flat.tolist())
