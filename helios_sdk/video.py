"""Reading and writing video files with PyAV (the `[video]` extra): frames are numpy uint8 RGB.

`Mp4Writer` appends frames as they arrive (H.264, yuv420p, a file any player opens);
`read_frames` decodes an image or a video file into (T, H, W, 3) uint8.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

VIDEO_HINT = "pip install 'helios-world-sdk[video]'"


def _av() -> ModuleType:
    try:
        import av
    except ImportError as exc:
        raise ImportError(f"video files need PyAV: {VIDEO_HINT}") from exc
    return av


class Mp4Writer:
    """H.264 mp4 writer. Width and height must be even (yuv420p); frames are (H, W, 3) uint8 RGB."""

    def __init__(self, path: str | Path, fps: int = 16, *, crf: int = 18):
        if not isinstance(fps, int) or fps <= 0:
            raise ValueError(f"fps must be a positive int, got {fps!r}")
        self.path = Path(path)
        self.fps = fps
        self.crf = crf
        self.frames_written = 0
        self._container: Any = None
        self._stream: Any = None

    def _open(self, height: int, width: int) -> None:
        if height % 2 or width % 2:
            raise ValueError(f"H.264 needs even frame sizes, got {height}×{width}")
        av = _av()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=self.fps)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(self.crf), "preset": "veryfast"}

    def write(self, frames: np.ndarray) -> None:
        """Append one frame (H, W, 3) or several (T, H, W, 3), uint8 RGB."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be (T, H, W, 3) or (H, W, 3) uint8, got {frames.shape} {frames.dtype}"
            )
        if self._container is None:
            self._open(frames.shape[1], frames.shape[2])
        elif (frames.shape[1], frames.shape[2]) != (self._stream.height, self._stream.width):
            raise ValueError(
                f"frame size {frames.shape[1]}×{frames.shape[2]} differs from the video's "
                f"{self._stream.height}×{self._stream.width}"
            )
        av = _av()
        for frame in frames:
            packet = self._stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            )
            self._container.mux(packet)
            self.frames_written += 1

    def close(self) -> None:
        if self._container is not None:
            self._container.mux(self._stream.encode())  # flush the encoder
            self._container.close()
            self._container = None

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_frames(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """Decode an image (png, jpg, …) or a video file into (T, H, W, 3) uint8 RGB."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    av = _av()
    try:
        with av.open(str(path)) as container:
            frames = []
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, IndexError) as exc:
        raise ValueError(f"{str(path)!r} is not a readable image or video: {exc}") from exc
    if not frames:
        raise ValueError(f"{str(path)!r} holds no video frames")
    return np.stack(frames)
