"""A rollout's state: an immutable value replaced whole at each transition, and its file.

The file is written atomically (a temporary file in the same folder, fsync, rename) after every transition, so a
restarted gateway finds either the previous state or the new one, never half of each, and resumes at the same step
and weight. A file whose candidate or baseline is not the configured one belongs to another rollout and is ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias, get_args

import orjson

logger = logging.getLogger(__name__)

Phase: TypeAlias = Literal["validating", "shadowing", "progressing", "paused", "succeeded", "failed", "aborted"]
PHASES: tuple[Phase, ...] = get_args(Phase)
ACTIVE: Final = frozenset({"validating", "shadowing", "progressing", "paused"})
FORMAT = 1
MAX_HISTORY = 200


@dataclass(frozen=True, slots=True)
class Identity:
    """What a rollout is about. Any change starts a new rollout: another candidate or baseline, or a model file
    replaced in place (same version number, new bytes; a file only touched or copied anew is the same)."""

    candidate: str
    candidate_version: int | str  # a repository number, or a remote version's name
    candidate_model: str  # sha256 of the candidate's model file
    baseline: str
    baseline_version: int | str
    baseline_model: str  # sha256 of the baseline's model file

    def describe(self) -> str:
        return f"{self.candidate} (version {self.candidate_version}) against {self.baseline} ({self.baseline_version})"


@dataclass(frozen=True, slots=True)
class Transition:
    at: float  # unix time
    source: str  # the phase left ("" for the first)
    target: str  # the phase entered
    step: int  # the step index after the transition (-1 before the first step)
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "from": self.source, "to": self.target, "step": self.step, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class RolloutState:
    route: str
    identity: Identity
    phase: Phase
    step: int = -1  # index into the steps; -1 while validating
    failed_checks: int = 0
    started_at: float = 0.0
    step_started_at: float = 0.0
    resume_to: Phase | None = None  # while paused: the phase `resume` returns to
    manual_weight: float | None = None  # while paused by a hand edit of the candidate's weight: the edited weight
    reason: str = ""
    history: tuple[Transition, ...] = ()
    validation: dict[str, Any] | None = None  # the validation report (JSON form)

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    def moved(self, phase: Phase, now: float, reason: str, **changes: Any) -> RolloutState:
        """This state after a transition to `phase` (or a change within it), with the transition in the history."""
        step = changes.get("step", self.step)
        entry = Transition(now, self.phase, phase, step, reason)
        history = (*self.history, entry)[-MAX_HISTORY:]
        return dataclasses.replace(self, phase=phase, reason=reason, history=history, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "route": self.route,
            "identity": dataclasses.asdict(self.identity),
            "phase": self.phase,
            "step": self.step,
            "failed_checks": self.failed_checks,
            "started_at": self.started_at,
            "step_started_at": self.step_started_at,
            "resume_to": self.resume_to,
            "manual_weight": self.manual_weight,
            "reason": self.reason,
            "history": [t.to_json() for t in self.history],
            "validation": self.validation,
        }


def transitions_since(
    before: RolloutState | None, state: RolloutState, since: float | None = None
) -> tuple[Transition, ...]:
    """The history entries `state` added to `before`; for a new rollout (no `before`), those at or after `since`."""
    if before is None:
        return tuple(t for t in state.history if since is not None and t.at >= since)
    if state.history[: len(before.history)] == before.history:
        return state.history[len(before.history) :]
    return state.history[-1:]  # the history was trimmed at its cap


def transition_event(state: RolloutState, phase: str, reason: str, at: float) -> dict[str, Any]:
    """The webhook body of a phase change."""
    identity = state.identity
    return {
        "event": f"rollout_{phase}",
        "route": state.route,
        "phase": phase,
        "step": state.step + 1,
        "candidate": identity.candidate,
        "candidate_version": identity.candidate_version,
        "baseline": identity.baseline,
        "baseline_version": identity.baseline_version,
        "reason": reason,
        "timestamp": at,
    }


def state_from_json(data: Any) -> RolloutState:
    """The state a file holds; ValueError (with what is wrong) for anything else."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a rollout state of format {FORMAT}")
    try:
        phase = data["phase"]
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        resume_to = data.get("resume_to")
        if resume_to is not None and resume_to not in PHASES:
            raise ValueError(f"unknown phase {resume_to!r}")
        history = tuple(
            Transition(float(t["at"]), str(t["from"]), str(t["to"]), int(t["step"]), str(t["reason"]))
            for t in data.get("history", [])
        )
        manual = data.get("manual_weight")
        return RolloutState(
            route=str(data["route"]),
            identity=Identity(**data["identity"]),
            phase=phase,
            step=int(data["step"]),
            failed_checks=int(data["failed_checks"]),
            started_at=float(data["started_at"]),
            step_started_at=float(data["step_started_at"]),
            resume_to=resume_to,
            manual_weight=None if manual is None else float(manual),
            reason=str(data.get("reason", "")),
            history=history,
            validation=data.get("validation"),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"missing or malformed field: {exc}") from exc


def load_state(path: Path) -> RolloutState | None:
    """The state in `path`, or None when there is none or it cannot be read (logged: a bad file must not stop the
    gateway; the rollout then starts afresh, at weight 0, which is the safe side)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.error("rollout state %s cannot be read, starting afresh: %s", path, exc)
        return None
    try:
        return state_from_json(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValueError) as exc:
        logger.error("rollout state %s is not valid, starting afresh: %s", path, exc)
        return None


def save_state(path: Path, state: RolloutState) -> None:
    """Write atomically: readers (and a restart) see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, orjson.dumps(state.to_json(), option=orjson.OPT_INDENT_2))


def write_atomically(path: Path, body: bytes) -> None:
    """Replace `path` with `body` so that a reader (a replica's config watcher, a restart) sees the old file or the
    new one, never a torn one: a temporary file in the same folder (a rename is atomic only within a filesystem),
    its bytes fsynced before the rename, and the folder fsynced after it, so the rename itself survives a crash."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with_suppressed_unlink(temporary)
        raise
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass  # a filesystem that cannot fsync a folder (some network and FUSE ones) has still renamed the file
    finally:
        os.close(folder)


def with_suppressed_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
