"""Errors of the engine, one class per way a request can be refused.

Each class carries the gRPC status code it becomes (`code`, a grpc.StatusCode name, the pattern of
`helios_sdk/errors.py`): the worker sends it as it is and the SDK's local backend raises the
matching `helios_sdk.errors` class, so no table maps them. All carry a message that says what was
expected and what arrived.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of the engine's refusals."""

    code = "INTERNAL"


class InvalidInput(EngineError, ValueError):
    """A malformed action, prompt, image, video, size or setting."""

    code = "INVALID_ARGUMENT"


class SessionNotFound(EngineError, KeyError):
    """No session has this id."""

    code = "NOT_FOUND"

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0]) if self.args else "session not found"


class SessionClosed(EngineError):
    """The session was closed; it cannot be stepped, forked or snapshotted."""

    code = "FAILED_PRECONDITION"


class CapacityExceeded(EngineError):
    """The engine holds its maximum number of sessions (or the device lacks memory for another)."""

    code = "RESOURCE_EXHAUSTED"


class Cancelled(EngineError):
    """The caller gave up on a chunk before it finished; the session did not advance."""

    code = "CANCELLED"
