"""Per-token float8 (e4m3fn) quantisation of activations for the FP8 linears (issue 17).

An FP8 GEMM (`torch._scaled_mm`, row-wise scales) is 1.4-1.8× a bf16 one at the transformer's shapes,
but quantising its input with separate torch ops (abs-max, divide, cast: three passes over the
activation) eats the gain. So the scale is computed where the activation is produced, while its row
is still in registers:

- `norm_modulate` / `residual_norm_modulate` / `residual_layer_norm` (`modulation.py`) take
  `fp8=True` and return the normalised rows quantised: the inputs of q/k/v and of the FFN;
- `quantize_rows(y, gelu=True)`: GELU-tanh of the FFN's hidden rows and their quantisation, one pass
  (the FFN-out input);
- `quantize_rows(y)`: one pass over rows that come out of a kernel we do not own (the attention
  output before its out-projection).

Quantisation of a row r (float32), with a = max(max|r|, 1e-12): q = r · (448 / a) rounded to
nearest even and saturated at ±448, scale = a / 448; dequantised r ≈ q · scale. The two divisions
are IEEE (`div_rn`, once per row); on a GPU the rounding is the hardware's conversion instruction,
under Triton's interpreter (which truncates) integer arithmetic on the float32 bits
(`_rounding.e4m3_bits`): both give the reference's bytes (`reference.quantize_rows`).

Shape letters: M rows (B·N tokens), K width. Outputs: q (..., K) float8_e4m3fn, scale (...) float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import LAUNCH, check_device, check_float, interpreted, row_block, row_warps
from ._rounding import e4m3_bits
from .reference import AMAX_FLOOR, E4M3_MAX


@triton.jit
def store_e4m3_row(r, cols, mask, q_ptr, scale_ptr, HW_CAST: tl.constexpr):
    """Quantise one float32 row r over `cols` (masked lanes ignored): its bytes to q_ptr (a uint8 view
    of the float8 output), its scale to scale_ptr. HW_CAST: the GPU's own conversion instruction
    (round to nearest even, saturating: the same bytes as `e4m3_bits`, in one instruction per pair)."""
    amax = tl.maximum(tl.max(tl.where(mask, tl.abs(r), 0.0), axis=0), 1e-12)
    inv = tl.div_rn(448.0, amax)  # one IEEE division per row; the elements multiply
    v = r * inv
    if HW_CAST:
        q = tl.minimum(tl.maximum(v, -448.0), 448.0).to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    else:
        q = e4m3_bits(v).to(tl.uint8)
    tl.store(q_ptr + cols, q, mask=mask)
    tl.store(scale_ptr, tl.div_rn(amax, 448.0))


@triton.jit
def _gelu_tanh(x):
    """GELU, tanh approximation, in float32: 0.5·x·(1 + tanh(c·(x + a·x³))), tanh(u) = 2σ(2u) − 1."""
    u = 0.7978845608028654 * (x + 0.044715 * (x * x * x))
    return 0.5 * x * (2.0 * tl.sigmoid(2.0 * u))


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, scale_ptr, K, s_xm, GELU: tl.constexpr, HW_CAST: tl.constexpr, BLOCK_K: tl.constexpr
):
    m = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    mask = cols < K
    r = tl.load(x_ptr + m * s_xm + cols, mask=mask, other=0.0).to(tl.float32)
    if GELU:
        r = _gelu_tanh(r)
    store_e4m3_row(r, cols, mask, q_ptr + m * K, scale_ptr + m, HW_CAST)


def quantize_rows(x: torch.Tensor, *, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise every row of x (..., K) to float8 e4m3fn with one float32 scale per row.

    With `gelu`, the rows are GELU-tanh'd in float32 first (the FFN's hidden activation; x is then the
    up-projection's output). x may be strided over its leading axes (unit stride over K); returns
    (q (..., K) contiguous float8_e4m3fn, scale (...) float32).
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 1:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"quantize_rows: x must be a tensor (..., K), got {got}")
    check_float("x", x)
    check_device(_quantize_rows_kernel, "quantize_rows", {"x": x})
    K = x.shape[-1]
    rows = x.reshape(-1, K) if K else x.reshape(-1, 1)
    if K > 1 and rows.stride(-1) != 1:
        rows = rows.contiguous()
    q = torch.empty(x.shape, device=x.device, dtype=torch.float8_e4m3fn)
    scale = torch.empty(x.shape[:-1], device=x.device, dtype=torch.float32)
    if rows.shape[0] == 0 or K == 0:
        scale.fill_(AMAX_FLOOR / E4M3_MAX)
        return q, scale
    block = row_block(K)
    _quantize_rows_kernel[(rows.shape[0],)](
        rows, q.view(torch.uint8), scale, K, rows.stride(0), GELU=gelu,
        HW_CAST=not interpreted(_quantize_rows_kernel), BLOCK_K=block,
        num_warps=row_warps(block, 32), **LAUNCH,
    )  # fmt: skip
    return q, scale
