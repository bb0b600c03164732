"""The resolution pyramid of Mid and Distilled (spec 5.5): noise downsampling, the ×2 upsample and
the block-noise renoise between stages, and the chunk's noise draw.

Shape letters: B batch, C latent channels (16), T latent frames, H/W latent height/width of the
current stage; blocks are the 2×2 spatial patches of a stage, (H/2)·(W/2) of them per frame.

Block noise. Within each 2×2 block the four values (row-major) have unit variance and pairwise
correlation −γ: Σ = (1+γ)·I − γ·11ᵀ, which for γ = 1/3 is singular (each block sums to zero). The
reference factorises Σ + 1e-8·I with a float32 Cholesky at run time; the 1e-8 is below float32
resolution, so its last pivot is rounding noise (ε ≈ 4.2e-4 on this project's CPU build, 4.07e-4 on
an H100) or the factorisation fails. `block_noise_factor` is the exact factor in closed form instead
(pitfall 7); with the same z ~ N(0, I₄) draws the result differs from the reference by ε·z₄ in the
fourth value of each block only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

BLOCK = 2  # the pyramid's spatial factor and the block-noise block side (patch 1×2×2)


def _planes(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C·T, H, W): every frame of every channel as an image plane."""
    B, C, T, H, W = x.shape
    return x.reshape(B, C * T, H, W)


def downsample_noise(noise: torch.Tensor, times: int) -> torch.Tensor:
    """Halve H and W `times` times: bilinear resize of every frame, ×2 to keep unit variance.

    (B, C, T, H, W) -> (B, C, T, H/2^times, W/2^times). This is the pipeline's
    `F.interpolate(..., mode="bilinear") * 2` (align_corners=False): at exactly one half each output
    is the mean of a 2×2 block.
    """
    B, C, T, H, W = noise.shape
    x = _planes(noise)
    for _ in range(times):
        H, W = H // BLOCK, W // BLOCK
        x = F.interpolate(x, size=(H, W), mode="bilinear") * 2
    return x.reshape(B, C, T, H, W)


def upsample_nearest(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, T, 2H, 2W), every value filling a 2×2 block."""
    B, C, T, H, W = x.shape
    up = F.interpolate(_planes(x), size=(BLOCK * H, BLOCK * W), mode="nearest")
    return up.reshape(B, C, T, BLOCK * H, BLOCK * W)


@lru_cache(maxsize=8)
def _block_noise_factor_cpu(gamma: float) -> torch.Tensor:
    rho = -gamma  # the correlation of the equicorrelated Σ (unit diagonal)
    n = BLOCK * BLOCK
    # Cholesky of an equicorrelation matrix: pivot j is d_j = (1 − ρ)(1 + jρ)/(1 + (j − 1)ρ) and
    # every entry below it is ρ(1 − ρ)/((1 + (j − 1)ρ)·√d_j). For γ = 1/3 the last pivot is exactly 0.
    L = torch.zeros(n, n, dtype=torch.float64)
    for j in range(n):
        pivot = (1 - rho) * (1 + j * rho) / (1 + (j - 1) * rho)
        root = math.sqrt(max(pivot, 0.0))
        L[j, j] = root
        if root > 0:
            L[j + 1 :, j] = rho * (1 - rho) / ((1 + (j - 1) * rho) * root)
    return L.to(torch.float32)


def block_noise_factor(gamma: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The exact lower-triangular L (4, 4) float32 with L·Lᵀ = (1+γ)·I − γ·11ᵀ (spec 5.5 step 4)."""
    return _block_noise_factor_cpu(float(gamma)).to(device)


def block_noise(
    shape: tuple[int, int, int, int, int],
    factor: torch.Tensor,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    device: torch.device | str,
) -> torch.Tensor:
    """Correlated 2×2-block noise of `shape` (B, C, T, H, W), float32 on `device`.

    Draws z = randn(B·C·T·(H/2)·(W/2), 4) with `generator` on the generator's device, blocks ordered
    (B, C, T, block row, block column), exactly as the reference does, then n = z·Lᵀ. A sequence of
    B generators draws each batch row from its own generator (sessions batched by the engine get
    the noise they would get alone).
    """
    B, C, T, H, W = shape
    per_row = C * T * (H // BLOCK) * (W // BLOCK)
    if isinstance(generator, Sequence):
        if len(generator) != B:
            raise ValueError(f"block_noise got {len(generator)} generators for a batch of {B}")
        z = torch.cat(
            [torch.randn(per_row, BLOCK * BLOCK, generator=g, device=g.device).to(device) for g in generator]
        )
    else:
        draw_device = generator.device if generator is not None else device
        z = torch.randn(B * per_row, BLOCK * BLOCK, generator=generator, device=draw_device).to(device)
    noise = (z @ factor.T).view(B, C, T, H // BLOCK, W // BLOCK, BLOCK, BLOCK)  # (..., row in, col in)
    return noise.permute(0, 1, 2, 3, 5, 4, 6).reshape(B, C, T, H, W)


def renoise(upsampled: torch.Tensor, noise: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Entry tensor of stage s > 0: α·up + β·block_noise (spec 5.5 step 3)."""
    return alpha * upsampled + beta * noise


def chunk_noise(
    shape: tuple[int, int, int, int, int], generator: torch.Generator | None, device: torch.device | str
) -> torch.Tensor:
    """The chunk's full-resolution noise (B, C, T, H, W), float32: the first draw of every chunk.

    Drawn on the generator's device and moved, like diffusers' `randn_tensor` with one generator.
    """
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32).to(device)
