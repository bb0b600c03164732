"""The browser gateway's wire schema (docs/web.md): a client's JSON messages -> helios.v1 requests,
and what a stream sends -> JSON events and binary frames. Pure conversions, no I/O; `web.py` runs
the sockets.

Every check a client's input meets here is about its *form* (types, ranges, unknown fields); what
the input means is checked where gRPC's input is checked, by the same code (`codec.action`, the
service's RPC bodies), because each message becomes the protobuf request a gRPC client would send.
A message that fails here raises `WebError` with the gRPC status code a gRPC client would get.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk.actions import ActionSpace

from ...chunk import FRAMES_PER_CHUNK
from ...moves import MOVES

# Client -> server message types, and the fields each may carry besides "type" (and "token").
CLIENT_FIELDS: dict[str, frozenset[str]] = {
    "server.info": frozenset(),
    "session.start": frozenset(
        {
            "prompt",
            "negative_prompt",
            "seed",
            "width",
            "height",
            "mode",
            "encoding",
            "jpeg_quality",
            "image",
            "start",
            "restore",
        }
    ),
    "session.action": frozenset({"seq", "keys", "mouse", "camera", "move", "pan"}),
    "session.prompt_update": frozenset({"seq", "prompt", "transition_duration_chunks"}),
    "session.snapshot": frozenset(),
    "session.stop": frozenset(),
}
ENCODINGS = {"jpeg": pb.FRAME_ENCODING_JPEG, "rgb24": pb.FRAME_ENCODING_RGB24, "h264": pb.FRAME_ENCODING_H264}
ENCODING_NAMES = {v: k for k, v in ENCODINGS.items()}
MODES = {"lockstep": pb.STREAM_MODE_LOCKSTEP, "free_run": pb.STREAM_MODE_FREE_RUN}
STARTS = ("auto", "text", "world")  # as `helios record --start`
DEFAULT_TRANSITION_CHUNKS = 3  # vLLM-Omni's default, Helios' interactive mode
MAX_TRANSITION_CHUNKS = 64
MAX_KEYS = 16
MAX_KEY_CHARS = 32
MAX_SEQ = 2**32 - 1  # the frame header's action_seq is a u32
# A `pan` of the learned move/pan action space becomes a camera turn of this many degrees, well
# past the toy world's 2° threshold (engine/actions.py, MovePanActions); a `move` becomes keys.
PAN_DEGREES = 15.0


class WebError(Exception):
    """A message the gateway refuses, with the gRPC status code's name."""

    def __init__(self, code: str, message: str, seq: int | None = None):
        super().__init__(message)
        self.code, self.message, self.seq = code, message, seq


def invalid(message: str, seq: int | None = None) -> WebError:
    return WebError("INVALID_ARGUMENT", message, seq)


# ---------------------------------------------------------------------------------------------------
# Client messages
# ---------------------------------------------------------------------------------------------------


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse(text: str) -> dict[str, Any]:
    """One text message -> a dict with a known "type" and only that type's fields (plus "token")."""
    try:
        msg = json.loads(text, parse_constant=_no_constants)  # NaN / Infinity are not JSON
    except (ValueError, RecursionError) as exc:
        raise invalid(f"the message is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(msg, dict):
        raise invalid(f"a message is a JSON object with a 'type', got a {type(msg).__name__}")
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_FIELDS:
        shown = repr(kind)[:64] if kind is not None else "none"
        raise invalid(f"unknown message type {shown}; expected one of {', '.join(CLIENT_FIELDS)}")
    unknown = set(msg) - CLIENT_FIELDS[kind] - {"type", "token"}
    if unknown:
        names = ", ".join(repr(k)[:40] for k in sorted(unknown)[:5])
        raise invalid(f"{kind} has unknown fields {names}; it takes {', '.join(sorted(CLIENT_FIELDS[kind]))}")
    return msg


def _int(msg: dict, name: str, default: int, low: int, high: int) -> int:
    value = msg.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise invalid(f"{name} must be an integer in [{low}, {high}], got {str(value)[:40]}")
    return value


def _str(msg: dict, name: str, default: str = "") -> str:
    value = msg.get(name, default)
    if not isinstance(value, str):
        raise invalid(f"{name} must be a string, got {type(value).__name__}")
    return value


def _choice(msg: dict, name: str, default: str, allowed: Any) -> str:
    value = msg.get(name, default)
    if value not in allowed:
        raise invalid(f"{name} must be one of {', '.join(allowed)}, got {str(value)[:40]!r}")
    return value


def _number(value: Any, what: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise invalid(f"{what} must be a number, got {type(value).__name__}")
    try:
        out = float(value)
    except OverflowError:
        raise invalid(f"{what} is too large") from None
    if not math.isfinite(out):
        raise invalid(f"{what} must be finite")
    return out


@dataclass(frozen=True)
class Start:
    """A session.start, checked for form: what CreateSession / Reset (or Restore) and StreamStart get."""

    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    mode: int  # pb.StreamMode
    encoding: int  # pb.FrameEncoding
    jpeg_quality: int
    image: bytes | None
    start: str
    restore: str | None

    @property
    def frames(self) -> pb.FrameOptions:
        return pb.FrameOptions(
            encoding=self.encoding, selection=pb.FRAME_SELECTION_ALL, jpeg_quality=self.jpeg_quality
        )


def start(msg: dict[str, Any]) -> Start:
    image = msg.get("image")
    if image is not None:
        if not isinstance(image, str):
            raise invalid("image must be a base64 string of a PNG or JPEG file")
        try:
            image = base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise invalid("image is not valid base64") from None
    restore = msg.get("restore")
    if restore is not None and (not isinstance(restore, str) or not restore):
        raise invalid("restore must be a snapshot_id string")
    if restore is not None and set(msg) & {"prompt", "negative_prompt", "seed", "width", "height", "image"}:
        raise invalid(
            "a restored session continues its snapshot: give restore without prompt, seed, size or image"
        )
    return Start(
        prompt=_str(msg, "prompt"),
        negative_prompt=_str(msg, "negative_prompt"),
        seed=_int(msg, "seed", 0, 0, 2**63 - 1),
        width=_int(msg, "width", 0, 0, 1 << 16),
        height=_int(msg, "height", 0, 0, 1 << 16),
        mode=MODES[_choice(msg, "mode", "lockstep", MODES)],
        encoding=ENCODINGS[_choice(msg, "encoding", "jpeg", ENCODINGS)],
        jpeg_quality=_int(msg, "jpeg_quality", 0, 0, 100),
        image=image,
        start=_choice(msg, "start", "auto", STARTS),
        restore=restore,
    )


def seq(msg: dict[str, Any]) -> int | None:
    """The client's action seq, or None (the gateway numbers it)."""
    if "seq" not in msg:
        return None
    return _int(msg, "seq", 0, 1, MAX_SEQ)


def _move_keys(name: str) -> list[str]:
    dx, dy = MOVES[name]
    return [k for k, on in (("w", dy < 0), ("s", dy > 0), ("a", dx < 0), ("d", dx > 0)) if on]


def action(msg: dict[str, Any]) -> pb.Action:
    """A session.action -> the ControlAction a gRPC client would send (empty: the world goes on).

    `move` / `pan` (the toy world's learned names) become keys and a camera turn, which the toy
    world maps back to exactly that move and pan; other models read them as motion phrases."""
    if "move" in msg and "keys" in msg:
        raise invalid("give keys or move, not both")
    if "pan" in msg and "camera" in msg:
        raise invalid("give camera or pan, not both")
    keys = msg.get("keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise invalid("keys must be a list of key names (strings)")
    if len(keys) > MAX_KEYS or any(len(k) > MAX_KEY_CHARS for k in keys):
        raise invalid(f"keys takes at most {MAX_KEYS} names of at most {MAX_KEY_CHARS} characters")
    control = pb.ControlAction(keys=keys)
    if "move" in msg:
        control.keys.extend(_move_keys(_choice(msg, "move", "stay", MOVES)))
    if "pan" in msg:
        dx, dy = MOVES[_choice(msg, "pan", "stay", MOVES)]
        control.camera_yaw, control.camera_pitch = dx * PAN_DEGREES, -dy * PAN_DEGREES
    for group, fields, names in (
        ("mouse", ("dx", "dy"), ("mouse_dx", "mouse_dy")),
        ("camera", ("yaw", "pitch", "zoom"), ("camera_yaw", "camera_pitch", "camera_zoom")),
    ):
        value = msg.get(group, {})
        if not isinstance(value, dict):
            raise invalid(f"{group} must be an object with {', '.join(fields)}")
        unknown = set(value) - set(fields)
        if unknown:
            raise invalid(f"{group} takes {', '.join(fields)}, got {sorted(str(k)[:20] for k in unknown)}")
        for field, name in zip(fields, names, strict=True):
            if field in value:
                setattr(control, name, _number(value[field], f"{group}.{field}"))
    empty = not (set(msg) & {"keys", "mouse", "camera", "move", "pan"})
    return pb.Action() if empty else pb.Action(control=control)


def prompt_update(msg: dict[str, Any]) -> pb.Action:
    """A session.prompt_update -> a PromptAction (at once) or a TransitionAction (over N chunks)."""
    if "prompt" not in msg:
        raise invalid("session.prompt_update needs a prompt")
    text = _str(msg, "prompt")
    chunks = _int(msg, "transition_duration_chunks", DEFAULT_TRANSITION_CHUNKS, 0, MAX_TRANSITION_CHUNKS)
    if chunks == 0:
        return pb.Action(prompt=pb.PromptAction(text=text))
    return pb.Action(transition=pb.TransitionAction(text=text, chunks=chunks))


# ---------------------------------------------------------------------------------------------------
# Server messages
# ---------------------------------------------------------------------------------------------------

# One binary message per frame: this little-endian header, then the encoded frame (JPEG / RGB24 rows
# / an H.264 access unit). Fields: version, encoding (pb.FrameEncoding), flags (bit 0: keyframe),
# header bytes, chunk index, frame index (since the reset), index in the chunk, width, height, a
# reserved u16, the action_seq the frame's chunk applied, and the server's wall clock when the
# frame was encoded, in ms since the Unix epoch (a float64, as JavaScript keeps time).
FRAME_HEADER = struct.Struct("<BBBBIIHHHHId")
HEADER_VERSION = 1
KEYFRAME = 1


def frame_message(f: pb.Frame) -> bytes:
    header = FRAME_HEADER.pack(
        HEADER_VERSION,
        f.encoding,
        KEYFRAME if f.keyframe else 0,
        FRAME_HEADER.size,
        f.chunk_index,
        f.frame_index,
        f.index_in_chunk,
        f.width,
        f.height,
        0,
        f.action_seq,
        f.timestamp_ns / 1e6,
    )
    return header + f.data


def read_frame(message: bytes) -> tuple[dict[str, Any], bytes]:
    """A binary frame message -> (header fields, payload): the clients' side, for tests and benches."""
    (version, encoding, flags, size, chunk, index, in_chunk, width, height, _, seq_, ts) = (
        FRAME_HEADER.unpack_from(message)
    )
    header = {
        "version": version,
        "encoding": ENCODING_NAMES.get(encoding, str(encoding)),
        "keyframe": bool(flags & KEYFRAME),
        "chunk_index": chunk,
        "frame_index": index,
        "index_in_chunk": in_chunk,
        "width": width,
        "height": height,
        "action_seq": seq_,
        "timestamp_ms": ts,
    }
    return header, message[size:]


def timings(t: pb.ChunkTimings) -> dict[str, float]:
    return {"denoise_s": t.denoise_seconds, "decode_s": t.decode_seconds, "encode_s": t.encode_seconds}


def server_info(info: pb.GetServerInfoResponse, limits: dict[str, Any]) -> dict[str, Any]:
    """GetServerInfo's reply as the server.info message (the page shows the model from it)."""
    return {
        "type": "server.info",
        "api_version": info.api_version,
        "server_version": info.server_version,
        "model": {
            "name": info.model.name,
            "parameters": info.model.parameters,
            "sampler": info.model.sampler,
            "steps_per_stage": list(info.model.steps_per_stage),
            "actions": ActionSpace.from_proto(info.model.actions).to_dict(),
            "seam_blend_frames": info.model.seam_blend_frames,
        },
        "default_width": info.default_width,
        "default_height": info.default_height,
        "size_multiple": info.size_multiple,
        "max_width": info.max_width,
        "max_height": info.max_height,
        "fps": info.fps,
        "frames_per_chunk": info.frames_per_chunk or FRAMES_PER_CHUNK,
        "encodings": list(ENCODINGS),
        "modes": list(MODES),
        "max_sessions": info.max_sessions,
        "active_sessions": info.active_sessions,
        "session_idle_timeout_seconds": info.session_idle_timeout_seconds,
        "auth_required": info.auth_required,
        "workers": [
            {"name": w.name, "device": w.device, "ready": w.ready, "sessions": w.sessions}
            for w in info.workers
        ],
        "limits": limits,
    }
