"""The decisions feedback is joined to: per route, request id -> (version, outputs, when), bounded and time-limited.

`LedgerLane.offer` runs on the request path after the answer is encoded, so it is a dict store and nothing more: it
keeps a reference to the outputs the request produced (scored only if feedback comes) and, when the record is full,
drops the oldest entry (counted). Only requests that carry an id (the V2 `id` field, which the answer echoes) are
recorded: without one no feedback could name them. A decision is judged once: its first feedback releases the
outputs and marks it, so a second one is reported as a duplicate rather than counted again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from time import monotonic
from typing import Any, Literal

import numpy.typing as npt

Outputs = Mapping[str, npt.NDArray[Any]]
Found = Literal["found", "unknown", "expired", "duplicate"]
_JUDGED = None  # a record's outputs once its feedback has been scored


class Ledger:
    __slots__ = ("_clock", "_records", "capacity", "evicted", "expired", "recorded", "ttl")

    def __init__(self, capacity: int, ttl: float, *, clock: Callable[[], float] = monotonic) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._clock = clock
        self._records: dict[str, tuple[str, Outputs | None, float]] = {}
        self.recorded = 0
        self.evicted = 0  # pushed out by the bound before their time was up
        self.expired = 0  # found too old (at a lookup, or when the bound pushed them out)

    def __len__(self) -> int:
        return len(self._records)

    def lane(self, arm: str) -> LedgerLane:
        return LedgerLane(self, arm)

    def offer(self, request_id: str, arm: str, outputs: Outputs) -> None:
        self.lane(arm).offer(request_id, outputs)

    def make_room(self) -> None:
        """Drop the oldest decision (the record is full), counted as expired or evicted by its age."""
        records = self._records
        oldest = next(iter(records))
        if records.pop(oldest)[2] < self._clock() - self.ttl:
            self.expired += 1
        else:
            self.evicted += 1

    def find(self, request_id: str) -> tuple[Found, str | None, Outputs | None]:
        """The decision a feedback judges (its version and outputs), or why there is none."""
        record = self._records.get(request_id)
        if record is None:
            return "unknown", None, None
        arm, outputs, when = record
        if when < self._clock() - self.ttl:
            del self._records[request_id]
            self.expired += 1
            return "expired", arm, None
        if outputs is _JUDGED:
            return "duplicate", arm, None
        return "found", arm, outputs

    def settle(self, request_id: str) -> None:
        """Mark a decision judged (its outputs released): a later feedback for it is a duplicate. Only once the
        feedback was scored, so one that could not be scored (e.g. the wrong number of rows) can be sent again."""
        record = self._records.get(request_id)
        if record is not None:
            self._records[request_id] = (record[0], _JUDGED, record[2])


class LedgerLane:
    """One version's door into its route's ledger: what a DecisionRecord holds. It writes the record itself (one
    call on the request path, not two)."""

    __slots__ = ("_arm", "_clock", "_ledger", "_records")

    def __init__(self, ledger: Ledger, arm: str) -> None:
        self._ledger = ledger
        self._arm = arm
        self._records = ledger._records
        self._clock = ledger._clock

    def offer(self, request_id: str | None, outputs: Outputs) -> None:
        """Record one served request; never raises. A request without an id cannot be judged and is skipped."""
        if request_id is not None:
            ledger = self._ledger
            records = self._records
            if request_id in records:  # an id used again: the newest decision, in the newest place
                del records[request_id]
            elif len(records) >= ledger.capacity:
                ledger.make_room()
            records[request_id] = (self._arm, outputs, self._clock())
            ledger.recorded += 1
