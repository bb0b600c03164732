"""Frame encoders of the front: raw RGB24, JPEG and H.264 (PyAV), all from (H, W, 3) uint8 RGB;
`FrameEncoder` picks one per request or stream from its FrameOptions. Also the decoders of a
Reset's image / video input.

JPEG frames are independent; H.264 is a stateful stream (`H264Encoder`): libx264 with the
ultrafast preset and zerolatency tuning gives one Annex-B access unit per frame with no B-frame
delay, and `keyframe_every` frames start with an IDR frame so a late joiner can begin there.
"""

from __future__ import annotations

import asyncio
import fractions

import av
import numpy as np

from helios_sdk._proto.helios.v1 import world_pb2 as pb

from ...chunk import FPS, FRAMES_PER_CHUNK
from .codec import invalid

DEFAULT_JPEG_QUALITY = 90


def encode_jpeg(frame: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """One baseline JPEG (4:2:0) of an (H, W, 3) uint8 RGB frame."""
    height, width, _ = frame.shape
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuvj420p"
    ctx.time_base = fractions.Fraction(1, FPS)
    # FFmpeg's mjpeg takes quality as qscale 2 (best) .. 31; map 1..100 onto it.
    qscale = max(2, min(31, round(2 + (100 - quality) * 29 / 99)))
    ctx.options = {"qmin": str(qscale), "qmax": str(qscale)}
    packets = ctx.encode(
        av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(format="yuvj420p")
    )
    packets += ctx.encode(None)
    return b"".join(bytes(p) for p in packets)


class H264Encoder:
    """Annex-B H.264 access units, one per frame; an IDR frame every `keyframe_every` frames."""

    def __init__(self, width: int, height: int, fps: int = FPS, keyframe_every: int = FRAMES_PER_CHUNK):
        if width % 2 or height % 2:
            raise ValueError(f"H.264 needs even frame sizes, got {width}×{height}")
        self.ctx = av.CodecContext.create("libx264", "w")
        self.ctx.width, self.ctx.height = width, height
        self.ctx.pix_fmt = "yuv420p"
        self.ctx.time_base = fractions.Fraction(1, fps)
        self.ctx.framerate = fractions.Fraction(fps, 1)
        self.ctx.gop_size = keyframe_every
        self.ctx.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "x264-params": f"keyint={keyframe_every}:min-keyint={keyframe_every}:scenecut=0:repeat-headers=1",
        }
        self.pts = 0

    def encode(self, frame: np.ndarray) -> tuple[bytes, bool]:
        """(data, keyframe) for one (H, W, 3) uint8 RGB frame."""
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(
            format="yuv420p"
        )
        vf.pts = self.pts
        self.pts += 1
        packets = self.ctx.encode(vf)
        return b"".join(bytes(p) for p in packets), any(p.is_keyframe for p in packets)


def decode_image(data: bytes, width: int = 0, height: int = 0) -> np.ndarray:
    """A PNG / JPEG file's bytes, or raw RGB24 (width and height given) -> (H, W, 3) uint8.

    Raises ValueError for data that is neither.
    """
    if width and height:
        if len(data) != width * height * 3:
            raise ValueError(
                f"raw RGB24 image of {width}×{height} needs {width * height * 3} bytes, got {len(data)}"
            )
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()
    frames = decode_video(data, max_frames=1)
    return frames[0]


def decode_video(data: bytes, max_frames: int | None = None) -> np.ndarray:
    """An image or video file's bytes -> (T, H, W, 3) uint8; ValueError when FFmpeg cannot read it."""
    import io

    if not data:
        raise ValueError("the image / video data is empty")
    frames = []
    try:
        with av.open(io.BytesIO(data)) as container:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, IndexError, ValueError) as exc:
        raise ValueError(f"undecodable image or video data ({len(data)} bytes): {exc}") from exc
    if not frames:
        raise ValueError(f"the data ({len(data)} bytes) holds no video frames")
    return np.stack(frames)


class FrameEncoder:
    """Encodes a session's frames for one request or one stream (H.264 keeps state)."""

    def __init__(self, options: pb.FrameOptions):
        self.encoding = options.encoding or pb.FRAME_ENCODING_RGB24
        if self.encoding not in (pb.FRAME_ENCODING_RGB24, pb.FRAME_ENCODING_JPEG, pb.FRAME_ENCODING_H264):
            raise invalid(f"unknown frame encoding {options.encoding}")
        if options.jpeg_quality > 100:
            raise invalid(f"jpeg_quality must be 1..100 (0: default), got {options.jpeg_quality}")
        self.quality = options.jpeg_quality or DEFAULT_JPEG_QUALITY
        self.h264: H264Encoder | None = None

    async def encode_raw(self, raw: bytes, width: int, height: int) -> tuple[bytes, bool]:
        """A worker's RGB24 bytes -> (payload, keyframe). RGB24 passes through with no copy and no
        thread hop; JPEG / H.264 encode in a thread so the event loop never waits on them."""
        if self.encoding == pb.FRAME_ENCODING_RGB24:
            return raw, True
        frame = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
        return await asyncio.to_thread(self.encode, frame)

    def encode(self, frame: np.ndarray) -> tuple[bytes, bool]:
        if self.encoding == pb.FRAME_ENCODING_JPEG:
            return encode_jpeg(frame, self.quality), True
        if self.encoding == pb.FRAME_ENCODING_H264:
            if self.h264 is None:
                self.h264 = H264Encoder(frame.shape[1], frame.shape[0], keyframe_every=FRAMES_PER_CHUNK)
            return self.h264.encode(frame)
        return frame.tobytes(), True

    @property
    def label(self) -> str:
        return pb.FrameEncoding.Name(self.encoding).removeprefix("FRAME_ENCODING_").lower()
