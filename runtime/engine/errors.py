"""Errors of the engine, one class per way a request can be refused.

Each maps to one gRPC status code in the service (noted per class); all carry a message that says
what was expected and what arrived.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of the engine's refusals."""


class InvalidInput(EngineError, ValueError):
    """A malformed action, prompt, image, video, size or setting (INVALID_ARGUMENT)."""


class SessionNotFound(EngineError, KeyError):
    """No session has this id (NOT_FOUND)."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0]) if self.args else "session not found"


class SessionClosed(EngineError):
    """The session was closed; it cannot be stepped, forked or snapshotted (FAILED_PRECONDITION)."""


class CapacityExceeded(EngineError):
    """The engine holds its maximum number of sessions (RESOURCE_EXHAUSTED)."""


class Cancelled(EngineError):
    """The caller gave up on a chunk before it finished; the session did not advance (CANCELLED)."""
