"""Runs kernel-vs-reference cases under Triton's CPU interpreter, in a process of its own.

TRITON_INTERPRET=1 only takes effect if it is set before a kernel is defined, and pytest's process
may have imported Triton or helios_kernels already; so test_kernels.py starts this script with the
variable set. Reads a JSON list of cases on stdin, each {"id", "kernel", "dtype", keyword arguments};
writes {id: {output: metrics} or {"error": traceback}} as JSON on stdout.

A case's kernel is one of `helios_kernels.parity.KERNELS` (run by `run_case`), or "block": a tiny
transformer block run by the runtime and by `fused_block`, the same block with every row operation
replaced by a kernel, which is the integration kernels/README.md describes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback

if os.environ.get("TRITON_INTERPRET") != "1":
    raise SystemExit("set TRITON_INTERPRET=1 before starting this script")

import torch

import helios_kernels as hk
from helios_kernels import reference
from helios_kernels.parity import compare, run_case
from helios_runtime.model.attention import attention
from helios_runtime.model.config import preset
from helios_runtime.model.transformer import Block, keeps_fp32


def fused_block(block: Block, x, context, mod, rope, n_hist: int) -> torch.Tensor:
    """`Block.forward` (no context parallelism) with the kernels in place of its row operations."""
    eps, attn1, attn2 = block.eps, block.attn1, block.attn2
    m = block.scale_shift_table[:, None] + mod.float()  # (B, 2, 6, D) float32
    shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = m.unbind(2)  # (B, 2, D) each

    h = hk.norm_modulate(x, shift_sa, scale_sa, n_hist, eps)
    amplify = getattr(attn1, "history_key_scale", None)
    head_scale = reference.history_key_scale(amplify) if amplify is not None else None
    q = hk.rms_norm_rope(attn1.to_q(h), attn1.norm_q.weight, rope, attn1.heads, eps)
    k = hk.rms_norm_rope(
        attn1.to_k(h), attn1.norm_k.weight, rope, attn1.heads, eps, n_hist=n_hist, head_scale=head_scale
    )
    v = attn1.to_v(h).unflatten(-1, (attn1.heads, -1))  # (B, N, Hd, Dh)
    out = attn1.to_out[0](attention(q, k, v).flatten(2))

    split = n_hist if block.guidance_cross_attn else 0
    if split == x.shape[1]:  # no noisy tokens: no cross-attention, straight to the feed-forward norm
        x, h = hk.residual_norm_modulate(x, out, gate_sa, shift_ff, scale_ff, n_hist, eps)
    else:
        x, y = hk.residual_layer_norm(
            x, out, gate_sa, n_hist, block.norm2.weight, block.norm2.bias, eps, norm_start=split
        )
        q = hk.rms_norm(attn2.to_q(y), attn2.norm_q.weight, eps).unflatten(-1, (attn2.heads, -1))
        k = hk.rms_norm(attn2.to_k(context), attn2.norm_k.weight, eps).unflatten(-1, (attn2.heads, -1))
        v = attn2.to_v(context).unflatten(-1, (attn2.heads, -1))
        out = attn2.to_out[0](attention(q, k, v).flatten(2))
        x, h = hk.residual_norm_modulate(x, out, None, shift_ff, scale_ff, n_hist, eps, y_start=split)
    return hk.gated_residual(x, block.ffn(h), gate_ff, n_hist)


@torch.no_grad()
def run_block(
    *, batch: int, tokens: int, n_hist: int, dtype: torch.dtype, scale_mode: str, seed: int = 0
) -> dict[str, dict[str, float]]:
    cfg = dataclasses.replace(preset("tiny"), is_amplify_history=True, history_scale_mode=scale_mode)
    g = torch.Generator().manual_seed(seed)
    block = Block(cfg)
    for name, p in block.named_parameters():
        # Non-trivial norm weights and history scales, so every input of the kernels matters.
        p.data = p.data + 0.2 * torch.randn(p.shape, generator=g)
        p.data = p.data.to(torch.float32 if keeps_fp32(name) else dtype)
    D, Dh = cfg.inner_dim, cfg.attention_head_dim
    x = (torch.randn(batch, tokens, D, generator=g) * 3 + 0.5).to(dtype)
    context = torch.randn(batch, 5, D, generator=g).to(dtype)
    mod = (torch.randn(batch, 2, 6, D, generator=g) * 0.5).to(dtype)
    angles = torch.randn(batch, tokens, Dh // 2, generator=g) * 3
    rope = torch.cat([angles.cos(), angles.sin()], dim=-1)
    return {
        "x": compare(fused_block(block, x, context, mod, rope, n_hist), block(x, context, mod, rope, n_hist))
    }


def main() -> None:
    torch.set_num_threads(1)  # tiny tensors: threads only contend on a small machine
    cases = json.load(sys.stdin)
    results = {"available(cpu)": hk.available("cpu")}
    for case in cases:
        args = dict(case)
        ident, kernel = args.pop("id"), args.pop("kernel")
        for key in ("dtype", "y_dtype"):
            if key in args:
                args[key] = getattr(torch, args[key])
        try:
            results[ident] = run_block(**args) if kernel == "block" else run_case(kernel, **args)
        except Exception:
            results[ident] = {"error": traceback.format_exc()}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
