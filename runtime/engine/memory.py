"""The multi-term memory of one session, in fixed buffers (spec 3.3, 3.5 and 5.1).

A session remembers the 19 most recent latent frames (long 16, mid 2, newest 1, oldest first) and
the first-frame anchor — nothing else, however long it runs. Pushing a chunk shifts the window in
place; the buffers are allocated once at reset. Latents are in the model's normalised space,
float32, with a batch axis of 1 so that sessions stack into a batch.

Shapes: C latent channels (16), H/W latent height/width (48×80 at 384×640).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..chunk import LATENT_FRAMES

HISTORY_SIZES = (16, 2, 1)  # long, mid, newest; the released pipelines' default
HISTORY_FRAMES = sum(HISTORY_SIZES)

# Frame positions of one chunk (spec 3.5): anchor 0, long 1..16, mid 17..18, newest 19, noisy 20..28.
# The same for every chunk ("relative" RoPE), so they are constants.
_POSITIONS = torch.arange(1 + HISTORY_FRAMES + LATENT_FRAMES)
_ANCHOR, _LONG, _MID, _NEWEST, _NOISY = _POSITIONS.split([1, *HISTORY_SIZES, LATENT_FRAMES])


def frame_indices(batch: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """The four frame-index inputs of the transformer for a batch of chunks."""

    def rows(idx: torch.Tensor) -> torch.Tensor:
        return idx.to(device)[None].expand(batch, -1)

    return {
        "indices_hidden_states": rows(_NOISY),
        "indices_latents_history_short": rows(torch.cat([_ANCHOR, _NEWEST])),
        "indices_latents_history_mid": rows(_MID),
        "indices_latents_history_long": rows(_LONG),
    }


@dataclass
class MultiTermMemory:
    """history (1, C, 19, H, W) oldest first; anchor (1, C, 1, H, W) valid when has_anchor."""

    history: torch.Tensor
    anchor: torch.Tensor
    has_anchor: bool = False

    @classmethod
    def empty(cls, channels: int, height: int, width: int, device: torch.device | str) -> MultiTermMemory:
        """The T2V start: zero history and no anchor yet (zeros stand in for it, spec 5.1)."""
        history = torch.zeros(1, channels, HISTORY_FRAMES, height, width, device=device)
        anchor = torch.zeros(1, channels, 1, height, width, device=device)
        return cls(history=history, anchor=anchor, has_anchor=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the latents this memory holds."""
        _, C, _, H, W = self.history.shape
        return C, H, W

    def inputs(self) -> dict[str, torch.Tensor]:
        """The three history-latent inputs of the transformer (batch 1), as views where possible."""
        long_, mid, newest = self.history.split(HISTORY_SIZES, dim=2)
        short = torch.cat([self.anchor, newest], dim=2)  # (1, C, 2, H, W): [anchor, newest]
        return {"latents_history_short": short, "latents_history_mid": mid, "latents_history_long": long_}

    def set_anchor(self, latent: torch.Tensor) -> None:
        """latent (1, C, 1, H, W) becomes the first-frame anchor."""
        self.anchor.copy_(latent)
        self.has_anchor = True

    def load_history(self, latents: torch.Tensor) -> None:
        """Fill the window with the newest frames of latents (1, C, T, H, W), zero-padding in front."""
        T = min(latents.shape[2], HISTORY_FRAMES)
        self.history.zero_()
        self.history[:, :, HISTORY_FRAMES - T :].copy_(latents[:, :, latents.shape[2] - T :])

    def push(self, chunk: torch.Tensor) -> None:
        """Append a finished chunk (1, C, 9, H, W) and drop the oldest frames, in place.

        The first chunk of a session without an anchor (text-to-video) supplies it: its first frame.
        """
        if not self.has_anchor:
            self.set_anchor(chunk[:, :, :1])
        n = chunk.shape[2]
        if n >= HISTORY_FRAMES:
            self.history.copy_(chunk[:, :, n - HISTORY_FRAMES :])
            return
        # One small temporary per chunk (not per denoising step): shift left by n, write the new frames.
        self.history.copy_(torch.cat([self.history[:, :, n:], chunk.to(self.history.dtype)], dim=2))

    def clone(self) -> MultiTermMemory:
        return MultiTermMemory(self.history.clone(), self.anchor.clone(), self.has_anchor)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.history, self.anchor))
