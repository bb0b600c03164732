"""What the client returns, as plain dataclasses with numpy frames, and how helios.v1 messages become
them: `Chunk` (Reset / Step), `StreamFrame` and `StreamEvent` (Stream), `ServerInfo` (the handshake),
`SnapshotInfo`; `FrameDecoder` turns RGB24, JPEG and H.264 frames into (H, W, 3) uint8 RGB.

JPEG and H.264 need PyAV (the `[video]` extra), imported on first use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._proto.helios.v1 import world_pb2 as pb
from .actions import ActionSpace
from .errors import DecodeError
from .video import VIDEO_HINT

ENCODINGS = {
    "rgb24": pb.FRAME_ENCODING_RGB24,
    "jpeg": pb.FRAME_ENCODING_JPEG,
    "h264": pb.FRAME_ENCODING_H264,
}
SELECTIONS = {"all": pb.FRAME_SELECTION_ALL, "last": pb.FRAME_SELECTION_LAST, "none": pb.FRAME_SELECTION_NONE}
STREAM_MODES = {"lockstep": pb.STREAM_MODE_LOCKSTEP, "free_run": pb.STREAM_MODE_FREE_RUN}
EVENT_NAMES = {v: k.removeprefix("SESSION_EVENT_TYPE_").lower() for k, v in pb.SessionEventType.items()}


def _choice(table: dict[str, int], value: str, what: str) -> int:
    try:
        return table[value]
    except KeyError:
        raise ValueError(f"{what} must be one of {sorted(table)}, got {value!r}") from None


def frame_options(encoding: str = "rgb24", selection: str = "all", jpeg_quality: int = 0) -> pb.FrameOptions:
    return pb.FrameOptions(
        encoding=_choice(ENCODINGS, encoding, "encoding"),
        selection=_choice(SELECTIONS, selection, "selection"),
        jpeg_quality=jpeg_quality,
    )


def stream_mode(mode: str) -> int:
    return _choice(STREAM_MODES, mode, "stream mode")


# ---------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------


@dataclass
class Chunk:
    """One chunk of a session: frames (T, H, W, 3) uint8 RGB, T = 33, 1 (selection "last") or 0."""

    session_id: str
    chunk_index: int
    frames: np.ndarray
    frame_indices: tuple[int, ...]  # each frame's index since the session's last reset
    timings: dict[str, float] = field(default_factory=dict)  # seconds (volatile)


@dataclass
class StreamFrame:
    session_id: str
    chunk_index: int
    frame_index: int
    index_in_chunk: int
    image: np.ndarray  # (H, W, 3) uint8 RGB
    action_seq: int
    timestamp_ns: int
    keyframe: bool


@dataclass
class StreamEvent:
    type: str  # started, chunk_done, frames_dropped, action_rejected, closed
    session_id: str
    chunk_index: int
    action_seq: int
    dropped_frames: int = 0
    message: str = ""
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerInfo:
    api_version: str
    server_version: str
    model: str
    parameters: int
    sampler: str
    default_width: int
    default_height: int
    size_multiple: int
    max_width: int
    max_height: int
    encodings: tuple[str, ...]
    frames_per_chunk: int
    fps: int
    max_sessions: int
    max_message_bytes: int
    session_idle_timeout_s: int
    auth_required: bool
    # The structured actions the model understands (Control keys and fields, Move names); None from
    # a server before API 1.1, which does not describe them.
    actions: ActionSpace | None = None
    # Frames at the start of each chunk the server eases from the last frame shown (API 1.2; 0: the
    # model's own frames, and what servers before 1.2 report).
    seam_blend_frames: int = 0

    @classmethod
    def from_proto(cls, m: pb.GetServerInfoResponse) -> ServerInfo:
        names = {v: k for k, v in ENCODINGS.items()}
        return cls(
            api_version=m.api_version,
            server_version=m.server_version,
            model=m.model.name,
            parameters=m.model.parameters,
            sampler=m.model.sampler,
            default_width=m.default_width,
            default_height=m.default_height,
            size_multiple=m.size_multiple,
            max_width=m.max_width,
            max_height=m.max_height,
            encodings=tuple(names.get(e, str(e)) for e in m.encodings),
            frames_per_chunk=m.frames_per_chunk or 33,
            fps=m.fps or 16,
            max_sessions=m.max_sessions,
            max_message_bytes=m.max_message_bytes,
            session_idle_timeout_s=m.session_idle_timeout_seconds,
            auth_required=m.auth_required,
            actions=ActionSpace.from_proto(m.model.actions) if m.model.HasField("actions") else None,
            seam_blend_frames=m.model.seam_blend_frames,
        )


@dataclass(frozen=True)
class Session:
    """A session on the server: its id and frame size. Methods take a Session or its id."""

    session_id: str
    width: int
    height: int

    def __str__(self) -> str:
        return self.session_id


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: str
    size_bytes: int
    sha256: str
    data: bytes = b""  # only with include_data=True


def session_id(session: Session | str) -> str:
    if isinstance(session, Session):
        return session.session_id
    if not isinstance(session, str) or not session:
        raise ValueError(f"a session is a Session or a non-empty id str, got {session!r}")
    return session


def timings(t: pb.ChunkTimings) -> dict[str, float]:
    return {"denoise": t.denoise_seconds, "decode": t.decode_seconds, "encode": t.encode_seconds}


# ---------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------


class FrameDecoder:
    """Decodes frames of one response or stream into (H, W, 3) uint8 RGB. H.264 is a stream: keep one
    decoder per chunk (unary) or per stream, and feed frames in order."""

    def __init__(self) -> None:
        self._h264: Any = None

    def decode(self, frame: pb.Frame) -> np.ndarray:
        h, w = frame.height, frame.width
        if frame.encoding in (pb.FRAME_ENCODING_RGB24, pb.FRAME_ENCODING_UNSPECIFIED):
            if len(frame.data) != h * w * 3:
                raise DecodeError(f"an RGB24 frame of {w}×{h} needs {h * w * 3} bytes, got {len(frame.data)}")
            return np.frombuffer(frame.data, np.uint8).reshape(h, w, 3).copy()
        av = _av()
        if frame.encoding == pb.FRAME_ENCODING_JPEG:
            ctx = av.CodecContext.create("mjpeg", "r")
            return self._one(ctx, frame, av)
        if frame.encoding == pb.FRAME_ENCODING_H264:
            if self._h264 is None:
                if not frame.keyframe:
                    raise DecodeError(
                        f"an H.264 stream must start at a keyframe; frame {frame.frame_index} is not one"
                    )
                self._h264 = av.CodecContext.create("h264", "r")
            return self._one(self._h264, frame, av)
        raise DecodeError(f"unknown frame encoding {frame.encoding}")

    def _one(self, ctx: Any, frame: pb.Frame, av: Any) -> np.ndarray:
        try:
            out = ctx.decode(av.Packet(frame.data))
        except av.error.FFmpegError as exc:
            raise DecodeError(f"frame {frame.frame_index} did not decode: {exc}") from exc
        if len(out) != 1:
            raise DecodeError(f"frame {frame.frame_index} decoded to {len(out)} pictures, expected 1")
        image = out[0].to_ndarray(format="rgb24")
        if image.shape != (frame.height, frame.width, 3):
            raise DecodeError(
                f"frame {frame.frame_index} decoded to {image.shape}, expected {frame.height}×{frame.width}"
            )
        return image


def _av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise DecodeError(
            f"JPEG and H.264 frames need PyAV: {VIDEO_HINT} (or ask for encoding='rgb24')"
        ) from exc
    return av


def chunk_from_proto(c: pb.Chunk, width: int = 0, height: int = 0) -> Chunk:
    decoder = FrameDecoder()
    images = [decoder.decode(f) for f in c.frames]
    if images:
        frames = np.stack(images)
    else:
        frames = np.zeros((0, height, width, 3), np.uint8)
    return Chunk(
        c.session_id, c.chunk_index, frames, tuple(f.frame_index for f in c.frames), timings(c.timings)
    )


def stream_item(msg: pb.StreamResponse, decoder: FrameDecoder) -> StreamFrame | StreamEvent:
    if msg.WhichOneof("kind") == "frame":
        f = msg.frame
        return StreamFrame(
            f.session_id,
            f.chunk_index,
            f.frame_index,
            f.index_in_chunk,
            decoder.decode(f),
            f.action_seq,
            f.timestamp_ns,
            f.keyframe,
        )
    e = msg.event
    return StreamEvent(
        EVENT_NAMES.get(e.type, str(e.type)),
        e.session_id,
        e.chunk_index,
        e.action_seq,
        e.dropped_frames,
        e.message,
        timings(e.timings),
    )


# ---------------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------------


def image_proto(image: Any) -> pb.Image:
    """bytes (a PNG / JPEG file) or an (H, W, 3) uint8 array (sent as raw RGB24)."""
    if isinstance(image, (bytes, bytearray)):
        return pb.Image(data=bytes(image))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"an image is file bytes or an (H, W, 3) uint8 array, got {arr.shape} {arr.dtype}")
    return pb.Image(data=np.ascontiguousarray(arr).tobytes(), width=arr.shape[1], height=arr.shape[0])


def video_proto(video: Any) -> pb.Video:
    """bytes (a video file) or a (T, H, W, 3) uint8 array / a list of frames."""
    if isinstance(video, (bytes, bytearray)):
        return pb.Video(data=bytes(video))
    frames: Iterable[Any] = video
    arr = np.asarray(video) if isinstance(video, np.ndarray) else None
    if arr is not None and (arr.ndim != 4 or arr.shape[-1] != 3):
        raise ValueError(f"a video is file bytes or a (T, H, W, 3) uint8 array, got {arr.shape}")
    return pb.Video(frames=[image_proto(f) for f in frames])
