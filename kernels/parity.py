"""Every kernel against its torch reference on random inputs: the CPU tests and the GPU self-test.

`run_case` builds one kernel's inputs at a given shape and dtype, runs the kernel and `reference.py`,
and measures how far apart the outputs are (`compare`); `within_tolerance` says whether that is close
enough. tests/kernels calls it at tiny shapes under TRITON_INTERPRET=1; `selftest(device)` at 14B
shapes on a GPU. The inputs look like the block's: a residual stream with an offset and spread,
modulation rows around zero, RoPE tables of real rotations scaled below unit modulus (as the pooled
history tables are).
"""

from __future__ import annotations

import torch

from . import reference as ref
from .fp8 import quantize_rows
from .modulation import gated_residual, norm_modulate, residual_layer_norm, residual_norm_modulate
from .rotary import rms_norm, rms_norm_rope, rope

KERNELS = (
    "norm_modulate",
    "gated_residual",
    "residual_norm_modulate",  # the gated FFN residual + the next block's norm1
    "residual_add_norm_modulate",  # the cross-attention residual (plain add on noisy tokens) + norm3
    "residual_layer_norm",  # the self-attention residual + norm2 on noisy tokens
    "rope",
    "rms_norm_rope",  # q
    "rms_norm_rope_history",  # k with the history-key scale
    "rms_norm",  # cross-attention q/k
    # float8 activations of the FP8 path (fp8.py): the norms quantised per token, and rows
    "norm_modulate_fp8",
    "residual_norm_modulate_fp8",
    "residual_layer_norm_fp8",
    "quantize_rows",  # the attention output before its out-projection
    "quantize_rows_gelu",  # the FFN's hidden rows, GELU'd, before the down-projection
)

# Outputs with no reduction in them: equal to the reference bit for bit, whatever the dtype.
EXACT = {
    ("gated_residual", "x"),
    ("residual_norm_modulate", "x"),
    ("residual_add_norm_modulate", "x"),
    ("residual_layer_norm", "x"),
    ("rope", "out"),
    ("residual_norm_modulate_fp8", "x"),
    ("residual_layer_norm_fp8", "x"),
    ("quantize_rows", "q"),  # an abs-max, IEEE divisions and one rounding: nothing to reorder
    ("quantize_rows", "scale"),
}

_ORDERED_BITS = {
    torch.float32: torch.int32,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
    torch.float8_e4m3fn: torch.int8,
}


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many representable values of their (shared) dtype lie between a and b, elementwise."""
    if a.dtype != b.dtype or a.dtype not in _ORDERED_BITS:
        raise ValueError(f"ulp_distance needs two float tensors of one dtype, got {a.dtype} and {b.dtype}")
    bits = _ORDERED_BITS[a.dtype]
    sign = torch.iinfo(bits).min

    def ordered(t: torch.Tensor) -> torch.Tensor:
        # Sign-magnitude bit patterns onto one integer line: -0 and +0 meet, order is kept.
        i = t.contiguous().view(bits).to(torch.int64)
        return torch.where(i < 0, sign - i, i)

    return (ordered(a) - ordered(b)).abs()


def compare(out: torch.Tensor, expected: torch.Tensor) -> dict[str, float]:
    """How far a kernel output is from the reference's:

    max_abs: the largest absolute difference; max_rel: that over the largest reference magnitude (the
    scale that float32 rounding of the norms' sums works at); max_ulp: the largest distance in ulps,
    the measure for bfloat16 outputs; mismatch: the share of elements that differ at all.
    """
    if out.shape != expected.shape or out.dtype != expected.dtype:
        got, want = (tuple(out.shape), out.dtype), (tuple(expected.shape), expected.dtype)
        raise AssertionError(f"kernel output {got} != reference {want} (shape, dtype)")
    if out.numel() == 0:
        return {"elements": 0, "max_abs": 0.0, "max_rel": 0.0, "max_ulp": 0.0, "mismatch": 0.0}
    a, b = out.double(), expected.double()
    diff = (a - b).abs()
    return {
        "elements": out.numel(),
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max() / b.abs().max().clamp_min(1e-30)),
        "max_ulp": float(ulp_distance(out, expected).max()),
        "mismatch": float((a != b).double().mean()),
    }


def within_tolerance(kernel: str, output: str, dtype: torch.dtype, m: dict[str, float]) -> bool:
    """The agreement a kernel output must reach (the tests' and the self-test's criterion).

    Elementwise outputs: bit-exact. Outputs of a norm differ where its float32 sums round otherwise
    (another summation order): in float32 by a relative 1e-6 of the output's scale; in bfloat16 /
    float16 by a rounding that went the other way, at most 1 ulp of the largest value (2^-7 of it)
    and on few elements (1%, or one element of a tiny tensor). Counting ulps element by element would
    not do for norms: near zero a float32 difference of 1e-7·scale is many ulps of a tiny output.
    """
    if (kernel, output) in EXACT:
        return m["mismatch"] == 0
    if kernel.endswith("_fp8") or kernel.startswith("quantize_rows"):
        # Float8 rows of a norm (or of GELU, whose tanh differs by an ulp between libraries): the
        # float32 value may sit on the other side of a rounding boundary, one e4m3 step off on few
        # elements; each row's scale is its abs-max over 448, as close as the float32 values.
        if output == "scale":
            return m["max_rel"] <= 1e-6
        return m["max_ulp"] <= 1 and m["mismatch"] <= max(0.01, 1 / max(m["elements"], 1))
    if dtype == torch.float32:
        return m["max_rel"] <= 1e-6
    return m["max_rel"] <= 2**-7 and m["mismatch"] <= max(0.01, 1 / max(m["elements"], 1))


def _inputs(batch: int, tokens: int, heads: int, head_dim: int, dtype, device, seed: int) -> dict:
    g = torch.Generator(device="cpu").manual_seed(seed)
    D = heads * head_dim

    def randn(*shape: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale + offset

    angles = randn(batch, tokens, head_dim // 2, scale=3.0)
    modulus = torch.rand(batch, tokens, 1, generator=g) * 0.5 + 0.5
    return {
        "x": randn(batch, tokens, D, scale=3.0, offset=0.5).to(device, dtype),
        "y": randn(batch, tokens, D, scale=2.0).to(device, dtype),
        "q": randn(batch, tokens, D, scale=2.0, offset=0.1).to(device, dtype),
        "mod": randn(batch, 2, 3, D, scale=0.5).to(device),  # (B, 2, 3, D) shift, scale, gate rows
        "table": torch.cat([angles.cos(), angles.sin()], dim=-1).mul(modulus).to(device),
        "weight": randn(D, scale=0.2, offset=1.0).to(device, dtype),
        "ln_weight": randn(D, scale=0.2, offset=1.0).to(device),
        "ln_bias": randn(D, scale=0.2).to(device),
        "head_scale": ref.history_key_scale(randn(heads)).to(device),
    }


def run_case(
    kernel: str,
    *,
    batch: int = 2,
    tokens: int = 7,
    n_hist: int = 3,
    heads: int = 2,
    head_dim: int = 16,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    y_dtype: torch.dtype | None = None,
    y_start: int | None = None,
) -> dict[str, dict[str, float]]:
    """One kernel against its reference; {output name: compare(...)}.

    As in the block, the fused residuals add on all tokens when gated and on the noisy ones
    (from n_hist) when not, and norm2 reads the noisy ones; `y_start` moves where a residual starts
    adding. `y_dtype` gives the added branch its own dtype (default x's); it is rounded to x's."""
    t = _inputs(batch, tokens, heads, head_dim, dtype, device, seed)
    x, y, eps = t["x"], t["y"], 1e-6
    if y_dtype is not None:
        # Bits below x's precision, so that rounding y to x's dtype first matters.
        noise = torch.rand(y.shape, generator=torch.Generator().manual_seed(seed)) / 97
        y = (y.float() + noise.to(device)).to(y_dtype)
    shift, scale, gate = t["mod"].unbind(2)  # (B, 2, D) views with the block's strides
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if kernel == "norm_modulate":
        pairs["h"] = (
            norm_modulate(x, shift, scale, n_hist, eps),
            ref.norm_modulate(x, shift, scale, n_hist, eps),
        )
    elif kernel == "gated_residual":
        pairs["x"] = gated_residual(x, y, gate, n_hist), ref.gated_residual(x, y, gate, n_hist)
    elif kernel in ("residual_norm_modulate", "residual_add_norm_modulate"):
        gated = kernel == "residual_norm_modulate"
        start = y_start if y_start is not None else 0 if gated else n_hist
        g, ys = (gate if gated else None), y[:, start:]
        got = residual_norm_modulate(x, ys, g, shift, scale, n_hist, eps, y_start=start)
        want = ref.residual_norm_modulate(x, ys, g, shift, scale, n_hist, eps, y_start=start)
        pairs["x"], pairs["h"] = (got[0], want[0]), (got[1], want[1])
    elif kernel == "residual_layer_norm":
        w, b = t["ln_weight"], t["ln_bias"]
        start = y_start or 0
        got = residual_layer_norm(x, y[:, start:], gate, n_hist, w, b, eps, y_start=start, norm_start=n_hist)
        want = ref.residual_layer_norm(x, y[:, start:], gate, n_hist, w, b, eps, start, n_hist)
        pairs["x"], pairs["h"] = (got[0], want[0]), (got[1], want[1])
    elif kernel == "norm_modulate_fp8":
        got = norm_modulate(x, shift, scale, n_hist, eps, fp8=True)
        want = ref.norm_modulate_fp8(x, shift, scale, n_hist, eps)
        pairs["q"], pairs["scale"] = (got[0], want[0]), (got[1], want[1])
    elif kernel == "residual_norm_modulate_fp8":
        got_x, got = residual_norm_modulate(x, y, gate, shift, scale, n_hist, eps, fp8=True)
        want_x, want = ref.residual_norm_modulate_fp8(x, y, gate, shift, scale, n_hist, eps)
        pairs["x"], pairs["q"], pairs["scale"] = (got_x, want_x), (got[0], want[0]), (got[1], want[1])
    elif kernel == "residual_layer_norm_fp8":
        w, b = t["ln_weight"], t["ln_bias"]
        got_x, got = residual_layer_norm(x, y, gate, n_hist, w, b, eps, norm_start=n_hist, fp8=True)
        want_x, want = ref.residual_layer_norm_fp8(x, y, gate, n_hist, w, b, eps, 0, n_hist)
        pairs["x"], pairs["q"], pairs["scale"] = (got_x, want_x), (got[0], want[0]), (got[1], want[1])
    elif kernel in ("quantize_rows", "quantize_rows_gelu"):
        gelu = kernel == "quantize_rows_gelu"
        # A strided view (every other token), as the attention output reaches the out-projection.
        rows = torch.cat([x, y], dim=1)[:, ::2]
        got = quantize_rows(rows, gelu=gelu)
        want = ref.quantize_rows(ref.gelu_tanh(rows) if gelu else rows)
        pairs["q"], pairs["scale"] = (got[0], want[0]), (got[1], want[1])
    elif kernel == "rope":
        q = t["q"].unflatten(-1, (heads, head_dim))
        hs = t["head_scale"]
        pairs["out"] = rope(q, t["table"], n_hist=n_hist, head_scale=hs), ref.rope(q, t["table"], n_hist, hs)
    elif kernel in ("rms_norm_rope", "rms_norm_rope_history"):
        hs = t["head_scale"] if kernel == "rms_norm_rope_history" else None
        args = (t["q"], t["weight"], t["table"], heads, eps)
        pairs["out"] = (
            rms_norm_rope(*args, n_hist=n_hist, head_scale=hs),
            ref.rms_norm_rope(*args, n_hist=n_hist, head_scale=hs),
        )
    elif kernel == "rms_norm":
        pairs["out"] = rms_norm(t["q"], t["weight"], eps), ref.rms_norm(t["q"], t["weight"], eps)
    else:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {', '.join(KERNELS)}")
    return {name: compare(got, want) for name, (got, want) in pairs.items()}


def tiny_forward_inputs(in_channels: int, text_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A whole transformer forward's inputs at a tiny size, with the full multi-term memory: two noisy
    latent frames of 4×4, five text tokens, short / mid / long history (2 / 2 / 4 frames). For the
    tests that run a tiny model both ways (torch path, kernel path, FP8)."""
    g = torch.Generator().manual_seed(seed)
    kw = {
        "hidden_states": torch.randn(1, in_channels, 2, 4, 4, generator=g),
        "timestep": torch.tensor([700.0]),
        "encoder_hidden_states": torch.randn(1, 5, text_dim, generator=g),
        "indices_hidden_states": torch.tensor([[9, 10]]),
    }
    for name, n, first in (("short", 2, 7), ("mid", 2, 5), ("long", 4, 1)):
        kw[f"latents_history_{name}"] = torch.randn(1, in_channels, n, 4, 4, generator=g)
        kw[f"indices_latents_history_{name}"] = torch.arange(first, first + n)[None]
    return kw


def selftest(
    device: str | torch.device = "cuda",
    *,
    batch: int = 1,
    history: int = 2400,
    noisy: int = 2160,
    heads: int = 40,
    head_dim: int = 128,
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float32),
    seed: int = 0,
) -> dict[str, dict[str, float | bool]]:
    """Every kernel against its reference at 14B shapes (default: D = 5120, 40 heads of 128, the 2400
    history + 2160 noisy tokens of pyramid stage 1). Returns {"kernel/dtype/output": compare(...)
    plus "ok": `within_tolerance`}; all ok means the kernels are right on this device."""
    results = {}
    for dtype in dtypes:
        for kernel in KERNELS:
            errors = run_case(
                kernel, batch=batch, tokens=history + noisy, n_hist=history, heads=heads,
                head_dim=head_dim, dtype=dtype, device=device, seed=seed,
            )  # fmt: skip
            for name, metrics in errors.items():
                ok = within_tolerance(kernel, name, dtype, metrics)
                results[f"{kernel}/{str(dtype).removeprefix('torch.')}/{name}"] = {**metrics, "ok": ok}
    return results
