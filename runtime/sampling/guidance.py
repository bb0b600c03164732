"""Classifier-free guidance and CFG-Zero* (spec 5.9), as pure functions of the two velocities.

v_c: the velocity with the prompt, v_u: with the negative prompt (same latents, history, timestep),
both (B, C, T, H, W). Guidance is active only when the scale is > 1.
"""

from __future__ import annotations

import torch


def cfg(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """v = v_u + w·(v_c − v_u) (Base)."""
    return v_uncond + scale * (v_cond - v_uncond)


def cfg_zero_star_scale(v_cond: torch.Tensor, v_uncond: torch.Tensor) -> torch.Tensor:
    """Per-sample s* = ⟨v_c, v_u⟩ / (‖v_u‖² + 1e-8), in float32 -> (B, 1)."""
    B = v_cond.shape[0]
    cond = v_cond.reshape(B, -1).float()  # (B, C·T·H·W)
    uncond = v_uncond.reshape(B, -1).float()
    dot = torch.sum(cond * uncond, dim=1, keepdim=True)
    return dot / (torch.sum(uncond**2, dim=1, keepdim=True) + 1e-8)


def cfg_zero_star(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """v = s*·v_u + w·(v_c − s*·v_u), s* cast to the velocities' dtype (Mid, `is_cfg_zero_star`)."""
    s = cfg_zero_star_scale(v_cond, v_uncond)
    s = s.view(v_cond.shape[0], *([1] * (v_cond.dim() - 1))).to(v_cond.dtype)  # (B, 1, 1, 1, 1)
    projected = v_uncond * s
    return projected + scale * (v_cond - projected)


def zero_init_steps(zero_steps: int) -> int:
    """Steps of pyramid stage 0 whose velocity is zeroed: indices 0..zero_steps inclusive (pitfall 9)."""
    return zero_steps + 1
