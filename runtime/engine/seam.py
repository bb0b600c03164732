"""Smoothing the step at a chunk boundary: an engine option, off by default (parity).

Each chunk is decoded from an empty decoder cache, as the released Helios pipeline does
(docs/engine.md, "At a chunk boundary"): its first frame comes out of the causal VAE's single-frame
path and frames 1-4 out of the temporal upsamplers' first run. A VAE that draws those frames a little
off (the toy's: docs/eval.md) makes the stream step at every boundary, while the frames inside a chunk
change smoothly. With `frames = n > 0` the engine spreads the difference between the last frame it
showed and the new chunk's first frame over the chunk's first n frames:

    d = last_shown - chunk[0]
    chunk'[j] = chunk[j] + (1 - (j + 1) / (n + 1)) · d        for j < n

so the first frame moves 1/(n + 1) of the way from the last frame shown, and the correction fades out
linearly by frame n. Pixels only: the latents, the memory and every later chunk are the model's own;
only what is shown changes. It needs the last frame shown, which the session keeps (`Session.
last_frame`, in its snapshot and its fork) while the option is on. A model turns it on in its
model_index.json ("seam_blend_frames": n; the toy world ships with 2, chosen on the validation seeds;
`WorldEngine(seam_blend=)` overrides it); the released Helios checkpoints leave it off.
"""

from __future__ import annotations

import numpy as np
import torch

MAX_FRAMES = 32  # a chunk has 33 frames; the blend ends inside it


def check_frames(n: object, what: str = "seam blend frames") -> int:
    """`n` as the number of frames to blend, or ValueError."""
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_FRAMES:
        raise ValueError(f"{what} must be an int in [0, {MAX_FRAMES}], got {n!r}")
    return n


def weight(j: int, n: int) -> float:
    """The share of the boundary difference frame j of a chunk gets."""
    return 1.0 - (j + 1) / (n + 1) if j < n else 0.0


class SeamBlend:
    """The blend of one chunk, applied frame by frame as they are decoded (streaming: frame 0 fixes
    the difference, later frames need only it). `previous` is the last frame shown, (H, W, 3) uint8."""

    def __init__(self, frames: int, previous: torch.Tensor):
        self.frames = check_frames(frames)
        self.previous = previous
        self._delta: torch.Tensor | None = None

    def __call__(self, j: int, frame: torch.Tensor) -> torch.Tensor:
        """Frame j of the chunk (H, W, 3) uint8 as it is to be shown."""
        if j == 0:
            if frame.shape != self.previous.shape:
                raise ValueError(
                    f"the last frame shown is {tuple(self.previous.shape)}, the chunk's {tuple(frame.shape)}"
                )
            self._delta = self.previous.to(frame.device, torch.float32) - frame.float()
        if j >= self.frames:
            return frame
        if self._delta is None:
            raise ValueError("a seam blend sees the chunk's frame 0 first")
        out = frame.float() + weight(j, self.frames) * self._delta
        return out.round().clamp(0, 255).to(torch.uint8)


def blend_chunk(frames: np.ndarray, previous: np.ndarray | None, n: int) -> np.ndarray:
    """A whole chunk (T, H, W, 3) uint8 after the blend, given the last frame shown before it (None:
    nothing shown yet, the chunk unchanged). For offline use (the drift benchmark's VAE round trip)."""
    if previous is None or check_frames(n) == 0:
        return frames
    blend = SeamBlend(n, torch.from_numpy(np.ascontiguousarray(previous)))
    x = torch.from_numpy(np.ascontiguousarray(frames))
    return torch.stack([blend(j, x[j]) for j in range(x.shape[0])]).numpy()
