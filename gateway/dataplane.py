"""The request flow, top to bottom, against one immutable snapshot that reloads swap whole."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, NamedTuple, Protocol

from gateway.backends import Arrays, Backend, Execution
from gateway.drift.profile import Profile
from gateway.drift.sampler import DriftKey, DriftSampler
from gateway.errors import (
    DeadlineExceededError,
    GatewayError,
    ModelRejectedError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    ProtocolError,
    UnknownModelError,
    UnsupportedError,
)
from gateway.experiment.ledger import LedgerLane
from gateway.fastlane import FastLane
from gateway.inference import InferenceRequest, InferenceResponse, Tensor
from gateway.metrics import Metrics, VersionMetrics
from gateway.predlog import Datatypes, PredictionLog
from gateway.protocol import decode_request, encode_response, parse_header_length, requested_outputs
from gateway.routing import Decision, RoutingTable, Target
from gateway.shadow.runner import ShadowLane
from gateway.tally import Count
from gateway.tap import Tap

HEADER_LENGTH = "inference-header-content-length"  # Triton's binary extension: the JSON head's length
PLATFORM = "onnxruntime_onnx"  # what Triton reports for ONNX models; clients show it, none validate it

# An awaitable producing an Execution: a backend's infer or a batcher's submit, given the inputs and, for admission
# when the request must wait, its headers and perf_counter start.
Runner = Callable[[Arrays, Mapping[str, str], float], Any]


class Source(Protocol):
    """Where a served version comes from: a repository folder (repository.VersionSource) or another V2 server
    (gateway/remote's RemoteSource)."""

    @property
    def model(self) -> str: ...

    @property
    def version(self) -> int | str: ...

    @property
    def metadata(self) -> Mapping[str, Any]:
        """Shown under `parameters` in the model metadata answer."""
        ...


class Channels(NamedTuple):
    """The data plane's own side channels, for a request path that feeds them itself (a remote version's)."""

    sampler: DriftSampler
    predlog: PredictionLog | None


class Remote(Protocol):
    """A version another V2 server serves (gateway/remote): its requests are forwarded as bytes, never decoded here;
    only what the side channels sample is decoded, after the answer."""

    platform: str  # what the remote server reports
    fallback: bool  # while its endpoint is ejected, the route's baseline serves its requests (else 503)

    def available(self) -> bool:
        """Its endpoint's health check says ready and it is not ejected."""
        ...

    def diverted(self) -> None:
        """Count a request the baseline served instead."""
        ...

    async def forward(
        self,
        served: Served,
        route: str,
        decision: Decision,
        record: DecisionRecord,
        headers: Mapping[str, str],
        body: bytes,
        start: float,
        channels: Channels,
    ) -> Reply: ...


@dataclass(frozen=True, slots=True)
class Served:
    """One loaded model version, ready to run: its backend, how to reach it and the metric children it records into."""

    source: Source
    backend: Backend
    metrics: VersionMetrics
    infer: Runner
    drift_key: DriftKey
    profile: Profile | None = None  # the drift reference, when the version ships one
    remote: Remote | None = None  # set when another V2 server serves it (gateway/remote)
    label: str = field(init=False)
    output_names: tuple[str, ...] = field(init=False)
    all_json: tuple[tuple[str, ...], tuple[bool, ...]] = field(init=False)  # every output, none binary
    datatypes: Mapping[str, str] = field(init=False)
    input_datatypes: Mapping[str, str] = field(init=False)
    logged_datatypes: Datatypes = field(init=False)  # what the prediction log pairs a fast-lane request's arrays with
    lane: FastLane = field(init=False)

    def __post_init__(self) -> None:
        # Derived once at load: the request path only reads these.
        signature = self.backend.signature
        names = tuple(s.name for s in signature.outputs)
        label = str(self.source.version)
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "output_names", names)
        object.__setattr__(self, "all_json", (names, (False,) * len(names)))
        object.__setattr__(self, "datatypes", {s.name: s.datatype for s in signature.outputs})
        object.__setattr__(self, "input_datatypes", {s.name: s.datatype for s in signature.inputs})
        object.__setattr__(self, "logged_datatypes", Datatypes(self.input_datatypes, self.datatypes))
        object.__setattr__(self, "lane", FastLane(signature, label))


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """A routing outcome's counter child, the response header value that reports it, and the side channels that
    watch requests so decided: a shadow lane (copies to another version), a rollout's tap and the route's ledger of
    decisions for feedback (gateway.experiment), each None when off."""

    counter: Count
    header: bytes
    shadow: ShadowLane | None = None
    tap: Tap | None = None
    ledger: LedgerLane | None = None

    @classmethod
    def of(
        cls,
        counter: Count,
        route: str,
        name: str,
        version: int | str,
        reason: str,
        *,
        shadow: ShadowLane | None = None,
        tap: Tap | None = None,
        ledger: LedgerLane | None = None,
    ) -> DecisionRecord:
        header = f"{route}/{name};version={version};reason={reason}".encode("latin-1")
        return cls(counter, header, shadow, tap, ledger)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a request reads, swapped whole by a reload: a request reads it once and sees one consistent table."""

    generation: int
    table: RoutingTable
    versions: Mapping[tuple[str, int | str], Served]
    # Per (route, version name, reason): made when the snapshot is built, so a request formats and binds nothing.
    decisions: Mapping[tuple[str, str, str], DecisionRecord]
    max_body_bytes: int = 64 * 1024 * 1024


class Reply(NamedTuple):  # one per request: a tuple is the cheapest immutable value
    body: bytes
    header_length: int | None
    decision: bytes  # the decision header's value


# Outcome label per error class; the most specific class in the MRO wins.
_OUTCOME: Mapping[type[GatewayError], str] = {
    ProtocolError: "invalid_request",
    ModelRejectedError: "model_rejected",
    PayloadTooLargeError: "invalid_request",
    UnknownModelError: "not_found",
    NotReadyError: "unavailable",
    OverloadedError: "rejected",
    DeadlineExceededError: "expired",
    UnsupportedError: "unsupported",
}


def outcome_of(exc: GatewayError) -> str:
    return next((_OUTCOME[c] for c in type(exc).__mro__ if c in _OUTCOME), "error")


class DataPlane:
    def __init__(
        self,
        snapshot: Snapshot,
        metrics: Metrics,
        *,
        draw: Callable[[], float],
        sampler: DriftSampler,
        predlog: PredictionLog | None = None,
        max_inflight: int = 0,
    ) -> None:
        self._snapshot = snapshot
        self._metrics = metrics
        self._draw = draw
        self._sampler = sampler
        self._predlog = predlog
        self._channels = Channels(sampler, predlog)
        self._inflight = metrics.inflight
        self.max_inflight = max_inflight  # 0: no global bound
        # Admission (gateway/admission.py) as one number a request compares its in-flight count with: the bound, or
        # 0 while the event loop lags (the `refusing` setter), so the common request pays one comparison for both.
        self._capacity = max_inflight or sys.maxsize
        self._refusing = False
        self.loop_lag = 0.0  # admission.LagMonitor's smoothed lag, seconds
        self._unknown = metrics.unknown
        self.draining = False  # set once on SIGTERM (gateway/serving.py): not ready, answers close their connections

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def swap(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot  # one assignment on the event loop: requests see the old table or the new one

    def resolve(self, name: str, pin: str | None) -> tuple[Target, Served]:
        """The version a metadata or ready call means: the pinned one, else the route's baseline."""
        snapshot = self._snapshot
        route = snapshot.table.route(name)
        target = route.target(pin) if pin is not None else route.baseline
        served = snapshot.versions.get((target.model, target.version))
        if served is None:
            raise NotReadyError(f"model '{name}' version {target.version} is not loaded")
        return target, served

    async def infer(self, name: str, pin: str | None, headers: Mapping[str, str], body: bytes) -> Reply:
        start = perf_counter()
        snapshot = self._snapshot  # one read: the whole request sees one table
        metrics = self._unknown
        inflight = self._inflight
        inflight.value += 1
        try:
            if inflight.value > self._capacity:  # refused before anything is decoded
                raise self._over_capacity()
            route = snapshot.table.routes.get(name)
            if route is None:
                raise UnknownModelError(f"unknown model '{name}'")
            decision = route.pick(headers, pin, self._draw())
            target = decision.target
            served = snapshot.versions.get((target.model, target.version))
            if served is None:
                raise NotReadyError(f"model '{name}' version {target.version} is not loaded")
            metrics = served.metrics
            if served.backend.shedding:  # admission (gateway/admission.py), or an ejected remote endpoint
                decision, served = self._fallback(snapshot, route.baseline, decision, served)  # or raises its refusal
                target, metrics = decision.target, served.metrics
            record = snapshot.decisions[(name, target.name, decision.reason)]
            record.counter.value += 1  # Count.inc without the call: this runs for every request
            if served.remote is not None:  # another V2 server serves it (gateway/remote): the body goes as bytes
                remote = served.remote
                reply = await remote.forward(served, name, decision, record, headers, body, start, self._channels)
                metrics.success.value += 1
                metrics.latency.observe(perf_counter() - start)
                return reply
            header = headers.get(HEADER_LENGTH)
            request_head = None if header is None else parse_header_length(header, len(body))
            # The common shapes (JSON asking for every output; tritonclient's binary) go the fast lane; anything
            # else the general codec, which also names whatever is wrong with a request.
            lane = served.lane
            request = None
            selection: tuple[tuple[str, ...], tuple[bool, ...]] | None = None  # None: every output, as JSON
            binary = None
            if request_head is None:
                fast = lane.decode(body)
            else:
                fast = None
                binary = lane.decode_binary(body, request_head)
            if fast is not None:
                inputs, request_id = fast
            elif binary is not None:
                inputs, request_id, names, flags = binary
                selection = (names, flags)
            else:
                request = decode_request(body, request_head)
                served.backend.signature.check(request)
                inputs, request_id = request.input_map(), request.id
                selection = requested_outputs(request, served.output_names)
            execution: Execution = await served.infer(inputs, headers, start)
            if execution.compute_seconds is not None:
                metrics.compute.observe(execution.compute_seconds)
            produced = execution.outputs
            head_length = None  # the response's JSON head length, when binary outputs follow it
            if selection is None:
                encoded = lane.encode(produced, name, request_id)
            else:
                encoded, head_length = lane.encode_selected(produced, name, request_id, selection)
            if encoded is None:
                names, flags = selection if selection is not None else served.all_json
                outputs = tuple(Tensor(n, served.datatypes[n], produced[n]) for n in names)
                response = InferenceResponse(name, served.label, outputs, request_id, flags)
                encoded, head_length = encode_response(response)
            elapsed = perf_counter() - start  # body received to response encoded: the side channels are not in it
            # Side channels: each returns at once and never raises; what it cannot keep it counts as dropped.
            self._sampler.offer(served.drift_key, inputs, produced)
            shadow = record.shadow
            if shadow is not None:
                shadow.offer(inputs, produced, execution.compute_seconds, elapsed)
            tap = record.tap
            if tap is not None:
                tap.offer(elapsed, produced)
            ledger = record.ledger
            if ledger is not None:
                ledger.offer(request_id, produced)
            predlog = self._predlog
            if predlog is not None and predlog.sampled():  # a skip counter: a subtraction for the requests it passes
                self._log(predlog, name, served, request, inputs, produced, selection, request_id, decision, elapsed)
        except GatewayError as exc:
            metrics.outcomes[outcome_of(exc)].inc()
            metrics.latency.observe(perf_counter() - start)
            raise
        except Exception:  # a bug or a runtime surprise: still counted, then the edge answers 500
            metrics.outcomes["error"].inc()
            metrics.latency.observe(perf_counter() - start)
            raise
        finally:
            inflight.value -= 1
        metrics.success.value += 1
        metrics.latency.observe(elapsed)
        return Reply(encoded, head_length, record.header)

    @staticmethod
    def _fallback(snapshot: Snapshot, baseline: Target, decision: Decision, served: Served) -> tuple[Decision, Served]:
        """A version that refuses new requests now: its route's baseline serves them instead when it is a remote
        version that falls back (and the baseline can), else its refusal is raised."""
        remote = served.remote
        if remote is not None and remote.fallback:
            instead = snapshot.versions.get((baseline.model, baseline.version))
            if instead is not None and instead is not served and not instead.backend.shedding:
                remote.diverted()
                return Decision(baseline, "fallback"), instead
        raise served.backend.overloaded()

    @staticmethod
    def _log(
        predlog: PredictionLog,
        route: str,
        served: Served,
        request: InferenceRequest | None,
        inputs: Arrays,
        produced: Arrays,
        selection: tuple[tuple[str, ...], tuple[bool, ...]] | None,
        request_id: str | None,
        decision: Decision,
        elapsed: float,
    ) -> None:
        """A request the prediction log keeps: its inputs as the client sent them (the fast lane took only inputs
        named, typed and shaped as the signature says, so its arrays are those tensors) and the outputs answered."""
        names = selection[0] if selection is not None else served.output_names
        if request is None:
            predlog.record(
                request_id, route, served.label, decision.reason, inputs, produced, names, served.logged_datatypes,
                elapsed * 1e3,
            )  # fmt: skip
            return
        sent = {t.name: t.array for t in request.inputs}  # the general codec: as sent, whatever the signature says
        datatypes = Datatypes({t.name: t.datatype for t in request.inputs}, served.datatypes)
        predlog.record(
            request_id, route, served.label, decision.reason, sent, produced, names, datatypes, elapsed * 1e3
        )

    @property
    def refusing(self) -> bool:
        return self._refusing

    @refusing.setter
    def refusing(self, value: bool) -> None:
        """Set by admission.LagMonitor while the event loop runs too far behind: every new request is refused."""
        self._refusing = value
        self._capacity = 0 if value else (self.max_inflight or sys.maxsize)

    def _over_capacity(self) -> OverloadedError:
        if self._refusing:
            return OverloadedError(
                f"the gateway is overloaded: its event loop runs {self.loop_lag * 1e3:.0f} ms behind", retry_after=1.0
            )
        return OverloadedError(
            f"the gateway is serving its limit of {self.max_inflight} requests at once", retry_after=1.0
        )

    def count_refused(self, exc: GatewayError) -> None:
        """Count a request the edge refused before it reached `infer` (e.g. a body over the limit)."""
        self._metrics.unknown.outcomes[outcome_of(exc)].inc()

    def model_metadata(self, name: str, pin: str | None) -> dict[str, Any]:
        route = self._snapshot.table.route(name)
        target, served = self.resolve(name, pin)
        signature = served.backend.signature
        body: dict[str, Any] = {
            "name": name,
            "versions": [str(t.version) for t in route.targets],
            "platform": PLATFORM if served.remote is None else served.remote.platform,
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in signature.inputs],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in signature.outputs],
        }
        if served.source.metadata:
            body["parameters"] = {"version": served.label, "version_name": target.name, **served.source.metadata}
        return body

    def model_ready(self, name: str, pin: str | None) -> bool:
        """Loaded, and for a remote version its endpoint ready (its health check) and not ejected."""
        try:
            _, served = self.resolve(name, pin)
        except NotReadyError:
            return False
        return served.remote is None or served.remote.available()

    def ready(self) -> bool:
        """Ready when every version that a route can send traffic to can serve it, and not draining: loaded, and a
        remote one's endpoint available unless its route's baseline takes its requests meanwhile (fallback)."""
        if self.draining:
            return False
        snapshot = self._snapshot
        for route in snapshot.table.routes.values():
            weights = route.weights()
            for t in route.targets:
                if weights[t.name] <= 0:
                    continue
                served = snapshot.versions.get((t.model, t.version))
                if served is None:
                    return False
                remote = served.remote
                if remote is not None and not remote.fallback and not remote.available():
                    return False
        return True
