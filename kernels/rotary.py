"""Fused q/k RMSNorm + rotary embedding + history-key scale of self-attention (spec 3.5, 3.7, 3.10).

The block computes `apply_rope(heads(norm_q(to_q(h))), rope)` for q and the same for k, then multiplies
the history keys by a per-head factor: in eager torch that is an RMSNorm kernel, the head split, half
a dozen elementwise kernels over (B, N, Hd, Dh/2) halves and a concatenation. Here one program per
token row reads the D channels of to_q's output once, normalises them over all heads, rotates every
channel pair (2i, 2i+1) of each head by the token's [cos | sin] table, scales history keys, and
writes (B, N, Hd, Dh) once.

Numerics follow `reference.py`: the RMSNorm result is rounded to x's dtype before the rotation and the
rotation result again before the history scale, as the eager chain stores each; the rotation is float32
against the float32 table, products and differences rounded separately (no FMA).

Shape letters: B batch, N tokens (the first n_hist are history), D = Hd·Dh width, Hd heads,
Dh head width; the table is (B or 1, N, Dh) float32 with the Dh/2 cosines first, then the sines.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import (
    LAUNCH,
    check_device,
    check_eps,
    check_float,
    check_rows,
    check_split,
    row_block,
    row_warps,
)
from ._rounding import cast_to, round_as


@triton.jit(do_not_specialize=["n_hist"])
def _rms_norm_rope_kernel(
    x_ptr,
    weight_ptr,
    table_ptr,
    head_scale_ptr,
    out_ptr,
    D,
    DH,
    n_hist,
    eps,
    s_xb,
    s_xn,
    s_tb,
    s_tn,
    s_hs,
    s_ob,
    s_on,
    NORM: tl.constexpr,
    ROPE: tl.constexpr,
    HEAD_SCALE: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One token row of D = Hd·DH channels: optional RMSNorm over the row, optional RoPE of every
    head, optional history-key scale on tokens < n_hist."""
    n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)  # int64 offsets: B·N·D passes 2^31 at large batches
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    dtype = x_ptr.dtype.element_ty

    x = tl.load(x_ptr + b * s_xb + n * s_xn + cols, mask=mask, other=0.0).to(tl.float32)
    if NORM:
        w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        eps32 = tl.cast(eps, tl.float32)  # a float64 scalar when traced by torch.compile
        rstd = 1.0 / tl.sqrt_rn(tl.sum(x * x, axis=0) / D + eps32)
        x = round_as(x * rstd * w, dtype)  # torch's RMSNorm output, stored in x's dtype
    if ROPE:
        half = DH // 2
        pairs = tl.arange(0, BLOCK_D // 2)
        i = pairs % half  # the pair's index inside its head: every head shares the token's angles
        row = table_ptr + b * s_tb + n * s_tn
        cos = tl.load(row + i, mask=pairs < D // 2, other=0.0)
        sin = tl.load(row + half + i, mask=pairs < D // 2, other=0.0)
        a, c = tl.split(tl.reshape(x, (BLOCK_D // 2, 2)))  # channels 2i and 2i+1
        x = round_as(tl.reshape(tl.join(a * cos - c * sin, a * sin + c * cos), (BLOCK_D,)), dtype)
    if HEAD_SCALE:
        if n < n_hist:
            s = tl.load(head_scale_ptr + (cols // DH) * s_hs, mask=mask, other=1.0)
            x = x * s
    tl.store(out_ptr + b * s_ob + n * s_on + cols, cast_to(x, out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------
# Wrappers
# ---------------------------------------------------------------------------------------------------


def _check_table(table: torch.Tensor, batch: int, tokens: int, head_dim: int) -> tuple[int, int]:
    shape = tuple(table.shape) if isinstance(table, torch.Tensor) else None
    if shape is None or len(shape) != 3 or shape[0] not in (1, batch) or shape[1:] != (tokens, head_dim):
        got = shape if shape is not None else type(table).__name__
        raise ValueError(
            f"table must have shape ({batch}, {tokens}, {head_dim}) ([cos | sin] per token), got {got}"
        )
    if table.dtype != torch.float32:
        raise ValueError(f"table must be float32 (RoPE tables stay float32, spec 3.5), got {table.dtype}")
    if table.stride(2) != 1:
        raise ValueError(f"table must be contiguous over its last axis, got strides {table.stride()}")
    return (table.stride(0) if shape[0] > 1 else 0), table.stride(1)


def _check_head_scale(head_scale: torch.Tensor | None, heads: int) -> int:
    """A float32 factor per head (Hd,) or one for all (1,); returns its stride (0 for one)."""
    if head_scale is None:
        return 0
    if not isinstance(head_scale, torch.Tensor) or tuple(head_scale.shape) not in ((heads,), (1,)):
        got = tuple(head_scale.shape) if isinstance(head_scale, torch.Tensor) else type(head_scale).__name__
        raise ValueError(f"head_scale must have shape ({heads},) or (1,), got {got}")
    if head_scale.dtype != torch.float32:
        raise ValueError(
            f"head_scale must be float32 (history_key_scale stays float32), got {head_scale.dtype}"
        )
    return head_scale.stride(0) if heads > 1 and head_scale.shape[0] > 1 else 0


def _launch(
    x: torch.Tensor,
    out: torch.Tensor,
    strides_x: tuple[int, int],
    heads: int,
    D: int,
    *,
    weight: torch.Tensor | None = None,
    table: torch.Tensor | None = None,
    table_strides: tuple[int, int] = (0, 0),
    head_scale: torch.Tensor | None = None,
    head_scale_stride: int = 0,
    n_hist: int = 0,
    eps: float = 1e-6,
) -> None:
    B, N = out.shape[:2]
    if B == 0 or N == 0 or D == 0:
        return
    block = row_block(D)
    _rms_norm_rope_kernel[(N, B)](
        x,
        x if weight is None else weight,
        x if table is None else table,
        x if head_scale is None else head_scale,
        out,
        D,
        D // heads,
        n_hist,
        eps,
        *strides_x,
        *table_strides,
        head_scale_stride,
        out.stride(0),
        out.stride(1),
        NORM=weight is not None,
        ROPE=table is not None,
        HEAD_SCALE=head_scale is not None and n_hist > 0,
        BLOCK_D=block,
        # Measured best on an H100 at D = 5120: the norm alone over few warps, with RoPE over more.
        num_warps=row_warps(block, 32 if table is not None else 64),
        **LAUNCH,
    )


def _check_weight(weight: torch.Tensor, x: torch.Tensor) -> None:
    D = x.shape[-1]
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (D,):
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must have shape ({D},), got {got}")
    if weight.dtype != x.dtype:
        # torch's RMSNorm rounds once only when the two dtypes agree (its fused path); norm_q and
        # norm_k weights are in the compute dtype, so that is the path the kernel reproduces.
        raise ValueError(f"weight must have x's dtype {x.dtype} (as norm_q/norm_k), got {weight.dtype}")
    if D > 1 and weight.stride(0) != 1:
        raise ValueError("weight must be contiguous")


def rms_norm_rope(
    x: torch.Tensor,
    weight: torch.Tensor,
    table: torch.Tensor | None,
    heads: int,
    eps: float,
    *,
    n_hist: int = 0,
    head_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """RMSNorm over all D channels, split into heads, RoPE, then the optional history-key scale.

    x (B, N, D) (to_q / to_k output); weight (D,) in x's dtype; table (B or 1, N, Dh) float32
    [cos | sin], or None for the norm and head split only (cross-attention); head_scale (Hd,) or (1,)
    float32 multiplies tokens [0, n_hist), i.e. the factor 1 + 9·sigmoid(history_key_scale).
    Returns (B, N, Hd, Dh) in x's dtype.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"rms_norm_rope: x must be (B, N, D), got {got}")
    check_float("x", x)
    B, N, D = x.shape
    strides = check_rows("x", x, (B, N, D))
    eps = check_eps(eps)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or D % heads:
        raise ValueError(f"rms_norm_rope: heads must divide D = {D}, got {heads!r}")
    if table is not None and (D // heads) % 2:
        raise ValueError(f"rms_norm_rope: RoPE needs an even head width, got D / heads = {D // heads}")
    _check_weight(weight, x)
    check_split("n_hist", n_hist, N)
    table_strides = _check_table(table, B, N, D // heads) if table is not None else (0, 0)
    head_scale_stride = _check_head_scale(head_scale, heads)
    tensors = {"x": x, "weight": weight, "table": table, "head_scale": head_scale}
    check_device(_rms_norm_rope_kernel, "rms_norm_rope", tensors)
    out = torch.empty((B, N, heads, D // heads), device=x.device, dtype=x.dtype)
    _launch(
        x, out, strides, heads, D, weight=weight, table=table, table_strides=table_strides,
        head_scale=head_scale, head_scale_stride=head_scale_stride, n_hist=n_hist, eps=eps,
    )  # fmt: skip
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`nn.RMSNorm(D)` of x (B, N, D) with weight (D,) in x's dtype: the cross-attention q/k norm.
    Returns (B, N, D) in x's dtype."""
    return rms_norm_rope(x, weight, None, 1, eps).flatten(2)


def rope(
    x: torch.Tensor, table: torch.Tensor, *, n_hist: int = 0, head_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of every head of x (B, N, Hd, Dh) by table (B or 1, N, Dh)
    float32 [cos | sin]; then the optional history-key scale. Returns (B, N, Hd, Dh) in x's dtype."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"rope: x must be (B, N, Hd, Dh), got {got}")
    check_float("x", x)
    B, N, heads, Dh = x.shape
    if Dh % 2:
        raise ValueError(f"rope: the head width Dh must be even (channel pairs), got {Dh}")
    if heads * Dh > 1 and (x.stride(3) != 1 or (heads > 1 and x.stride(2) != Dh)):
        raise ValueError(f"rope: each token's (Hd, Dh) channels must be contiguous, got strides {x.stride()}")
    check_split("n_hist", n_hist, N)
    table_strides = _check_table(table, B, N, Dh)
    head_scale_stride = _check_head_scale(head_scale, heads)
    check_device(_rms_norm_rope_kernel, "rope", {"x": x, "table": table, "head_scale": head_scale})
    out = torch.empty((B, N, heads, Dh), device=x.device, dtype=x.dtype)
    _launch(
        x, out, (x.stride(0), x.stride(1)), heads, heads * Dh, table=table, table_strides=table_strides,
        head_scale=head_scale, head_scale_stride=head_scale_stride, n_hist=n_hist,
    )  # fmt: skip
    return out
