"""FP8 (float8 e4m3fn) inference for the transformer blocks (issue 17; `HeliosTransformer.quantize_fp8`).

An `Fp8Linear` holds its weight quantised once, per output channel (row of W), and multiplies
activations quantised per token (row of x): y = (q_x · s_x) (q_W · s_W)ᵀ + b, with float32
accumulation and one rounding to the output dtype — on a GPU one `torch._scaled_mm` call with
row-wise scales (cuBLASLt / CUTLASS FP8 tensor cores). On the CPU (tests) the same product is taken
in float32 from the dequantised operands, so both compute one function of the quantised values.

Activations arrive either quantised already — `(q, scale)` from the block's fused norm kernels
(`helios_kernels`, `fp8=True`) or from `quantize_rows(..., gelu=True)` for the FFN — or as a bf16
tensor (the attention outputs, the cross-attention context), which the layer quantises in one pass.

Shape letters: M rows (tokens), K in-features, N out-features.
"""

from __future__ import annotations

import torch
from torch import nn

from helios_kernels.reference import AMAX_FLOOR, E4M3_MAX


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W (N, K) -> (q (N, K) float8_e4m3fn, scale (N,) float32): one scale per output channel."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(AMAX_FLOOR) / E4M3_MAX
    q = (w / scale[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


def quantize_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., K) -> (q (..., K) float8_e4m3fn, scale (...) float32), per row: the fused Triton
    kernel where it runs (a GPU, or the CPU under TRITON_INTERPRET=1), else its torch reference."""
    import helios_kernels

    if helios_kernels.available(x.device):
        return helios_kernels.quantize_rows(x)
    return helios_kernels.reference.quantize_rows(x)


class Fp8Linear(nn.Module):
    """A linear layer with a float8 weight and float8 per-token inputs; output in `out_dtype`."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, out_dtype):
        super().__init__()
        if weight.dtype != torch.float8_e4m3fn or weight.ndim != 2:
            raise ValueError(
                f"weight must be a (N, K) float8_e4m3fn tensor, got {weight.dtype} {tuple(weight.shape)}"
            )
        N, K = weight.shape
        if K % 16 or N % 16:
            raise ValueError(f"FP8 GEMMs need in/out features divisible by 16, got {K} -> {N}")
        self.in_features, self.out_features, self.out_dtype = K, N, out_dtype
        self.register_buffer("weight", weight)  # (N, K) row-major: .t() is the column-major (K, N)
        self.register_buffer("weight_scale", scale.reshape(1, N).float().contiguous())  # (1, N)
        self.register_buffer("bias", None if bias is None else bias.detach().to(out_dtype))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        """Quantise `linear`'s weight per output channel; the bias is kept in the layer's dtype."""
        q, scale = quantize_weight(linear.weight)
        return cls(q, scale, linear.bias, linear.weight.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3fn per-row"

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x: a (..., K) tensor, or (q (..., K) float8_e4m3fn, scale (...) float32). -> (..., N)."""
        q, scale = x if isinstance(x, tuple) else quantize_activation(x)
        lead = q.shape[:-1]
        q2 = q.reshape(-1, self.in_features)  # (M, K)
        s2 = scale.reshape(-1, 1)  # (M, 1)
        if q2.is_cuda:
            out = _scaled_mm(q2, self.weight.t(), s2, self.weight_scale, self.bias, self.out_dtype)
        else:
            w = self.weight.float() * self.weight_scale.t()  # (N, K) dequantised
            out = (
                torch.addmm(self.bias.float(), q2.float() * s2, w.t())
                if self.bias is not None
                else ((q2.float() * s2) @ w.t())
            )
            out = out.to(self.out_dtype)
        return out.reshape(*lead, self.out_features)


_BIAS_IN_GEMM: list[bool] = []  # whether this torch's row-wise _scaled_mm takes a bias (probed once)


def _scaled_mm(a, b, scale_a, scale_b, bias, out_dtype) -> torch.Tensor:
    """a (M, K) fp8 row-major · b (K, N) fp8 column-major, row-wise scales, + bias, in out_dtype:
    the bias inside the GEMM's epilogue where this torch supports it, else one add after."""
    if bias is not None and _BIAS_IN_GEMM != [False]:
        try:
            out = torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, bias=bias, out_dtype=out_dtype)
            _BIAS_IN_GEMM[:] = [True]
            return out
        except RuntimeError:
            if _BIAS_IN_GEMM == [True]:
                raise
            _BIAS_IN_GEMM[:] = [False]
    out = torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)
    return out if bias is None else out + bias


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers of a transformer block that FP8 replaces: q/k/v/out of both attentions and
    the FFN's two projections (the modulation table and norms stay as they are)."""
    return {
        name: module
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear) and name.split(".")[0] in ("attn1", "attn2", "ffn")
    }


def quantize_block(block: nn.Module) -> None:
    """Replace the block's linears by `Fp8Linear`s in place (the bf16 weights are freed)."""
    for name, linear in block_linears(block).items():
        parent_name, _, child = name.rpartition(".")
        parent = block.get_submodule(parent_name)
        fp8 = Fp8Linear.from_linear(linear)
        if isinstance(parent, nn.ModuleList):
            parent[int(child)] = fp8
        else:
            setattr(parent, child, fp8)
    block.fp8 = True
