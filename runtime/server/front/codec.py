"""The front's codec: helios.v1 protobuf <-> the engine protocol, and the input checks made there.

This is where a client's input enters the server, so it is checked here, once: action fields by
`helios_sdk.actions.check` (the rules the engine applies to in-process callers), a ControlAction or
MoveAction against the action space the worker's model reported (`ActionSpace.check`: an unknown
key, a field the model does not read), text length and sizes by the server's own limits.
Everything past this point is a typed protocol message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk.actions import (
    MAX_PROMPT_CHARS,
    Action,
    ActionSpace,
    Blend,
    Control,
    Move,
    Prompt,
    Transition,
    check,
)

from ...chunk import FRAMES_PER_CHUNK
from ..protocol.messages import Frame

MAX_BLEND_PROMPTS = 16
DEFAULT_TRANSITION_CHUNKS = 3
SELECTIONS = {
    pb.FRAME_SELECTION_UNSPECIFIED: "all",
    pb.FRAME_SELECTION_ALL: "all",
    pb.FRAME_SELECTION_LAST: "last",
    pb.FRAME_SELECTION_NONE: "none",
}


class RpcError(Exception):
    """A request the front refuses itself, with its status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class BadRequest:
    """What a request's bytes became when they did not parse (`parser`)."""

    def __init__(self, message: str):
        self.message = message


def parser(message_type: type) -> Callable[[bytes], Any]:
    """A request deserialiser that never raises: bytes that are not a `message_type` (or carry
    invalid UTF-8 in a string field) become a BadRequest the service answers INVALID_ARGUMENT."""

    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return BadRequest(f"the request is not a valid {message_type.DESCRIPTOR.full_name}: {exc}")

    return parse


def lost(session_id: str, why: str = "") -> RpcError:
    """A session lost with its engine worker: ABORTED, which no client retries (the request cannot
    succeed again; the caller starts a new session or restores a snapshot). `why`: what happened
    to the worker, when known."""
    return RpcError(
        grpc.StatusCode.ABORTED,
        f"session {shown(session_id)} was lost with its engine worker{f' ({why})' if why else ''}; "
        "create a new one (or Restore a snapshot)",
    )


def shown(session_id: str) -> str:
    """A session id as error messages echo it: never more than 64 characters of a client's input."""
    return repr(session_id if len(session_id) <= 64 else session_id[:64] + "...")


def invalid(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, message)


def status(code: str) -> grpc.StatusCode:
    """A status code name (as engine errors and the protocol's `Error` carry it) -> the enum."""
    return getattr(grpc.StatusCode, code, grpc.StatusCode.INTERNAL)


def text(value: str, what: str) -> str:
    """A prompt's text within the server's limit (NUL and the like: `helios_sdk.actions.check`)."""
    if len(value) > MAX_PROMPT_CHARS:
        raise invalid(f"{what} is {len(value)} characters; the limit is {MAX_PROMPT_CHARS}")
    if "\x00" in value:
        raise invalid(f"{what} contains a NUL character")
    return value


def selection(options: pb.FrameOptions) -> str:
    found = SELECTIONS.get(options.selection)
    if found is None:
        raise invalid(f"unknown frame selection {options.selection}")
    return found


def action_space(info: Mapping[str, Any]) -> ActionSpace | None:
    """The structured actions a worker's model understands, from its ready message (the engine's
    action adapter describes itself: `describe_model`); None when the worker did not say.
    `WorkerHandle.actions` keeps it, parsed once per ready message."""
    data = info.get("actions")
    return ActionSpace.from_dict(data) if data else None


def action(proto: pb.Action, space: ActionSpace | None = None) -> Action:
    """A proto Action -> the protocol's (None: continue), checked; a ControlAction or MoveAction
    also against `space`, the model's (refused, never ignored, when the model would not read it)."""
    kind = proto.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "prompt":
        out: Prompt | Blend | Transition | Control | Move = Prompt(text(proto.prompt.text, "prompt.text"))
    elif kind == "blend":
        if len(proto.blend.prompts) > MAX_BLEND_PROMPTS:
            raise invalid(f"a blend has at most {MAX_BLEND_PROMPTS} prompts, got {len(proto.blend.prompts)}")
        texts = tuple(text(p.text, "blend.prompts.text") for p in proto.blend.prompts)
        out = Blend(texts, tuple(p.weight for p in proto.blend.prompts))
    elif kind == "transition":
        t = proto.transition
        out = Transition(text(t.text, "transition.text"), t.chunks or DEFAULT_TRANSITION_CHUNKS)
    elif kind == "move":
        out = Move(proto.move.move, proto.move.pan)
    else:
        c = proto.control
        out = Control(tuple(c.keys), c.mouse_dx, c.mouse_dy, c.camera_yaw, c.camera_pitch, c.camera_zoom)
    try:
        check(out)
        if space is not None and isinstance(out, (Control, Move)):
            space.check(out)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    return out


def frame(
    session_id: str, f: Frame, payload: bytes, keyframe: bool, encoding: int, action_seq: int
) -> pb.Frame:
    """A worker's frame, encoded -> the proto Frame (its index in the session's whole video)."""
    return pb.Frame(
        session_id=session_id,
        chunk_index=f.chunk_index,
        frame_index=f.chunk_index * FRAMES_PER_CHUNK + f.index_in_chunk,
        index_in_chunk=f.index_in_chunk,
        timestamp_ns=time.time_ns(),
        width=f.width,
        height=f.height,
        encoding=encoding,
        data=payload,
        keyframe=keyframe,
        action_seq=action_seq,
    )


def timings(t: dict[str, float], encode_seconds: float = 0.0) -> pb.ChunkTimings:
    return pb.ChunkTimings(
        denoise_seconds=t.get("denoise", 0.0),
        decode_seconds=t.get("decode", 0.0),
        encode_seconds=encode_seconds,
    )
