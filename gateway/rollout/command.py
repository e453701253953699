"""`gateway rollout status|pause|resume|promote|abort|retry [ROUTE]`: a client of a running gateway's admin endpoints.

`status` reads `GET /admin/rollouts` (every rollout) or `GET /admin/rollouts/{route}`; an action posts to
`/admin/rollouts/{route}/{action}` and prints the status it returns. Exit codes: 0 done; 1 the gateway refused (its
`{"error": ...}` message is printed: 404 a route without a rollout, 409 an action its phase does not allow); 2 a usage
error, or the gateway cannot be reached at `--url`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from gateway.admin import TOKEN_ENV, load_token
from gateway.errors import ConfigError
from gateway.rollout.controller import ACTIONS

DEFAULT_URL = "http://127.0.0.1:8000"
COMMANDS = ("status", *ACTIONS)
HISTORY = 5  # history entries shown; --json has them all


class _RefusedError(Exception):
    """The gateway answered with an error status; the message is its `{"error": ...}` text."""


class _UnreachableError(Exception):
    """No answer from the gateway (nothing listens, a timeout, a malformed URL)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=COMMANDS, help="status: show; the others act on ROUTE's rollout")
    parser.add_argument("route", nargs="?", default=None, help="the route (required by every action but status)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the gateway's base URL (default {DEFAULT_URL})")
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON as it is")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the gateway")
    parser.add_argument(
        "--token-file", type=Path,
        help=f"file holding the gateway's admin token (default: the {TOKEN_ENV} environment variable)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its line per request on stderr is noise in a terminal
    action: str = args.action
    route: str | None = args.route
    if action != "status" and not route:
        print(f"gateway rollout: {action} needs a ROUTE", file=sys.stderr)
        return 2
    base = str(args.url).rstrip("/")
    if route is None:
        method, path = "GET", "/admin/rollouts"
    elif action == "status":
        method, path = "GET", f"/admin/rollouts/{quote(route, safe='')}"
    else:
        method, path = "POST", f"/admin/rollouts/{quote(route, safe='')}/{action}"
    try:
        token = load_token(args.token_file)
    except ConfigError as exc:
        print(f"gateway rollout: {exc}", file=sys.stderr)
        return 2
    headers = {} if token is None else {"authorization": f"Bearer {token.decode()}"}
    try:
        body = _call(method, base + path, args.timeout, headers)
    except _UnreachableError as exc:
        print(f"gateway rollout: cannot reach the gateway at {base}: {exc}", file=sys.stderr)
        return 2
    except _RefusedError as exc:
        print(f"gateway rollout: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return 0
    rollouts = body.get("rollouts") if route is None else [body]
    if not isinstance(rollouts, list):
        print(f"gateway rollout: {base}{path} did not answer with rollouts (is this a gateway?)", file=sys.stderr)
        return 1
    print("\n\n".join(describe(r) for r in rollouts) if rollouts else "no rollouts")
    return 0


def _call(method: str, url: str, timeout: float, headers: Mapping[str, str]) -> dict[str, Any]:
    try:
        response = httpx.request(method, url, timeout=timeout, headers=dict(headers))
    except (httpx.TransportError, httpx.InvalidURL) as exc:  # TransportError covers connect, timeouts, bad schemes
        raise _UnreachableError(str(exc) or type(exc).__name__) from exc
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if response.is_error:
        message = body.get("error") if isinstance(body, dict) else None
        text = message if isinstance(message, str) else response.text.strip()[:200] or "(no body)"
        raise _RefusedError(f"{response.status_code} {response.reason_phrase}: {text}")
    if not isinstance(body, dict):
        raise _RefusedError(
            f"{method} {url} answered {response.status_code} without a JSON object (is this a gateway?)"
        )
    return body


# ---- the human-readable status ----------------------------------------------------------------------------------


def describe(rollout: Mapping[str, Any]) -> str:
    """One rollout's status (the JSON of `GET /admin/rollouts/{route}`) as aligned lines for a terminal."""
    rows: list[tuple[str, str]] = [
        ("phase", str(rollout.get("phase"))),
        ("reason", str(rollout.get("reason") or "-")),
        ("candidate", _version(rollout.get("candidate"))),
        ("baseline", _version(rollout.get("baseline"))),
        ("step", _step(rollout.get("step"))),
        ("weights", _weights(rollout.get("weights"))),
    ]
    shadow = rollout.get("shadow")
    if isinstance(shadow, dict):
        rows.append(("shadow", f"{_number(shadow.get('percent'))}% copied to {shadow.get('to')}"))
    rows.append(("failed checks", f"{rollout.get('failed_checks')} of {rollout.get('failure_limit')} (the limit)"))
    if rollout.get("started_at"):
        rows.append(("started", _time(rollout["started_at"])))
    validation = rollout.get("validation")
    if isinstance(validation, dict) and validation.get("summary"):
        rows.append(("validation", str(validation["summary"])))
    width = max(len(key) for key, _ in rows)
    lines = [f"route {rollout.get('route')}"]
    lines += [f"  {key.ljust(width)}  {value}" for key, value in rows]
    gates = rollout.get("gates") or []
    if gates:
        lines.append("  gates")
        lines += [f"    {line}" for line in _table([_gate(g) for g in gates])]
    history = rollout.get("history") or []
    if history:
        shown = history[-HISTORY:]
        more = f", last {len(shown)} of {len(history)}" if len(history) > len(shown) else ""
        lines.append(f"  history (UTC{more})")
        lines += [f"    {line}" for line in _table([_transition(t) for t in shown])]
    return "\n".join(lines)


def _version(side: object) -> str:
    if not isinstance(side, dict):
        return "-"
    return f"{side.get('name')} (version {side.get('version')})"


def _step(step: object) -> str:
    if not isinstance(step, dict):
        return "- (no step yet)"
    parts = [
        f"{step.get('index')} of {step.get('of')}",
        f"weight {_number(step.get('weight'))}%",
        f"shadow {_number(step.get('shadow'))}%",
        f"{_duration(step.get('elapsed'))} of {_duration(step.get('duration'))}",
        f"{step.get('requests')} of {step.get('min_requests')} requests",
    ]
    return ", ".join(parts)


def _weights(weights: object) -> str:
    if not isinstance(weights, dict) or not weights:
        return "-"
    return ", ".join(f"{name} {_number(100.0 * float(share))}%" for name, share in weights.items())


def _gate(gate: Mapping[str, Any]) -> list[str]:
    samples = gate.get("samples")
    return [
        str(gate.get("verdict", "")).upper(),
        str(gate.get("gate")),
        f"value {_figure(gate.get('value'))}",
        f"threshold {_figure(gate.get('threshold'))}",
        f"n={samples}" if samples else "",
        str(gate.get("detail") or ""),
    ]


def _transition(entry: Mapping[str, Any]) -> list[str]:
    source = entry.get("from") or "start"
    step = entry.get("step")
    where = f"step {int(step) + 1}" if isinstance(step, int) and step >= 0 else ""
    return [_time(entry.get("at")), f"{source} -> {entry.get('to')}", where, str(entry.get("reason") or "")]


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Every column but the last padded to its widest cell; empty trailing space trimmed."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)), row[-1]]).rstrip() for row in rows]


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, int | float) else "-"


def _figure(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "-"


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _time(at: object) -> str:
    if not isinstance(at, int | float):
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway rollout", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
