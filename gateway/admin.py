"""Who may call `/admin/*`: a bearer token when one is configured; without one, anyone on loopback, and beyond
loopback nobody may change anything (reads stay open).

The token comes from the environment (`GATEWAY_ADMIN_TOKEN`) or a file (`--admin-token-file`, e.g. a Kubernetes
Secret mounted as a volume); it is never logged, and a presented token is compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import ConfigError

TOKEN_ENV = "GATEWAY_ADMIN_TOKEN"
PREFIX = "/admin"
METRICS = "/metrics"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # 401 (no or wrong token) or 403 (no token configured, reachable beyond loopback)
    message: str
    challenge: bool  # send `WWW-Authenticate: Bearer`


@dataclass(frozen=True, slots=True)
class AdminGuard:
    token: bytes | None = field(default=None, repr=False)  # repr=False: a guard printed must not print the token
    exposed: bool = False  # the gateway listens beyond loopback

    def check(self, method: str, headers: list[tuple[bytes, bytes]]) -> Refusal | None:
        """None when the call may proceed; else why not."""
        if self.token is None:
            if self.exposed and method not in _SAFE_METHODS:
                return Refusal(
                    403,
                    f"admin changes are refused: the gateway listens beyond loopback and no admin token is configured"
                    f" (set {TOKEN_ENV} or --admin-token-file)",
                    challenge=False,
                )
            return None
        presented = _bearer(headers)
        if presented is None:
            return Refusal(401, "admin calls need a bearer token (Authorization: Bearer <token>)", challenge=True)
        if not hmac.compare_digest(presented, self.token):
            return Refusal(401, "the admin token is not valid", challenge=True)
        return None


def operational(path: str) -> bool:
    """Metrics and admin calls: what moves to the admin listener when there is one (`--admin-port`)."""
    return path == METRICS or path == PREFIX or path.startswith(PREFIX + "/")


def _bearer(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


def load_token(path: Path | None) -> bytes | None:
    """The configured token: the file's content (trimmed) when a path is given, else the environment's; None when
    neither is set. A file that is missing or empty is a configuration error, not an open door."""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--admin-token-file {path}: cannot read: {exc.strerror or exc}") from exc
        if not text:
            raise ConfigError(f"--admin-token-file {path}: the file is empty")
        return text.encode("utf-8")
    value = os.environ.get(TOKEN_ENV, "").strip()
    return value.encode("utf-8") if value else None


def is_loopback(host: str) -> bool:
    """Whether a listen address only accepts local connections ("localhost", 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere: treat it as reachable
