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
import struct
from dataclasses import dataclass

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


@dataclass(frozen=True)
class InputLimits:
    """What a Reset's image or video may cost, checked before (and while) decoding.

    A few kilobytes of PNG can declare 8000×8000 pixels and a small mp4 hundreds of frames, so the
    byte size alone bounds nothing: the dimensions are read from the file's header and refused
    before any pixel is decoded, and a video stops decoding at its frame limit."""

    max_side: int = 4096  # pixels, width or height of one input frame
    max_frames: int = 4 * FRAMES_PER_CHUNK  # the engine uses the last 3 windows of 33 (19 latents)
    max_pixel_bytes: int = 256 << 20  # T·H·W·3 of the decoded input

    def check_frame(self, width: int, height: int, what: str = "image") -> None:
        if not (0 < width <= self.max_side and 0 < height <= self.max_side):
            raise ValueError(
                f"the {what} is {width}×{height} pixels; the limit is {self.max_side} on each side"
            )

    def check_total(self, frames: int, width: int, height: int) -> None:
        if frames > self.max_frames:
            raise ValueError(
                f"the video has more than {self.max_frames} frames; send at most the last "
                f"{self.max_frames} (the engine's memory holds no more)"
            )
        if frames * width * height * 3 > self.max_pixel_bytes:
            raise ValueError(
                f"the video decodes to {frames}×{width}×{height}×3 bytes, over the "
                f"{self.max_pixel_bytes >> 20} MiB input limit"
            )


DEFAULT_LIMITS = InputLimits()


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, GIF, BMP or WebP header, without decoding; None when the
    data is none of these (a video container, or not an image at all)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if kind == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if kind == b"VP8X":
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
        return None
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): the frame's size is there.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError("malformed JPEG: expected a marker")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF and i + 9 <= len(data):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        i += 2 + length
    raise ValueError("malformed JPEG: no frame header")


def decode_image(
    data: bytes, width: int = 0, height: int = 0, limits: InputLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """A PNG / JPEG (GIF, BMP, WebP) file's bytes, or raw RGB24 (width and height given) -> (H, W, 3)
    uint8. The size is checked against `limits` from the header, before decoding.

    Raises ValueError for data that is neither, or too large.
    """
    if width or height:
        if not (width and height):
            raise ValueError(f"raw RGB24 needs both width and height, got {width}×{height}")
        limits.check_frame(width, height)
        if len(data) != width * height * 3:
            raise ValueError(
                f"raw RGB24 image of {width}×{height} needs {width * height * 3} bytes, got {len(data)}"
            )
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()
    size = image_size(data)
    if size is None:
        raise ValueError(
            f"the image data ({len(data)} bytes) is not a PNG, JPEG, GIF, BMP or WebP file "
            "(or raw RGB24 with width and height)"
        )
    limits.check_frame(*size)
    return decode_video(data, max_frames=1, limits=limits)[0]


def decode_video(
    data: bytes, max_frames: int | None = None, limits: InputLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """An image or video file's bytes -> (T, H, W, 3) uint8; ValueError when FFmpeg cannot read it
    or it is over `limits` (the frame size from the header, the frame count while decoding)."""
    import io

    if not data:
        raise ValueError("the image / video data is empty")
    size = image_size(data)
    if size is not None:  # an image file read as a one-frame video: its header says its size
        limits.check_frame(*size)
    frames: list[np.ndarray] = []
    try:
        # A small probe: FFmpeg decodes frames while probing when a header lacks parameters.
        with av.open(io.BytesIO(data), options={"probesize": "65536", "analyzeduration": "0"}) as container:
            if not container.streams.video:
                raise ValueError(f"the data ({len(data)} bytes) holds no video stream")
            stream = container.streams.video[0]
            if stream.codec_context.width and stream.codec_context.height:  # 0: not in the header
                limits.check_frame(stream.codec_context.width, stream.codec_context.height, "video")
            for frame in container.decode(stream):
                limits.check_frame(frame.width, frame.height, "video")
                limits.check_total(len(frames) + 1, frame.width, frame.height)
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, IndexError) as exc:
        raise ValueError(f"undecodable image or video data ({len(data)} bytes): {exc}") from exc
    if not frames:
        raise ValueError(f"the data ({len(data)} bytes) holds no video frames")
    if len({f.shape for f in frames}) != 1:
        raise ValueError("the video's frames differ in size")
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
