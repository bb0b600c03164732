"""The engine protocol: typed messages between the gRPC front and an engine worker, and their codec.

Requests, front -> worker (each carries the `id` every reply to it repeats):
  Reset     session_id, prompt, negative_prompt, seed, width, height, frames, source, shape, pixels
  Step      session_id, action, frames
  Fork, Snapshot, Close  session_id          Restore  data (snapshot bytes)
  Cancel    target: stop the request `target` (between denoising steps)
Replies, worker -> front:
  Ready     info (the model's description), once after warm-up
  Heartbeat stalled_s: seconds since the worker's engine loop last made progress; every HEARTBEAT_S
  Frame     id, chunk_index, index_in_chunk, width, height, data (RGB24 bytes)
  Result    id, chunk_index, timings, session_id, width, height, data (snapshot bytes)
  Error     id, code (a grpc.StatusCode name), message
`frames` says which decoded frames to send: "all", "last" or "none". An action is one of
`helios_sdk.actions`' dataclasses (Prompt, Blend, Transition, Control, Move) or a structured mapping
(in-process callers); it is checked where it enters (the front for gRPC) and travels as is.

On ZeroMQ a message is the multipart `[header, *blobs]`: the header a msgpack array
`[tag, field, ...]` (the fields in declaration order, no names), the blobs the message's bytes fields
(pixels, frames, snapshots), which never pass through msgpack. In-process transports (a Ray replica,
the SDK's local backend) pass the objects themselves. Encoding a Frame costs about as much as the
untyped dict it replaced (docs/architecture.md, "Protocol cost").
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from helios_sdk.actions import Action, Blend, Control, Move, Prompt, Transition

SELECTIONS = ("all", "last", "none")
HEARTBEAT_S = 1.0  # a worker's I/O thread sends a Heartbeat this often (the front's watchdog reads them)


# ---------------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Reset:
    kind: ClassVar[str] = "reset"
    session_id: str
    prompt: str = ""
    seed: int = 0
    width: int = 0  # 0: the model's default
    height: int = 0
    negative_prompt: str = ""
    frames: str = "all"
    source: str = "none"  # none | image | video
    shape: tuple[int, ...] = ()  # (T, H, W, 3) of `pixels` for an image (T = 1) or a video
    pixels: bytes = b""  # uint8 RGB
    id: int = 0


@dataclass(slots=True)
class Step:
    kind: ClassVar[str] = "step"
    session_id: str
    action: Action = None
    frames: str = "all"
    id: int = 0


@dataclass(slots=True)
class _SessionRequest:
    """A request about one session and nothing else."""

    session_id: str
    id: int = 0


@dataclass(slots=True)
class Fork(_SessionRequest):
    kind: ClassVar[str] = "fork"


@dataclass(slots=True)
class Snapshot(_SessionRequest):
    kind: ClassVar[str] = "snapshot"


@dataclass(slots=True)
class Restore:
    kind: ClassVar[str] = "restore"
    data: bytes
    id: int = 0


@dataclass(slots=True)
class Close(_SessionRequest):
    kind: ClassVar[str] = "close"


@dataclass(slots=True)
class Cancel:
    kind: ClassVar[str] = "cancel"
    target: int
    id: int = 0


Request = Reset | Step | Fork | Snapshot | Restore | Close | Cancel


# ---------------------------------------------------------------------------------------------------
# Replies
# ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Ready:
    kind: ClassVar[str] = "ready"
    info: dict[str, Any]
    id: int = 0


@dataclass(slots=True)
class Heartbeat:
    """Sent by the worker's I/O thread; `stalled_s` measures the loop thread (per message handled,
    per model forward, per decoded frame), so a wedged engine shows though its socket still answers."""

    kind: ClassVar[str] = "heartbeat"
    stalled_s: float
    id: int = 0


@dataclass(slots=True)
class Frame:
    kind: ClassVar[str] = "frame"
    id: int
    chunk_index: int
    index_in_chunk: int
    width: int
    height: int
    data: bytes  # (height, width, 3) uint8 RGB


@dataclass(slots=True)
class Result:
    kind: ClassVar[str] = "result"
    id: int
    chunk_index: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # seconds: denoise, decode
    session_id: str = ""  # fork, restore: the new session
    width: int = 0  # restore: the session's size
    height: int = 0
    data: bytes = b""  # snapshot: its bytes


@dataclass(slots=True)
class Error:
    kind: ClassVar[str] = "error"
    id: int
    code: str  # a grpc.StatusCode name; the engine's errors carry theirs (engine/errors.py)
    message: str


Reply = Ready | Heartbeat | Frame | Result | Error
Message = Request | Reply


# ---------------------------------------------------------------------------------------------------
# The ZeroMQ codec: one function each way
# ---------------------------------------------------------------------------------------------------

_TYPES: tuple[type, ...] = (
    *(Reset, Step, Fork, Snapshot, Restore, Close, Cancel),
    *(Ready, Frame, Result, Error, Heartbeat),
)
_TAG = {cls: i for i, cls in enumerate(_TYPES)}
# Per type: the header's field names and the blob fields' names, in declaration order, and getters.
_INLINE = {cls: tuple(f.name for f in dataclasses.fields(cls) if f.type != "bytes") for cls in _TYPES}
_BLOBS = {cls: tuple(f.name for f in dataclasses.fields(cls) if f.type == "bytes") for cls in _TYPES}
_GET = {
    cls: (operator.attrgetter(*_INLINE[cls]), operator.attrgetter(*_BLOBS[cls]) if _BLOBS[cls] else None)
    for cls in _TYPES
}
# Types whose blob fields all come after their header fields decode positionally (the fast path).
_POSITIONAL = {
    cls
    for cls in _TYPES
    if [f.type == "bytes" for f in dataclasses.fields(cls)]
    == sorted(f.type == "bytes" for f in dataclasses.fields(cls))
}


def encode(message: Message) -> list[bytes]:
    """A message -> ZeroMQ parts `[header, *blobs]`."""
    cls = type(message)
    inline, blobs = _GET[cls]
    values = inline(message)
    header = [_TAG[cls], *values] if isinstance(values, tuple) else [_TAG[cls], values]
    if cls is Step:
        header[2] = _action_to_wire(message.action)  # type: ignore[union-attr]
    parts = [msgpack.packb(header, use_bin_type=True)]
    if blobs is not None:
        data = blobs(message)
        parts.extend(data if isinstance(data, tuple) else (data,))
    return parts


def decode(parts: list[bytes]) -> Message:
    """ZeroMQ parts -> a message (ValueError for parts this codec did not write)."""
    try:
        tag, *values = msgpack.unpackb(parts[0], raw=False)
        if type(tag) is not int or not 0 <= tag < len(_TYPES):
            raise ValueError(f"unknown message tag {tag!r}")
        cls = _TYPES[tag]
        if cls in _POSITIONAL:
            message = cls(*values, *(bytes(p) for p in parts[1:]))
        else:
            kwargs = dict(zip(_INLINE[cls], values, strict=True))
            kwargs.update(zip(_BLOBS[cls], (bytes(p) for p in parts[1:]), strict=True))
            message = cls(**kwargs)
        if cls is Step:
            message.action = _action_from_wire(message.action)
        elif cls is Reset:
            message.shape = tuple(message.shape)
    except (ValueError, TypeError, IndexError, msgpack.UnpackException) as exc:
        raise ValueError(f"not an engine-protocol message: {exc}") from exc
    return message


def _action_to_wire(action: Action) -> Any:
    """An action -> a msgpack-able list (`[kind, *fields]`), or a move/pan mapping as it is."""
    if action is None or isinstance(action, Mapping):
        return action
    if isinstance(action, str):
        return ["prompt", action]
    if isinstance(action, Prompt):
        return ["prompt", action.text]
    if isinstance(action, Blend):
        return ["blend", list(action.prompts), list(action.weights)]
    if isinstance(action, Transition):
        return ["transition", action.text, action.chunks]
    if isinstance(action, Control):
        c = action
        return ["control", list(c.keys), c.mouse_dx, c.mouse_dy, c.camera_yaw, c.camera_pitch, c.camera_zoom]
    if isinstance(action, Move):
        return ["move", action.move, action.pan]
    raise TypeError(f"no wire form for an action of type {type(action).__name__}")


def _action_from_wire(wire: Any) -> Action:
    if wire is None or isinstance(wire, Mapping):
        return wire
    kind, *fields = wire
    if kind == "prompt":
        return Prompt(*fields)
    if kind == "blend":
        return Blend(tuple(fields[0]), tuple(fields[1]))
    if kind == "transition":
        return Transition(*fields)
    if kind == "control":
        return Control(tuple(fields[0]), *fields[1:])
    if kind == "move":
        return Move(*fields)
    raise ValueError(f"unknown action kind {kind!r}")
