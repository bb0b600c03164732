"""Fused LayerNorm + modulation and gated residuals of the transformer block (spec 3.7, 3.12).

Every step of a block between its matrix products is a per-token row operation over D: a float32
LayerNorm, the per-segment `x·(1 + scale) + shift`, a gated residual `x + y·gate`. In eager torch each
is several kernels, each reading and writing the (B, N, D) activation again; here one program per
token row reads x (and y) once and writes the result once. The fused residual variants also write
the next norm's output from the same registers, since the block always normalises right after adding.

Numerics follow the references in `reference.py` (float32 math, the same casts), and products and sums
are kept as separate roundings (no FMA), so the elementwise parts equal eager torch bit for bit; the
norms differ from torch only in the order of the float32 sums.

Shape letters: B batch, N tokens (the first n_hist are history), D width.
Modulation rows (shift, scale, gate): (B or 1, 2, D) float32, row 0 for history tokens, row 1 for noisy.
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
    check_mod_rows,
    check_rows,
    check_split,
    interpreted,
    row_block,
    row_warps,
)
from ._rounding import cast_to, round_as
from .fp8 import store_e4m3_row

NORM_NONE, NORM_MODULATE, NORM_AFFINE = 0, 1, 2

# Values of a row per thread, by (residual, norm), measured best on an H100 at D = 5120 (block 8192):
# a norm alone reduces fastest over few warps; a residual alone streams best over many.
_VALUES_PER_THREAD = {(True, False): 16, (True, True): 32, (False, True): 64}


@triton.jit(do_not_specialize=["n_hist", "y_start", "h_start"])
def _residual_norm_kernel(
    x_ptr,
    y_ptr,
    gate_ptr,
    shift_ptr,
    scale_ptr,
    weight_ptr,
    bias_ptr,
    x_out_ptr,
    h_out_ptr,
    h_scale_ptr,
    D,
    n_hist,
    y_start,
    h_start,
    eps,
    s_xb,
    s_xn,
    s_yb,
    s_yn,
    s_gb,
    s_gs,
    s_shb,
    s_shs,
    s_scb,
    s_scs,
    s_xob,
    s_xon,
    s_hob,
    s_hon,
    s_hsb,
    RESIDUAL: tl.constexpr,
    GATED: tl.constexpr,
    NORM: tl.constexpr,
    QUANT: tl.constexpr,
    HW_CAST: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One token row: optional residual x + y(·gate) on tokens >= y_start (written to x_out), then an
    optional LayerNorm of the (rounded) result on tokens >= h_start, modulated or affine (h_out); with
    QUANT, h_out is float8 e4m3fn (a uint8 view) quantised from float32 with its row scale (h_scale)."""
    n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)  # int64 offsets: B·N·D passes 2^31 at large batches
    seg = (n >= n_hist).to(tl.int64)  # modulation row: 0 history, 1 noisy
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    dtype = x_ptr.dtype.element_ty

    x = tl.load(x_ptr + b * s_xb + n * s_xn + cols, mask=mask, other=0.0).to(tl.float32)
    if RESIDUAL:
        if n >= y_start:
            y = tl.load(y_ptr + b * s_yb + (n - y_start) * s_yn + cols, mask=mask, other=0.0)
            y = round_as(y.to(tl.float32), dtype)  # the reference rounds y to x's dtype first
            if GATED:
                g = tl.load(gate_ptr + b * s_gb + seg * s_gs + cols, mask=mask, other=0.0)
                x = x + y * g
            else:
                x = x + y
            x = round_as(x, dtype)  # the new x as stored is what the next norm reads
        out = x_out_ptr + b * s_xob + n * s_xon + cols
        tl.store(out, cast_to(x, x_out_ptr.dtype.element_ty), mask=mask)

    if NORM != 0:
        if n >= h_start:
            mean = tl.sum(x, axis=0) / D
            xc = tl.where(mask, x - mean, 0.0)
            var = tl.sum(xc * xc, axis=0) / D  # biased variance; two passes over registers
            eps32 = tl.cast(eps, tl.float32)  # a float64 scalar when traced by torch.compile
            h = xc * (1.0 / tl.sqrt_rn(var + eps32))
            if NORM == 1:
                shift = tl.load(shift_ptr + b * s_shb + seg * s_shs + cols, mask=mask, other=0.0)
                scale = tl.load(scale_ptr + b * s_scb + seg * s_scs + cols, mask=mask, other=0.0)
                h = h * (1.0 + scale) + shift
            else:
                w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
                bias = tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
                h = h * w + bias
            row = h_out_ptr + b * s_hob + (n - h_start) * s_hon
            if QUANT:
                store_e4m3_row(h, cols, mask, row, h_scale_ptr + b * s_hsb + (n - h_start), HW_CAST)
            else:
                tl.store(row + cols, cast_to(h, h_out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------
# Wrappers
# ---------------------------------------------------------------------------------------------------


def _launch(
    x: torch.Tensor,
    *,
    y: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    x_out: torch.Tensor | None = None,
    h_out: torch.Tensor | None = None,
    h_scale: torch.Tensor | None = None,
    n_hist: int = 0,
    y_start: int = 0,
    h_start: int = 0,
    eps: float = 1e-6,
    norm: int = NORM_NONE,
) -> None:
    B, N, D = x.shape
    if B == 0 or N == 0 or D == 0:
        return
    dummy = x  # stands in for absent pointers; the constexpr flags keep it from being read
    s_yb, s_yn = (y.stride(0), y.stride(1)) if y is not None else (0, 0)
    s_gb, s_gs = check_mod_rows("gate", gate, B, D) if gate is not None else (0, 0)
    s_shb, s_shs = check_mod_rows("shift", shift, B, D) if shift is not None else (0, 0)
    s_scb, s_scs = check_mod_rows("scale", scale, B, D) if scale is not None else (0, 0)
    s_xob, s_xon = (x_out.stride(0), x_out.stride(1)) if x_out is not None else (0, 0)
    s_hob, s_hon = (h_out.stride(0), h_out.stride(1)) if h_out is not None else (0, 0)
    block = row_block(D)
    _residual_norm_kernel[(N, B)](
        x,
        dummy if y is None else y,
        dummy if gate is None else gate,
        dummy if shift is None else shift,
        dummy if scale is None else scale,
        dummy if weight is None else weight,
        dummy if bias is None else bias,
        dummy if x_out is None else x_out,
        dummy if h_out is None else h_out,
        dummy if h_scale is None else h_scale,
        D,
        n_hist,
        y_start,
        h_start,
        eps,
        x.stride(0),
        x.stride(1),
        s_yb,
        s_yn,
        s_gb,
        s_gs,
        s_shb,
        s_shs,
        s_scb,
        s_scs,
        s_xob,
        s_xon,
        s_hob,
        s_hon,
        0 if h_scale is None else h_scale.stride(0),
        RESIDUAL=y is not None,
        GATED=gate is not None,
        NORM=norm,
        QUANT=h_scale is not None,
        HW_CAST=not interpreted(_residual_norm_kernel),
        BLOCK_D=block,
        num_warps=row_warps(block, _VALUES_PER_THREAD[y is not None, norm != NORM_NONE]),
        **LAUNCH,
    )


def _norm_out(x: torch.Tensor, rows: int, fp8: bool) -> tuple[dict, torch.Tensor | tuple]:
    """The normalised output of `rows` tokens: launch arguments and what the wrapper returns, either
    h (B, rows, D) in x's dtype, or with `fp8` (q (B, rows, D) float8_e4m3fn, scale (B, rows) float32)."""
    B, _, D = x.shape
    if not fp8:
        h = torch.empty((B, rows, D), device=x.device, dtype=x.dtype)
        return {"h_out": h}, h
    q = torch.empty((B, rows, D), device=x.device, dtype=torch.float8_e4m3fn)
    scale = torch.empty((B, rows), device=x.device, dtype=torch.float32)  # the kernel writes every row
    return {"h_out": q.view(torch.uint8), "h_scale": scale}, (q, scale)


def _check_x(name: str, x: torch.Tensor) -> tuple[int, int, int]:
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: x must be (B, N, D), got {got}")
    check_float("x", x)
    check_rows("x", x, tuple(x.shape))
    return tuple(x.shape)


def _check_residual(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    y_start: int,
    out: torch.Tensor | None,
) -> None:
    B, N, D = x.shape
    check_split("y_start", y_start, N)
    check_rows("y", y, (B, N - y_start, D))
    check_float("y", y)
    if gate is not None:
        check_mod_rows("gate", gate, B, D)
    if out is not None:
        check_rows("out", out, (B, N, D))
        if out.dtype != x.dtype:
            raise ValueError(f"{name}: out must have x's dtype {x.dtype}, got {out.dtype}")


def norm_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, n_hist: int, eps: float, *, fp8: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm over D (float32, no affine) then x·(1 + scale) + shift per segment, in x's dtype.

    x (B, N, D); shift, scale (B or 1, 2, D) float32. Replaces the block's
    `modulate(layer_norm32(x, None, eps), shift, scale, n_hist).to(x.dtype)`. With `fp8` the float32
    result is quantised per token instead (`fp8.py`): returns (q (B, N, D) float8_e4m3fn, scale (B, N)).
    """
    B, N, D = _check_x("norm_modulate", x)
    eps = check_eps(eps)
    check_split("n_hist", n_hist, N)
    check_mod_rows("shift", shift, B, D)
    check_mod_rows("scale", scale, B, D)
    check_device(_residual_norm_kernel, "norm_modulate", {"x": x, "shift": shift, "scale": scale})
    h_args, h = _norm_out(x, N, fp8)
    _launch(x, shift=shift, scale=scale, **h_args, n_hist=n_hist, eps=eps, norm=NORM_MODULATE)
    return h


def gated_residual(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, n_hist: int, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """x + y·gate added in float32 per segment, in x's dtype (y is first rounded to x's dtype).

    x, y (B, N, D); gate (B or 1, 2, D) float32. `out` (may be x itself: in place) receives the result.
    """
    N = _check_x("gated_residual", x)[1]
    check_split("n_hist", n_hist, N)
    _check_residual("gated_residual", x, y, gate, 0, out)
    check_device(_residual_norm_kernel, "gated_residual", {"x": x, "y": y, "gate": gate, "out": out})
    out = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    _launch(x, y=y, gate=gate, x_out=out, n_hist=n_hist)
    return out


def residual_norm_modulate(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    n_hist: int,
    eps: float,
    *,
    y_start: int = 0,
    out: torch.Tensor | None = None,
    fp8: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """A residual and the next `norm_modulate` in one pass: returns (new x, modulated norm of new x);
    with `fp8` the norm comes quantised per token, as `norm_modulate(..., fp8=True)` returns it.

    On tokens [y_start, N) x gains y (B, N - y_start, D): times `gate` per segment as in
    `gated_residual`, or, with gate None, a plain add in x's dtype (the cross-attention residual
    `noisy + attn2(...)`, y_start = n_hist). Tokens before y_start pass through unchanged.
    """
    B, N, D = _check_x("residual_norm_modulate", x)
    eps = check_eps(eps)
    check_split("n_hist", n_hist, N)
    _check_residual("residual_norm_modulate", x, y, gate, y_start, out)
    check_mod_rows("shift", shift, B, D)
    check_mod_rows("scale", scale, B, D)
    tensors = {"x": x, "y": y, "gate": gate, "shift": shift, "scale": scale, "out": out}
    check_device(_residual_norm_kernel, "residual_norm_modulate", tensors)
    out = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    h_args, h = _norm_out(x, N, fp8)
    _launch(
        x, y=y, gate=gate, shift=shift, scale=scale, x_out=out, **h_args, n_hist=n_hist, y_start=y_start,
        eps=eps, norm=NORM_MODULATE,
    )  # fmt: skip
    return out, h


def residual_layer_norm(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    n_hist: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    *,
    y_start: int = 0,
    norm_start: int = 0,
    out: torch.Tensor | None = None,
    fp8: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """A residual (as `residual_norm_modulate`) and the affine float32 LayerNorm of tokens
    [norm_start, N) of its result: returns (new x (B, N, D), normed (B, N - norm_start, D)) in x's dtype.

    Serves the self-attention residual followed by cross-attention's `norm2` (weight, bias (D,)),
    which reads only the noisy tokens: norm_start = n_hist under guidance cross-attention. With `fp8`
    the normed rows come quantised per token (q, scale), as `norm_modulate(..., fp8=True)` returns them.
    """
    _, N, D = _check_x("residual_layer_norm", x)
    eps = check_eps(eps)
    check_split("n_hist", n_hist, N)
    check_split("norm_start", norm_start, N)
    _check_residual("residual_layer_norm", x, y, gate, y_start, out)
    for name, t in (("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (D,):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"residual_layer_norm: {name} must have shape ({D},), got {got}")
        check_float(name, t, (torch.float32,))
        if D > 1 and t.stride(0) != 1:
            raise ValueError(f"residual_layer_norm: {name} must be contiguous")
    tensors = {"x": x, "y": y, "gate": gate, "weight": weight, "bias": bias, "out": out}
    check_device(_residual_norm_kernel, "residual_layer_norm", tensors)
    out = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    h_args, h = _norm_out(x, N - norm_start, fp8)
    _launch(
        x, y=y, gate=gate, weight=weight, bias=bias, x_out=out, **h_args, n_hist=n_hist, y_start=y_start,
        h_start=norm_start, eps=eps, norm=NORM_AFFINE,
    )  # fmt: skip
    return out, h
