"""The gateway's exception hierarchy. No HTTP status codes here: `endpoints` owns that map."""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""

    # A server-side status that is the gateway working as designed (not ready, shedding, a deadline), which the edge
    # answers without logging a fault.
    routine = False


class ProtocolError(GatewayError):
    """A request that does not follow the Open Inference Protocol or the model's signature (bad input)."""


class ModelRejectedError(ProtocolError):
    """The model itself refused an input that matched its signature (a value it cannot handle, such as an index out
    of range): still the client's 400, but counted apart, since a new version that refuses what the old one served
    is a regression a rollout must see."""


class PayloadTooLargeError(GatewayError):
    """A request body over the configured limit."""


class UnknownModelError(GatewayError):
    """No such model (route) is served."""


class UnknownVersionError(UnknownModelError):
    """The model exists but not that version."""


class NotReadyError(GatewayError):
    """The model or version is known but cannot serve right now."""

    routine = True


class OverloadedError(GatewayError):
    """A queue or concurrency limit was hit; the client should retry after `retry_after` seconds."""

    routine = True

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceededError(GatewayError):
    """The request's deadline passed while it waited for its model: dropped without running (504)."""

    routine = True


class ConflictError(GatewayError):
    """An action the target's current state does not allow (e.g. pausing a rollout that has already finished)."""


class UnsupportedError(GatewayError):
    """A protocol extension or feature the gateway does not implement."""


class BackendError(GatewayError):
    """The model runtime failed while running a request."""


class RemoteError(BackendError):
    """A remote endpoint failed a request: an error status, a dropped connection, an answer that is not V2 (502). The
    message names the endpoint. Routine: the endpoint's metrics count each, and its ejection is logged once."""

    routine = True


class RemoteUnavailableError(NotReadyError):
    """A remote endpoint cannot take the request: unreachable, ejected after failures, or saying so itself (503)."""


class RemoteTimeoutError(GatewayError):
    """A remote endpoint did not answer within the version's timeout or the request's deadline (504)."""

    routine = True


class ModelLoadError(GatewayError):
    """A model version could not be loaded; the message names the path and the reason."""


class ConfigError(GatewayError):
    """An invalid configuration; the message names the file and the exact key path."""
