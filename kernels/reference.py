"""Torch references of the fused kernels: the transformer block's own arithmetic, op for op.

Each function here mirrors `helios_runtime.model.transformer` (spec 3.5, 3.7, 3.10 and 3.12) exactly:
the same casts in the same places, so the rounding a kernel must reproduce is visible in one line.
They are written out again rather than imported so that helios_kernels does not depend on the runtime
package; tests/kernels checks that they still equal the runtime's functions bit for bit.

Shape letters: B batch, N tokens (the first n_hist are history), D width, Hd heads, Dh head width.
Modulation rows (shift, scale, gate) are (B, 2, D) float32: row 0 for history tokens, row 1 for noisy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_segment(x: torch.Tensor, rows: torch.Tensor, n_hist: int, fn) -> torch.Tensor:
    """fn(x segment, its (B, 1, ...) row): row 0 on tokens [0, n_hist), row 1 on the rest."""
    if n_hist == 0:
        return fn(x, rows[:, 1:2])
    return torch.cat([fn(x[:, :n_hist], rows[:, 0:1]), fn(x[:, n_hist:], rows[:, 1:2])], dim=1)


def layer_norm32(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """LayerNorm over D computed on x upcast to float32; float32 result."""
    return F.layer_norm(x.float(), (x.shape[-1],), weight, bias, eps)


def modulate(x32: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, n_hist: int) -> torch.Tensor:
    """x·(1 + scale) + shift in float32, per segment."""
    rows = torch.stack([shift, scale], dim=2)  # (B, 2, 2, D)
    return _per_segment(x32, rows, n_hist, lambda seg, r: seg * (1 + r[:, :, 1]) + r[:, :, 0])


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, n_hist: int) -> torch.Tensor:
    """x + y·gate in float32 (y first rounded to x's dtype), cast back to x's dtype."""
    both = torch.cat([x, y.to(x.dtype)], dim=-1)  # (B, N, 2D): one segment split serves both

    def fn(seg: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        xs, ys = seg.chunk(2, dim=-1)
        return xs.float() + ys.float() * g

    return _per_segment(both, gate, n_hist, fn).type_as(x)


def norm_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, n_hist: int, eps: float
) -> torch.Tensor:
    """The block's `modulate(layer_norm32(x, None, eps), shift, scale, n_hist).to(x.dtype)`."""
    return modulate(layer_norm32(x, None, None, eps), shift, scale, n_hist).to(x.dtype)


def residual(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, n_hist: int, y_start: int = 0
) -> torch.Tensor:
    """x with y added on tokens [y_start, N): gated as `gated_residual`, or (gate None) a plain add
    in x's dtype as the cross-attention residual `noisy + attn2(...)`. y is (B, N - y_start, D)."""
    if gate is None:
        added = x[:, y_start:] + y.to(x.dtype)  # the block adds two tensors of one dtype
    else:
        added = gated_residual(x[:, y_start:], y, gate, max(n_hist - y_start, 0))
    return torch.cat([x[:, :y_start], added], dim=1) if y_start else added


def residual_norm_modulate(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    n_hist: int,
    eps: float,
    y_start: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`residual`, then `norm_modulate` of its result: (new x, modulated norm), both in x's dtype."""
    x = residual(x, y, gate, n_hist, y_start)
    return x, norm_modulate(x, shift, scale, n_hist, eps)


def residual_layer_norm(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    n_hist: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    y_start: int = 0,
    norm_start: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`residual`, then the affine float32 LayerNorm (norm2) of tokens [norm_start, N) of its result,
    cast to x's dtype: (new x (B, N, D), normed (B, N - norm_start, D))."""
    x = residual(x, y, gate, n_hist, y_start)
    return x, layer_norm32(x[:, norm_start:], weight, bias, eps).to(x.dtype)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (B, N, Hd, Dh) by table (B, N, Dh) = [cos | sin], float32."""
    cos, sin = table[:, :, None].chunk(2, dim=-1)  # (B, N, 1, Dh/2) each
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)  # (B, N, Hd, Dh/2) each
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)  # (B, N, Hd, Dh/2, 2)
    return out.flatten(-2).type_as(x)


def scale_history(k: torch.Tensor, head_scale: torch.Tensor | None, n_hist: int) -> torch.Tensor:
    """History keys k[:, :n_hist] (B, N, Hd, Dh) times a float32 per-head (Hd,) or scalar (1,) factor."""
    if head_scale is None or n_hist == 0:
        return k
    scale = head_scale.view(1, 1, -1, 1)
    return torch.cat([(k[:, :n_hist] * scale).to(k.dtype), k[:, n_hist:]], dim=1)


def history_key_scale(param: torch.Tensor) -> torch.Tensor:
    """The factor 1 + 9·sigmoid(s) of `attn1.history_key_scale` (spec 3.10), float32."""
    return 1.0 + 9.0 * torch.sigmoid(param)


def rope(
    x: torch.Tensor, table: torch.Tensor, n_hist: int = 0, head_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """`apply_rope`, then the optional history-key scale."""
    return scale_history(apply_rope(x, table), head_scale, n_hist)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`nn.RMSNorm(D)` on x (B, N, D): with x and weight of one dtype torch 2.13 takes its fused path,
    x·rsqrt(mean(x²) + eps)·weight in float32, rounded once to x's dtype."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def rms_norm_rope(
    x: torch.Tensor,
    weight: torch.Tensor,
    table: torch.Tensor,
    heads: int,
    eps: float,
    n_hist: int = 0,
    head_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """q/k of self-attention: RMSNorm over all D, split into heads, RoPE, history-key scale.
    x (B, N, D) -> (B, N, Hd, Dh) in x's dtype."""
    return rope(rms_norm(x, weight, eps).unflatten(-1, (heads, -1)), table, n_hist, head_scale)


# ---------------------------------------------------------------------------------------------------
# float8 e4m3fn activations (fp8.py): per-token scales, for the FP8 linears of the fast path
# ---------------------------------------------------------------------------------------------------

E4M3_MAX = 448.0  # the largest finite float8 e4m3fn value (the kernels' literal 448.0)
AMAX_FLOOR = 1e-12  # an all-zero row gets this abs-max: its scale stays finite and its bytes zero


def quantize_rows(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows r (..., K), taken in float32 -> (q (..., K) float8_e4m3fn, scale (...) float32): with
    a = max(max|row|, 1e-12), q = row · (448 / a) rounded to nearest even, saturated at ±448, and
    scale = a / 448. Both divisions are tensor by tensor: a CUDA division by a Python scalar
    multiplies by its reciprocal instead, one rounding off."""
    r = r.float()
    amax = r.abs().amax(dim=-1).clamp_min(AMAX_FLOOR)
    limit = torch.full_like(amax, E4M3_MAX)
    q = (r * (limit / amax).unsqueeze(-1)).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, amax / limit


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU (tanh approximation) of x in float32, as the FFN computes it."""
    return F.gelu(x.float(), approximate="tanh")


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q · scale in float32: what an FP8 GEMM multiplies."""
    return q.float() * scale.unsqueeze(-1)


def norm_modulate_fp8(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, n_hist: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`norm_modulate` with its float32 result quantised per token instead of cast to x's dtype."""
    return quantize_rows(modulate(layer_norm32(x, None, None, eps), shift, scale, n_hist))


def residual_norm_modulate_fp8(
    x, y, gate, shift, scale, n_hist: int, eps: float, y_start: int = 0
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """`residual_norm_modulate` with the norm quantised per token."""
    x = residual(x, y, gate, n_hist, y_start)
    return x, norm_modulate_fp8(x, shift, scale, n_hist, eps)


def residual_layer_norm_fp8(
    x, y, gate, n_hist: int, weight, bias, eps: float, y_start: int = 0, norm_start: int = 0
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """`residual_layer_norm` with the normed rows quantised per token."""
    x = residual(x, y, gate, n_hist, y_start)
    return x, quantize_rows(layer_norm32(x[:, norm_start:], weight, bias, eps))
