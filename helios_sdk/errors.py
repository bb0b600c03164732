"""Typed exceptions of the client, one per gRPC status code the server uses (docs/server.md, Errors).

Every failed call raises a `HeliosError` subclass whose message names the call, the server's
address and the server's own explanation; `.code` is the status code's name ("NOT_FOUND", …).
"""

from __future__ import annotations

from typing import Any


class HeliosError(Exception):
    """Base class: a helios call failed. `code` is the gRPC status name, `details` the server's text."""

    code = "UNKNOWN"

    def __init__(self, message: str, *, details: str = "", call: str = ""):
        super().__init__(message)
        self.details = details
        self.call = call


class InvalidArgument(HeliosError, ValueError):
    """Bad input: a malformed action, size, encoding, image, video or snapshot."""

    code = "INVALID_ARGUMENT"


class NotFound(HeliosError):
    """Unknown session or snapshot id."""

    code = "NOT_FOUND"


class FailedPrecondition(HeliosError):
    """Step before Reset, a call on a closed session, a second stream on a session."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(HeliosError):
    """Session limit, a message over the size limit, GPU out of memory."""

    code = "RESOURCE_EXHAUSTED"


class Unauthenticated(HeliosError):
    """Missing or wrong bearer token (pass `token=` or set $HELIOS_TOKEN)."""

    code = "UNAUTHENTICATED"


class PermissionDenied(HeliosError):
    code = "PERMISSION_DENIED"


class Unavailable(HeliosError):
    """The server is unreachable, starting or draining: the call may succeed later. The idempotent
    RPCs were already retried (retry_policy.json) before this was raised."""

    code = "UNAVAILABLE"


class SessionLost(HeliosError):
    """The session was lost with its engine worker (the worker crashed or restarted): no retry can
    bring it back, so none is made. Create a new session (after `wait_ready()` if the worker is
    still restarting). gRPC status ABORTED."""

    code = "ABORTED"


class DeadlineExceeded(HeliosError):
    """The call's deadline passed (the session did not advance)."""

    code = "DEADLINE_EXCEEDED"


class Cancelled(HeliosError):
    code = "CANCELLED"


class Unimplemented(HeliosError):
    code = "UNIMPLEMENTED"


class Internal(HeliosError):
    """A server bug (the server logs it)."""

    code = "INTERNAL"


class VersionMismatch(HeliosError):
    """The server speaks another major version of the helios API."""

    code = "VERSION_MISMATCH"


class DecodeError(HeliosError):
    """A frame from the server could not be decoded (or PyAV, needed for JPEG / H.264, is missing)."""

    code = "DECODE_ERROR"


_BY_CODE: dict[str, type[HeliosError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        FailedPrecondition,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        Unavailable,
        SessionLost,
        DeadlineExceeded,
        Cancelled,
        Unimplemented,
        Internal,
    )
}


def error_class(code: str) -> type[HeliosError]:
    """The exception class of a status code name ("NOT_FOUND" -> NotFound; others -> HeliosError)."""
    return _BY_CODE.get(code, HeliosError)


def from_rpc_error(exc: Any, call: str, address: str = "") -> HeliosError:
    """A grpc.RpcError (sync or aio) -> the matching HeliosError, naming the call and the server."""
    code = exc.code().name if callable(getattr(exc, "code", None)) and exc.code() is not None else "UNKNOWN"
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    where = f" at {address}" if address else ""
    return error_class(code)(f"{call}{where} failed with {code}: {details}", details=details or "", call=call)
